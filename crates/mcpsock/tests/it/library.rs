//! The library API: `mcpsock::Server` serving a handler written here, its
//! handle's stops, the direct client and the socket and HTTP clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcpsock::client::{ConnectOptions, Endpoint};
use mcpsock::{Server, SqliteOptions, Storage};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    JsonObject, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;

use crate::support::*;

/// A handler whose `wait` tool runs until it is released or cancelled.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

impl ServerHandler for Gate {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = Arc::new(JsonObject::new());
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("wait", "Answers once released.", schema.clone()),
            Tool::new("echo", "Answers at once.", schema.clone()),
            Tool::new("panic", "Panics.", schema.clone()),
            Tool::new("roots", "Asks the client for its roots.", schema),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == "panic" {
            panic!("the panic tool panics");
        }
        if request.name == "roots" {
            let roots = count_roots(&context).await?;
            return Ok(CallToolResult::success(vec![ContentBlock::text(format!("{roots} roots"))]).into());
        }
        if request.name == "wait" {
            self.started.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                () = self.release.notified() => {}
                () = context.ct.cancelled() => {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(ErrorData::internal_error("cancelled", None));
                }
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("{} done", request.name))]).into())
    }
}

/// How many roots the client names. Roots are deprecated by SEP-2577, but
/// the 2025 revisions a legacy session speaks still have them.
#[allow(deprecated)]
async fn count_roots(context: &RequestContext<RoleServer>) -> Result<usize, ErrorData> {
    let roots = context
        .peer
        .list_roots()
        .await
        .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
    Ok(roots.roots.len())
}

const CALL_WAIT: &str =
    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"wait","arguments":{}}}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Starts `wait` in a session of its own on another thread; the thread
/// returns the raw answer (which may be cut short).
fn call_wait_in_background(socket: &std::path::Path) -> std::thread::JoinHandle<RawResponse> {
    let session = open_session(Target::Unix(socket), "localhost", "");
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let headers = format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}");
        post(Target::Unix(&socket), "localhost", &headers, CALL_WAIT)
    })
}

#[test]
fn dropping_a_handle_mid_request_removes_the_socket_and_lock_and_leaves_no_task() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let lock = socket.with_file_name("mcpsock.sock.pid");
    let db = sandbox.path().join("state.db");
    let runtime = runtime();
    assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    let gate = Gate::default();
    let handle = {
        let gate = gate.clone();
        let server = Server::new(&socket).storage(Storage::Sqlite(SqliteOptions::new(&db)));
        runtime.block_on(server.serve(move || gate.clone())).unwrap()
    };
    assert!(socket.exists() && lock.exists());
    assert!(runtime.metrics().num_alive_tasks() > 0);

    let call = call_wait_in_background(&socket);
    wait_until("the tool is running", || gate.started.load(Ordering::SeqCst) == 1);
    let stopped = handle.stopped();
    drop(handle);

    runtime.block_on(stopped);
    assert!(!socket.exists(), "the socket is removed");
    assert!(!lock.exists(), "the lock file is removed");
    wait_until("every task of the server has ended", || runtime.metrics().num_alive_tasks() == 0);
    assert_eq!(gate.cancelled.load(Ordering::SeqCst), 1, "the running tool was cancelled");
    let answer = call.join().unwrap();
    assert!(!answer.body.contains("wait done"), "the cut request did not finish: {answer:?}");
    // The database was closed: another process could open it now.
    let store = mcpsock_store::SqliteStore::open(mcpsock_store::SqliteOptions::new(&db)).unwrap();
    runtime.block_on(mcpsock_store::Store::close(&store)).unwrap();
}

