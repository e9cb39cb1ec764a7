//! Benchmark baseline: the physical floor of HTTP on this machine.
//!
//! A raw hyper 1.x HTTP/1.1 server that answers every request, whatever its
//! method or path, with `200` and a fixed JSON-RPC-shaped body about the size
//! of an echo `tools/call` result. It parses nothing and routes nothing, so a
//! benchmark against it measures only the socket, the HTTP framing and the
//! runtime: the least any MCP server on this box can cost per request
//! (DESIGN §6). Everything else in a run is reported relative to it.
//!
//! ```text
//! bench-hyper-hello (--unix PATH | --tcp ADDR) [--threads N]
//! ```
//!
//! The first line on stdout is `listening <addr>` (the socket path, or the
//! bound TCP address with its real port), so a script can start it on
//! `127.0.0.1:0` and read where to connect. SIGTERM or SIGINT stops it with
//! exit status 0.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

/// The reply to every request: shaped like an echo tool's result so the bytes
/// on the wire match what the MCP servers in the same run send back.
const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}"#;

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
    // Install the handlers before announcing the address: a script that sends
    // SIGTERM as soon as it reads `listening` must get a clean exit, not the
    // default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

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
            accepted = listener.accept() => match accepted {
                Ok(()) => {}
                // Transient failures (EMFILE, ECONNABORTED) must not end a
                // benchmark run; say so and keep accepting.
                Err(error) => writeln!(io::stderr(), "accept: {error}")?,
            },
        }
    }
    if let Some(path) = &args.unix {
        remove_stale(path)?;
    }
    Ok(())
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Accept one connection and hand it to its own task.
    async fn accept(&self) -> io::Result<()> {
        match self {
            Self::Unix(listener) => spawn_connection(listener.accept().await?.0),
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                // Small request/response pairs: Nagle would add delayed-ACK
                // stalls that measure the kernel's timers, not the server.
                stream.set_nodelay(true)?;
                spawn_connection(stream);
            }
        }
        Ok(())
    }
}

/// Serve one keep-alive HTTP/1.1 connection on its own task.
fn spawn_connection<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // Errors here are clients hanging up mid-request; nothing to do.
        let _ = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service_fn(hello))
            .await;
    });
}

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // Read the whole body, as a real server must, so the floor is not
    // flattered; frames are dropped as they come rather than collected.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
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
