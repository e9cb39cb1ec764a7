//! Benchmark baseline: the nearest peer, a plain rmcp `StreamableHttpService`.
//!
//! One tool, `echo`, built with rmcp's own macros and served by rmcp's own
//! Streamable HTTP service at `/mcp`, with nothing of mcpsock in the path.
//! It answers "what would a Rust MCP server cost without mcpsock?" (DESIGN
//! §6). The HTTP plumbing (listener, hyper connection, runtime) is the same
//! as `bench-hyper-hello`, so the gap between the two is rmcp's own cost.
//!
//! ```text
//! bench-rmcp-echo (--unix PATH | --tcp ADDR) [--threads N] [--stateless] [--json-response]
//! ```
//!
//! The first line on stdout is `listening <addr>`; SIGTERM or SIGINT stops it
//! with exit status 0. rmcp's defaults are kept, including `allowed_hosts`
//! (localhost, 127.0.0.1, ::1): send `Host: localhost` over a Unix socket.
//!
//! # What a load generator sends (checked by hand against rmcp 3.9.0)
//!
//! Every POST goes to `/mcp` with `Host: localhost` (or 127.0.0.1, ::1),
//! `Content-Type: application/json` and
//! `Accept: application/json, text/event-stream`; rmcp answers 406 unless
//! both media types are accepted, even with `--json-response`.
//!
//! **Protocol 2026-07-28, stateless `tools/call`.** No `initialize`, no
//! session, in every mode (rmcp serves 2026-07-28 statelessly even without
//! `--stateless`):
//!
//! ```text
//! POST /mcp HTTP/1.1
//! Host: localhost
//! Content-Type: application/json
//! Accept: application/json, text/event-stream
//! MCP-Protocol-Version: 2026-07-28
//! Mcp-Method: tools/call
//! Mcp-Name: echo
//! Content-Length: 210
//!
//! {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}
//! ```
//!
//! Each piece is required; leaving one out gets HTTP 400 with a JSON-RPC
//! error: no `MCP-Protocol-Version` header (-32020, "_meta protocolVersion
//! requires MCP-Protocol-Version header"); no `Mcp-Method` or no `Mcp-Name`
//! header, or values that differ from the body's `method` / `params.name`
//! (-32020, SEP-2243); no `_meta` protocolVersion or clientCapabilities
//! (-32602). `io.modelcontextprotocol/clientInfo` is optional. Without the
//! header *and* the `_meta`, the request is read as legacy 2025-03-26 and
//! needs a session unless `--stateless`.
//!
//! The reply is `200` with the result
//! `{"jsonrpc":"2.0","id":2,"result":{"resultType":"complete","content":[{"type":"text","text":"hi"}],"isError":false}}`:
//! with `--json-response` (with or without `--stateless`) as
//! `Content-Type: application/json` with a `Content-Length`; otherwise as
//! `Content-Type: text/event-stream`, chunked, one event
//! `data: <result>\n\n`, then the stream ends. No priming event.
//!
//! **Session mode (the default), protocol 2025-06-18.** `initialize` (no
//! version header) returns `Mcp-Session-Id`; then
//! `{"jsonrpc":"2.0","method":"notifications/initialized"}` gets 202; then
//! each `tools/call` carries `Mcp-Session-Id` and
//! `MCP-Protocol-Version: 2025-06-18` and a plain body
//! (`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`).
//! Replies are always SSE here, `--json-response` or not: a priming event
//! (`data: \nid: 0/0\nretry: 3000\n\n`) then
//! `data: <result>\nid: 1/0\n\n`, then the stream ends. The result has no
//! `resultType`.
//!
//! **`--stateless`, protocol 2025-06-18.** The same plain `tools/call` works
//! with no `initialize` and no session id; SSE without priming, or JSON with
//! `--json-response`.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tower::Service as _;

#[derive(Debug, Parser)]
#[command(version, about)]
#[command(group = clap::ArgGroup::new("listen").required(true).args(["unix", "tcp"]))]
struct Args {
    /// Listen on this Unix socket path; a stale file there is removed first.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Listen on this TCP address, e.g. 127.0.0.1:0.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Tokio worker threads. 1 runs a current-thread runtime: accept loop and
    /// connections share one thread, which suits a server pinned to one core.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Serve without sessions (`legacy_session_mode(false)`). Requests at
    /// protocol 2026-07-28 are stateless whatever this flag says.
    #[arg(long)]
    stateless: bool,
    /// Prefer `application/json` replies to SSE (`json_response(true)`).
    /// rmcp honours it only on its stateless path: with `--stateless`, or
    /// for 2026-07-28 requests.
    #[arg(long)]
    json_response: bool,
    /// Serve the same handler through mcpsock's serving path (its hardened
    /// socket or its loopback TCP listener, peer and key checks, router and
    /// shutdown) instead of a bare rmcp service: the in-process measurement
    /// of mcpsock itself. With --tcp, clients must send the key in
    /// MCPSOCK_API_KEY (read from the environment here too).
    #[arg(long, conflicts_with_all = ["stateless", "json_response"])]
    mcpsock: bool,
    /// With --mcpsock: keep sessions and events in this SQLite database, as
    /// the daemon does by default (otherwise in memory).
    #[arg(long, value_name = "PATH", requires = "mcpsock")]
    db: Option<PathBuf>,
    /// With --db: encrypt it with the secret in this file.
    #[arg(long, value_name = "PATH", requires = "db")]
    encryption_secret_file: Option<PathBuf>,
}

