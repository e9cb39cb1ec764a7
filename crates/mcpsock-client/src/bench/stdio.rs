//! Benchmark lanes over a stdio MCP server started for the run: the
//! baseline "same upstream, no gateway".
//!
//! Lanes share the one pipe; a reader task hands each answer to the lane
//! that waits for its id.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::{Lane, check_response};
use crate::{ClientError, Endpoint};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub(super) struct StdioServer {
    lines: mpsc::Sender<String>,
    waiting: Waiting,
    /// Kept so the child is killed when the run ends.
    _child: Arc<tokio::sync::Mutex<Child>>,
}

impl StdioServer {
    /// Starts the command and completes the MCP handshake with it.
    pub(super) async fn start(command: &[String]) -> Result<Self, ClientError> {
        let label = Endpoint::Http(format!("stdio:{}", command.join(" ")));
        let failed = |message: String| ClientError::Protocol { endpoint: label.clone(), message };
        let (program, args) = command.split_first().ok_or_else(|| failed("no command given".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| failed(format!("cannot start {program}: {error}")))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(failed("the child's pipes were not set up".into()));
        };
        let (lines, mut outgoing) = mpsc::channel::<String>(1024);
        tokio::spawn(async move {
            while let Some(line) = outgoing.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let waiting: Waiting = Arc::default();
        let dispatch = waiting.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
                let Some(id) = message.get("id").and_then(Value::as_u64) else { continue };
                let waiter = dispatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
        });
        let server = Self { lines, waiting, _child: Arc::new(tokio::sync::Mutex::new(child)) };
        let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "mcpsock-bench", "version": env!("CARGO_PKG_VERSION")},
        }});
        let answer = server.request(0, initialize.to_string()).await.map_err(failed)?;
        if answer.get("result").is_none() {
            return Err(failed(format!("initialize failed: {answer}")));
        }
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        server
            .lines
            .send(format!("{initialized}\n"))
            .await
            .map_err(|_| failed("the server exited".into()))?;
        Ok(server)
    }

    async fn request(&self, id: u64, body: String) -> Result<Value, String> {
        let (sender, receiver) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, sender);
        self.lines.send(format!("{body}\n")).await.map_err(|_| "the server exited".to_string())?;
        receiver.await.map_err(|_| "the server exited".to_string())
    }

    pub(super) fn lane(&self, params: &Value) -> StdioLane {
        StdioLane {
            server: Self {
                lines: self.lines.clone(),
                waiting: self.waiting.clone(),
                _child: self._child.clone(),
            },
            body_suffix: format!(r#","method":"tools/call","params":{params}}}"#),
        }
    }
}

pub(super) struct StdioLane {
    server: StdioServer,
    body_suffix: String,
}

impl Lane for StdioLane {
    async fn call(&mut self, id: u64) -> Result<(), String> {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id}{}"#, self.body_suffix);
        let answer = self.server.request(id, body).await?;
        check_response(&answer, id)
    }
}
