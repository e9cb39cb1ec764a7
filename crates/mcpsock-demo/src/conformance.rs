//! The server the official MCP conformance suite expects, built on rmcp:
//! served over stdio by `mcpsock-conformance-server`, and over the socket by
//! the `mcpsock` crate's example server.
//!
//! It offers the fixture tools, resources and prompts that the suite's
//! server scenarios call by name (`test_simple_text`, `test://static-text`,
//! `test_simple_prompt`, …), with the behaviour each scenario checks:
//! progress and log messages during a call, elicitation and sampling
//! requests back to the client, resource subscriptions, completion. Run
//! behind `mcpsock serve` (with `"prefix": ""`, so the names stay exact), it
//! lets the suite judge the gateway rather than the server.
//!
//! For clients of the 2026-07-28 revision, which take no requests from a
//! server, the tools that need the client's input answer with an
//! `InputRequiredResult` and read the answers from the retry.

// Logging and sampling are deprecated by SEP-2577 (2026-07-28), but the
// suite's earlier-revision scenarios exercise them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotificationParam, ClientResult,
    CompleteRequestParams, CompleteResult, CreateMessageRequestParams, ElicitRequestParams,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, InputRequiredResult,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, Notification, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Request, RequestStateCodec,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, ServerNotification, ServerRequest,
    SetLevelRequestParams, SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde_json::{Value, json};

const TEST_IMAGE_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
const WATCHED: &str = "test://watched-resource";

/// The fixture tools, resources and prompts.
#[derive(Clone)]
pub struct Fixture {
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
    /// Signalled by `notifications/roots/list_changed`.
    roots_changed: Arc<tokio::sync::Notify>,
    /// Seals `requestState` so that a client cannot forge or alter it.
    codec: Arc<RequestStateCodec>,
    /// Open 2026-07-28 `subscriptions/listen` streams.
    listeners: Arc<Mutex<Vec<SubscriptionSink>>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture with a fresh key for sealing `requestState`.
    pub fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|error| format!("no random key: {error}"))?;
        Ok(Self {
            subscriptions: Arc::default(),
            roots_changed: Arc::default(),
            codec: Arc::new(RequestStateCodec::try_new(key.to_vec())?),
            listeners: Arc::default(),
        })
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, Vec<SubscriptionSink>> {
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells the 2026-07-28 listen streams whose filter asked for it.
    async fn broadcast(&self, notification: ServerNotification) {
        let listeners = self.listeners().clone();
        for sink in listeners {
            // A stream that did not ask for this kind, or is gone, is skipped.
            let _ = sink.send(notification.clone()).await;
        }
    }
}

