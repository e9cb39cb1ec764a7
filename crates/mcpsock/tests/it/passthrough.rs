//! What an upstream sends during a request reaches the client session that
//! caused it, through the daemon and its socket: progress (with the
//! client's own token), log messages (at each session's level), elicitation
//! requests and their answers, cancellation both ways, list changes and
//! resource updates. The client is rmcp's own Streamable HTTP client; the
//! upstream is the workspace's conformance fixture server.

// Logging and sampling are deprecated by SEP-2577 but exercised here on
// purpose: they are what clients of the earlier revisions use.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientInfo, ClientRequest, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, Implementation, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, Request, ResourceUpdatedNotificationParam,
    ServerResult, SetLevelRequestParams, SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, UnixSocketHttpClient};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::*;

/// What a client does when asked a question.
#[derive(Clone)]
enum Answer {
    /// Accepts with this content.
    Accept(Value),
    /// Says its roots changed (the fixture's cue to withdraw the question)
    /// and waits for the withdrawal.
    AwaitWithdrawal,
    /// Holds the question until `release` is notified, then accepts.
    Hold(Arc<Notify>),
}

/// A client that records everything the gateway sends it.
#[derive(Clone)]
struct Recorder {
    answer: Answer,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default, Debug)]
struct Seen {
    progress: Vec<ProgressNotificationParam>,
    logs: Vec<LoggingMessageNotificationParam>,
    questions: Vec<String>,
    withdrawn: usize,
    tools_changed: usize,
    updated: Vec<String>,
}

impl Recorder {
    fn new(answer: Answer) -> Self {
        Self { answer, seen: Arc::default() }
    }

    fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().unwrap())
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientInfo {
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation =
            Some(ElicitationCapability::new().with_form(FormElicitationCapability::new()));
        ClientInfo::new(capabilities, Implementation::new("passthrough-test", "1"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let message =
            serde_json::to_value(&request).unwrap()["message"].as_str().unwrap_or_default().to_string();
        self.seen.lock().unwrap().questions.push(message);
        match &self.answer {
            Answer::Accept(content) => {
                Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content.clone()))
            }
            Answer::AwaitWithdrawal => {
                context.peer.notify_roots_list_changed().await.unwrap();
                context.ct.cancelled().await;
                self.seen.lock().unwrap().withdrawn += 1;
                Err(ErrorData::internal_error("withdrawn", None))
            }
            Answer::Hold(release) => {
                release.notified().await;
                Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"response": "held"})))
            }
        }
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().progress.push(params);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().logs.push(params);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().tools_changed += 1;
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().updated.push(params.uri);
    }
}

fn conformance_server() -> std::path::PathBuf {
    let path = mcpsock().with_file_name("mcpsock-conformance-server");
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first", path.display());
    path
}

fn fixture_daemon(sandbox: &Sandbox) -> Daemon {
    let config = sandbox.write_config(&json!({
        "mcpServers": {"fixture": {"command": conformance_server(), "prefix": ""}}
    }));
    Daemon::start(sandbox, &config)
}

async fn connect(sandbox: &Sandbox, recorder: &Recorder) -> RunningService<RoleClient, Recorder> {
    let url = "http://localhost/mcp";
    let client = UnixSocketHttpClient::new(&sandbox.socket().to_string_lossy(), url);
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(url),
    );
    recorder.clone().serve(transport).await.unwrap()
}

