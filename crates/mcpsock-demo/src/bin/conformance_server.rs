//! The upstream the official MCP conformance suite expects, as a stdio MCP
//! server built on rmcp.
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
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult, CompleteRequestParams,
    CompleteResult, CreateMessageRequestParams, ElicitRequestParams, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Request, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    ServerRequest, SetLevelRequestParams, SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

const TEST_IMAGE_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
const WATCHED: &str = "test://watched-resource";

#[derive(Clone, Default)]
struct Fixture {
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
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
    vec![
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
        tool("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034", empty_schema()),
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
                "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": false
            }),
        ),
    ]
}

/// Builds a model value from its JSON form: the suite specifies the wire
/// shapes, so writing them as JSON keeps the fixture next to its spec.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value).map_err(|error| ErrorData::internal_error(format!("fixture value: {error}"), None))
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
    from_json(json!({"content": content}))
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
    let params = LoggingMessageNotificationParam::new(level, json!(message)).with_logger("conformance-test-server");
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

    async fn call(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let peer = &context.peer;
        let arguments = request.arguments.clone().unwrap_or_default();
        let argument = |name: &str| arguments.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
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
                embedded("test://mixed-content-resource", "application/json", &json!({"test": "data", "value": 123}).to_string()),
            ]),
            "test_tool_with_logging" => {
                for (step, message) in ["Tool execution started", "Tool processing data", "Tool execution completed"].iter().enumerate() {
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
            "test_error_handling" => from_json(json!({
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
                self.elicit(peer, "Please review and update the form fields with defaults", sep1034_schema(), "Elicitation completed").await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(peer, "Please select options from the enum fields", sep1330_schema(), "Elicitation completed").await
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
    from_json(json!({"contents": [{"uri": uri, "mimeType": mime_type, "text": text}]}))
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
        ServerConfig::new(capabilities).with_server_info(Implementation::new("mcp-conformance-test-server", "1.0.0"))
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
        self.call(request, context).await.map(CallToolResponse::Complete)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        from_json(json!({"resources": [
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
        from_json(json!({"resourceTemplates": [
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
            "test://static-binary" => from_json(json!({"contents": [
                {"uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE_BASE64}
            ]}))?,
            WATCHED => text_resource(uri, "text/plain", "Watched resource content")?,
            _ => match uri.strip_prefix("test://template/").and_then(|rest| rest.strip_suffix("/data")) {
                Some(id) => text_resource(
                    uri,
                    "application/json",
                    &json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string(),
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

    async fn subscribe(&self, request: SubscribeRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.subscriptions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(request.uri.clone());
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

    async fn unsubscribe(&self, request: UnsubscribeRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
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
        from_json(json!({"prompts": [
            {"name": "test_simple_prompt", "title": "Simple Test Prompt", "description": "A simple prompt without arguments"},
            {"name": "test_prompt_with_arguments", "title": "Prompt With Arguments", "description": "A prompt with required arguments",
             "arguments": [argument("arg1", "First test argument"), argument("arg2", "Second test argument")]},
            {"name": "test_prompt_with_embedded_resource", "title": "Prompt With Embedded Resource",
             "description": "A prompt that includes an embedded resource",
             "arguments": [argument("resourceUri", "URI of the resource to embed")]},
            {"name": "test_prompt_with_image", "title": "Prompt With Image", "description": "A prompt that includes image content"}
        ]}))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        let argument = |name: &str| arguments.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![user(text("This is a simple prompt for testing."))],
            "test_prompt_with_arguments" => vec![user(text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                argument("arg1"),
                argument("arg2")
            )))],
            "test_prompt_with_embedded_resource" => vec![
                user(embedded(&argument("resourceUri"), "text/plain", "Embedded resource content for testing.")),
                user(text("Please process the embedded resource above.")),
            ],
            "test_prompt_with_image" => vec![user(image()), user(text("Please analyze the image above."))],
            other => return Err(ErrorData::invalid_params(format!("unknown prompt {other}"), None)),
        };
        let result: GetPromptResult = from_json(json!({"messages": messages}))?;
        Ok(GetPromptResponse::Complete(result))
    }

    async fn set_level(&self, request: SetLevelRequestParams, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level).unwrap_or_default();
        log(&context.peer, LoggingLevel::Info, &format!("Log level set to: {}", level.as_str().unwrap_or_default())).await;
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = Fixture::default().serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
