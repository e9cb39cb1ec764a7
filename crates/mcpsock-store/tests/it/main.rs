//! The store test suite: `suite` holds the semantics every backend must
//! have and runs them against each one; `sqlite` holds what only a file
//! can show (persistence, locks, modes, damage, encryption at rest).

mod sqlite;
mod suite;

use std::sync::Arc;
use std::time::Duration;

use mcpsock_store::{Clock, EncryptionSecret, MemoryStore, Retention, SqliteOptions, SqliteStore, Store};

/// A store under test with whatever keeps it alive (its temp dir).
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

/// A backend the suite runs against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Memory,
    Sqlite,
    SqliteEncrypted,
}

pub(crate) fn secret() -> EncryptionSecret {
    EncryptionSecret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
}

impl Backend {
    pub(crate) fn open(self, clock: Clock, retention: Retention) -> Opened {
        match self {
            Self::Memory => Opened { store: Arc::new(MemoryStore::new(retention, clock)), _dir: None },
            Self::Sqlite | Self::SqliteEncrypted => {
                let dir = tempfile::tempdir().unwrap();
                let secret = matches!(self, Self::SqliteEncrypted).then(secret);
                let options = SqliteOptions::new(dir.path().join("state.db"))
                    .secret(secret)
                    .retention(retention)
                    .clock(clock);
                Opened { store: Arc::new(SqliteStore::open(options).unwrap()), _dir: Some(dir) }
            }
        }
    }
}

/// One hour of idle time, as the daemon's default.
pub(crate) fn retention() -> Retention {
    Retention::default().session_idle_ttl(Duration::from_secs(3600)).event_max_age(Duration::from_secs(7200))
}