fn object(value: Value) -> Arc<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    Tool::new(name, description, object(schema))
}

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tools() -> Vec<Tool> {
    let mut tools = vec![
        tool("test_simple_text", "Tests simple text content response", empty_schema()),
        tool("test_image_content", "Tests image content response", empty_schema()),
        tool("test_audio_content", "Tests audio content response", empty_schema()),
        tool("test_embedded_resource", "Tests embedded resource content response", empty_schema()),
        tool(
            "test_multiple_content_types",
            "Tests response with multiple content types (text, image, resource)",
            empty_schema(),
        ),
        tool("test_tool_with_logging", "Tests tool that emits log messages during execution", empty_schema()),
        tool("test_tool_with_progress", "Tests tool that reports progress notifications", empty_schema()),
        tool("test_error_handling", "Tests error response handling", empty_schema()),
        tool(
            "test_sampling",
            "Tests server-initiated sampling (LLM completion request)",
            json!({"type": "object", "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}}, "required": ["prompt"]}),
        ),
        tool(
            "test_elicitation",
            "Tests server-initiated elicitation (user input request)",
            json!({"type": "object", "properties": {"message": {"type": "string", "description": "The message to show the user"}}, "required": ["message"]}),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Tests elicitation with default values per SEP-1034",
            empty_schema(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Tests elicitation with enum schema improvements per SEP-1330",
            empty_schema(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {"address": {
                    "$anchor": "address",
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}}
                }},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": false,
                // Composition and conditional keywords (SEP-2106) that a
                // gateway must pass through untouched.
                "allOf": [{"anyOf": [{"required": ["name"]}, {"required": ["address"]}]}],
                "if": {"properties": {"name": {"const": "home"}}, "required": ["name"]},
                "then": {"required": ["address"]},
                "else": {"properties": {"address": {"$ref": "#/$defs/address"}}}
            }),
        ),
    ];
    // The 2026-07-28 scenarios: multi-round requests, capability checks and
    // the hooks the suite uses to make the server change its lists.
    for (name, description) in [
        ("test_missing_capability", "Test tool requiring sampling"),
        (
            "test_input_required_result_elicitation",
            "MRTR: returns InputRequiredResult with elicitation request",
        ),
        ("test_input_required_result_sampling", "MRTR: returns InputRequiredResult with sampling request"),
        (
            "test_input_required_result_list_roots",
            "MRTR: returns InputRequiredResult with roots/list request",
        ),
        ("test_input_required_result_request_state", "MRTR: returns InputRequiredResult with requestState"),
        (
            "test_input_required_result_multiple_inputs",
            "MRTR: returns InputRequiredResult with multiple input requests",
        ),
        ("test_input_required_result_multi_round", "MRTR: multi-round InputRequiredResult workflow"),
        ("test_input_required_result_tampered_state", "MRTR: HMAC-signed requestState integrity test"),
        ("test_input_required_result_capabilities", "MRTR: respects client capabilities in inputRequests"),
        ("test_streaming_elicitation", "Diagnostic tool validating response progress streams"),
        ("test_logging_tool", "Diagnostic logging validator tool"),
        ("test_trigger_tool_change", "Announces a change of the tool list"),
        ("test_trigger_prompt_change", "Announces a change of the prompt list"),
        (
            "test_withdrawn_elicitation",
            "Asks the client a question and withdraws it (notifications/cancelled) once the client says its roots changed",
        ),
    ] {
        tools.push(tool(name, description, empty_schema()));
    }
    tools
}

fn elicit_request(message: &str, field: &str, kind: &str) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
        }
    })
}

fn sampling_request(text: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": max_tokens}
    })
}

fn input_required(
    input_requests: Value,
    request_state: Option<String>,
) -> Result<CallToolResponse, ErrorData> {
    let mut result = json!({"resultType": "input_required", "inputRequests": input_requests});
    if let Some(state) = request_state {
        result["requestState"] = json!(state);
    }
    Ok(CallToolResponse::InputRequired(from_json::<InputRequiredResult>(result)?))
}

/// `inputResponses[key].content[field]` as text, the way the suite's own
/// fixture reads answers.
fn answer_text(responses: &Value, key: &str, field: &str) -> String {
    responses
        .pointer(&format!("/{key}/content/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string()
}

fn complete(content: Vec<Value>) -> Result<CallToolResponse, ErrorData> {
    success(content).map(CallToolResponse::Complete)
}

/// Builds a model value from its JSON form: the suite specifies the wire
/// shapes, so writing them as JSON keeps the fixture next to its spec.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value)
        .map_err(|error| ErrorData::internal_error(format!("fixture value: {error}"), None))
}

fn text(text: impl Into<String>) -> Value {
    json!({"type": "text", "text": text.into()})
}

fn image() -> Value {
    json!({"type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png"})
}

fn embedded(uri: &str, mime_type: &str, text: &str) -> Value {
    json!({"type": "resource", "resource": {"uri": uri, "mimeType": mime_type, "text": text}})
}

fn success(content: Vec<Value>) -> Result<CallToolResult, ErrorData> {
    result(json!({"content": content}))
}

/// A complete result from its JSON form. 2026-07-28 clients require
/// `resultType` on every result; rmcp removes it again for older clients.
fn result<T: serde::de::DeserializeOwned>(mut value: Value) -> Result<T, ErrorData> {
    if let Some(object) = value.as_object_mut() {
        object.entry("resultType").or_insert_with(|| json!("complete"));
    }
    from_json(value)
}

fn form_elicitation(message: &str, schema: Value) -> Result<ElicitRequestParams, ErrorData> {
    from_json(json!({"mode": "form", "message": message, "requestedSchema": schema}))
}

fn sep1034_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": true}
        },
        "required": []
    })
}

