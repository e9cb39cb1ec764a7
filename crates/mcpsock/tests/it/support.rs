//! Test harness: a private sandbox per test, a daemon started and stopped
//! as a user would, and polling waits instead of sleeps.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde_json::Value;

/// How long any one condition may take before a test fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn mcpsock() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mcpsock"))
}

/// The demo MCP server, built beside `mcpsock` by a workspace build.
pub(crate) fn demo_server() -> PathBuf {
    let path = mcpsock().with_file_name("mcpsock-demo-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`].
#[track_caller]
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, failing the test after [`TIMEOUT`].
#[track_caller]
pub(crate) fn wait_for_exit(what: &str, child: &mut Child) -> ExitStatus {
    let mut status = None;
    wait_until(what, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// A temporary directory for one test, short enough for socket paths.
pub(crate) struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("ms").tempdir_in("/tmp").unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The socket path tests use unless they need another.
    pub(crate) fn socket(&self) -> PathBuf {
        self.path().join("run").join("mcpsock.sock")
    }

    pub(crate) fn write_config(&self, config: &Value) -> PathBuf {
        let path = self.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        path
    }

    /// A config with the demo server as its one upstream.
    pub(crate) fn demo_config(&self) -> PathBuf {
        self.write_config(&serde_json::json!({"mcpServers": {"demo": {"command": demo_server()}}}))
    }

    /// `mcpsock ARGS` with an environment that points only into the sandbox.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(mcpsock());
        command.args(args);
        self.isolate(&mut command);
        command
    }

    pub(crate) fn isolate(&self, command: &mut Command) {
        for key in ["MCPSOCK_CONFIG", "MCPSOCK_SOCKET", "MCPSOCK_ENDPOINT", "MCPSOCK_LOG", "RUST_LOG"] {
            command.env_remove(key);
        }
        command
            .env("XDG_RUNTIME_DIR", self.path().join("xdg-runtime"))
            .env("XDG_CONFIG_HOME", self.path().join("xdg-config"))
            .env("XDG_DATA_HOME", self.path().join("xdg-data"))
            .stdin(Stdio::null());
    }

    /// `mcpsock serve --config CONFIG --socket SOCKET`.
    /// The daemon's default state database in this sandbox.
    pub(crate) fn state_db(&self) -> PathBuf {
        self.path().join("xdg-data").join("mcpsock").join("state.db")
    }

    /// How many sessions the state database holds, read as another process
    /// would (the daemon may hold it open).
    pub(crate) fn stored_sessions(&self) -> i64 {
        let connection = rusqlite::Connection::open_with_flags(
            self.state_db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        connection.query_row("SELECT count(*) FROM sessions", [], |row| row.get(0)).unwrap()
    }

    pub(crate) fn serve_command(&self, config: &Path, socket: &Path) -> Command {
        self.command(&["serve", "--config", config.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
    }

    /// Runs `mcpsock ARGS` to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `mcpsock ARGS --socket <sandbox socket>`: a client command aimed at
    /// this sandbox's daemon.
    pub(crate) fn client(&self, args: &[&str]) -> Output {
        let socket = self.socket();
        let mut all = args.to_vec();
        all.extend(["--socket", socket.to_str().unwrap()]);
        self.run(&all)
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A running `mcpsock serve`.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Starts `mcpsock serve` on the sandbox socket and waits until it
    /// answers `/health`.
    pub(crate) fn start(sandbox: &Sandbox, config: &Path) -> Self {
        Self::start_with(sandbox, config, &sandbox.socket(), |_| {})
    }

    pub(crate) fn start_with(
        sandbox: &Sandbox,
        config: &Path,
        socket: &Path,
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let log = sandbox.path().join(format!("daemon-{}.log", std::process::id()));
        let log = unique(log);
        let mut command = sandbox.serve_command(config, socket);
        command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        adjust(&mut command);
        let child = command.spawn().unwrap();
        let mut daemon = Self { child, socket: socket.to_path_buf(), log };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}) before it was ready; log:\n{}", self.log_text());
            }
            if http_get(&self.socket, "/health").is_ok_and(|(status, _)| status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not become ready; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn health(&self) -> Value {
        let (status, body) = http_get(&self.socket, "/health").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        rustix::process::kill_process(pid(self.pid()), signal).unwrap();
    }

    /// Waits for the daemon to exit, failing the test after [`TIMEOUT`].
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        wait_for_exit("the daemon exits", &mut self.child)
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn stop(mut self) -> ExitStatus {
        self.signal(Signal::TERM);
        self.wait_exit()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 0;
    while candidate.exists() {
        n += 1;
        candidate = path.with_extension(format!("{n}.log"));
    }
    candidate
}

pub(crate) fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).unwrap()
}

pub(crate) fn process_exists(raw: u32) -> bool {
    // A zombie still has a /proc entry; only a live process counts.
    std::fs::read_to_string(format!("/proc/{raw}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// `(pid, ppid, pgid)` of every live process.
pub(crate) fn processes() -> Vec<(u32, u32, u32)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rsplit(')').next() else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let (Some(ppid), Some(pgid)) = (fields.get(1), fields.get(2)) else { continue };
        all.push((pid, ppid.parse().unwrap_or(0), pgid.parse().unwrap_or(0)));
    }
    all
}

/// A minimal HTTP/1.1 GET over the Unix socket: `(status, body)`.
pub(crate) fn http_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Where a raw request goes.
pub(crate) enum Target<'a> {
    Unix(&'a Path),
    Tcp(std::net::SocketAddr),
}

/// An HTTP response read to the end.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl RawResponse {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a fresh connection with `Connection: close`, and reads the
/// whole response. A connection closed without an answer is status 0.
pub(crate) fn raw_request(target: Target<'_>, head: &str, body: &[u8]) -> RawResponse {
    // A stream that stays open (SSE) is read until this timeout.
    raw_request_waiting(target, head, body, Duration::from_secs(2))
}

/// [`raw_request`], reading for up to `patience` (for a reply that takes
/// long but ends).
pub(crate) fn raw_request_waiting(
    target: Target<'_>,
    head: &str,
    body: &[u8],
    patience: Duration,
) -> RawResponse {
    let request = format!("{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let patience = Some(patience);
    let response = match target {
        Target::Unix(path) => {
            let stream = UnixStream::connect(path).unwrap();
            stream.set_read_timeout(patience).unwrap();
            exchange(stream, &bytes)
        }
        Target::Tcp(address) => {
            let stream = std::net::TcpStream::connect(address).unwrap();
            stream.set_read_timeout(patience).unwrap();
            exchange(stream, &bytes)
        }
    };
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    RawResponse { status, head: head.to_string(), body: body.to_string() }
}

fn exchange(mut stream: impl Read + Write, request: &[u8]) -> Vec<u8> {
    // The server may answer and close before it read everything (413).
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// Sends one 2026-07-28 request (no session; the per-request envelope in
/// `_meta`) and returns its JSON-RPC reply.
pub(crate) fn modern_request(socket: &Path, method: &str, mut params: Value) -> Value {
    params["_meta"] = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\nMcp-Protocol-Version: 2026-07-28\r\nMcp-Method: {method}"
    );
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        head.push_str(&format!("\r\nMcp-Name: {name}"));
    }
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = raw_request_waiting(Target::Unix(socket), &head, body.to_string().as_bytes(), TIMEOUT);
    response
        .body
        .lines()
        .filter_map(|line| line.strip_prefix("data: ").or(Some(line)))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|message| message["id"] == 1)
        .unwrap_or_else(|| panic!("no reply to {method}: {response:?}"))
}

/// The JSON-RPC `initialize` request of a legacy client.
pub(crate) const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// The MCP request headers after the request line.
pub(crate) const MCP_HEADERS: &str =
    "Content-Type: application/json\r\nAccept: application/json, text/event-stream";

/// The TCP address the daemon logged it serves on.
pub(crate) fn tcp_address(daemon: &Daemon) -> std::net::SocketAddr {
    // The socket may answer a moment before the TCP listener is logged.
    wait_until("the daemon logs its TCP address", || daemon.log_text().contains("serving loopback TCP"));
    let log = daemon.log_text();
    let line = log.lines().find(|line| line.contains("serving loopback TCP")).expect("the daemon serves TCP");
    let address = line.split("address=").nth(1).unwrap().split_whitespace().next().unwrap();
    address.parse().unwrap()
}

/// The misbehaving upstream used for fault injection.
pub(crate) fn fake_upstream() -> PathBuf {
    let path = mcpsock().with_file_name("mcpsock-fake-upstream");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// `POST /mcp` with the MCP headers, `extra_headers` (CRLF-separated) and
/// `body`.
pub(crate) fn post(target: Target<'_>, host: &str, extra_headers: &str, body: &str) -> RawResponse {
    let extra = if extra_headers.is_empty() { String::new() } else { format!("\r\n{extra_headers}") };
    raw_request(
        target,
        &format!("POST /mcp HTTP/1.1\r\nHost: {host}\r\n{MCP_HEADERS}{extra}"),
        body.as_bytes(),
    )
}

/// Opens a legacy session and returns its id.
pub(crate) fn open_session(target: Target<'_>, host: &str, extra_headers: &str) -> String {
    let response = post(target, host, extra_headers, INITIALIZE);
    assert_eq!(response.status, 200, "{response:?}");
    response.header("mcp-session-id").expect("a session id")
}

/// An MCP session over the Unix socket, one connection per request, for
/// tests that need many calls without a client process each.
pub(crate) struct McpSession {
    socket: PathBuf,
    id: String,
    next: std::sync::atomic::AtomicU64,
}

impl McpSession {
    pub(crate) fn open(socket: &Path) -> Self {
        let id = open_session(Target::Unix(socket), "localhost", "");
        let session = Self { socket: socket.to_path_buf(), id, next: std::sync::atomic::AtomicU64::new(2) };
        let initialized = session.post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(initialized.status, 202, "{initialized:?}");
        session
    }

    fn post(&self, body: &str) -> RawResponse {
        // A call's reply stream ends with its answer, however long that takes.
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\nMcp-Session-Id: {}\r\nMcp-Protocol-Version: 2025-06-18",
            self.id
        );
        raw_request_waiting(Target::Unix(&self.socket), &head, body.as_bytes(), TIMEOUT)
    }

    /// Ends the session with `DELETE`, as a client closing it does.
    pub(crate) fn close(self) {
        let head = format!("DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {}", self.id);
        let response = raw_request(Target::Unix(&self.socket), &head, b"");
        assert!(matches!(response.status, 200 | 202 | 204), "{response:?}");
    }

    /// The text of a tool's first content block, failing the test on an error.
    pub(crate) fn call_text(&self, tool: &str, arguments: Value) -> String {
        let result = self.call(tool, arguments).unwrap_or_else(|error| panic!("{tool}: {error}"));
        assert_ne!(result["isError"], true, "{tool}: {result}");
        result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{tool}: {result}")).to_string()
    }

    /// Calls a tool: its result, or the JSON-RPC error (or HTTP failure)
    /// as text.
    pub(crate) fn call(&self, tool: &str, arguments: Value) -> Result<Value, String> {
        self.request("tools/call", serde_json::json!({"name": tool, "arguments": arguments}))
    }

    /// Sends one request: its result, or the JSON-RPC error (or HTTP
    /// failure) as text.
    pub(crate) fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.post(&request.to_string());
        if response.status != 200 {
            return Err(format!("HTTP {}: {}", response.status, response.body));
        }
        let reply = response
            .body
            .lines()
            .filter_map(|line| line.strip_prefix("data: ").or(Some(line)))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|message| message["id"] == id)
            .ok_or_else(|| format!("no answer to request {id}: {}", response.body))?;
        match reply.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(reply["error"].to_string()),
        }
    }
}

/// `curl -s --unix-socket SOCKET http://localhost/PATH` as a monitoring
/// script runs it: `(HTTP status, body)`.
pub(crate) fn curl(socket: &Path, args: &[&str], path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(args)
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("curl runs (scripts/test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The daemon's `/status` over the socket.
pub(crate) fn status_of(socket: &Path) -> Value {
    let (status, body) = http_get(socket, "/status").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The state of the upstream `name` in `/status`.
pub(crate) fn upstream_in(status: &Value, name: &str) -> Option<Value> {
    status["upstreams"].as_array()?.iter().find(|upstream| upstream["name"] == name).cloned()
}

/// Writes `config` over the sandbox config file, as a person editing it
/// would (the same path and mode).
pub(crate) fn rewrite_config(path: &Path, config: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
}
