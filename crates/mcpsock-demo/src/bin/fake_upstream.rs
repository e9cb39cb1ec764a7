//! A deliberately misbehaving stdio MCP server for fault-injection tests.
//!
//! It speaks just enough MCP by hand (no SDK, so it can break the rules):
//! `initialize`, `tools/list` and `tools/call` of tools whose names say what
//! they do wrong. Every message it receives is appended to the file named by
//! `FAKE_UPSTREAM_LOG`, when set, so tests can see what reached it.
//!
//! Tools: `echo` (behaves), `garbage` (sends junk lines first: non-JSON, a
//! wrong `jsonrpc`, a response to an unknown id, then the answer twice),
//! `hang` (never answers), `crash` (exits mid-request), `flood` (writes
//! `FAKE_UPSTREAM_FLOOD_MB` MiB to stderr, default 8, then stops reading
//! stdin), `ansi` (writes terminal escapes and a forged log line to stderr),
//! `slow` (answers after `arguments.ms` milliseconds, holding up the rest).
//! With `--ansi-tool-name`, one tool's name carries escapes and a newline;
//! with `--hang-on-ping`, `ping` is never answered (a hung server that still
//! holds its pipes open); with `--exit-after-ms N`, it exits N milliseconds
//! after it started (a server that keeps dying); with `--extra-tools N`, it
//! offers N more tools `extra_0000`… (each an `echo`), for long lists.
//! `pid` answers its process id, `remember` keeps `arguments.text` and
//! `recall` answers what was kept: state of one process, for telling
//! processes apart. `ask` asks its client a question (`elicitation/create`)
//! and answers with the client's answer, as JSON.

// A stdio test fixture: writing to stdout and stderr is its whole job.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, Write};

use serde_json::{Value, json};

fn main() {
    let ansi_tool_name = std::env::args().any(|arg| arg == "--ansi-tool-name");
    let hang_on_ping = std::env::args().any(|arg| arg == "--hang-on-ping");
    let arguments: Vec<String> = std::env::args().collect();
    if let Some(ms) = arguments
        .windows(2)
        .find(|pair| pair[0] == "--exit-after-ms")
        .and_then(|pair| pair[1].parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            std::process::exit(4);
        });
    }
    let extra_tools: usize = arguments
        .windows(2)
        .find(|pair| pair[0] == "--extra-tools")
        .and_then(|pair| pair[1].parse().ok())
        .unwrap_or(0);
    let mut remembered = String::new();
    // The `tools/call` of `ask` waiting for its client's answer.
    let mut asking: Option<Value> = None;
    let mut log = std::env::var_os("FAKE_UPSTREAM_LOG")
        .map(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file"));
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if let Some(log) = &mut log {
            let _ = writeln!(log, "{line}");
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
        // The client's answer to `ask`'s question completes the call.
        if message.get("id") == Some(&json!("ask")) && message.get("method").is_none() {
            if let Some(call) = asking.take() {
                let answer = message.get("result").or(message.get("error")).cloned().unwrap_or_default();
                let text = json!({"content": [{"type": "text", "text": answer.to_string()}]});
                let reply = json!({"jsonrpc": "2.0", "id": call, "result": text}).to_string();
                if writeln!(stdout, "{reply}").and_then(|()| stdout.flush()).is_err() {
                    break;
                }
            }
            continue;
        }
        let (Some(id), Some(method)) =
            (message.get("id").cloned(), message.get("method").and_then(Value::as_str))
        else {
            continue;
        };
        let reply = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
        let answer = match method {
            "ping" if hang_on_ping => continue,
            "initialize" => reply(json!({
                "protocolVersion": message.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake-upstream", "version": "1"},
            })),
            "tools/list" => {
                let mut names: Vec<String> = [
                    "echo", "garbage", "hang", "crash", "flood", "ansi", "slow", "pid", "remember", "recall",
                    "ask",
                ]
                .map(String::from)
                .into();
                if ansi_tool_name {
                    names.push("evil\u{1b}[31m\nname".into());
                }
                names.extend((0..extra_tools).map(|n| format!("extra_{n:04}")));
                let tools: Vec<Value> = names
                    .iter()
                    .map(|name| json!({"name": name, "inputSchema": {"type": "object"}}))
                    .collect();
                reply(json!({"tools": tools}))
            }
            "tools/call" => {
                let text = |value: &str| reply(json!({"content": [{"type": "text", "text": value}]}));
                match message.pointer("/params/name").and_then(Value::as_str).unwrap_or_default() {
                    "garbage" => {
                        for junk in [
                            "this is not json".to_string(),
                            json!({"jsonrpc": "1.0", "id": id, "result": {}}).to_string(),
                            json!({"jsonrpc": "2.0", "id": 987_654, "result": {}}).to_string(),
                            "[1, 2, 3]".to_string(),
                        ] {
                            let _ = writeln!(stdout, "{junk}");
                        }
                        let answer = text("after the garbage");
                        let _ = writeln!(stdout, "{answer}");
                        answer
                    }
                    "hang" => continue,
                    "crash" => std::process::exit(3),
                    "flood" => {
                        let megabytes: usize = std::env::var("FAKE_UPSTREAM_FLOOD_MB")
                            .ok()
                            .and_then(|mb| mb.parse().ok())
                            .unwrap_or(8);
                        let line = format!("{}\n", "x".repeat(1023));
                        let mut stderr = std::io::stderr();
                        for _ in 0..megabytes * 1024 {
                            let _ = stderr.write_all(line.as_bytes());
                        }
                        // Stop reading stdin: requests pile up in the pipe.
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                        continue;
                    }
                    "slow" => {
                        let ms =
                            message.pointer("/params/arguments/ms").and_then(Value::as_u64).unwrap_or(1000);
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                        text(&format!("slept {ms} ms"))
                    }
                    "pid" => text(&std::process::id().to_string()),
                    "remember" => {
                        message
                            .pointer("/params/arguments/text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .clone_into(&mut remembered);
                        text("remembered")
                    }
                    "recall" => text(&remembered),
                    "ask" => {
                        asking = Some(id.clone());
                        json!({"jsonrpc": "2.0", "id": "ask", "method": "elicitation/create", "params": {
                            "mode": "form",
                            "message": "What is your name?",
                            "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
                        }})
                        .to_string()
                    }
                    "ansi" => {
                        eprintln!(
                            "\u{1b}[31mred\u{1b}[0m\nINFO forged: admin logged in\rINFO forged: admin logged in"
                        );
                        text("ansi done")
                    }
                    _ => {
                        text(message.pointer("/params/arguments/text").and_then(Value::as_str).unwrap_or(""))
                    }
                }
            }
            _ => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}})
                    .to_string()
            }
        };
        if writeln!(stdout, "{answer}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
}