fn sep1330_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "description": "Select one option with titles", "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}
            ]},
            "legacyEnum": {"type": "string", "description": "Select one option (legacy)", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "description": "Select multiple options", "minItems": 1, "maxItems": 3, "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "description": "Select multiple options with titles", "minItems": 1, "maxItems": 3, "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"},
                {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}
            ]}}
        },
        "required": []
    })
}

async fn log(peer: &Peer<RoleServer>, level: LoggingLevel, message: &str) {
    let params =
        LoggingMessageNotificationParam::new(level, json!(message)).with_logger("conformance-test-server");
    let _ = peer.notify_logging_message(params).await;
}

impl Fixture {
    async fn elicit(
        &self,
        peer: &Peer<RoleServer>,
        message: &str,
        schema: Value,
        prefix: &str,
    ) -> Result<CallToolResult, ErrorData> {
        let request = ServerRequest::ElicitRequest(Request::new(form_elicitation(message, schema)?));
        let line = match peer.send_request(request).await {
            Ok(ClientResult::ElicitResult(result)) => {
                let result = serde_json::to_value(result).unwrap_or_default();
                let content = result.get("content").cloned().unwrap_or(json!({}));
                let action = result.get("action").and_then(Value::as_str).unwrap_or_default().to_string();
                format!("{prefix}: action={action}, content={content}")
            }
            Ok(other) => format!("Elicitation not supported or error: unexpected answer {other:?}"),
            Err(error) => format!("Elicitation not supported or error: {error}"),
        };
        success(vec![text(line)])
    }

