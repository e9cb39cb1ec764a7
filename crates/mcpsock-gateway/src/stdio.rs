//! The MCP client transport to a child's stdio: one line per message each
//! way, with only valid JSON-RPC let in.
//!
//! Reading, the child's stdout is split into bounded lines; a line that is
//! not one JSON-RPC 2.0 message is dropped, counted and logged without its
//! content, so no raw upstream bytes reach a client. What passes is parsed
//! once, straight into rmcp's message type, on the task that receives it.
//! The answer to a `tools/call` this transport sent is parsed as a tool's
//! result directly, in the same pass that checks it (the common line is
//! parsed once, not first checked and then parsed): rmcp's own parse tries
//! fifteen other kinds of result first, and those failed attempts cost more
//! than the rest of the parse.
//!
//! Writing, messages are serialized as rmcp hands them over and queued; one
//! writer task drains the queue, so the messages of concurrent requests go
//! to the child in one write instead of one system call (and one wake-up of
//! the child) each. A `tools/call` is written straight from its fields
//! ([`tool_call_line`]): rmcp first turns a request's parameters into a
//! JSON tree to merge in the `_meta` it keeps beside them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rmcp::RoleClient;
use rmcp::model::{
    CallToolRequestMethod, CallToolRequestParams, CallToolResult, ClientNotification, ClientRequest,
    JsonRpcMessage, JsonRpcRequest, JsonRpcResponse, JsonRpcVersion2_0, MetaObject, RequestId,
    RequestMetaObject, ServerResult,
};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

use crate::spawn::{Kind, Seen, is_object, json_rpc_kind};
use crate::upstream::Ledger;

/// Longest stdout line (one JSON-RPC message) taken from a child.
pub(crate) const MAX_LINE: usize = 8 * 1024 * 1024;

/// Queued bytes past which a send waits for the child to read.
const MAX_QUEUED: usize = 1024 * 1024;

/// Unanswered `tools/call` requests remembered for the direct parse of
/// their answers; past this many (a child that answers none), the list
/// starts over and the answers of the forgotten ones take rmcp's parse.
const MAX_PENDING_CALLS: usize = 4096;

/// rmcp's client transport over a child's stdout and stdin.
pub(crate) struct StdioTransport<R> {
    name: String,
    lines: Lines<R>,
    dropped: Arc<AtomicU64>,
    ledger: Arc<Ledger>,
    outbox: Arc<Outbox>,
    /// Ids of the `tools/call` requests sent and not yet answered.
    calls: HashSet<RequestId>,
}

impl<R: AsyncRead + Unpin + Send> StdioTransport<R> {
    /// Starts the writer task on `stdin`; `dropped` counts the lines of
    /// `stdout` that were not JSON-RPC, `ledger` the notifications a handler
    /// relays.
    pub(crate) fn new(
        name: impl Into<String>,
        stdout: R,
        stdin: impl AsyncWrite + Unpin + Send + 'static,
        dropped: Arc<AtomicU64>,
        ledger: Arc<Ledger>,
    ) -> Self {
        let outbox = Arc::new(Outbox::default());
        tokio::spawn(write_queued(outbox.clone(), stdin));
        Self {
            name: name.into(),
            lines: Lines { reader: BufReader::new(stdout), line: Vec::new(), length: 0 },
            dropped,
            ledger,
            outbox,
            calls: HashSet::new(),
        }
    }

