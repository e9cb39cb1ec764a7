//! Exit codes, one per kind of failure a user can act on. They are part of
//! the command-line interface and documented in the README.
//!
//! Two families of commands read them differently. `serve` and the client
//! commands use the table below (3: already running, 5: no daemon). The
//! monitoring commands follow the conventions monitoring tools expect:
//! `status` and `stop` exit 3 when no daemon runs, as an LSB init script's
//! `status` does, and `health` exits 0 ok, 1 degraded, 2 down.

use mcpsock_client::ClientError;
use mcpsock_daemon::{SocketError, StoreError};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Something unexpected failed; the message says what.
    Internal,
    /// Invalid flags, config file or socket path.
    Usage,
    /// Another instance already serves this socket.
    AlreadyRunning,
    /// The socket directory or path is unsafe or unusable.
    Socket,
    /// No daemon could be reached, or it refused us.
    NoDaemon,
    /// The tool ran and reported an error, or the daemon answered with one.
    ToolError,
    /// `status` and `stop`: no daemon runs (the LSB "program is not
    /// running" status).
    NotRunning,
    /// The state database was refused: damaged, newer schema, or a missing,
    /// wrong or unsafe encryption secret.
    State,
}

impl Code {
    /// The process exit status.
    pub(crate) fn value(self) -> u8 {
        match self {
            Self::Internal => 1,
            Self::Usage => 2,
            Self::AlreadyRunning | Self::NotRunning => 3,
            Self::Socket => 4,
            Self::NoDaemon => 5,
            Self::ToolError => 6,
            Self::State => 7,
        }
    }
}

/// An error on its way to the user, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: anyhow::Error,
    pub(crate) code: Code,
}

impl Failure {
    pub(crate) fn new(code: Code, error: impl Into<anyhow::Error>) -> Self {
        Self { error: error.into(), code }
    }

    pub(crate) fn internal(error: anyhow::Error) -> Self {
        Self::new(Code::Internal, error)
    }

    pub(crate) fn config(error: impl Into<anyhow::Error>) -> Self {
        Self::new(Code::Usage, error)
    }

    pub(crate) fn client(error: ClientError) -> Self {
        let code = match &error {
            ClientError::NotRunning { .. }
            | ClientError::PermissionDenied { .. }
            | ClientError::Connect { .. } => Code::NoDaemon,
            ClientError::Refused { status: 401 | 403, .. } => Code::NoDaemon,
            ClientError::Refused { status: 422, .. } => Code::Usage,
            ClientError::InvalidEndpoint(_) | ClientError::Config(_) => Code::Usage,
            ClientError::Protocol { .. }
            | ClientError::Refused { .. }
            | ClientError::VersionMismatch { .. } => Code::Internal,
        };
        Self::new(code, error)
    }

    /// For `status` and `stop`: a daemon that is not there is "not running"
    /// (exit 3), not a failure to reach one.
    pub(crate) fn monitoring(error: ClientError) -> Self {
        match &error {
            ClientError::NotRunning { .. } => Self::new(Code::NotRunning, error),
            _ => Self::client(error),
        }
    }

    /// The daemon's socket errors say whether another instance runs or the
    /// path was refused; everything else is unexpected.
    pub(crate) fn daemon(error: anyhow::Error) -> Self {
        let code = match (error.downcast_ref::<SocketError>(), error.downcast_ref::<StoreError>()) {
            (Some(socket_error), _) if socket_error.is_already_running() => Code::AlreadyRunning,
            (Some(SocketError::InvalidPath(_)), _) => Code::Usage,
            (Some(_), _) => Code::Socket,
            (None, Some(store_error)) if store_error.is_already_running() => Code::AlreadyRunning,
            (None, Some(store_error)) => Self::state_code(store_error),
            (None, None) => Code::Internal,
        };
        Self { error, code }
    }

    /// The state database's refusals are the user's to fix; anything else
    /// about it is unexpected.
    pub(crate) fn state(error: StoreError) -> Self {
        Self::new(Self::state_code(&error), error)
    }

    fn state_code(error: &StoreError) -> Code {
        if error.is_refused() { Code::State } else { Code::Internal }
    }
}
