//! Command-line flags, one clap struct per command, mirroring the flags one
//! to one. Conversion into validated settings happens in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure (the message says what)
  2  invalid flags, config file or socket path
  3  another mcpsock is already running on this socket (serve, socket);
     no daemon is running (status, stop)
  4  the socket directory or path is unsafe or unusable
  5  no daemon reachable (not running, or not allowed)
  6  the tool reported an error
  7  the state database cannot be used (damaged, from a newer mcpsock, or a
     missing, wrong or unsafe encryption secret); it is left untouched
  health: 0 ok, 1 degraded (an upstream is not running), 2 down

Environment:
  MCPSOCK_CONFIG    config file (default $XDG_CONFIG_HOME/mcpsock/config.json)
  MCPSOCK_SOCKET    socket path (default $XDG_RUNTIME_DIR/mcpsock/mcpsock.sock)
  MCPSOCK_ENDPOINT  where client commands find the daemon (unix:///path)
  MCPSOCK_LISTEN    loopback TCP address to serve on as well
  MCPSOCK_API_KEY   the key TCP clients must send (default: generated into
                    $XDG_DATA_HOME/mcpsock/api-key)
  MCPSOCK_DB        state database (default $XDG_DATA_HOME/mcpsock/state.db)
  MCPSOCK_ENCRYPTION_SECRET
                    the secret that encrypts the state database (at least
                    32 bytes); --encryption-secret-file reads it from a file
  MCPSOCK_LOG       log filter, e.g. debug or mcpsock_gateway=trace

Logs: `serve` in the foreground logs to standard error; with --background
(or --log-file) to $XDG_STATE_HOME/mcpsock/<socket name>.log, which
`mcpsock logs` shows.";

/// One MCP daemon per user, shared by every MCP client on the machine over a
/// private Unix socket.
#[derive(Debug, Parser)]
#[command(name = "mcpsock", version, about, after_help = EXIT_CODES)]
pub(crate) struct Flags {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the daemon: start the configured MCP servers once and serve
    /// them, aggregated, on the Unix socket (in the foreground, or detached
    /// with --background).
    Serve(ServeFlags),
    /// Serve one stdio MCP server on its own socket:
    /// `mcpsock socket -- npx -y @modelcontextprotocol/server-everything`.
    Socket(SocketFlags),
    /// Stop the daemon: SIGTERM, then SIGKILL after --timeout. Exit 3 when
    /// it is not running.
    Stop(StopFlags),
    /// For monitoring: print ok, degraded or down; exit 0, 1 or 2.
    Health(HealthFlags),
    /// Reload the config file (as SIGHUP does): changed upstreams restart,
    /// the others keep running; an invalid config changes nothing.
    Reload(ReloadFlags),
    /// Start an upstream that `disable` stopped.
    Enable(ServerFlags),
    /// Stop an upstream until `enable` (or a daemon restart).
    Disable(ServerFlags),
    /// Restart one upstream (a new process; requests in flight finish first).
    Restart(ServerFlags),
    /// Show the daemon's log (with --background or --log-file); -f follows it.
    Logs(LogsFlags),
    /// List the tools the daemon offers.
    Tools(ToolsFlags),
    /// Call a tool and print its result.
    Call(CallFlags),
    /// Relay MCP between stdin/stdout and the daemon, for clients that can
    /// only start a command: {"command": "mcpsock", "args": ["bridge"]}.
    Bridge(BridgeFlags),
    /// Show whether the daemon runs, its pid, version, uptime, addresses and
    /// upstreams. Exit 3 when it is not running.
    Status(StatusFlags),
    /// Load-test an MCP endpoint (this daemon, another server, or a stdio
    /// command with --stdio): calls one tool over N keep-alive connections
    /// and reports requests/s, latency percentiles and server CPU/memory.
    Bench(BenchFlags),
}

#[derive(Debug, Args)]
pub(crate) struct ServeFlags {
    /// Config file in the mcpServers format [env: MCPSOCK_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Socket path [env: MCPSOCK_SOCKET] [default: $XDG_RUNTIME_DIR/mcpsock/mcpsock.sock]
    #[arg(long, short = 's', value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address, e.g. 127.0.0.1:8765; TCP
    /// clients must send the API key [env: MCPSOCK_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Allow --listen on an address other machines can reach
    #[arg(long)]
    pub(crate) dangerously_bind_non_loopback: bool,
    /// Serve on TCP only, without the Unix socket (needs --listen)
    #[arg(long)]
    pub(crate) no_socket: bool,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
    /// Reload the config file whenever it changes (checked every second)
    #[arg(long)]
    pub(crate) watch_config: bool,
}

/// How the daemon runs, shared by `serve` and `socket`.
#[derive(Debug, Args)]
pub(crate) struct DaemonFlags {
    /// Detach: return once the daemon is ready (exit 0), or fail with its
    /// error; it then logs to --log-file
    #[arg(long, short = 'b')]
    pub(crate) background: bool,
    /// Write the log to this file instead of standard error [default with
    /// --background: $XDG_STATE_HOME/mcpsock/<socket name>.log]
    #[arg(long, value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,
    /// Internal: this process is the detached daemon and its stdout is the
    /// readiness pipe of the process that started it.
    #[arg(long, hide = true)]
    pub(crate) daemonized: bool,
    #[command(flatten)]
    pub(crate) storage: StorageFlags,
}

#[derive(Debug, Args)]
pub(crate) struct SocketFlags {
    /// Socket path [env: MCPSOCK_SOCKET] [default: $XDG_RUNTIME_DIR/mcpsock/sockets/<app>.sock]
    #[arg(long, short = 's', value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// The server's name: its socket, log and database file names
    /// [default: from the command, e.g. server-everything]
    #[arg(long, value_name = "APP")]
    pub(crate) name: Option<String>,
    /// Also serve on this loopback TCP address; TCP clients must send the
    /// API key [env: MCPSOCK_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
    /// The stdio MCP server: its command and arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StopFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// How long the daemon gets to stop cleanly before it is killed
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct HealthFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Print the health report as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReloadFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Return once the daemon accepted the new config, without waiting for
    /// it to be applied
    #[arg(long)]
    pub(crate) no_wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServerFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// The upstream, as the config names it
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct LogsFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Keep printing new lines as they are written
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// How many of the last lines to print first
    #[arg(long, short = 'n', default_value_t = 50)]
    pub(crate) lines: usize,
    /// The log file, when the daemon is not running [default: the daemon's,
    /// else $XDG_STATE_HOME/mcpsock/<socket name>.log]
    #[arg(long, value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,
}

/// Where sessions and stream events are kept.
#[derive(Debug, Args)]
pub(crate) struct StorageFlags {
    /// State database (SQLite): sessions and stream events survive restarts
    /// [env: MCPSOCK_DB] [default: $XDG_DATA_HOME/mcpsock/state.db; for
    /// `socket`, $XDG_DATA_HOME/mcpsock/sockets/<app>.db]
    #[arg(long, value_name = "PATH", conflicts_with = "memory")]
    pub(crate) db: Option<PathBuf>,
    /// Keep sessions in memory only: a restart forgets them
    #[arg(long)]
    pub(crate) memory: bool,
    /// Encrypt the state database with the secret in this file (at least
    /// 32 bytes, mode 0600, e.g. from `openssl rand -hex 32`)
    /// [env: MCPSOCK_ENCRYPTION_SECRET holds the secret itself]
    #[arg(long, value_name = "PATH")]
    pub(crate) encryption_secret_file: Option<PathBuf>,
    /// normal: commits survive a crash of mcpsock; full: they survive a power
    /// loss too, at the cost of slower writes [default: normal]
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub(crate) durability: Option<DurabilityFlag>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum DurabilityFlag {
    Normal,
    Full,
}

/// Where client commands find the daemon.
#[derive(Debug, Args)]
pub(crate) struct TargetFlags {
    /// The daemon's address: unix:///path/to/mcpsock.sock [env: MCPSOCK_ENDPOINT]
    #[arg(long, value_name = "URL", conflicts_with = "socket")]
    pub(crate) endpoint: Option<String>,
    /// The daemon's socket path [env: MCPSOCK_SOCKET]
    #[arg(long, short = 's', value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Config file whose `socket` key names the socket [env: MCPSOCK_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ToolsFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Print the full tool definitions as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CallFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// The tool, as `mcpsock tools` lists it (e.g. time__get_current_time)
    pub(crate) tool: String,
    /// An argument as KEY=VALUE; VALUE is JSON (5, true, [1]) unless the
    /// tool's schema says the argument is a string. Repeatable.
    #[arg(long = "arg", short = 'a', value_name = "KEY=VALUE")]
    pub(crate) args: Vec<String>,
    /// All arguments as one JSON object; --arg values override its keys
    #[arg(long, value_name = "JSON")]
    pub(crate) json: Option<String>,
    /// Print the whole result as JSON instead of its text content
    #[arg(long)]
    pub(crate) raw: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BridgeFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
}

#[derive(Debug, Args)]
pub(crate) struct BenchFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Start COMMAND (after --) and call it over stdio instead of an endpoint
    #[arg(long, requires = "command")]
    pub(crate) stdio: bool,
    /// The tool to call, e.g. demo__echo
    #[arg(long, short = 't', required_unless_present = "open_sessions")]
    pub(crate) tool: Option<String>,
    /// Instead of calling a tool: open N legacy sessions, leave them idle,
    /// and report the server's memory (with --server-pid)
    #[arg(long, value_name = "N", conflicts_with_all = ["stdio", "tool"])]
    pub(crate) open_sessions: Option<u64>,
    /// A tool argument as KEY=VALUE (VALUE is JSON when it parses). Repeatable.
    #[arg(long = "arg", short = 'a', value_name = "KEY=VALUE")]
    pub(crate) args: Vec<String>,
    /// All tool arguments as one JSON object
    #[arg(long, value_name = "JSON")]
    pub(crate) args_json: Option<String>,
    /// Keep-alive connections (stdio: requests in flight)
    #[arg(long, short = 'c', default_value_t = 1)]
    pub(crate) connections: usize,
    /// How long to measure, after the warm-up
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub(crate) duration: std::time::Duration,
    /// Measure this many requests instead of a duration
    #[arg(long, short = 'n')]
    pub(crate) requests: Option<u64>,
    /// Unmeasured calls before the measurement starts
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: std::time::Duration,
    /// Protocol era: legacy (initialize and sessions), 2026-07-28 (stateless),
    /// or none (plain HTTP POSTs checked only for a 2xx status, to measure a
    /// server that does not speak MCP)
    #[arg(long, default_value = "legacy", value_parser = ["legacy", "2026-07-28", "none"])]
    pub(crate) era: String,
    /// Server process whose CPU time and peak RSS to report. Repeatable
    /// (e.g. a daemon and its upstream).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Vec<u32>,
    /// Print the report as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// With --stdio: the server command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusFlags {
    #[command(flatten)]
    pub(crate) target: TargetFlags,
    /// Print the daemon's full status as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the API key TCP clients must send (only for the daemon's own
    /// user; never logged)
    #[arg(long)]
    pub(crate) show_key: bool,
}