    /// The tools of the 2026-07-28 scenarios; `None` for the others.
    async fn call_multi_round(
        &self,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<CallToolResponse>, ErrorData> {
        let responses = serde_json::to_value(&request.input_responses).unwrap_or_default();
        // Every answer is a result object (an ElicitResult, a
        // CreateMessageResult, a ListRootsResult); anything else is refused.
        if let Some((key, _)) =
            responses.as_object().and_then(|answers| answers.iter().find(|(_, answer)| !answer.is_object()))
        {
            return Err(ErrorData::invalid_params(format!("inputResponses.{key} must be an object"), None));
        }
        let answered = |key: &str| responses.get(key).is_some_and(|value| !value.is_null());
        let state = request.request_state.as_deref();
        let sealed = |value: Value| {
            self.codec.seal_json(&value).map_err(|error| ErrorData::internal_error(error.to_string(), None))
        };
        let opened = |state: &str| self.codec.open_json::<Value>(state).ok();
        let response = match request.name.as_ref() {
            "test_missing_capability" => {
                if context
                    .meta
                    .client_capabilities()
                    .is_none_or(|capabilities| capabilities.sampling.is_none())
                {
                    let mut required = rmcp::model::ClientCapabilities::default();
                    required.sampling = Some(Default::default());
                    return Err(ErrorData::missing_required_client_capability(required));
                }
                complete(vec![text("Success")])
            }
            "test_input_required_result_elicitation" if answered("user_name") => {
                complete(vec![text(format!("Hello, {}!", answer_text(&responses, "user_name", "name")))])
            }
            "test_input_required_result_elicitation" => input_required(
                json!({"user_name": elicit_request("What is your name?", "name", "string")}),
                None,
            ),
            "test_input_required_result_sampling" if answered("sample_request") => {
                let reply = responses
                    .pointer("/sample_request/content/text")
                    .and_then(Value::as_str)
                    .unwrap_or("no response");
                complete(vec![text(format!("Sampling result: {reply}"))])
            }
            "test_input_required_result_sampling" => input_required(
                json!({"sample_request": sampling_request("What is the capital of France?", 100)}),
                None,
            ),
            "test_input_required_result_list_roots" if answered("roots_request") => {
                let roots =
                    responses.pointer("/roots_request/roots").and_then(Value::as_array).map_or(0, Vec::len);
                complete(vec![text(format!("Found {roots} root(s)"))])
            }
            "test_input_required_result_list_roots" => {
                input_required(json!({"roots_request": {"method": "roots/list", "params": {}}}), None)
            }
            "test_input_required_result_request_state" => {
                let confirmed = responses.pointer("/confirm/content/ok") == Some(&json!(true));
                match state.and_then(opened) {
                    Some(state) if state["kind"] == "request-state" && confirmed => {
                        complete(vec![text("state-ok: requestState validated")])
                    }
                    _ => input_required(
                        json!({"confirm": elicit_request("Please confirm", "ok", "boolean")}),
                        Some(sealed(json!({"kind": "request-state"}))?),
                    ),
                }
            }
            "test_input_required_result_multiple_inputs" => {
                let all = answered("user_name") && answered("greeting") && answered("client_roots");
                match state.and_then(opened) {
                    Some(state) if state["kind"] == "multiple-inputs" && all => {
                        let greeting = responses
                            .pointer("/greeting/content/text")
                            .and_then(Value::as_str)
                            .unwrap_or("Hello there!");
                        let roots = responses
                            .pointer("/client_roots/roots")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len);
                        complete(vec![text(format!(
                            "Name: {}; Greeting: {greeting}; Roots: {roots}",
                            answer_text(&responses, "user_name", "name")
                        ))])
                    }
                    _ => input_required(
                        json!({
                            "user_name": elicit_request("What is your name?", "name", "string"),
                            "greeting": sampling_request("Generate a greeting", 50),
                            "client_roots": {"method": "roots/list", "params": {}}
                        }),
                        Some(sealed(json!({"kind": "multiple-inputs"}))?),
                    ),
                }
            }
            "test_input_required_result_multi_round" => {
                let first_round = || {
                    input_required(
                        json!({"step1": elicit_request("Step 1: What is your name?", "name", "string")}),
                        Some(sealed(json!({"round": 1}))?),
                    )
                };
                match state.and_then(opened) {
                    Some(state) if state["round"] == 1 && answered("step1") => input_required(
                        json!({"step2": elicit_request("Step 2: What is your favorite color?", "color", "string")}),
                        Some(sealed(json!({"round": 2, "name": answer_text(&responses, "step1", "name")}))?),
                    ),
                    Some(state) if state["round"] == 2 && answered("step2") => {
                        let name = state["name"].as_str().unwrap_or("friend").to_string();
                        let color = answer_text(&responses, "step2", "color");
                        complete(vec![text(format!("Multi-round complete for {name} who likes {color}"))])
                    }
                    _ => first_round(),
                }
            }
            "test_input_required_result_tampered_state" => match state {
                Some(state) => match opened(state) {
                    None => Err(ErrorData::invalid_params("requestState integrity check failed", None)),
                    Some(state) if state["kind"] == "tamper-test" && answered("confirm") => {
                        complete(vec![text("integrity-ok: state verified")])
                    }
                    Some(_) => input_required(
                        json!({"confirm": elicit_request("Please confirm", "ok", "boolean")}),
                        Some(sealed(json!({"kind": "tamper-test"}))?),
                    ),
                },
                None => input_required(
                    json!({"confirm": elicit_request("Please confirm", "ok", "boolean")}),
                    Some(sealed(json!({"kind": "tamper-test"}))?),
                ),
            },
            "test_input_required_result_capabilities" => {
                let capabilities = context.meta.client_capabilities().unwrap_or_default();
                let mut requests = serde_json::Map::new();
                if capabilities.elicitation.is_some() {
                    requests.insert(
                        "elicit_input".into(),
                        elicit_request("Elicitation input", "value", "string"),
                    );
                }
                if capabilities.sampling.is_some() {
                    requests.insert("sample_input".into(), sampling_request("Sample request", 50));
                }
                let received: Vec<&String> =
                    responses.as_object().map(|answers| answers.keys().collect()).unwrap_or_default();
                if !received.is_empty() {
                    let names: Vec<&str> = received.iter().map(|name| name.as_str()).collect();
                    complete(vec![text(format!("capabilities-ok: received {}", names.join(",")))])
                } else if requests.is_empty() {
                    complete(vec![text("No supported capabilities declared")])
                } else {
                    input_required(
                        Value::Object(requests),
                        Some(sealed(json!({"kind": "capabilities-test"}))?),
                    )
                }
            }
            "test_streaming_elicitation" => complete(vec![text("Streaming complete")]),
            "test_logging_tool" => {
                // 2026-07-28: log messages only when the request asked for them.
                if let Some(level) = context.meta.log_level() {
                    let _ = level;
                    log(&context.peer, LoggingLevel::Info, "Diagnostic trace logging activated").await;
                }
                complete(vec![text("Logging evaluated")])
            }
            "test_trigger_tool_change" => {
                let _ = context.peer.notify_tool_list_changed().await;
                self.broadcast(ServerNotification::ToolListChangedNotification(Default::default())).await;
                complete(vec![text("Mutation triggered")])
            }
            "test_trigger_prompt_change" => {
                let _ = context.peer.notify_prompt_list_changed().await;
                self.broadcast(ServerNotification::PromptListChangedNotification(Default::default())).await;
                complete(vec![text("Mutation triggered")])
            }
            _ => return Ok(None),
        };
        response.map(Some)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let peer = &context.peer;
        let arguments = request.arguments.clone().unwrap_or_default();
        let argument =
            |name: &str| arguments.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        match request.name.as_ref() {
            "test_simple_text" => success(vec![text("This is a simple text response for testing.")]),
            "test_image_content" => success(vec![image()]),
            "test_audio_content" => {
                success(vec![json!({"type": "audio", "data": TEST_AUDIO_BASE64, "mimeType": "audio/wav"})])
            }
            "test_embedded_resource" => success(vec![embedded(
                "test://embedded-resource",
                "text/plain",
                "This is an embedded resource content.",
            )]),
            "test_multiple_content_types" => success(vec![
                text("Multiple content types test:"),
                image(),
                embedded(
                    "test://mixed-content-resource",
                    "application/json",
                    &json!({"test": "data", "value": 123}).to_string(),
                ),
            ]),
            "test_tool_with_logging" => {
                for (step, message) in
                    ["Tool execution started", "Tool processing data", "Tool execution completed"]
                        .iter()
                        .enumerate()
                {
                    if step > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    log(peer, LoggingLevel::Info, message).await;
                }
                success(vec![text("Tool with logging executed successfully")])
            }
            "test_tool_with_progress" => {
                let token = context.meta.get_progress_token();
                for (step, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if step > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &token {
                        let params = ProgressNotificationParam::new(token.clone(), progress)
                            .with_total(100.0)
                            .with_message(format!("Completed step {progress} of 100"));
                        let _ = peer.notify_progress(params).await;
                    }
                }
                let echoed = token.map(|token| serde_json::to_value(token.0).unwrap_or_default().to_string());
                success(vec![text(echoed.unwrap_or_else(|| "0".into()).trim_matches('"').to_string())])
            }
            "test_error_handling" => result(json!({
                "content": [text("This tool intentionally returns an error for testing")],
                "isError": true
            })),
            "test_sampling" => {
                let params: CreateMessageRequestParams = from_json(json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": argument("prompt")}}],
                    "maxTokens": 100
                }))?;
                let line = match peer.create_message(params).await {
                    Ok(result) => {
                        let message = serde_json::to_value(&result).unwrap_or_default();
                        let reply = message
                            .pointer("/content/text")
                            .and_then(Value::as_str)
                            .unwrap_or("No response")
                            .to_string();
                        format!("LLM response: {reply}")
                    }
                    Err(error) => format!("Sampling not supported or error: {error}"),
                };
                success(vec![text(line)])
            }
            "test_elicitation" => {
                let schema = json!({
                    "type": "object",
                    "properties": {"response": {"type": "string", "description": "User's response"}},
                    "required": ["response"]
                });
                self.elicit(peer, &argument("message"), schema, "User response").await
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(
                    peer,
                    "Please review and update the form fields with defaults",
                    sep1034_schema(),
                    "Elicitation completed",
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(
                    peer,
                    "Please select options from the enum fields",
                    sep1330_schema(),
                    "Elicitation completed",
                )
                .await
            }
            "test_withdrawn_elicitation" => {
                let request = ServerRequest::ElicitRequest(Request::new(form_elicitation(
                    "This question will be withdrawn",
                    json!({"type": "object", "properties": {"response": {"type": "string"}}}),
                )?));
                let handle = peer
                    .send_request_with_option(request, Default::default())
                    .await
                    .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
                let id = handle.id.clone();
                let outcome = tokio::select! {
                    answer = handle.await_response() => format!("answered: {answer:?}"),
                    () = self.roots_changed.notified() => {
                        let params = CancelledNotificationParam::new(Some(id), Some("withdrawn".into()));
                        let _ = peer.send_notification(ServerNotification::CancelledNotification(Notification::new(params))).await;
                        "withdrawn".to_string()
                    }
                };
                success(vec![text(outcome)])
            }
            "json_schema_2020_12_tool" => success(vec![text(format!(
                "JSON Schema 2020-12 tool called with: {}",
                Value::Object(arguments.clone())
            ))]),
            other => Err(ErrorData::invalid_params(format!("unknown tool {other}"), None)),
        }
    }
}

