//! mcpsock's listeners and the security of its Unix socket.
//!
//! This is the only crate that touches socket files. It prepares the
//! private socket directory, holds the single-instance lock, removes a
//! stale socket only under that lock, binds with the final mode set before
//! `listen()`, checks every peer's credentials, and serves one axum router
//! on the accepted connections, each request tagged with the [`Peer`] it
//! came from.

mod error;
mod serve;
mod socket;
mod systemd;

pub use error::SocketError;
pub use serve::{ConnectionControl, Connections, Listener, ListenerStats, Peer, PeerPolicy, serve};
pub use socket::{BoundSocket, SocketGuard, bind_tcp, lock_holder};
pub use systemd::SystemdEnv;