    /// Notes what `message` means for the answers to come.
    fn note_sent(&mut self, message: &TxJsonRpcMessage<RoleClient>) {
        match message {
            JsonRpcMessage::Request(request)
                if matches!(request.request, ClientRequest::CallToolRequest(_)) =>
            {
                if self.calls.len() >= MAX_PENDING_CALLS {
                    self.calls.clear();
                }
                self.calls.insert(request.id.clone());
            }
            JsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) = &notification.notification
                    && let Some(id) = &cancelled.params.request_id
                {
                    self.calls.remove(id);
                }
            }
            _ => {}
        }
    }

    /// The answer to a `tools/call` this transport sent, parsed in one pass
    /// as a tool's result, with the checks `json_rpc_kind` makes on a
    /// result (an object, version 2.0, an id, a `result`, neither an `error`
    /// nor a `method`). That is what rmcp's parse makes of it too, unless
    /// the answer also carries the fields of a kind of result rmcp tries
    /// earlier (a task, an elicitation's action): then rmcp would take it for
    /// that, while to a `tools/call` it can only mean a tool's result.
    /// `None` for anything else, which takes the general way.
    fn tool_answer(&mut self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleClient>> {
        #[derive(serde::Deserialize)]
        struct Answer {
            jsonrpc: JsonRpcVersion2_0,
            id: RequestId,
            result: CallToolResult,
            #[serde(default)]
            error: Seen,
            #[serde(default)]
            method: Seen,
        }
        if self.calls.is_empty() || !is_object(line) {
            return None;
        }
        let answer = serde_json::from_slice::<Answer>(line).ok()?;
        if answer.error.0 || answer.method.0 || !self.calls.remove(&answer.id) {
            return None;
        }
        Some(JsonRpcMessage::Response(JsonRpcResponse {
            jsonrpc: answer.jsonrpc,
            id: answer.id,
            result: ServerResult::CallToolResult(answer.result),
        }))
    }

    /// Parses a line `json_rpc_kind` let in.
    fn parse(&mut self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(line).ok()?;
        match &message {
            JsonRpcMessage::Response(response) => {
                self.calls.remove(&response.id);
            }
            JsonRpcMessage::Error(error) => {
                if let Some(id) = &error.id {
                    self.calls.remove(id);
                }
            }
            _ => {}
        }
        Some(message)
    }

    fn drop_line(&self, why: &str) {
        let count = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if count <= 10 || count.is_power_of_two() {
            tracing::warn!(
                upstream = %self.name,
                bytes = self.lines.length,
                dropped = count,
                "dropped a stdout line that is {why}"
            );
        }
    }
}

impl<R> Drop for StdioTransport<R> {
    fn drop(&mut self) {
        // The writer sends what is queued, then closes stdin.
        self.outbox.close();
    }
}

impl<R: AsyncRead + Unpin + Send> Transport<RoleClient> for StdioTransport<R> {
    type Error = io::Error;

    fn name() -> Cow<'static, str> {
        "stdio".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        // Serialized and queued here, in the order rmcp sends, whatever
        // order the returned futures run in.
        self.note_sent(&item);
        let line = match item {
            JsonRpcMessage::Request(request) => tool_call_line(request),
            item => serde_json::to_vec(&item),
        };
        let queued = match line {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                self.outbox.push(&bytes)
            }
            Err(error) => Err(io::Error::other(error)),
        };
        let outbox = self.outbox.clone();
        async move {
            queued?;
            outbox.room().await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            if !self.lines.next(MAX_LINE).await {
                return None;
            }
            let line = std::mem::take(&mut self.lines.line);
            let message = if line.iter().all(u8::is_ascii_whitespace) {
                None
            } else if self.lines.length > MAX_LINE {
                self.drop_line("too long for a JSON-RPC message");
                None
            } else if let Some(answer) = self.tool_answer(&line) {
                // The common line: one parse, not two.
                Some(answer)
            } else {
                match json_rpc_kind(&line) {
                    None => {
                        self.drop_line("not a JSON-RPC message");
                        None
                    }
                    Some(kind) => match self.parse(&line) {
                        Some(message) => {
                            if kind == Kind::Relayed {
                                self.ledger.read_one();
                            }
                            Some(message)
                        }
                        None => {
                            self.drop_line("not an MCP message");
                            None
                        }
                    },
                }
            };
            // Keep the allocation for the next line.
            self.lines.line = line;
            self.lines.line.clear();
            self.lines.length = 0;
            if message.is_some() {
                return message;
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.outbox.close();
        Ok(())
    }
}

