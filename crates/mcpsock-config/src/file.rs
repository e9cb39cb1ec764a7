//! The config file: parsing, validation and the validated [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A value that must never be printed: upstream secrets, API keys. Its
/// `Debug` output is a placeholder, so no log line or error can leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (a child's
    /// environment, an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A config file that could not be used. Each message says where and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist; create it or pass another with --config", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("refusing config file {}: {message}", path.display())]
    Unsafe { path: PathBuf, message: String },
}

/// The config names programs to run: whoever can write it can run code as
/// this user. Refuse a file another user owns or can write.
fn check_file_is_private(file: &std::fs::File, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let metadata =
        file.metadata().map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let uid = rustix::process::geteuid().as_raw();
    let unsafe_file = |message: String| ConfigError::Unsafe { path: path.to_path_buf(), message };
    if metadata.uid() != uid {
        return Err(unsafe_file(format!(
            "it belongs to uid {}, not to this user (uid {uid}); whoever owns it could make mcpsock run any program",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_file(format!(
            "its mode {mode:04o} lets other users change it and so run programs as you; run `chmod go-w {}`",
            path.display()
        )));
    }
    Ok(())
}

/// Default separator between server name and tool name.
pub(crate) const DEFAULT_TOOL_SEPARATOR: &str = "__";
const DEFAULT_SOCKET_MODE: u32 = 0o600;
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_SESSION_IDLE_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_STREAM_STALL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 1000;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_QUEUED_REQUESTS: usize = 100;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a per-session connection may go without a request.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_TTL_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_EVENTS_PER_SESSION: usize = 1_000;
const DEFAULT_LIST_PAGE_SIZE: usize = 100;

/// Where sessions and stream events are kept (`storage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// An SQLite database (`db`), so sessions survive restarts.
    #[default]
    Sqlite,
    /// Process memory only: a restart forgets every session.
    Memory,
}

/// How hard the database tries to reach the disk on commit (`durability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the process (`synchronous=NORMAL`).
    #[default]
    Normal,
    /// Survives a power loss too (`synchronous=FULL`), at some speed.
    Full,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            other => Err(format!("durability {other:?} must be \"normal\" or \"full\"")),
        }
    }
}

/// How upstreams are watched and restarted (`ping_interval`,
/// `restart_backoff`, `max_restarts`, `restart_window`): set at the top
/// level for every server, and per server to override that. The gateway
/// runs this same policy, so its defaults are stated once, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Supervision {
    /// How often an upstream is sent an MCP `ping`; `None` (`"off"` or `0`)
    /// sends none (a request that fails on the connection still prompts
    /// one).
    pub ping_interval: Option<Duration>,
    /// The delay before the first restart; it doubles with every restart
    /// within `restart_window`.
    pub restart_initial_delay: Duration,
    /// The longest delay between restarts.
    pub restart_max_delay: Duration,
    /// Restarts allowed within `restart_window`; then the upstream is left
    /// failed until `mcpsock restart` or a reload.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            ping_interval: Some(Duration::from_secs(30)),
            restart_initial_delay: Duration::from_millis(500),
            restart_max_delay: Duration::from_secs(30),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        }
    }
}

impl Supervision {
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    pub fn restart_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.restart_initial_delay = initial;
        self.restart_max_delay = max.max(initial);
        self
    }

    pub fn max_restarts(mut self, max_restarts: u32, window: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.restart_window = window;
        self
    }

    /// The delay before restart number `attempt` (0 for the first) of an
    /// outage: `restart_initial_delay`, doubling, at most
    /// `restart_max_delay`.
    pub fn restart_delay(&self, attempt: usize) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.restart_initial_delay.saturating_mul(factor).min(self.restart_max_delay)
    }
}

/// The supervision keys as written, at either level.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervision {
    #[serde(default, deserialize_with = "interval")]
    ping_interval: Option<Option<Duration>>,
    #[serde(default)]
    restart_backoff: Option<RawBackoff>,
    #[serde(default)]
    max_restarts: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    restart_window: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default, deserialize_with = "duration")]
    initial: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max: Option<Duration>,
}

impl RawSupervision {
    /// `self` over `base`; `key` prefixes error messages.
    fn over(&self, base: Supervision) -> Result<Supervision, String> {
        let mut supervision = base;
        if let Some(interval) = self.ping_interval {
            supervision.ping_interval = interval;
        }
        if let Some(backoff) = &self.restart_backoff {
            if let Some(initial) = backoff.initial {
                supervision.restart_initial_delay = initial;
            }
            if let Some(max) = backoff.max {
                supervision.restart_max_delay = max;
            }
        }
        if let Some(max_restarts) = self.max_restarts {
            supervision.max_restarts = max_restarts;
        }
        if let Some(window) = self.restart_window {
            supervision.restart_window = window;
        }
        if supervision.restart_initial_delay.is_zero() {
            return Err("restart_backoff.initial must be longer than zero".into());
        }
        if supervision.restart_max_delay < supervision.restart_initial_delay {
            return Err(format!(
                "restart_backoff.max ({}) must not be shorter than restart_backoff.initial ({})",
                humantime::format_duration(supervision.restart_max_delay),
                humantime::format_duration(supervision.restart_initial_delay)
            ));
        }
        if supervision.restart_window.is_zero() {
            return Err("restart_window must be longer than zero".into());
        }
        Ok(supervision)
    }
}

/// `ping_interval`: a duration, or `"off"` / `0` for none.
fn interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Duration>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    let parsed =
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) if text == "off" => None,
            Raw::Seconds(seconds) => Some(Duration::try_from_secs_f64(seconds).map_err(|_| {
                serde::de::Error::custom(format!("{seconds} is not a valid number of seconds"))
            })?),
            Raw::Text(text) => Some(humantime::parse_duration(&text).map_err(|error| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration ({error}); write e.g. \"30s\", or \"off\" for no pings"
                ))
            })?),
        };
    Ok(Some(parsed.filter(|interval| !interval.is_zero())))
}