#[test]
fn shutdown_lets_an_in_flight_request_finish_then_stops() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let gate = Gate::default();
    let handle = {
        let gate = gate.clone();
        runtime.block_on(Server::new(&socket).serve(move || gate.clone())).unwrap()
    };
    let call = call_wait_in_background(&socket);
    wait_until("the tool is running", || gate.started.load(Ordering::SeqCst) == 1);

    let stopped = handle.stopped();
    let shutdown = runtime.spawn(handle.shutdown());
    wait_until("the socket stops accepting", || std::os::unix::net::UnixStream::connect(&socket).is_err());
    assert!(!shutdown.is_finished(), "shutdown waits for the request in flight");
    gate.release.notify_one();

    let answer = call.join().unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("wait done"), "the in-flight request finished: {answer:?}");
    runtime.block_on(shutdown).unwrap().unwrap();
    runtime.block_on(stopped);
    assert!(!socket.exists());
    assert_eq!(gate.cancelled.load(Ordering::SeqCst), 0);
    wait_until("every task of the server has ended", || runtime.metrics().num_alive_tasks() == 0);
}

#[test]
fn a_second_server_on_the_same_socket_is_refused_as_already_running() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let first = runtime.block_on(Server::new(&socket).serve(Gate::default)).unwrap();
    let second = runtime.block_on(Server::new(&socket).serve(Gate::default)).unwrap_err();
    match &second {
        mcpsock::ServeError::Socket(error) => assert!(error.is_already_running(), "{error}"),
        other => panic!("expected an already-running refusal, got {other}"),
    }
    assert!(second.to_string().contains("already running"), "{second}");
    runtime.block_on(first.shutdown()).unwrap();
    assert!(!socket.exists());
}

#[test]
fn a_tcp_only_server_reports_its_port_and_the_http_client_sends_the_key() {
    let runtime = runtime();
    let key = "k".repeat(32);
    let handle = runtime
        .block_on(Server::tcp_only("127.0.0.1:0".parse().unwrap(), key.clone()).serve(Gate::default))
        .unwrap();
    assert_eq!(handle.socket_path(), None);
    let address = handle.local_addr().expect("a TCP server has an address");
    assert_ne!(address.port(), 0);
    let endpoint = Endpoint::parse(&format!("http://{address}/mcp")).unwrap();

    runtime.block_on(async {
        let session =
            mcpsock::client::connect_with(&endpoint, &ConnectOptions::default().api_key(&key)).await.unwrap();
        let tools = session.list_all_tools().await.unwrap();
        assert_eq!(
            tools.iter().map(|tool| tool.name.as_ref()).collect::<Vec<_>>(),
            ["wait", "echo", "panic", "roots"]
        );
        let result = session.call_tool(CallToolRequestParams::new("echo")).await.unwrap();
        assert_eq!(result.content[0].as_text().unwrap().text, "echo done");
        session.cancel().await.unwrap();

        let refused = mcpsock::client::connect_with(&endpoint, &ConnectOptions::default()).await.unwrap_err();
        assert!(matches!(refused, mcpsock::client::ClientError::Refused { status: 401, .. }), "{refused}");
        assert!(refused.to_string().contains("MCPSOCK_API_KEY"), "{refused}");
    });
    runtime.block_on(handle.shutdown()).unwrap();
    let gone = runtime
        .block_on(mcpsock::client::connect_with(&endpoint, &ConnectOptions::default().api_key(&key)))
        .unwrap_err();
    assert!(matches!(gone, mcpsock::client::ClientError::NotRunning { .. }), "{gone}");
}

/// What a client sees of the conformance fixture: a tool's result, a
/// resource and a prompt.
async fn observe(session: &mcpsock::client::McpSession) -> serde_json::Value {
    let tool = session.call_tool(CallToolRequestParams::new("test_simple_text")).await.unwrap();
    let resource = session.read_resource(ReadResourceRequestParams::new("test://static-text")).await.unwrap();
    let prompt = session.get_prompt(GetPromptRequestParams::new("test_simple_prompt")).await.unwrap();
    json!({
        "tool": serde_json::to_value(tool).unwrap(),
        "resource": serde_json::to_value(resource).unwrap(),
        "prompt": serde_json::to_value(prompt).unwrap(),
    })
}

