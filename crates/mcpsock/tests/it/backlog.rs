//! A client that never reads its stream, served in-process through
//! mcpsock's serving path with a handler that floods it (adversarial test 25).

// The flood is made of log notifications, deprecated in the newest protocol
// but still delivered to the legacy clients this test uses.
#![allow(deprecated)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mcpsock_daemon::Server;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject, ListToolsResult,
    LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::support::*;

/// 1 600 notifications of 64 KiB: 100 MiB if nothing held it back.
const FLOOD_MESSAGES: u64 = 1600;

#[derive(Clone)]
struct Flood {
    sent: Arc<AtomicU64>,
}

impl ServerHandler for Flood {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_logging().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = Arc::new(JsonObject::new());
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("flood", "Sends 100 MiB of log notifications.", schema.clone()),
            Tool::new("echo", "Answers at once.", schema),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == "flood" {
            let chunk = serde_json::Value::String("x".repeat(64 * 1024));
            for _ in 0..FLOOD_MESSAGES {
                let message = LoggingMessageNotificationParam::new(LoggingLevel::Info, chunk.clone());
                if context.peer.notify_logging_message(message).await.is_err() {
                    break;
                }
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("done")]).into())
    }
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const CALL_FLOOD: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"flood","arguments":{}}}"#;
const CALL_ECHO: &str =
    r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;

#[test]
fn sec25_a_client_that_never_reads_cannot_grow_the_server_or_stall_others() {
    let sandbox = Sandbox::new();
    let socket = sandbox.socket();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let server = {
        let sent = sent.clone();
        let server = Server::new(&socket).stream_stall_timeout(std::time::Duration::from_millis(500));
        runtime.block_on(server.serve(move || Flood { sent: sent.clone() })).unwrap()
    };
    let resident_before = resident_kib();

    // Client A opens its session's stream for server messages and then
    // reads nothing; a request in that session starts the flood, which goes
    // to that stream.
    let session_a = open_session(Target::Unix(&socket), "localhost", "");
    let session_headers = format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session_a}");
    let mut reader_a = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        reader_a,
        "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{session_headers}\r\n\r\n"
    )
    .unwrap();
    let mut trigger = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        trigger,
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\n{MCP_HEADERS}\r\n{session_headers}\r\nContent-Length: {}\r\n\r\n{CALL_FLOOD}",
        CALL_FLOOD.len()
    )
    .unwrap();
    wait_until("the flood starts", || sent.load(Ordering::Relaxed) > 0);
    // It stalls once the stream's bounded buffers are full.
    let mut last = u64::MAX;
    let mut unchanged = 0;
    wait_until("the flood stalls", || {
        let now = sent.load(Ordering::Relaxed);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
        unchanged >= 20
    });
    assert!(
        last < FLOOD_MESSAGES / 4,
        "{last} of {FLOOD_MESSAGES} messages were queued for a client that reads nothing"
    );

    // Client B, another session, is served as usual.
    let session_b = open_session(Target::Unix(&socket), "localhost", "");
    let answer = post(
        Target::Unix(&socket),
        "localhost",
        &format!("MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session_b}"),
        CALL_ECHO,
    );
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("done"), "{}", answer.body);
    // What the stall may hold: the messages queued before it (under 400 of
    // 64 KiB, checked above), the stream's stored events (capped at 8 MiB
    // and a quarter), and the allocator's slack. A third of the flood is
    // the bound; 32 MiB was exceeded (34 MiB) on a loaded machine.
    let grown = resident_kib().saturating_sub(resident_before);
    assert!(grown < 48 * 1024, "the server grew by {grown} KiB for a client that reads nothing");

    // The stalled stream is dropped: the server closes client A's connection
    // once nothing was read for the stall timeout...
    // (Reading would un-stall it, so watch for the hang-up instead.)
    wait_until("the server closes the stalled stream", || {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&reader_a, PollFlags::RDHUP)];
        poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap();
        fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP)
    });
    // ...which unblocks the flood: the request that fed it gets its answer.
    trigger.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("done") {
        let read = trigger.read(&mut chunk).expect("the flooding request finishes");
        assert!(read > 0, "closed without an answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..read]);
    }
    // The rest of the flood had nowhere to go and was discarded as it came:
    // what stays is the stalled stream's events and the allocator's slack
    // from 100 MiB of 64 KiB messages passing through. Alongside the rest of
    // the suite that measured 24-33 MiB (the same with the earlier memory
    // store), so 32 MiB failed now and then; half the flood is the bound.
    let grown = resident_kib().saturating_sub(resident_before);
    assert!(grown < 48 * 1024, "the server grew by {grown} KiB while the flood was discarded");
    drop(trigger);

    runtime.block_on(server.shutdown()).unwrap();
}