/// A validated configuration: every field has its final value.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from, when there was one.
    pub source: Option<PathBuf>,
    /// Upstream servers in name order.
    pub servers: Vec<ServerConfig>,
    /// The `socket` key; flags and environment take precedence over it.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file (`socket_mode`, octal text);
    /// `0660` by default when `socket_group` is set, else `0600`.
    pub socket_mode: u32,
    /// Group that owns the socket file (`socket_group`, a name or a gid);
    /// its members (by primary gid) are admitted too.
    pub socket_group: Option<u32>,
    /// Serve on the Unix socket at all (`enable_socket`); off only for
    /// TCP-only setups.
    pub enable_socket: bool,
    /// Joins server name and tool or prompt name: `time__get_current_time`.
    pub tool_separator: String,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How long an upstream may take to start and answer `initialize`.
    pub init_timeout: Duration,
    /// Extra users admitted on the Unix socket (the daemon's own always is).
    pub allow_uids: Vec<u32>,
    /// Groups whose members (by primary gid) are admitted on the socket.
    pub allow_gids: Vec<u32>,
    /// Admit root on the socket even when the daemon runs as another user.
    pub allow_root: bool,
    /// Loopback TCP address to serve on as well (`listen`).
    pub listen: Option<String>,
    /// API key for TCP clients (`api_key`); `MCPSOCK_API_KEY` overrides it.
    pub api_key: Option<Secret>,
    /// Most connections open at once, over all listeners.
    pub max_connections: usize,
    /// Most sessions one principal (a uid, or the API key) may hold.
    pub max_sessions_per_principal: usize,
    /// How long a client may take to send a request head (`header_timeout`).
    pub header_timeout: Duration,
    /// How long an upstream may take to answer one request (`request_timeout`).
    pub request_timeout: Duration,
    /// How long a session may stay unused before it expires (`session_idle_ttl`).
    pub session_idle_ttl: Duration,
    /// How long a stream's client may leave an event unread before the
    /// stream is dropped (`stream_stall_timeout`).
    pub stream_stall_timeout: Duration,
    /// Where sessions and events are kept (`storage`).
    pub storage: StorageKind,
    /// The state database (`db`); `--db` and `MCPSOCK_DB` take precedence.
    pub db: Option<PathBuf>,
    /// Commit durability of the state database (`durability`).
    pub durability: Durability,
    /// File holding the encryption secret (`encryption_secret_file`).
    pub encryption_secret_file: Option<PathBuf>,
    /// How often expired sessions and old events are removed
    /// (`ttl_cleanup_interval`).
    pub ttl_cleanup_interval: Duration,
    /// How long stream events are kept for resumption (`event_retention`).
    pub event_retention: Duration,
    /// Most events kept per session (`max_events_per_session`).
    pub max_events_per_session: usize,
    /// Pings and restarts of every server without its own.
    pub supervision: Supervision,
    /// Entries per page of `tools/list` and the other lists
    /// (`list_page_size`).
    pub list_page_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: None,
            servers: Vec::new(),
            socket: None,
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: None,
            enable_socket: true,
            tool_separator: DEFAULT_TOOL_SEPARATOR.into(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            allow_root: false,
            listen: None,
            api_key: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions_per_principal: DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            session_idle_ttl: DEFAULT_SESSION_IDLE_TTL,
            stream_stall_timeout: DEFAULT_STREAM_STALL_TIMEOUT,
            storage: StorageKind::Sqlite,
            db: None,
            durability: Durability::Normal,
            encryption_secret_file: None,
            ttl_cleanup_interval: DEFAULT_TTL_CLEANUP_INTERVAL,
            event_retention: DEFAULT_EVENT_RETENTION,
            max_events_per_session: DEFAULT_MAX_EVENTS_PER_SESSION,
            supervision: Supervision::default(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
        }
    }
}

/// One upstream MCP server: a child process on stdio, or a server that
/// runs on its own and speaks Streamable HTTP.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    pub name: String,
    /// How it is reached: `command` or `url`.
    pub transport: ServerTransport,
    /// What its tool and prompt names start with (`prefix`); `None` offers
    /// the server's own names. Defaults to the server name.
    pub prefix: Option<String>,
    /// Only these of its tools are offered (`enabled_tools`), when set.
    pub enabled_tools: Option<Vec<String>>,
    /// These of its tools are never offered (`disabled_tools`).
    pub disabled_tools: Vec<String>,
    /// Client requests it serves at once (`max_concurrent_requests`); no
    /// limit when `None`.
    pub max_concurrent_requests: Option<usize>,
    /// Client requests that may wait for a slot (`max_queued_requests`).
    pub max_queued_requests: usize,
    /// How long a request may wait for a slot (`queue_timeout`).
    pub queue_timeout: Duration,
    /// Its pings and restarts (the top-level keys, overridden by its own).
    pub supervision: Supervision,
    /// Whether sessions share it (`isolation`, `idle_timeout`).
    pub isolation: Isolation,
}

/// Whether downstream sessions share a server (`isolation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isolation {
    /// `"shared"`: one connection (one process) for every session.
    #[default]
    Shared,
    /// `"per-session"`: a connection of its own for every session that uses
    /// the server, stopped with the session or after `idle_timeout` without
    /// a request.
    PerSession { idle_timeout: Duration },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "mcpServers", default, deserialize_with = "servers")]
    mcp_servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    socket_mode: Option<String>,
    #[serde(default)]
    socket_group: Option<String>,
    #[serde(default)]
    enable_socket: Option<bool>,
    #[serde(default)]
    tool_separator: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    shutdown_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    init_timeout: Option<Duration>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_gids: Vec<u32>,
    #[serde(default)]
    allow_root: bool,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_sessions_per_principal: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    request_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    session_idle_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    stream_stall_timeout: Option<Duration>,
    #[serde(default)]
    storage: Option<String>,
    #[serde(default)]
    db: Option<PathBuf>,
    #[serde(default)]
    durability: Option<String>,
    #[serde(default)]
    encryption_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    ttl_cleanup_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    event_retention: Option<Duration>,
    #[serde(default)]
    max_events_per_session: Option<usize>,
    #[serde(default)]
    list_page_size: Option<usize>,
    #[serde(flatten)]
    supervision: RawSupervision,
}

