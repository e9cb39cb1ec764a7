//! Exit codes, one per kind of failure a user can act on. They are part of
//! the command-line interface and documented in the README.

use mcpsock_client::ClientError;
use mcpsock_daemon::{SocketError, StoreError};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Something unexpected failed; the message says what.
    Internal = 1,
    /// Invalid flags, config file or socket path.
    Usage = 2,
    /// Another instance already serves this socket.
    AlreadyRunning = 3,
    /// The socket directory or path is unsafe or unusable.
    Socket = 4,
    /// No daemon could be reached, or it refused us.
    NoDaemon = 5,
    /// The tool ran and reported an error, or the daemon answered with one.
    ToolError = 6,
    /// The state database was refused: damaged, newer schema, or a missing,
    /// wrong or unsafe encryption secret.
    State = 7,
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
            ClientError::InvalidEndpoint(_) => Code::Usage,
            ClientError::Protocol { .. } => Code::Internal,
        };
        Self::new(code, error)
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
