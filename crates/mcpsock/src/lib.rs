//! # mcpsock
//!
//! Serve an [`rmcp`] MCP server on a hardened Unix socket (and loopback TCP
//! when asked), with sessions that survive restarts; call it in-process; and
//! talk to any mcpsock socket or Streamable HTTP endpoint. The `mcpsock
//! serve` daemon is built on exactly this API.
//!
//! Three jobs, in the order you meet them:
//!
//! ## 1. Serve your handler on a socket
//!
//! Any rmcp [`ServerHandler`](rmcp::ServerHandler) (here a one-tool server
//! written with rmcp's macros) is served by [`Server`]. The socket gets the
//! daemon's protections: a 0700 directory, mode 0600, a peer-credential
//! check on every connection, a lock against a second instance. Sessions
//! live in memory by default; give a database and they survive restarts.
//!
//! ```no_run
//! use mcpsock::{Server, SqliteOptions, Storage};
//! use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
//! use rmcp::{ServerHandler, tool, tool_handler, tool_router};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Greet {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! #[derive(Clone)]
//! struct Hello {
//!     tool_router: ToolRouter<Self>,
//! }
//!
//! #[tool_router]
//! impl Hello {
//!     #[tool(description = "Say hello")]
//!     fn greet(&self, Parameters(Greet { name }): Parameters<Greet>) -> String {
//!         format!("Hello, {name}!")
//!     }
//! }
//!
//! #[tool_handler(router = self.tool_router)]
//! impl ServerHandler for Hello {}
//!
//! async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//!     let hello = Hello { tool_router: Hello::tool_router() };
//!     let server = Server::new("/run/user/1000/hello/mcp.sock")
//!         .storage(Storage::Sqlite(SqliteOptions::new("/home/me/.local/share/hello/state.db")))
//!         .serve(move || hello.clone())
//!         .await?;
//!     // Serves until Ctrl-C, then drains, stops, removes the socket and
//!     // its lock, and flushes the database.
//!     server.run_until(async { tokio::signal::ctrl_c().await.unwrap_or_default() }).await?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! [`ServerHandle::shutdown`] stops a server gracefully; dropping the handle
//! stops it at once. Either way the socket and its lock are gone afterwards.
//!
//! ## 2. Call a handler directly
//!
//! For tests and command-line tools, [`direct::connect`] runs the MCP
//! handshake with a handler in-process, with no socket or HTTP between
//! them, and returns the same [`client::McpSession`] the socket client
//! returns:
//!
//! ```
//! # async fn example(handler: impl rmcp::ServerHandler) -> Result<(), Box<dyn std::error::Error>> {
//! let session = mcpsock::direct::connect(handler).await?;
//! let tools = session.list_all_tools().await?;
//! # drop(tools);
//! session.cancel().await?;
//! # Ok(()) }
//! ```
//!
//! ## 3. Talk to a socket or any Streamable HTTP endpoint
//!
//! [`client::Endpoint::discover`] finds the endpoint the way the `mcpsock`
//! command does (flags, `MCPSOCK_ENDPOINT`, `MCPSOCK_SOCKET`, the config
//! file, the default socket), and [`client::connect`] opens a session:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mcpsock::client::{Endpoint, connect};
//!
//! let endpoint = Endpoint::parse("unix:///run/user/1000/hello/mcp.sock")?;
//! let session = connect(&endpoint).await?;
//! for tool in session.list_all_tools().await? {
//!     println!("{}", tool.name);
//! }
//! # Ok(()) }
//! ```
//!
//! The client side is light: with `default-features = false` this crate
//! brings neither the server, the store nor SQLite.
//!
//! ## Features
//!
//! - `server` (in the default set): [`Server`] and everything serving needs.
//! - `cli` (default): the `mcpsock` command; implies `server`.
//!
//! The example programs `notes-server` and `notes-client` in this crate's
//! `examples/` show all three jobs in one place.

pub mod direct;

/// The client side: endpoints, sessions over a Unix socket or HTTP, the
/// daemon's health and API key.
pub mod client {
    pub use mcpsock_client::{
        ClientError, ConnectOptions, Endpoint, McpSession, api_key, connect, connect_with, health,
    };
}

pub use rmcp;

#[cfg(feature = "server")]
pub use mcpsock_daemon::{
    Acquired, Durability, EncryptionSecret, HealthReporter, PeerPolicy, ServeError, Server, ServerHandle,
    SocketError, SqliteOptions, Storage, StoreError, SystemdEnv,
};

/// The README's Rust example is compiled with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