/// How an upstream is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTransport {
    /// A program mcpsock starts, speaking MCP on its stdin and stdout.
    Stdio {
        /// The program: absolute, relative to the config file's directory
        /// when it contains a `/`, or looked up in `PATH` when it is a bare
        /// name.
        command: PathBuf,
        args: Vec<String>,
        /// Extra environment for this server only (its secrets).
        env: Vec<(String, Secret)>,
        cwd: Option<PathBuf>,
    },
    /// A running server mcpsock connects to with Streamable HTTP.
    Http {
        url: UpstreamUrl,
        /// Sent with every request (an `Authorization` header, typically):
        /// secrets, never printed.
        headers: Vec<(String, Secret)>,
    },
}

/// Where a Streamable HTTP upstream listens (`url`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamUrl {
    /// `http://…` or `https://…`, used as written.
    Tcp(String),
    /// `unix:///abs/path.sock`: HTTP over that Unix socket, at `path`
    /// (`/mcp` unless the URL ends in `?path=/other`).
    Unix { socket: PathBuf, path: String },
}

/// The HTTP path of a `unix://` upstream unless its URL names another.
pub const DEFAULT_UNIX_HTTP_PATH: &str = "/mcp";

impl UpstreamUrl {
    /// Parses and checks a `url`; the error says what is wrong and what is
    /// expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "use http://HOST[:PORT]/PATH, https://HOST[:PORT]/PATH or unix:///ABSOLUTE/PATH.sock";
        if let Some(rest) = text.strip_prefix("unix://") {
            let (socket, query) = match rest.split_once('?') {
                Some((socket, query)) => (socket, Some(query)),
                None => (rest, None),
            };
            if !socket.starts_with('/') {
                return Err(format!(
                    "url {text:?}: a unix:// URL needs an absolute socket path, with three slashes: unix:///run/app.sock"
                ));
            }
            if socket.len() > crate::SOCKET_PATH_MAX {
                return Err(format!(
                    "url {text:?}: the socket path is {} bytes long, but this platform allows at most {}",
                    socket.len(),
                    crate::SOCKET_PATH_MAX
                ));
            }
            crate::check_socket_path(Path::new(socket))
                .map_err(|message| format!("url {text:?}: {message}"))?;
            let path = match query {
                None => DEFAULT_UNIX_HTTP_PATH.to_string(),
                Some(query) => match query.strip_prefix("path=") {
                    Some(path)
                        if path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok() =>
                    {
                        path.to_string()
                    }
                    _ => {
                        return Err(format!(
                            "url {text:?}: after the socket path only ?path=/HTTP/PATH may follow (the default is {DEFAULT_UNIX_HTTP_PATH})"
                        ));
                    }
                },
            };
            return Ok(Self::Unix { socket: PathBuf::from(socket), path });
        }
        let uri: http::Uri =
            text.parse().map_err(|error| format!("url {text:?} is not a URL ({error}); {expected}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => {
                return Err(format!("url {text:?}: the scheme {other:?} is not supported; {expected}"));
            }
            None => return Err(format!("url {text:?} has no scheme; {expected}")),
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("url {text:?} names no host; {expected}"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "url {text:?}: credentials in the URL would show in status and logs; send them in \"headers\" (e.g. \"Authorization\")"
            ));
        }
        Ok(Self::Tcp(text.to_string()))
    }
}

/// Shows the URL without what may be a secret: a query string (some
/// servers take a token there) is replaced by `?<redacted>`.
impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(url) => match url.split_once('?') {
                Some((base, _)) => write!(f, "{base}?<redacted>"),
                None => f.write_str(url),
            },
            Self::Unix { socket, path } if path == DEFAULT_UNIX_HTTP_PATH => {
                write!(f, "unix://{}", socket.display())
            }
            Self::Unix { socket, path } => write!(f, "unix://{}?path={path}", socket.display()),
        }
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Header names the Streamable HTTP transport sets itself, or that belong
/// to the connection; a config may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
];

fn check_header(name: &str, value: &Secret) -> Result<(), String> {
    let header = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("headers: {name:?} is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!("headers: {name:?} is set by mcpsock itself and cannot be configured"));
    }
    // The value is a secret: the message names the header, never the value.
    if http::HeaderValue::from_str(value.expose()).is_err() {
        return Err(format!(
            "headers: the value of {name:?} is not a valid HTTP header value (no line breaks or control characters; non-ASCII text must be encoded)"
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Secret>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Secret>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    enabled_tools: Option<Vec<String>>,
    #[serde(default)]
    disabled_tools: Vec<String>,
    #[serde(default)]
    max_concurrent_requests: Option<usize>,
    #[serde(default)]
    max_queued_requests: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    queue_timeout: Option<Duration>,
    #[serde(default)]
    isolation: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    #[serde(flatten)]
    supervision: RawSupervision,
}

/// Reads `mcpServers`, checking each enabled entry's shape as it is read,
/// so that an error carries the file position of that entry: serde_json
/// adds the line and column where reading stopped, which is the entry's
/// closing brace when the entry's own visitor fails.
fn servers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, RawServer>, D::Error> {
    use serde::de::{DeserializeSeed, Error, MapAccess, Visitor};

    struct Servers;
    impl<'de> Visitor<'de> for Servers {
        type Value = BTreeMap<String, RawServer>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of server names to server entries")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut servers = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let server = map.next_value_seed(Entry { name: &name })?;
                servers.insert(name, server);
            }
            Ok(servers)
        }
    }

    struct Entry<'a> {
        name: &'a str,
    }
    impl<'de> DeserializeSeed<'de> for Entry<'_> {
        type Value = RawServer;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawServer, D::Error> {
            deserializer.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Entry<'_> {
        type Value = RawServer;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a server entry")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
            let server = RawServer::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            if !server.disabled {
                server
                    .transport(Path::new("."))
                    .map_err(|message| A::Error::custom(format!("mcpServers.{}: {message}", self.name)))?;
            }
            Ok(server)
        }
    }

    deserializer.deserialize_map(Servers)
}