/// Bounded lines of a reader.
struct Lines<R> {
    reader: BufReader<R>,
    /// The line being read, without its newline, cut at the bound.
    line: Vec<u8>,
    /// The line's whole length, past the bound too.
    length: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    /// Reads on until the current line is complete; false at the end of the
    /// input (an unterminated last line is dropped). Cancel-safe: what was
    /// read stays in `line`, and the next call goes on with the same line.
    async fn next(&mut self, max: usize) -> bool {
        loop {
            let buffer = match self.reader.fill_buf().await {
                Ok([]) | Err(_) => return false,
                Ok(buffer) => buffer,
            };
            let (chunk, consumed, complete) = match buffer.iter().position(|&byte| byte == b'\n') {
                Some(index) => (&buffer[..index], index + 1, true),
                None => (buffer, buffer.len(), false),
            };
            let room = max.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.length += chunk.len();
            self.reader.consume(consumed);
            if complete {
                return true;
            }
        }
    }
}

/// Bytes waiting for the child's stdin.
#[derive(Debug, Default)]
struct Outbox {
    state: Mutex<Queue>,
    /// The writer has bytes to write, or the queue closed.
    filled: Notify,
    /// The writer emptied the queue, or the queue closed.
    drained: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    closed: bool,
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        if state.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the upstream's stdin is closed"));
        }
        state.bytes.extend_from_slice(bytes);
        drop(state);
        self.filled.notify_one();
        Ok(())
    }

    /// Waits while more than `MAX_QUEUED` bytes wait for the child.
    async fn room(&self) -> io::Result<()> {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let state = self.state();
                if state.closed {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the upstream's stdin is closed",
                    ));
                }
                if state.bytes.len() <= MAX_QUEUED {
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.filled.notify_one();
        self.drained.notify_waiters();
    }
}

/// Writes what is queued, all of it at once, until the queue closes (then
/// what was queued before is still written) or the child stops reading.
async fn write_queued(outbox: Arc<Outbox>, mut stdin: impl AsyncWrite + Unpin) {
    let mut batch = Vec::new();
    loop {
        let filled = outbox.filled.notified();
        {
            let mut state = outbox.state();
            if state.bytes.is_empty() && state.closed {
                return;
            }
            std::mem::swap(&mut batch, &mut state.bytes);
        }
        if batch.is_empty() {
            filled.await;
            continue;
        }
        let written = stdin.write_all(&batch).await;
        batch.clear();
        outbox.drained.notify_waiters();
        if written.is_err() {
            outbox.close();
            return;
        }
    }
}