#[test]
fn the_direct_client_sees_a_handler_as_the_socket_client_does() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let fixture = mcpsock_demo::conformance::Fixture::new().unwrap();

    let direct = runtime.block_on(async {
        let session = mcpsock::direct::connect(fixture.clone()).await.unwrap();
        assert_eq!(
            session.peer_info().unwrap().server_info.as_ref().unwrap().name,
            "mcp-conformance-test-server"
        );
        let seen = observe(&session).await;
        session.cancel().await.unwrap();
        seen
    });
    assert_eq!(direct["tool"]["content"][0]["text"], "This is a simple text response for testing.");
    assert_eq!(direct["resource"]["contents"][0]["uri"], "test://static-text");
    assert!(direct["prompt"]["messages"].as_array().is_some_and(|messages| !messages.is_empty()));

    let handle = runtime.block_on(Server::new(&socket).serve(move || fixture.clone())).unwrap();
    let over_socket = runtime.block_on(async {
        let session =
            mcpsock::client::connect(&Endpoint::parse(&socket.to_string_lossy()).unwrap()).await.unwrap();
        let seen = observe(&session).await;
        session.cancel().await.unwrap();
        seen
    });
    assert_eq!(direct, over_socket);
    runtime.block_on(handle.shutdown()).unwrap();
    // Nothing of the direct session outlives it either.
    wait_until("every task has ended", || runtime.metrics().num_alive_tasks() == 0);
}

/// The headers of requests in `session`.
fn in_session(session: &str) -> String {
    format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}")
}

/// A session past its handshake and its first answer, whose client declared
/// `capabilities`. With none that take server requests, it is served
/// directly from then on (see `live` in mcpsock-daemon).
fn settled_session(socket: &std::path::Path, capabilities: serde_json::Value) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}}});
    let opened = post(Target::Unix(socket), "localhost", "", &initialize.to_string());
    assert_eq!(opened.status, 200, "{opened:?}");
    let session = opened.header("mcp-session-id").expect("a session id");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(Target::Unix(socket), "localhost", &in_session(&session), initialized).status, 202);
    let echo = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let answer = post(Target::Unix(socket), "localhost", &in_session(&session), echo);
    assert!(answer.body.contains("echo done"), "{answer:?}");
    session
}

/// Sends `body` in `session` and returns the open reply, to read as it comes.
fn post_streaming(socket: &std::path::Path, session: &str, body: &str) -> BufReader<UnixStream> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{MCP_HEADERS}\r\n{}\r\nContent-Length: {}\r\n\r\n{body}",
        in_session(session),
        body.len()
    )
    .unwrap();
    BufReader::new(stream)
}

/// Reads `reply` up to the first line that starts with `prefix`.
fn read_until(reply: &mut BufReader<UnixStream>, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut line = String::new();
    loop {
        // Keep-alive comments would keep a plain read waiting for ever.
        assert!(std::time::Instant::now() < deadline, "no line starting {prefix:?} in time");
        line.clear();
        assert!(reply.read_line(&mut line).unwrap() > 0, "the reply ended before a line starting {prefix:?}");
        if line.starts_with(prefix) {
            return line;
        }
    }
}

fn serve_gate(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    gate: &Gate,
) -> mcpsock::ServerHandle {
    let gate = gate.clone();
    runtime.block_on(Server::new(socket).serve(move || gate.clone())).unwrap()
}

#[test]
fn a_handler_that_panics_answers_an_internal_error_and_its_session_goes_on() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let handle = serve_gate(&runtime, &socket, &Gate::default());
    let session = settled_session(&socket, json!({}));
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"panic","arguments":{}}}"#;
    let reply = post(Target::Unix(&socket), "localhost", &in_session(&session), call);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(r#""id":2,"error""#) && reply.body.contains("-32603"), "{}", reply.body);
    assert!(reply.body.contains("panicked"), "{}", reply.body);
    let echo = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    assert!(post(Target::Unix(&socket), "localhost", &in_session(&session), echo).body.contains("echo done"));
    runtime.block_on(handle.shutdown()).unwrap();
}

/// A `wait` call running in a settled session of a server of its own,
/// read up to its priming event.
struct Waiting {
    runtime: tokio::runtime::Runtime,
    handle: mcpsock::ServerHandle,
    gate: Gate,
    socket: std::path::PathBuf,
    session: String,
    reply: BufReader<UnixStream>,
    priming: String,
    /// Bind it by name: the sandbox's directory goes when it drops.
    _sandbox: Sandbox,
}