async fn call(client: &RunningService<RoleClient, Recorder>, tool: &str, arguments: Value) -> String {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = arguments.as_object().cloned();
    let result = client.call_tool(params).await.unwrap();
    serde_json::to_value(&result).unwrap()["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

async fn wait_for(what: &str, recorder: &Recorder, condition: impl Fn(&Seen) -> bool) {
    tokio::time::timeout(TIMEOUT, async {
        while !recorder.seen(&condition) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("timed out waiting until {what}: {:?}", recorder.seen(|seen| format!("{seen:?}")))
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

#[test]
fn progress_comes_back_with_the_clients_own_token() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        let recorder = Recorder::new(Answer::Accept(json!({})));
        let client = connect(&sandbox, &recorder).await;
        let request = ClientRequest::CallToolRequest(Request::new(CallToolRequestParams::new(
            "test_tool_with_progress",
        )));
        let handle =
            client.send_request_with_option(request, PeerRequestOptions::no_options()).await.unwrap();
        let token = handle.progress_token.clone();
        let ServerResult::CallToolResult(result) = handle.await_response().await.unwrap() else { panic!() };
        // The fixture echoes the token it was given: the gateway's own, not the client's.
        let upstream_token = serde_json::to_value(&result).unwrap()["content"][0]["text"].clone();
        let progress = recorder.seen(|seen| seen.progress.clone());
        let values: Vec<f64> = progress.iter().map(|params| params.progress).collect();
        assert_eq!(values, [0.0, 50.0, 100.0], "all progress arrives before the result: {progress:?}");
        assert!(progress.iter().all(|params| params.progress_token == token), "{progress:?} vs {token:?}");
        assert!(progress.iter().all(|params| params.total == Some(100.0)));
        assert!(upstream_token.is_string(), "{result:?}");
        client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn log_messages_reach_the_session_that_caused_them_at_its_level() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        let chatty = Recorder::new(Answer::Accept(json!({})));
        let quiet = Recorder::new(Answer::Accept(json!({})));
        let chatty_client = connect(&sandbox, &chatty).await;
        let quiet_client = connect(&sandbox, &quiet).await;
        chatty_client.set_level(SetLevelRequestParams::new(LoggingLevel::Debug)).await.unwrap();
        quiet_client.set_level(SetLevelRequestParams::new(LoggingLevel::Error)).await.unwrap();
        // The fixture answers setLevel with an info message, during that request.
        wait_for("the debug session hears its own setLevel", &chatty, |seen| !seen.logs.is_empty()).await;
        let before = chatty.seen(|seen| seen.logs.len());
        assert_eq!(
            call(&chatty_client, "test_tool_with_logging", json!({})).await,
            "Tool with logging executed successfully"
        );
        wait_for("three messages of the tool", &chatty, |seen| seen.logs.len() == before + 3).await;
        let texts: Vec<Value> =
            chatty.seen(|seen| seen.logs[before..].iter().map(|log| log.data.clone()).collect());
        assert_eq!(
            texts,
            [
                json!("Tool execution started"),
                json!("Tool processing data"),
                json!("Tool execution completed")
            ]
        );
        // The quiet session's own tool call gives it nothing below error.
        assert_eq!(
            call(&quiet_client, "test_tool_with_logging", json!({})).await,
            "Tool with logging executed successfully"
        );
        assert_eq!(
            call(&quiet_client, "test_simple_text", json!({})).await,
            "This is a simple text response for testing."
        );
        assert!(
            quiet.seen(|seen| seen.logs.is_empty()),
            "{:?}",
            quiet.seen(|seen| format!("{:?}", seen.logs))
        );
        chatty_client.cancel().await.unwrap();
        quiet_client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn elicitation_is_asked_of_the_calling_client_and_its_answer_returned() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        let asked = Recorder::new(Answer::Accept(json!({"response": "from the asked client"})));
        let bystander = Recorder::new(Answer::Accept(json!({"response": "from a bystander"})));
        let asked_client = connect(&sandbox, &asked).await;
        let bystander_client = connect(&sandbox, &bystander).await;
        let text = call(&asked_client, "test_elicitation", json!({"message": "Which one?"})).await;
        assert_eq!(text, r#"User response: action=accept, content={"response":"from the asked client"}"#);
        assert_eq!(asked.seen(|seen| seen.questions.clone()), ["Which one?"]);
        assert!(bystander.seen(|seen| seen.questions.is_empty()));
        asked_client.cancel().await.unwrap();
        bystander_client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_question_the_upstream_withdraws_is_withdrawn_from_the_client() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        // The client's roots/list_changed travels upstream through the
        // gateway; the fixture then cancels its elicitation request, and the
        // gateway cancels the client's copy.
        let recorder = Recorder::new(Answer::AwaitWithdrawal);
        let client = connect(&sandbox, &recorder).await;
        assert_eq!(call(&client, "test_withdrawn_elicitation", json!({})).await, "withdrawn");
        wait_for("the client sees the withdrawal", &recorder, |seen| seen.withdrawn == 1).await;
        client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_question_from_a_shared_upstream_that_could_belong_to_two_sessions_is_refused() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        let release = Arc::new(Notify::new());
        let first = Recorder::new(Answer::Hold(release.clone()));
        let second = Recorder::new(Answer::Accept(json!({"response": "second"})));
        let first_client = connect(&sandbox, &first).await;
        let second_client = connect(&sandbox, &second).await;
        let held = tokio::spawn({
            let peer = first_client.peer().clone();
            async move {
                let mut params = CallToolRequestParams::new("test_elicitation");
                params.arguments = json!({"message": "first"}).as_object().cloned();
                peer.call_tool(params).await.unwrap()
            }
        });
        wait_for("the first client is asked", &first, |seen| seen.questions.len() == 1).await;
        // Over stdio nothing says which request an upstream's question
        // belongs to; with two sessions' calls in flight the gateway refuses
        // to guess rather than risk asking the wrong client.
        let text = call(&second_client, "test_elicitation", json!({"message": "second"})).await;
        assert!(text.starts_with("Elicitation not supported or error:"), "{text}");
        assert!(text.contains("cannot tell which of 2 client sessions"), "{text}");
        assert!(second.seen(|seen| seen.questions.is_empty()));
        release.notify_one();
        let first_result = serde_json::to_value(held.await.unwrap()).unwrap();
        assert_eq!(
            first_result["content"][0]["text"],
            r#"User response: action=accept, content={"response":"held"}"#
        );
        first_client.cancel().await.unwrap();
        second_client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn list_changes_reach_every_session_and_updates_only_subscribers() {
    let sandbox = Sandbox::new();
    let daemon = fixture_daemon(&sandbox);
    runtime().block_on(async {
        let subscriber = Recorder::new(Answer::Accept(json!({})));
        let other = Recorder::new(Answer::Accept(json!({})));
        let subscriber_client = connect(&sandbox, &subscriber).await;
        let other_client = connect(&sandbox, &other).await;
        // Both sessions have made a request, so the gateway knows them.
        call(&other_client, "test_simple_text", json!({})).await;
        assert_eq!(
            call(&subscriber_client, "test_trigger_tool_change", json!({})).await,
            "Mutation triggered"
        );
        wait_for("the caller hears the tool list changed", &subscriber, |seen| seen.tools_changed == 1).await;
        wait_for("the other session too", &other, |seen| seen.tools_changed == 1).await;
        // The fixture announces an update of a resource right after it is subscribed.
        subscriber_client.subscribe(SubscribeRequestParams::new("test://watched-resource")).await.unwrap();
        wait_for("the subscriber hears of the update", &subscriber, |seen| !seen.updated.is_empty()).await;
        assert_eq!(subscriber.seen(|seen| seen.updated.clone()), ["test://watched-resource"]);
        call(&other_client, "test_simple_text", json!({})).await;
        assert!(other.seen(|seen| seen.updated.is_empty()), "an unsubscribed session heard of an update");
        subscriber_client.cancel().await.unwrap();
        other_client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_request_the_client_cancels_is_cancelled_upstream() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let config = sandbox.write_config(&json!({
        "mcpServers": {"fake": {"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received}}}
    }));
    let daemon = Daemon::start(&sandbox, &config);
    runtime().block_on(async {
        let recorder = Recorder::new(Answer::Accept(json!({})));
        let client = connect(&sandbox, &recorder).await;
        let request = ClientRequest::CallToolRequest(Request::new(CallToolRequestParams::new("fake__hang")));
        let handle =
            client.send_request_with_option(request, PeerRequestOptions::no_options()).await.unwrap();
        let upstream_has_it =
            || std::fs::read_to_string(&received).unwrap_or_default().contains(r#""name":"hang""#);
        tokio::time::timeout(TIMEOUT, async {
            while !upstream_has_it() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the call reaches the upstream");
        handle.cancel(Some("changed my mind".into())).await.unwrap();
        client.cancel().await.unwrap();
    });
    wait_until("the upstream is sent notifications/cancelled", || {
        std::fs::read_to_string(&received).unwrap_or_default().contains("notifications/cancelled")
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_reload_renames_the_tools_and_tells_open_sessions() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(&json!({"mcpServers": {"demo": {"command": demo_server()}}}));
    let daemon = Daemon::start(&sandbox, &config);
    runtime().block_on(async {
        let recorder = Recorder::new(Answer::Accept(json!({})));
        let client = connect(&sandbox, &recorder).await;
        let names = |tools: Vec<rmcp::model::Tool>| -> Vec<String> {
            tools.into_iter().map(|tool| tool.name.to_string()).collect()
        };
        let before = names(client.list_all_tools().await.unwrap());
        assert_eq!(before, ["demo__add", "demo__countdown", "demo__echo", "demo__now"]);

        rewrite_config(
            &config,
            &json!({"mcpServers": {"demo": {"command": demo_server(), "prefix": "d2", "disabled_tools": ["now"]}}}),
        );
        let reload = sandbox.client(&["reload"]);
        assert!(reload.status.success(), "{}", stderr(&reload));
        wait_for("the open session hears the tool list changed", &recorder, |seen| seen.tools_changed >= 1)
            .await;
        // The same session sees the names of the new set of upstreams.
        let after = names(client.list_all_tools().await.unwrap());
        assert_eq!(after, ["d2__add", "d2__countdown", "d2__echo"]);
        assert_eq!(call(&client, "d2__echo", json!({"text": "renamed"})).await, "renamed");
        let old = client.call_tool(CallToolRequestParams::new("demo__echo")).await;
        assert!(old.is_err(), "the old name is gone: {old:?}");
        client.cancel().await.unwrap();
    });
    assert!(daemon.stop().success());
}

/// A question of an upstream of the earlier revisions, asked during a
/// 2026-07-28 client's call, becomes an `InputRequiredResult`; the retry with
/// the answer completes the call; a call whose client never comes back is
/// cancelled upstream when its `request_timeout` ends, and its state then
/// says it expired.
#[test]
fn a_question_to_a_2026_client_is_input_required_and_an_abandoned_one_is_cancelled_upstream() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let config = sandbox.write_config(&json!({
        "mcpServers": {"fake": {"command": fake_upstream(), "env": {"FAKE_UPSTREAM_LOG": received}}},
        "request_timeout": "1s",
    }));
    let daemon = Daemon::start(&sandbox, &config);
    let call = |extra: Value| {
        let mut params = json!({"name": "fake__ask", "arguments": {}});
        params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        modern_request(&daemon.socket, "tools/call", params)
    };
    let question = |reply: &Value| {
        let result = &reply["result"];
        assert_eq!(result["resultType"], "input_required", "{reply}");
        let (key, request) = result["inputRequests"].as_object().unwrap().iter().next().unwrap();
        assert_eq!(request["method"], "elicitation/create", "{reply}");
        assert_eq!(request["params"]["message"], "What is your name?");
        (key.clone(), result["requestState"].as_str().unwrap().to_string())
    };

    let (key, state) = question(&call(json!({})));
    let answer = json!({key: {"action": "accept", "content": {"name": "Ada"}}});
    let done = call(json!({"inputResponses": answer, "requestState": state}));
    let text = done["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{done}"));
    assert!(text.contains("\"accept\"") && text.contains("Ada"), "{text}");

    let (key, state) = question(&call(json!({})));
    wait_until("the abandoned call is cancelled upstream", || {
        std::fs::read_to_string(&received).unwrap_or_default().contains("notifications/cancelled")
    });
    let answer = json!({key: {"action": "accept", "content": {"name": "late"}}});
    let late = call(json!({"inputResponses": answer, "requestState": state}));
    assert_eq!(late["error"]["code"], -32602, "{late}");
    let message = late["error"]["message"].as_str().unwrap();
    assert!(message.contains("expired") && message.contains("send the request again"), "{message}");
    assert!(daemon.stop().success());
}
