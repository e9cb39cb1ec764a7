//! The gateway: starts upstream MCP servers once and serves them to every
//! downstream session as one aggregated MCP server.
//!
//! This crate knows nothing of HTTP or sockets. [`Gateway`] implements
//! rmcp's `ServerHandler`; whoever owns the listeners mounts it.

mod change;
mod downstream;
mod handler;
mod isolation;
mod limits;
mod names;
mod pages;
mod parked;
mod remote;
mod routes;
mod spawn;
mod stdio;
mod upstream;

pub use change::ChangeReport;
pub use handler::{DEFAULT_LIST_PAGE_SIZE, Gateway, GatewayOptions};
pub use limits::RequestLimits;
pub use names::ToolFilter;
pub use remote::{HttpEndpoint, HttpSpec};
pub use upstream::{
    InstanceReport, Isolation, PING_FAILURES_BEFORE_RESTART, StdioSpec, Supervision, UpstreamEvent,
    UpstreamReport, UpstreamSpec, UpstreamState, UpstreamTransport,
};