fn start_waiting() -> Waiting {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let gate = Gate::default();
    let handle = serve_gate(&runtime, &socket, &gate);
    let session = settled_session(&socket, json!({}));
    let mut reply = post_streaming(&socket, &session, CALL_WAIT);
    let priming = read_until(&mut reply, "id:").trim_start_matches("id:").trim().to_string();
    wait_until("the tool is running", || gate.started.load(Ordering::SeqCst) == 1);
    Waiting { runtime, handle, gate, socket, session, reply, priming, _sandbox: sandbox }
}

#[test]
fn a_call_its_client_cancels_is_cancelled_and_its_stream_ends() {
    let Waiting { runtime, handle, gate, socket, session, mut reply, _sandbox, .. } = start_waiting();
    let cancel =
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2,"reason":"no"}}"#;
    assert_eq!(post(Target::Unix(&socket), "localhost", &in_session(&session), cancel).status, 202);
    wait_until("the tool sees the cancellation", || gate.cancelled.load(Ordering::SeqCst) == 1);
    let mut rest = String::new();
    reply.read_to_string(&mut rest).unwrap();
    assert!(rest.ends_with("0\r\n\r\n"), "the stream ends: {rest:?}");
    assert!(!rest.contains("jsonrpc"), "a cancelled request is not answered: {rest}");
    runtime.block_on(handle.shutdown()).unwrap();
}

#[test]
fn a_call_whose_client_left_finishes_and_its_answer_can_be_resumed() {
    let Waiting { runtime, handle, gate, socket, session, reply, priming, _sandbox } = start_waiting();
    drop(reply);
    gate.release.notify_one();
    let resume = format!(
        "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{}\r\nLast-Event-ID: {priming}",
        in_session(&session)
    );
    wait_until("the answer is stored for a resume", || {
        raw_request(Target::Unix(&socket), &resume, b"").body.contains("wait done")
    });
    assert_eq!(gate.cancelled.load(Ordering::SeqCst), 0, "the call was not cut short");
    runtime.block_on(handle.shutdown()).unwrap();
}

#[test]
fn a_server_request_rides_the_stream_of_the_call_that_made_it() {
    // A client that takes server requests keeps rmcp's service loop, which
    // ties the request to the call (SEP-2260).
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = runtime();
    let handle = serve_gate(&runtime, &socket, &Gate::default());
    let session = settled_session(&socket, json!({"roots": {}}));
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"roots","arguments":{}}}"#;
    let mut reply = post_streaming(&socket, &session, call);
    let asked = read_until(&mut reply, "data: {");
    let asked: serde_json::Value = serde_json::from_str(asked.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(asked["method"], "roots/list", "{asked}");
    let roots = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": [{"uri": "file:///tmp"}]}});
    assert_eq!(
        post(Target::Unix(&socket), "localhost", &in_session(&session), &roots.to_string()).status,
        202
    );
    let answer = read_until(&mut reply, "data: {");
    assert!(answer.contains("1 roots"), "{answer}");
    runtime.block_on(handle.shutdown()).unwrap();
}

/// The example programs, built beside this test binary.
fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo build --examples)",
        path.display()
    );
    path
}

#[test]
fn the_example_client_calls_the_example_server_which_stops_cleanly() {
    let sandbox = Sandbox::new();
    let socket = sandbox.path().join("notes").join("notes.sock");
    let db = sandbox.path().join("notes.db");
    let mut server = std::process::Command::new(example("notes-server"))
        .args(["--socket", socket.to_str().unwrap(), "--db", db.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the example server listens", || std::os::unix::net::UnixStream::connect(&socket).is_ok());

    let output = std::process::Command::new(example("notes-client"))
        .args(["--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("tools: add_note, read_note, search_notes"), "{text}");
    assert!(text.contains(r#"search_notes: {"titles":["socket"]}"#), "{text}");
    assert!(text.contains("read_note: mcpsock serves MCP on a Unix socket"), "{text}");

    rustix::process::kill_process(pid(server.id()), rustix::process::Signal::TERM).unwrap();
    assert!(wait_for_exit("the example server", &mut server).success());
    assert!(!socket.exists(), "the socket is removed");
    assert!(!socket.with_file_name("notes.sock.pid").exists(), "the lock file is removed");
}
