//! `mcpsock bridge`: a stdio MCP server that relays every message to the
//! daemon and back, for clients that can only start a command.
//!
//! Framing on stdio is one JSON-RPC message per line, as the MCP stdio
//! transport defines it; the daemon side is rmcp's Streamable HTTP client,
//! which handles sessions and both protocol eras.

use rmcp::RoleClient;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{ClientError, Endpoint};

/// How long the bridge waits for the daemon-side session to close on exit.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Relays MCP messages between this process's stdin/stdout and the daemon
/// until stdin closes (a normal end) or the daemon goes away (an error).
pub async fn bridge(endpoint: &Endpoint) -> Result<(), ClientError> {
    let mut daemon = crate::transport(endpoint).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let lost = |message: String| ClientError::Protocol { endpoint: endpoint.clone(), message };
    let outcome = loop {
        tokio::select! {
            line = stdin.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) | Err(_) => break Ok(()),
                };
                if line.trim().is_empty() {
                    continue;
                }
                let message: ClientJsonRpcMessage = match serde_json::from_str(&line) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "ignored a line on stdin that is not a JSON-RPC message");
                        continue;
                    }
                };
                if let Err(error) = Transport::<RoleClient>::send(&mut daemon, message).await {
                    break Err(lost(format!("the daemon stopped taking messages: {error}")));
                }
            }
            message = Transport::<RoleClient>::receive(&mut daemon) => {
                let Some(message) = message else {
                    break Err(lost("the daemon closed the connection".into()));
                };
                let mut line = match serde_json::to_vec(&message) {
                    Ok(line) => line,
                    Err(error) => break Err(lost(format!("cannot encode a message from the daemon: {error}"))),
                };
                line.push(b'\n');
                if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                    // Our client went away; nothing is left to relay to.
                    break Ok(());
                }
            }
        }
    };
    // Closing ends the daemon-side session. rmcp's transport cannot close
    // while it still waits for the client's `initialized` (a client that hung
    // up right after `initialize`), so the close is bounded; dropping the
    // transport then stops its worker.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, Transport::<RoleClient>::close(&mut daemon)).await;
    outcome
}