impl RawServer {
    /// The validated transport of an enabled entry: `command` or `url`,
    /// and only the keys that go with it.
    fn transport(&self, config_dir: &Path) -> Result<ServerTransport, String> {
        let http = match self.kind.as_deref() {
            None => self.url.is_some(),
            Some("stdio") => false,
            Some("http" | "streamable-http" | "streamableHttp") => true,
            Some("sse") => {
                return Err(
                    "type \"sse\" (the deprecated HTTP+SSE transport) is not supported; give the server's Streamable HTTP endpoint as \"url\"".into(),
                );
            }
            Some(other) => {
                return Err(format!(
                    "type {other:?} is not supported; use \"stdio\" (with \"command\") or \"http\" (with \"url\")"
                ));
            }
        };
        let command = self.command.as_deref().filter(|command| !command.trim().is_empty());
        match (command, &self.url) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either \"command\" (a program to start) or \"url\" (a running server), not both"
                        .into(),
                );
            }
            (None, None) if http => {
                return Err(
                    "\"url\" is missing: give the address of the server (http://, https:// or unix://)"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "\"command\" is missing: name the program that starts this MCP server (or give \"url\" for one that runs on its own)".into(),
                );
            }
            (Some(_), None) if http => {
                return Err(format!(
                    "type {:?} needs \"url\", not \"command\"",
                    self.kind.as_deref().unwrap_or_default()
                ));
            }
            (None, Some(_)) if !http => {
                return Err("type \"stdio\" needs \"command\", not \"url\"".into());
            }
            _ => {}
        }
        if let Some(url) = &self.url {
            let mut stdio_keys = Vec::new();
            if !self.args.is_empty() {
                stdio_keys.push("args");
            }
            if !self.env.is_empty() {
                stdio_keys.push("env");
            }
            if self.cwd.is_some() {
                stdio_keys.push("cwd");
            }
            if !stdio_keys.is_empty() {
                return Err(format!(
                    "{} only apply to servers started with \"command\"; a \"url\" server gets \"headers\"",
                    stdio_keys.join(", ")
                ));
            }
            let url = UpstreamUrl::parse(url)?;
            for (name, value) in &self.headers {
                check_header(name, value)?;
            }
            let headers = self.headers.iter().map(|(name, value)| (name.clone(), value.clone())).collect();
            return Ok(ServerTransport::Http { url, headers });
        }
        let command = command.unwrap_or_default();
        if !self.headers.is_empty() {
            return Err("\"headers\" only apply to servers reached by \"url\"".into());
        }
        if command.contains('\0') || self.args.iter().any(|arg| arg.contains('\0')) {
            return Err("command and args must not contain NUL bytes".into());
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("env key {key:?} is not a valid variable name"));
            }
        }
        Ok(ServerTransport::Stdio {
            command: resolve_command(command, config_dir),
            args: self.args.clone(),
            env: self.env.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
            cwd: self.cwd.as_ref().map(|cwd| config_dir.join(cwd)),
        })
    }
}

/// Durations are a number of seconds (`5`, `0.5`) or a human string (`"5s"`,
/// `"500ms"`, `"2m"`).
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{seconds} is not a valid number of seconds"))),
        Raw::Text(text) => humantime::parse_duration(&text).map(Some).map_err(|error| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({error}); write e.g. \"5s\" or \"500ms\""
            ))
        }),
    }
}