type Service = StreamableHttpService<Echo, LocalSessionManager>;

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(Debug, Clone)]
struct Echo {
    tool_router: ToolRouter<Self>,
}

#[tool_router(router = tool_router)]
impl Echo {
    fn new() -> Self {
        Self { tool_router: Self::tool_router() }
    }

    #[tool(description = "Return the given text unchanged.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bench-rmcp-echo", env!("CARGO_PKG_VERSION")))
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    // A multi-thread runtime with one worker would still put the accept loop
    // (in `block_on`) and the connections on two threads fighting over the
    // pinned core, so one thread means the current-thread flavour.
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.threads.into());
        builder
    };
    builder.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> io::Result<()> {
    if args.mcpsock {
        return run_mcpsock(args).await;
    }
    // Install the handlers before announcing the address: a script that sends
    // SIGTERM as soon as it reads `listening` must get a clean exit, not the
    // default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    // rmcp's defaults otherwise (SSE keep-alive and priming, allowed hosts):
    // the baseline is rmcp as a user would deploy it.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!args.stateless)
        .with_json_response(args.json_response);
    let shutdown = config.cancellation_token.clone();
    let service: Service =
        StreamableHttpService::new(|| Ok(Echo::new()), Arc::new(LocalSessionManager::default()), config);

    let listener = match (&args.unix, args.tcp) {
        (Some(path), _) => {
            remove_stale(path)?;
            let listener = UnixListener::bind(path)?;
            announce(&path.display())?;
            Listener::Unix(listener)
        }
        (None, Some(addr)) => {
            let listener = TcpListener::bind(addr).await?;
            announce(&listener.local_addr()?)?;
            Listener::Tcp(listener)
        }
        (None, None) => unreachable!("clap requires --unix or --tcp"),
    };

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept(&service) => match accepted {
                Ok(()) => {}
                // Transient failures (EMFILE, ECONNABORTED) must not end a
                // benchmark run; say so and keep accepting.
                Err(error) => writeln!(io::stderr(), "accept: {error}")?,
            },
        }
    }
    // Close rmcp's sessions and streams before the runtime goes away.
    shutdown.cancel();
    if let Some(path) = &args.unix {
        remove_stale(path)?;
    }
    Ok(())
}

/// Serves `Echo` through the library API, `mcpsock::Server`: the path
/// the daemon serves its gateway on.
async fn run_mcpsock(args: Args) -> io::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let server = match (&args.unix, args.tcp) {
        (Some(path), _) => mcpsock::Server::new(path),
        (None, Some(address)) => {
            let key = std::env::var("MCPSOCK_API_KEY").map_err(|_| {
                io::Error::other("--mcpsock --tcp needs MCPSOCK_API_KEY (16 characters or more)")
            })?;
            mcpsock::Server::tcp_only(address, key)
        }
        (None, None) => unreachable!("clap requires --unix or --tcp"),
    };
    let server = match &args.db {
        Some(path) => {
            let secret = args
                .encryption_secret_file
                .as_deref()
                .map(mcpsock::EncryptionSecret::from_file)
                .transpose()
                .map_err(io::Error::other)?;
            server.storage(mcpsock::Storage::Sqlite(mcpsock::SqliteOptions::new(path).secret(secret)))
        }
        None => server,
    };
    let handle = server.serve(Echo::new).await.map_err(io::Error::other)?;
    match (handle.socket_path(), handle.local_addr()) {
        (Some(path), _) => announce(&path.display())?,
        (None, Some(address)) => announce(&address)?,
        (None, None) => unreachable!("one listener is bound"),
    }
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    handle.run_until(shutdown).await.map_err(io::Error::other)
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Accept one connection and hand it to its own task.
    async fn accept(&self, service: &Service) -> io::Result<()> {
        match self {
            Self::Unix(listener) => spawn_connection(listener.accept().await?.0, service.clone()),
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                // Small request/response pairs: Nagle would add delayed-ACK
                // stalls that measure the kernel's timers, not the server.
                stream.set_nodelay(true)?;
                spawn_connection(stream, service.clone());
            }
        }
        Ok(())
    }
}

/// Serve one keep-alive HTTP/1.1 connection on its own task, routing `/mcp`
/// to rmcp and anything else to 404.
fn spawn_connection<S>(stream: S, service: Service)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A bare path check rather than a router (axum's `nest_service`), so the
    // peer carries no routing cost of ours. hyper services are `Fn` and tower's
    // `call` takes `&mut self`, so each request gets a clone of the service,
    // as under `TowerToHyperService` or axum.
    let routed = service_fn(move |request: Request<Incoming>| {
        let call = (request.uri().path() == "/mcp").then(|| service.clone().call(request));
        async move {
            match call {
                Some(call) => call.await,
                None => Ok(not_found()),
            }
        }
    });
    tokio::spawn(async move {
        // Errors here are clients hanging up mid-request; nothing to do.
        let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), routed).await;
    });
}

fn not_found() -> Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Print the `listening` line and flush it: stdout is a pipe under a script,
/// so it would otherwise sit in the buffer.
fn announce(addr: &dyn std::fmt::Display) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()
}

/// Remove a socket file left by an earlier run; a missing file is fine.
fn remove_stale(path: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
