//! Failures a client reports, classified where they happen so the CLI can
//! say what to do about each.

use std::io;

use crate::Endpoint;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no mcpsock daemon is running at {endpoint}; start one with `mcpsock serve`, or point to it with --socket or MCPSOCK_ENDPOINT"
    )]
    NotRunning { endpoint: Endpoint },
    #[error(
        "permission denied connecting to {endpoint}: the daemon belongs to another user, or its socket mode does not admit you"
    )]
    PermissionDenied { endpoint: Endpoint },
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: io::Error,
    },
    #[error("{endpoint}: {message}")]
    Protocol { endpoint: Endpoint, message: String },
    /// The daemon answered with an error status and said why.
    #[error("{message}")]
    Refused { endpoint: Endpoint, status: u16, message: String },
    #[error(
        "the daemon at {endpoint} speaks admin API version {daemon}, this mcpsock speaks {client}; use the mcpsock binary of the same release as the daemon, or restart the daemon with this one"
    )]
    VersionMismatch { endpoint: Endpoint, daemon: u32, client: u32 },
    #[error("{0}")]
    InvalidEndpoint(String),
    /// The config file that names the daemon's socket could not be read.
    #[error(transparent)]
    Config(#[from] mcpsock_config::ConfigError),
}

impl ClientError {
    pub(crate) fn from_connect(endpoint: &Endpoint, source: io::Error) -> Self {
        let endpoint = endpoint.clone();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Self::NotRunning { endpoint },
            io::ErrorKind::PermissionDenied => Self::PermissionDenied { endpoint },
            _ => Self::Connect { endpoint, source },
        }
    }
}