impl Config {
    /// Reads and validates a config file. A missing file is an error only
    /// when `must_exist` (the user named it); otherwise the defaults apply.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return if must_exist {
                    Err(ConfigError::NotFound { path: path.to_path_buf() })
                } else {
                    Ok(Self::default())
                };
            }
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        check_file_is_private(&file, path)?;
        let text = io::read_to_string(file)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and
    /// anchors relative commands.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            line: error.line(),
            column: error.column(),
            message: parse_message(&error),
        })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };

        let tool_separator = raw.tool_separator.unwrap_or_else(|| DEFAULT_TOOL_SEPARATOR.into());
        if tool_separator.is_empty() || !tool_separator.chars().all(is_name_char) {
            return Err(invalid(format!(
                "tool_separator {tool_separator:?} must be one or more of A-Z a-z 0-9 _ - ."
            )));
        }
        if let Some(socket) = &raw.socket {
            crate::check_socket_path(socket).map_err(|message| invalid(format!("socket: {message}")))?;
        }

        let socket_group = match raw.socket_group.as_deref() {
            None => None,
            Some(group) => Some(resolve_group(group, Path::new("/etc/group")).map_err(&invalid)?),
        };
        let socket_mode = match raw.socket_mode.as_deref() {
            None if socket_group.is_some() => 0o660,
            None => DEFAULT_SOCKET_MODE,
            Some(text) => parse_socket_mode(text).ok_or_else(|| {
                invalid(format!(
                    "socket_mode {text:?} must be octal permission bits that include owner read and write and no execute bits, like \"0600\" or \"0660\""
                ))
            })?,
        };

        let positive = |value: Option<usize>, key: &str| match value {
            Some(0) => Err(invalid(format!("{key} must be at least 1"))),
            other => Ok(other),
        };
        if raw.api_key.as_ref().is_some_and(|key| key.expose().len() < 16) {
            return Err(invalid(
                "api_key must be at least 16 characters; leave it out to have one generated".into(),
            ));
        }

        let supervision = raw.supervision.over(Supervision::default()).map_err(&invalid)?;
        let config_dir = path.parent().unwrap_or(Path::new("."));
        let mut servers = Vec::with_capacity(raw.mcp_servers.len());
        for (name, server) in raw.mcp_servers {
            let at = |message: String| invalid(format!("mcpServers.{name}: {message}"));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(at(
                    "server names may use only A-Z a-z 0-9 _ - (they become tool name prefixes)".into()
                ));
            }
            if name.contains(&tool_separator) {
                return Err(at(format!(
                    "the server name contains the tool separator {tool_separator:?}; rename the server or set tool_separator"
                )));
            }
            if server.disabled {
                continue;
            }
            let transport = server.transport(config_dir).map_err(at)?;
            let prefix = match server.prefix {
                None => Some(name.clone()),
                Some(prefix) if prefix.is_empty() => None,
                Some(prefix) if prefix.chars().all(is_name_char) => Some(prefix),
                Some(prefix) => {
                    return Err(at(format!(
                        "prefix {prefix:?} may use only A-Z a-z 0-9 _ - . (or be \"\" for the server's own names)"
                    )));
                }
            };
            if server.max_concurrent_requests == Some(0) {
                return Err(at("max_concurrent_requests must be at least 1".into()));
            }
            let isolation = match (server.isolation.as_deref(), server.idle_timeout) {
                (None | Some("shared"), None) => Isolation::Shared,
                (None | Some("shared"), Some(_)) => {
                    return Err(at(
                        "idle_timeout applies only to \"isolation\": \"per-session\"; set that or remove idle_timeout"
                            .into(),
                    ));
                }
                (Some("per-session"), Some(idle_timeout)) if idle_timeout.is_zero() => {
                    return Err(at("idle_timeout must be longer than zero".into()));
                }
                (Some("per-session"), idle_timeout) => {
                    Isolation::PerSession { idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT) }
                }
                (Some(other), _) => {
                    return Err(at(format!("isolation {other:?} must be \"shared\" or \"per-session\"")));
                }
            };
            servers.push(ServerConfig {
                isolation,
                max_concurrent_requests: server.max_concurrent_requests,
                max_queued_requests: server.max_queued_requests.unwrap_or(DEFAULT_MAX_QUEUED_REQUESTS),
                queue_timeout: server.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT),
                supervision: server.supervision.over(supervision).map_err(at)?,
                transport,
                name,
                prefix,
                enabled_tools: server.enabled_tools,
                disabled_tools: server.disabled_tools,
            });
        }

        let defaults = Self::default();
        Ok(Self {
            source: Some(path.to_path_buf()),
            servers,
            socket: raw.socket,
            socket_mode,
            socket_group,
            enable_socket: raw.enable_socket.unwrap_or(true),
            tool_separator,
            shutdown_grace: raw.shutdown_grace.unwrap_or(defaults.shutdown_grace),
            init_timeout: raw.init_timeout.unwrap_or(defaults.init_timeout),
            allow_uids: raw.allow_uids,
            allow_gids: raw.allow_gids,
            allow_root: raw.allow_root,
            listen: raw.listen,
            api_key: raw.api_key,
            max_connections: positive(raw.max_connections, "max_connections")?
                .unwrap_or(defaults.max_connections),
            max_sessions_per_principal: positive(
                raw.max_sessions_per_principal,
                "max_sessions_per_principal",
            )?
            .unwrap_or(defaults.max_sessions_per_principal),
            header_timeout: raw.header_timeout.unwrap_or(defaults.header_timeout),
            request_timeout: raw.request_timeout.unwrap_or(defaults.request_timeout),
            session_idle_ttl: raw.session_idle_ttl.unwrap_or(defaults.session_idle_ttl),
            stream_stall_timeout: raw.stream_stall_timeout.unwrap_or(defaults.stream_stall_timeout),
            storage: match raw.storage.as_deref() {
                None | Some("sqlite") => StorageKind::Sqlite,
                Some("memory") => StorageKind::Memory,
                Some(other) => {
                    return Err(invalid(format!("storage {other:?} must be \"sqlite\" or \"memory\"")));
                }
            },
            db: raw.db.map(|db| relative_to(path, db)),
            durability: match raw.durability {
                Some(text) => text.parse().map_err(invalid)?,
                None => defaults.durability,
            },
            encryption_secret_file: raw.encryption_secret_file.map(|file| relative_to(path, file)),
            ttl_cleanup_interval: match raw.ttl_cleanup_interval {
                Some(interval) if interval.is_zero() => {
                    return Err(invalid("ttl_cleanup_interval must be longer than zero".into()));
                }
                Some(interval) => interval,
                None => defaults.ttl_cleanup_interval,
            },
            event_retention: raw.event_retention.unwrap_or(defaults.event_retention),
            max_events_per_session: positive(raw.max_events_per_session, "max_events_per_session")?
                .unwrap_or(defaults.max_events_per_session),
            list_page_size: positive(raw.list_page_size, "list_page_size")?
                .unwrap_or(defaults.list_page_size),
            supervision,
        })
    }
}

/// A path from the config file: relative paths are taken from the config
/// file's directory, so the file means the same wherever mcpsock starts.
fn relative_to(config_file: &Path, path: PathBuf) -> PathBuf {
    match config_file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// A group name or number as a gid, names looked up in `group_file`.
fn resolve_group(group: &str, group_file: &Path) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(group_file)
        .map_err(|error| format!("socket_group {group:?}: cannot read {}: {error}", group_file.display()))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            format!(
                "socket_group {group:?} is not a group on this system; give an existing group name or gid"
            )
        })
}

