//! The gateway: starts upstream MCP servers once and serves them to every
//! downstream session as one aggregated MCP server.
//!
//! This crate knows nothing of HTTP or sockets. [`Gateway`] implements
//! rmcp's `ServerHandler`; whoever owns the listeners mounts it.

mod change;
mod handler;
mod spawn;
mod upstream;

pub use change::ChangeReport;
pub use handler::{Gateway, GatewayOptions};
pub use upstream::{UpstreamEvent, UpstreamReport, UpstreamSpec, UpstreamState};