fn text_resource(uri: &str, mime_type: &str, text: &str) -> Result<ReadResourceResult, ErrorData> {
    result(json!({"contents": [{"uri": uri, "mimeType": mime_type, "text": text}]}))
}

fn user(content: Value) -> Value {
    json!({"role": "user", "content": content})
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_logging()
            .enable_completions()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcp-conformance-test-server", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(response) = self.call_multi_round(&request, &context).await? {
            return Ok(response);
        }
        self.call(request, context).await.map(CallToolResponse::Complete)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        result(json!({"resources": [
            {"uri": "test://static-text", "name": "static-text", "title": "Static Text Resource",
             "description": "A static text resource for testing", "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "static-binary", "title": "Static Binary Resource",
             "description": "A static binary resource (image) for testing", "mimeType": "image/png"},
            {"uri": WATCHED, "name": "watched-resource", "title": "Watched Resource",
             "description": "A resource whose updates are announced to subscribers", "mimeType": "text/plain"}
        ]}))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        result(json!({"resourceTemplates": [
            {"uriTemplate": "test://template/{id}/data", "name": "template", "title": "Resource Template",
             "description": "A resource template with parameter substitution", "mimeType": "application/json"}
        ]}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let result = match uri {
            "test://static-text" => {
                text_resource(uri, "text/plain", "This is the content of the static text resource.")?
            }
            "test://static-binary" => result(json!({"contents": [
                {"uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE_BASE64}
            ]}))?,
            WATCHED => text_resource(uri, "text/plain", "Watched resource content")?,
            _ => match uri.strip_prefix("test://template/").and_then(|rest| rest.strip_suffix("/data")) {
                Some(id) => text_resource(
                    uri,
                    "application/json",
                    &json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")})
                        .to_string(),
                )?,
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("Resource not found: {uri}"),
                        Some(json!({"uri": uri})),
                    ));
                }
            },
        };
        Ok(ReadResourceResponse::Complete(result))
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(request.uri.clone());
        log(&context.peer, LoggingLevel::Info, &format!("Subscribed to resource: {}", request.uri)).await;
        // Announce an update at once, so a subscriber sees one arrive.
        let peer = context.peer.clone();
        let uri = request.uri;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri)).await;
        });
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request.uri);
        log(&context.peer, LoggingLevel::Info, &format!("Unsubscribed from resource: {}", request.uri)).await;
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let argument = |name: &str, description: &str| json!({"name": name, "description": description, "required": true});
        result(json!({"prompts": [
            {"name": "test_simple_prompt", "title": "Simple Test Prompt", "description": "A simple prompt without arguments"},
            {"name": "test_prompt_with_arguments", "title": "Prompt With Arguments", "description": "A prompt with required arguments",
             "arguments": [argument("arg1", "First test argument"), argument("arg2", "Second test argument")]},
            {"name": "test_prompt_with_embedded_resource", "title": "Prompt With Embedded Resource",
             "description": "A prompt that includes an embedded resource",
             "arguments": [argument("resourceUri", "URI of the resource to embed")]},
            {"name": "test_prompt_with_image", "title": "Prompt With Image", "description": "A prompt that includes image content"},
            {"name": "test_input_required_result_prompt", "description": "MRTR: prompt that requires elicitation input"}
        ]}))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name == "test_input_required_result_prompt" {
            let responses = serde_json::to_value(&request.input_responses).unwrap_or_default();
            if responses.get("user_context").is_some_and(|value| !value.is_null()) {
                let context = answer_text(&responses, "user_context", "context");
                let result: GetPromptResult =
                    result(json!({"messages": [user(text(format!("Prompt with context: {context}")))]}))?;
                return Ok(GetPromptResponse::Complete(result));
            }
            let result: InputRequiredResult = from_json(json!({
                "resultType": "input_required",
                "inputRequests": {"user_context": elicit_request("What context should the prompt use?", "context", "string")}
            }))?;
            return Ok(GetPromptResponse::InputRequired(result));
        }
        let arguments = request.arguments.unwrap_or_default();
        let argument =
            |name: &str| arguments.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![user(text("This is a simple prompt for testing."))],
            "test_prompt_with_arguments" => vec![user(text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                argument("arg1"),
                argument("arg2")
            )))],
            "test_prompt_with_embedded_resource" => vec![
                user(embedded(
                    &argument("resourceUri"),
                    "text/plain",
                    "Embedded resource content for testing.",
                )),
                user(text("Please process the embedded resource above.")),
            ],
            "test_prompt_with_image" => vec![user(image()), user(text("Please analyze the image above."))],
            other => return Err(ErrorData::invalid_params(format!("unknown prompt {other}"), None)),
        };
        let result: GetPromptResult = result(json!({"messages": messages}))?;
        Ok(GetPromptResponse::Complete(result))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(requested.clone())
    }

    /// 2026-07-28: list changes and resource updates arrive on listen
    /// streams; a watched resource gets an update at once, as a subscriber
    /// of the earlier revisions does.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let sink = context.sink().clone();
        let id = sink.id().clone();
        for uri in context.accepted().resource_subscriptions.clone().unwrap_or_default() {
            let sink = sink.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let update = ResourceUpdatedNotificationParam::new(uri);
                let _ = sink
                    .send(ServerNotification::ResourceUpdatedNotification(Notification::new(update)))
                    .await;
            });
        }
        self.listeners().push(sink);
        context.cancelled().await;
        self.listeners().retain(|sink| sink.id() != &id);
        Ok(())
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        self.roots_changed.notify_one();
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level).unwrap_or_default();
        log(
            &context.peer,
            LoggingLevel::Info,
            &format!("Log level set to: {}", level.as_str().unwrap_or_default()),
        )
        .await;
        Ok(())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        Ok(CompleteResult::default())
    }
}
