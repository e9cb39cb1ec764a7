//! Why a socket could not be set up, in words a user can act on.

use std::io;
use std::path::PathBuf;

/// A refusal or failure while preparing, locking or binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0}")]
    InvalidPath(String),
    #[error("cannot create the socket directory {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the socket directory {} is a symbolic link; refusing to use it: point --socket at a real directory", dir.display())]
    DirIsSymlink { dir: PathBuf },
    #[error("cannot open the socket directory {}", dir.display())]
    OpenDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the socket directory {} belongs to uid {owner}, not to this user (uid {uid}); use a directory you own", dir.display())]
    DirNotOwned { dir: PathBuf, owner: u32, uid: u32 },
    #[error("the socket directory {} has mode {mode:04o}, so other users can write to it; run `chmod 700 {}` or choose another --socket", dir.display(), dir.display())]
    DirWritableByOthers { dir: PathBuf, mode: u32 },
    #[error("another mcpsock is already running on {}{}; stop it first or choose another --socket", socket.display(), pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    AlreadyRunning { socket: PathBuf, pid: Option<u32> },
    #[error("{} exists and is {kind}, not a socket; it was left untouched: move it away or choose another --socket", path.display())]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("cannot use the lock file {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {address}")]
    BindTcp {
        address: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    /// True when another live instance holds the socket.
    pub fn is_already_running(&self) -> bool {
        matches!(self, Self::AlreadyRunning { .. })
    }
}
