//! An MCP client wired straight to a handler in the same process: no
//! socket, no HTTP, no serialization. Messages pass as values through two
//! channels, and rmcp runs the real protocol on both ends (initialize,
//! requests, notifications, cancellation), so a handler behaves as it would
//! behind a socket.

use futures::channel::mpsc;
use mcpsock_client::McpSession;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::ClientInitializeError;
use rmcp::{ServerHandler, ServiceExt};

/// Messages one side may send before it waits for the other to read.
const CHANNEL_CAPACITY: usize = 64;

/// Serves `handler` in-process and returns a client session with it, the
/// same type [`crate::client::connect`] returns. The handler stops when the
/// session is closed (`cancel`) or dropped.
///
/// ```
/// # async fn example(handler: impl rmcp::ServerHandler) -> Result<(), Box<dyn std::error::Error>> {
/// let session = mcpsock::direct::connect(handler).await?;
/// let info = session.peer_info();
/// # drop(info);
/// session.cancel().await?;
/// # Ok(()) }
/// ```
pub async fn connect<S>(handler: S) -> Result<McpSession, ClientInitializeError>
where
    S: ServerHandler + Send + 'static,
{
    let (to_server, server_inbox) = mpsc::channel::<ClientJsonRpcMessage>(CHANNEL_CAPACITY);
    let (to_client, client_inbox) = mpsc::channel::<ServerJsonRpcMessage>(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        // A failed handshake reaches the caller as the client's error; a
        // served session ends once the client's ends of the channels are
        // dropped.
        if let Ok(running) = handler.serve((to_client, server_inbox)).await {
            let _ = running.waiting().await;
        }
    });
    ().serve((to_server, client_inbox)).await
}