/// A request as one JSON line. A `tools/call` whose `_meta` is only the
/// request's own (no `_meta` inside its parameters, no legacy metadata to
/// merge) is written straight from its fields, the `_meta` put back in its
/// parameters; rmcp writes the same JSON by way of a tree of the
/// parameters. Anything else is rmcp's to write.
fn tool_call_line(request: JsonRpcRequest<ClientRequest>) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Line<'a> {
        jsonrpc: JsonRpcVersion2_0,
        id: &'a RequestId,
        method: CallToolRequestMethod,
        params: &'a CallToolRequestParams,
    }
    match request.request {
        ClientRequest::CallToolRequest(mut call)
            if call.params.meta.is_none() && call.extensions.get::<MetaObject>().is_none() =>
        {
            call.params.meta = call.extensions.remove::<RequestMetaObject>();
            serde_json::to_vec(&Line {
                jsonrpc: request.jsonrpc,
                id: &request.id,
                method: call.method,
                params: &call.params,
            })
        }
        other => {
            serde_json::to_vec(&JsonRpcRequest { jsonrpc: request.jsonrpc, id: request.id, request: other })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_survive_a_cancelled_read() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = Lines { reader: BufReader::new(reader), line: Vec::new(), length: 0 };
        writer.write_all(b"{\"half").await.unwrap();
        // The read is cancelled after taking the first half.
        let cancelled = tokio::time::timeout(std::time::Duration::ZERO, lines.next(100)).await;
        assert!(cancelled.is_err());
        writer.write_all(b"\":1}\nnext\n").await.unwrap();
        assert!(lines.next(100).await);
        assert_eq!(lines.line, b"{\"half\":1}");
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_measured() {
        let input = format!("{}\nshort\n", "x".repeat(50));
        let mut lines = Lines { reader: BufReader::new(input.as_bytes()), line: Vec::new(), length: 0 };
        assert!(lines.next(10).await);
        assert_eq!((lines.line.len(), lines.length), (10, 50));
    }

    #[tokio::test]
    async fn queued_messages_reach_stdin_in_order_and_close_it() {
        let (stdin, mut child) = tokio::io::duplex(1 << 20);
        let (_, stdout) = tokio::io::duplex(64);
        let mut transport =
            StdioTransport::new("t", stdout, stdin, Arc::new(AtomicU64::new(0)), Arc::new(Ledger::default()));
        let mut sends = Vec::new();
        for id in 0..100 {
            let ping = rmcp::model::ClientRequest::PingRequest(Default::default());
            let message = TxJsonRpcMessage::<RoleClient>::request(ping, rmcp::model::RequestId::Number(id));
            sends.push(tokio::spawn(transport.send(message)));
        }
        // Awaited in reverse: the order on the wire is the order of `send`.
        for send in sends.into_iter().rev() {
            send.await.unwrap().unwrap();
        }
        drop(transport);
        let mut written = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut child, &mut written).await.unwrap();
        let ids: Vec<i64> = written
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_tool_call_is_written_as_rmcp_writes_it() {
        let arguments = serde_json::json!({"text": "hi", "n": [1, {"x": null}]}).as_object().cloned();
        let mut with_meta = rmcp::model::CallToolRequestParams::new("echo");
        with_meta.arguments = arguments.clone();
        with_meta.request_state = Some("state".into());
        with_meta.input_responses = Some([("q".to_string(), serde_json::json!({"a": 1}))].into());
        let progress = |token: i64| {
            RequestMetaObject::with_progress_token(rmcp::model::ProgressToken(
                rmcp::model::NumberOrString::Number(token),
            ))
        };
        let mut requests = Vec::new();
        // Bare; the request's `_meta` only (as rmcp's peer sends a call);
        // `_meta` both in the parameters and beside them; legacy metadata.
        let mut bare = rmcp::model::CallToolRequestParams::new("echo");
        bare.arguments = arguments;
        requests.push(rmcp::model::Request::new(bare.clone()));
        let mut request = rmcp::model::Request::new(with_meta.clone());
        request.extensions.insert(progress(7));
        requests.push(request);
        let mut both = with_meta;
        both.meta = Some(progress(1));
        let mut request = rmcp::model::Request::new(both);
        request.extensions.insert(progress(2));
        requests.push(request);
        let mut request = rmcp::model::Request::new(bare);
        request
            .extensions
            .insert(MetaObject(serde_json::json!({"legacy": true}).as_object().cloned().unwrap()));
        requests.push(request);
        let mut messages: Vec<JsonRpcRequest<ClientRequest>> = requests
            .into_iter()
            .enumerate()
            .map(|(id, request)| {
                JsonRpcRequest::new(RequestId::Number(id as i64), ClientRequest::CallToolRequest(request))
            })
            .collect();
        messages.push(JsonRpcRequest::new(
            RequestId::String("list".into()),
            ClientRequest::ListToolsRequest(Default::default()),
        ));
        for message in messages {
            let rmcp_line =
                serde_json::to_value(TxJsonRpcMessage::<RoleClient>::Request(message.clone())).unwrap();
            let ours: serde_json::Value = serde_json::from_slice(&tool_call_line(message).unwrap()).unwrap();
            assert_eq!(ours, rmcp_line);
        }
    }

    fn call(id: i64) -> TxJsonRpcMessage<RoleClient> {
        let params = rmcp::model::CallToolRequestParams::new("echo");
        let request = ClientRequest::CallToolRequest(rmcp::model::Request::new(params));
        TxJsonRpcMessage::<RoleClient>::request(request, RequestId::Number(id))
    }

    #[tokio::test]
    async fn answers_to_tool_calls_parse_as_rmcp_parses_them() {
        let (stdin, _child) = tokio::io::duplex(1 << 20);
        let (mut child_stdout, stdout) = tokio::io::duplex(1 << 16);
        let mut transport =
            StdioTransport::new("t", stdout, stdin, Arc::new(AtomicU64::new(0)), Arc::new(Ledger::default()));
        drop(transport.send(call(7)));
        drop(transport.send(call(9)));
        let ping = ClientRequest::PingRequest(Default::default());
        drop(transport.send(TxJsonRpcMessage::<RoleClient>::request(ping, RequestId::Number(8))));
        assert_eq!(transport.calls.len(), 2, "only tool calls are remembered");

        let lines = [
            // A tool's answer: parsed directly.
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}],"isError":false}}"#,
            // The ping's answer: rmcp's parse.
            r#"{"jsonrpc":"2.0","id":8,"result":{}}"#,
            // A tool's answer that is not a tool's result: rmcp's parse.
            r#"{"jsonrpc":"2.0","id":9,"result":{"resultType":"input_required","inputRequests":{}}}"#,
            // An answer to a call already answered: rmcp's parse.
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
        ];
        for line in lines {
            child_stdout.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        }
        for (index, line) in lines.into_iter().enumerate() {
            let received = transport.receive().await.expect("a message");
            let expected = serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(line).unwrap();
            assert_eq!(
                serde_json::to_value(&received).unwrap(),
                serde_json::to_value(&expected).unwrap(),
                "{line}"
            );
            let JsonRpcMessage::Response(response) = &received else {
                panic!("not a response: {received:?}")
            };
            let is_tool_result = matches!(response.result, ServerResult::CallToolResult(_));
            assert_eq!(is_tool_result, index != 1 && index != 2, "{line} gave {:?}", response.result);
        }
        assert!(transport.calls.is_empty(), "every answered call is forgotten: {:?}", transport.calls);
    }

    #[tokio::test]
    async fn an_answer_with_an_error_too_is_no_answer() {
        let (stdin, _child) = tokio::io::duplex(1 << 20);
        let (mut child_stdout, stdout) = tokio::io::duplex(1 << 16);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut transport =
            StdioTransport::new("t", stdout, stdin, dropped.clone(), Arc::new(Ledger::default()));
        drop(transport.send(call(5)));
        let lines = [
            r#"{"jsonrpc":"2.0","id":5,"result":{"content":[]},"error":{"code":1,"message":"both"}}"#,
            r#"{"jsonrpc":"1.0","id":5,"result":{"content":[]}}"#,
            r#"[{"jsonrpc":"2.0","id":5,"result":{"content":[]}}]"#,
            r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"the answer"}]}}"#,
        ];
        for line in lines {
            child_stdout.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        }
        let received = serde_json::to_value(transport.receive().await.expect("a message")).unwrap();
        assert_eq!(received["result"]["content"][0]["text"], "the answer", "{received}");
        assert_eq!(dropped.load(Ordering::Relaxed), 3, "the malformed lines are dropped");
        assert!(transport.calls.is_empty());
    }

    #[tokio::test]
    async fn calls_that_are_never_answered_are_forgotten() {
        let (stdin, _child) = tokio::io::duplex(1 << 24);
        let (_, stdout) = tokio::io::duplex(64);
        let mut transport =
            StdioTransport::new("t", stdout, stdin, Arc::new(AtomicU64::new(0)), Arc::new(Ledger::default()));
        drop(transport.send(call(1)));
        let cancelled = rmcp::model::CancelledNotificationParam::new(Some(RequestId::Number(1)), None);
        let notification =
            ClientNotification::CancelledNotification(rmcp::model::Notification::new(cancelled));
        drop(transport.send(TxJsonRpcMessage::<RoleClient>::notification(notification)));
        assert!(transport.calls.is_empty(), "a cancelled call is forgotten");
        for id in 0..=MAX_PENDING_CALLS as i64 {
            drop(transport.send(call(id)));
        }
        assert_eq!(transport.calls.len(), 1, "the list starts over when full");
    }
}