fn parse_socket_mode(text: &str) -> Option<u32> {
    let mode = u32::from_str_radix(text.strip_prefix("0o").unwrap_or(text), 8).ok()?;
    (mode & 0o600 == 0o600 && mode & !0o666 == 0).then_some(mode)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A bare program name is left for `PATH`; a relative path with a `/` is
/// taken relative to the config file, so a config can ship beside the
/// programs it starts.
fn resolve_command(command: &str, config_dir: &Path) -> PathBuf {
    let command_path = Path::new(command);
    if command_path.is_absolute() || !command.contains('/') {
        command_path.to_path_buf()
    } else {
        config_dir.join(command_path)
    }
}

/// serde_json appends " at line L column C" to its messages; the error
/// already carries both, so drop the repetition.
fn parse_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/mcpsock/config.json")).map_err(|error| error.to_string())
    }

    #[track_caller]
    fn check_error(text: &str, expected: &str) {
        let error = parse(text).expect_err("config should be refused");
        assert!(error.contains(expected), "error {error:?} should contain {expected:?}");
    }

    #[test]
    fn claude_desktop_format() {
        let config = parse(
            r#"{"mcpServers": {
                "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TOKEN": "s3cret"}},
                "demo": {"type": "stdio", "command": "./bin/demo", "cwd": "work"},
                "off": {"command": "nope", "disabled": true}
            }}"#,
        )
        .unwrap();
        let names: Vec<_> = config.servers.iter().map(|server| server.name.as_str()).collect();
        assert_eq!(names, ["demo", "time"]);
        let ServerTransport::Stdio { command, cwd, .. } = &config.servers[0].transport else { panic!() };
        assert_eq!(command, &PathBuf::from("/etc/mcpsock/./bin/demo"));
        assert_eq!(cwd, &Some(PathBuf::from("/etc/mcpsock/work")));
        let ServerTransport::Stdio { command, env, .. } = &config.servers[1].transport else { panic!() };
        assert_eq!(command, &PathBuf::from("uvx"));
        assert_eq!(env[0].1.expose(), "s3cret");
        assert_eq!(config.tool_separator, "__");
        assert_eq!(config.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn list_page_size() {
        assert_eq!(parse("{}").unwrap().list_page_size, 100);
        assert_eq!(parse(r#"{"list_page_size": 5}"#).unwrap().list_page_size, 5);
        check_error(r#"{"list_page_size": 0}"#, "list_page_size must be at least 1");
    }

    #[test]
    fn isolation_keys() {
        let config = parse(
            r#"{"mcpServers": {
                "a": {"command": "x"},
                "b": {"command": "x", "isolation": "per-session"},
                "c": {"url": "http://h/mcp", "isolation": "per-session", "idle_timeout": "30s"},
                "d": {"command": "x", "isolation": "shared"}
            }}"#,
        )
        .unwrap();
        let isolation: Vec<Isolation> = config.servers.iter().map(|server| server.isolation).collect();
        assert_eq!(
            isolation,
            [
                Isolation::Shared,
                Isolation::PerSession { idle_timeout: Duration::from_secs(300) },
                Isolation::PerSession { idle_timeout: Duration::from_secs(30) },
                Isolation::Shared
            ]
        );
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "isolation": "private"}}}"#,
            "mcpServers.a: isolation \"private\" must be \"shared\" or \"per-session\"",
        );
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "idle_timeout": "1m"}}}"#,
            "idle_timeout applies only to \"isolation\": \"per-session\"",
        );
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "isolation": "per-session", "idle_timeout": 0}}}"#,
            "idle_timeout must be longer than zero",
        );
    }

    #[test]
    fn tool_control() {
        let config = parse(
            r#"{"mcpServers": {
                "a": {"command": "x"},
                "b": {"command": "x", "prefix": "", "enabled_tools": ["t"], "disabled_tools": ["u"]},
                "c": {"command": "x", "prefix": "see"}
            }}"#,
        )
        .unwrap();
        assert_eq!(config.servers[0].prefix.as_deref(), Some("a"));
        assert_eq!(config.servers[1].prefix, None);
        assert_eq!(config.servers[1].enabled_tools, Some(vec!["t".to_string()]));
        assert_eq!(config.servers[1].disabled_tools, ["u"]);
        assert_eq!(config.servers[2].prefix.as_deref(), Some("see"));
        assert_eq!(config.servers[0].max_concurrent_requests, None);
        let config = parse(
            r#"{"mcpServers": {"a": {"command": "x", "max_concurrent_requests": 2, "max_queued_requests": 0, "queue_timeout": "250ms"}}}"#,
        )
        .unwrap();
        assert_eq!(config.servers[0].max_concurrent_requests, Some(2));
        assert_eq!(config.servers[0].max_queued_requests, 0);
        assert_eq!(config.servers[0].queue_timeout, Duration::from_millis(250));
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "max_concurrent_requests": 0}}}"#,
            "max_concurrent_requests must be at least 1",
        );
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "prefix": "a b"}}}"#,
            "prefix \"a b\" may use only",
        );
    }

    #[test]
    fn own_keys() {
        let config = parse(
            r#"{"mcpServers": {}, "socket": "/run/x.sock", "socket_mode": "0660", "tool_separator": ".", "shutdown_grace": "250ms", "init_timeout": 2}"#,
        )
        .unwrap();
        assert_eq!(config.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.tool_separator, ".");
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
        assert_eq!(config.init_timeout, Duration::from_secs(2));
    }

    #[test]
    fn storage_keys() {
        let defaults = parse("{}").unwrap();
        assert_eq!(defaults.storage, StorageKind::Sqlite);
        assert_eq!(defaults.durability, Durability::Normal);
        assert_eq!(defaults.ttl_cleanup_interval, Duration::from_secs(60));
        assert_eq!(defaults.session_idle_ttl, Duration::from_secs(3600));
        let config = parse(
            r#"{"storage": "memory", "db": "state/mcpsock.db", "durability": "full", "encryption_secret_file": "/k",
                "ttl_cleanup_interval": "5s", "event_retention": "10m", "max_events_per_session": 50}"#,
        )
        .unwrap();
        assert_eq!(config.storage, StorageKind::Memory);
        assert_eq!(config.db, Some(PathBuf::from("/etc/mcpsock/state/mcpsock.db")));
        assert_eq!(config.durability, Durability::Full);
        assert_eq!(config.encryption_secret_file, Some(PathBuf::from("/k")));
        assert_eq!(config.ttl_cleanup_interval, Duration::from_secs(5));
        assert_eq!(config.event_retention, Duration::from_secs(600));
        assert_eq!(config.max_events_per_session, 50);
        check_error(r#"{"storage": "redis"}"#, "storage \"redis\" must be");
        check_error(r#"{"durability": "extra"}"#, "durability \"extra\" must be");
        check_error(r#"{"ttl_cleanup_interval": 0}"#, "ttl_cleanup_interval must be longer than zero");
        check_error(r#"{"max_events_per_session": 0}"#, "max_events_per_session must be at least 1");
    }

    #[test]
    fn bad_input_is_named() {
        check_error("{", "config.json:1:1: EOF while parsing");
        check_error(r#"{"mcpServers": {}, "sockett": "/x"}"#, "unknown field `sockett`");
        check_error(r#"{"mcpServers": {"a": {"command": "x", "argz": []}}}"#, "unknown field `argz`");
        check_error(
            r#"{"mcpServers": {"a": {"args": []}}}"#,
            "config.json:1:33: mcpServers.a: \"command\" is missing",
        );
        check_error(r#"{"mcpServers": {"a": {"command": "  "}}}"#, "\"command\" is missing");
        check_error(r#"{"mcpServers": {"a b": {"command": "x"}}}"#, "server names may use only");
        check_error(r#"{"mcpServers": {"a__b": {"command": "x"}}}"#, "contains the tool separator");
        check_error(
            r#"{"mcpServers": {"a": {"type": "http", "command": "x"}}}"#,
            "type \"http\" needs \"url\"",
        );
        check_error(
            r#"{"mcpServers": {"a": {"type": "pipe", "command": "x"}}}"#,
            "type \"pipe\" is not supported",
        );
        check_error(r#"{"tool_separator": "/"}"#, "tool_separator \"/\"");
        check_error(r#"{"shutdown_grace": "soon"}"#, "\"soon\" is not a duration");
        check_error(
            r#"{"socket": "@abstract"}"#,
            "socket: @abstract: abstract socket addresses are not supported",
        );
        check_error(r#"{"mcpServers": {"a": {"command": "x", "env": {"A=B": "1"}}}}"#, "env key \"A=B\"");
    }

    #[test]
    fn http_servers() {
        let config = parse(
            r#"{"mcpServers": {
                "remote": {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer hunter2"}},
                "plain": {"url": "http://127.0.0.1:3001/mcp"},
                "cursor": {"type": "streamable-http", "url": "http://[::1]:8000/"},
                "inner": {"url": "unix:///run/user/1000/mcpsock/mcpsock.sock"},
                "other": {"url": "unix:///run/app.sock?path=/api/mcp"}
            }}"#,
        )
        .unwrap();
        let transport = |name: &str| {
            config
                .servers
                .iter()
                .find(|server| server.name == name)
                .map(|server| server.transport.clone())
                .unwrap()
        };
        let ServerTransport::Http { url, headers } = transport("remote") else { panic!() };
        assert_eq!(url, UpstreamUrl::Tcp("https://mcp.example.com/mcp".into()));
        assert_eq!((headers[0].0.as_str(), headers[0].1.expose()), ("Authorization", "Bearer hunter2"));
        let ServerTransport::Http { url, headers } = transport("plain") else { panic!() };
        assert_eq!(url, UpstreamUrl::Tcp("http://127.0.0.1:3001/mcp".into()));
        assert!(headers.is_empty());
        assert!(matches!(transport("cursor"), ServerTransport::Http { .. }));
        let ServerTransport::Http { url, .. } = transport("inner") else { panic!() };
        assert_eq!(
            url,
            UpstreamUrl::Unix { socket: "/run/user/1000/mcpsock/mcpsock.sock".into(), path: "/mcp".into() }
        );
        assert_eq!(url.to_string(), "unix:///run/user/1000/mcpsock/mcpsock.sock");
        let ServerTransport::Http { url, .. } = transport("other") else { panic!() };
        assert_eq!(url, UpstreamUrl::Unix { socket: "/run/app.sock".into(), path: "/api/mcp".into() });
        assert_eq!(url.to_string(), "unix:///run/app.sock?path=/api/mcp");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        // A token in the query string is not shown.
        assert_eq!(
            UpstreamUrl::parse("https://h/mcp?token=abc").unwrap().to_string(),
            "https://h/mcp?<redacted>"
        );
    }

    #[test]
    fn bad_http_servers_are_named_with_their_position() {
        let server = |entry: &str| format!("{{\"mcpServers\": {{\n  \"r\": {entry}\n}}}}");
        let cases = [
            (
                r#"{"command": "x", "url": "http://h/mcp"}"#,
                "2:46: mcpServers.r: give either \"command\" (a program to start) or \"url\"",
            ),
            (r#"{"type": "http"}"#, "2:23: mcpServers.r: \"url\" is missing"),
            (r#"{}"#, "mcpServers.r: \"command\" is missing"),
            (
                r#"{"url": "ftp://h/mcp"}"#,
                "url \"ftp://h/mcp\": the scheme \"ftp\" is not supported; use http://",
            ),
            (r#"{"url": "localhost:3000/mcp"}"#, "is not a URL (invalid format); use http://"),
            (r#"{"url": "/run/x.sock"}"#, "has no scheme"),
            (
                r#"{"url": "unix://run/x.sock"}"#,
                "a unix:// URL needs an absolute socket path, with three slashes",
            ),
            (r#"{"url": "unix:///run/x.sock?p=1"}"#, "only ?path=/HTTP/PATH may follow"),
            (r#"{"url": "https://user:pw@h/mcp"}"#, "credentials in the URL would show"),
            (
                r#"{"type": "sse", "url": "http://h/sse"}"#,
                "type \"sse\" (the deprecated HTTP+SSE transport) is not supported",
            ),
            (r#"{"type": "stdio", "url": "http://h/mcp"}"#, "type \"stdio\" needs \"command\""),
            (
                r#"{"url": "http://h/mcp", "args": ["a"]}"#,
                "args only apply to servers started with \"command\"",
            ),
            (
                r#"{"command": "x", "headers": {"A": "b"}}"#,
                "\"headers\" only apply to servers reached by \"url\"",
            ),
            (
                r#"{"url": "http://h/mcp", "headers": {"X-Key": "line\nbreak hunter2"}}"#,
                "the value of \"X-Key\" is not a valid HTTP header value",
            ),
            (
                r#"{"url": "http://h/mcp", "headers": {"Bad Name": "v"}}"#,
                "\"Bad Name\" is not a valid HTTP header name",
            ),
            (r#"{"url": "http://h/mcp", "headers": {"Mcp-Session-Id": "v"}}"#, "is set by mcpsock itself"),
        ];
        for (entry, expected) in cases {
            let error = parse(&server(entry)).expect_err(entry);
            assert!(error.contains(expected), "{entry}: error {error:?} should contain {expected:?}");
            assert!(error.starts_with("/etc/mcpsock/config.json:2:"), "{entry}: {error:?} names no position");
            assert!(!error.contains("hunter2"), "a header value leaked: {error}");
        }
        let long = format!(r#"{{"url": "unix:///{}.sock"}}"#, "x".repeat(120));
        assert!(parse(&server(&long)).unwrap_err().contains("but this platform allows at most"));
        // A disabled entry is not checked: it may be a draft.
        assert!(parse(&server(r#"{"url": "ftp://h", "disabled": true}"#)).unwrap().servers.is_empty());
    }

    #[test]
    fn supervision_keys() {
        let defaults = parse(r#"{"mcpServers": {"a": {"command": "x"}}}"#).unwrap();
        assert_eq!(defaults.supervision, Supervision::default());
        assert_eq!(defaults.servers[0].supervision.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(defaults.servers[0].supervision.max_restarts, 5);
        let config = parse(
            r#"{"ping_interval": "10s", "restart_backoff": {"initial": "1s", "max": "1m"}, "max_restarts": 3, "restart_window": "5m",
                "mcpServers": {
                    "a": {"command": "x"},
                    "b": {"url": "http://h/mcp", "ping_interval": "off", "max_restarts": 0, "restart_backoff": {"max": "2s"}},
                    "c": {"command": "x", "ping_interval": 0}
                }}"#,
        )
        .unwrap();
        let a = config.servers[0].supervision;
        assert_eq!(a.ping_interval, Some(Duration::from_secs(10)));
        assert_eq!(
            (a.restart_initial_delay, a.restart_max_delay),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!((a.max_restarts, a.restart_window), (3, Duration::from_secs(300)));
        let b = config.servers[1].supervision;
        assert_eq!(b.ping_interval, None);
        assert_eq!(
            (b.restart_initial_delay, b.restart_max_delay),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!((b.max_restarts, b.restart_window), (0, Duration::from_secs(300)));
        assert_eq!(config.servers[2].supervision.ping_interval, None);
        check_error(r#"{"ping_interval": "sometimes"}"#, "\"sometimes\" is not a duration");
        check_error(
            r#"{"restart_backoff": {"initial": "10s", "max": "1s"}}"#,
            "restart_backoff.max (1s) must not be shorter than restart_backoff.initial (10s)",
        );
        check_error(
            r#"{"mcpServers": {"a": {"command": "x", "restart_backoff": {"initial": 0}}}}"#,
            "mcpServers.a: restart_backoff.initial must be longer than zero",
        );
        check_error(r#"{"restart_backoff": {"first": "1s"}}"#, "unknown field `first`");
        check_error(r#"{"max_restarts": -1}"#, "config.json:1:20: invalid value: integer `-1`, expected u32");
    }

    #[test]
    fn secrets_never_print() {
        let config =
            parse(r#"{"mcpServers": {"a": {"command": "x", "env": {"TOKEN": "hunter2"}}}}"#).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn files_others_can_write_or_own_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path, true).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = Config::load(&path, true).unwrap_err().to_string();
        assert!(error.contains("its mode 0666 lets other users change it"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let error = Config::load(&path, true).unwrap_err().to_string();
            assert!(error.contains("it belongs to uid 65534"), "{error}");
        }
    }

    #[test]
    fn socket_groups() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("group");
        std::fs::write(&groups, "root:x:0:\nmcp-users:x:1234:alice,bob\n").unwrap();
        assert_eq!(resolve_group("mcp-users", &groups), Ok(1234));
        assert_eq!(resolve_group("77", &groups), Ok(77));
        assert!(resolve_group("nobody-here", &groups).unwrap_err().contains("is not a group on this system"));
        let config = parse(r#"{"socket_group": "0"}"#).unwrap();
        assert_eq!((config.socket_group, config.socket_mode), (Some(0), 0o660));
        let config = parse(r#"{"socket_group": "0", "socket_mode": "0600"}"#).unwrap();
        assert_eq!(config.socket_mode, 0o600);
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        assert!(Config::load(&path, false).unwrap().servers.is_empty());
        let error = Config::load(&path, true).unwrap_err().to_string();
        assert!(error.contains("does not exist; create it or pass another with --config"), "{error}");
    }
}
