//! mcpsock configuration: the `mcpServers` file format that Claude Desktop,
//! Claude Code and Cursor already use, mcpsock's own keys beside it,
//! validation, and the one place where paths are resolved.
//!
//! Precedence everywhere is: command-line flag > environment variable >
//! config file > built-in default. Environment lookups go through the
//! [`Env`] trait so that tests never read or write the real process
//! environment.

mod file;
mod paths;

pub use file::{
    Config, ConfigError, DEFAULT_UNIX_HTTP_PATH, Durability, Isolation, Secret, ServerConfig,
    ServerTransport, StorageKind, Supervision, UpstreamUrl,
};
pub use paths::{
    ConfigLocation, Env, ProcessEnv, SOCKET_PATH_MAX, app_db_path, app_socket_path, check_socket_path,
    config_location, data_dir, db_path, default_db_path, log_file, parse_listen, socket_path,
};
