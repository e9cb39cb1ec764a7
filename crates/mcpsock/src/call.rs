//! `mcpsock tools` and `mcpsock call`.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use mcpsock_client::Endpoint;
use rmcp::model::{CallToolRequestParams, JsonObject, Tool};
use serde_json::Value;

use crate::exit::{Code, Failure};
use crate::flags::CallFlags;

/// Longest description shown in the tools table.
const DESCRIPTION_WIDTH: usize = 100;

pub(crate) async fn list_tools(endpoint: &Endpoint, json: bool) -> Result<ExitCode, Failure> {
    let session = mcpsock_client::connect(endpoint).await.map_err(Failure::client)?;
    let tools = session
        .list_all_tools()
        .await
        .map_err(|error| Failure::internal(anyhow!("listing tools failed: {error}")))?;
    let _ = session.cancel().await;
    if json {
        let text = serde_json::to_string_pretty(&tools).map_err(|error| Failure::internal(error.into()))?;
        outln!("{text}");
    } else {
        out!("{}", tools_table(&tools));
    }
    Ok(ExitCode::SUCCESS)
}

fn tools_table(tools: &[Tool]) -> String {
    if tools.is_empty() {
        return "no tools: the daemon serves no running upstream (see its log or /health)\n".into();
    }
    let width = tools.iter().map(|tool| tool.name.len()).max().unwrap_or(0).max("TOOL".len());
    let mut table = format!("{:width$}  DESCRIPTION\n", "TOOL");
    for tool in tools {
        let description = tool.description.as_deref().unwrap_or("").lines().next().unwrap_or("");
        let description = match description.char_indices().nth(DESCRIPTION_WIDTH) {
            Some((cut, _)) => format!("{}…", &description[..cut]),
            None => description.to_string(),
        };
        table.push_str(&format!("{:width$}  {description}\n", tool.name));
    }
    table
}

pub(crate) async fn call_tool(endpoint: &Endpoint, flags: &CallFlags) -> Result<ExitCode, Failure> {
    let session = mcpsock_client::connect(endpoint).await.map_err(Failure::client)?;
    let tools = session
        .list_all_tools()
        .await
        .map_err(|error| Failure::internal(anyhow!("listing tools failed: {error}")))?;
    let Some(tool) = tools.iter().find(|tool| tool.name == flags.tool) else {
        let _ = session.cancel().await;
        return Err(Failure::new(
            Code::Usage,
            anyhow!("the daemon offers no tool named {:?}; run `mcpsock tools` to see the names", flags.tool),
        ));
    };
    let arguments = build_arguments(flags.json.as_deref(), &flags.args, &tool.input_schema)
        .map_err(|error| Failure::new(Code::Usage, error))?;
    let mut request = CallToolRequestParams::new(flags.tool.clone());
    request.arguments = Some(arguments);
    let result = session.call_tool(request).await;
    let _ = session.cancel().await;
    let result =
        result.map_err(|error| Failure::new(Code::ToolError, anyhow!("{} failed: {error}", flags.tool)))?;
    if flags.raw {
        let text = serde_json::to_string_pretty(&result).map_err(|error| Failure::internal(error.into()))?;
        outln!("{text}");
    } else {
        for content in &result.content {
            match content.as_text() {
                Some(text) => outln!("{}", text.text),
                None => outln!("{}", serde_json::to_string(content).unwrap_or_default()),
            }
        }
    }
    if result.is_error == Some(true) {
        eprintln!("mcpsock: the tool {} reported an error", flags.tool);
        return Ok(ExitCode::from(Code::ToolError.value()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the arguments object from `--json` and `--arg KEY=VALUE` pairs.
/// A value is taken as a string when the schema says the property is one,
/// otherwise as JSON when it parses, otherwise as a string.
pub(crate) fn build_arguments(
    json: Option<&str>,
    pairs: &[String],
    schema: &JsonObject,
) -> anyhow::Result<JsonObject> {
    let mut arguments = match json {
        Some(text) => match serde_json::from_str::<Value>(text).context("--json is not valid JSON")? {
            Value::Object(object) => object,
            _ => anyhow::bail!("--json must be a JSON object, like '{{\"key\": \"value\"}}'"),
        },
        None => JsonObject::new(),
    };
    for pair in pairs {
        let (key, raw) = pair.split_once('=').ok_or_else(|| anyhow!("--arg {pair:?} is not KEY=VALUE"))?;
        let value = if property_is_string(schema, key) {
            Value::String(raw.to_string())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        arguments.insert(key.to_string(), value);
    }
    Ok(arguments)
}

fn property_is_string(schema: &JsonObject, key: &str) -> bool {
    let kind = schema
        .get("properties")
        .and_then(|properties| properties.get(key))
        .and_then(|property| property.get("type"));
    match kind {
        Some(Value::String(kind)) => kind == "string",
        Some(Value::Array(kinds)) => kinds.iter().all(|kind| kind == "string" || kind == "null"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> JsonObject {
        json!({"type": "object", "properties": {
            "text": {"type": "string"},
            "n": {"type": "number"},
            "maybe": {"type": ["string", "null"]},
        }})
        .as_object()
        .unwrap()
        .clone()
    }

    #[track_caller]
    fn check(json: Option<&str>, pairs: &[&str], expected: Value) {
        let pairs: Vec<String> = pairs.iter().map(|pair| pair.to_string()).collect();
        let got = build_arguments(json, &pairs, &schema()).unwrap();
        assert_eq!(Value::Object(got), expected);
    }

    #[test]
    fn arguments_follow_the_schema() {
        check(None, &["text=5", "n=5"], json!({"text": "5", "n": 5}));
        check(None, &["maybe=true"], json!({"maybe": "true"}));
        check(None, &["other=[1,2]", "word=hello"], json!({"other": [1, 2], "word": "hello"}));
        check(None, &["text=a=b"], json!({"text": "a=b"}));
        check(Some(r#"{"n": 1, "text": "x"}"#), &["n=2"], json!({"n": 2, "text": "x"}));
    }

    #[test]
    fn bad_arguments_are_explained() {
        let error = build_arguments(None, &["novalue".into()], &schema()).unwrap_err();
        assert!(error.to_string().contains("is not KEY=VALUE"), "{error}");
        let error = build_arguments(Some("[1]"), &[], &schema()).unwrap_err();
        assert!(error.to_string().contains("must be a JSON object"), "{error}");
        let error = build_arguments(Some("{"), &[], &schema()).unwrap_err();
        assert!(format!("{error:#}").contains("--json is not valid JSON"), "{error:#}");
    }

    #[test]
    fn table_lists_names_and_first_lines() {
        let tool = |name: &'static str, description: &'static str| {
            Tool::new(name, description, std::sync::Arc::new(JsonObject::new()))
        };
        let table = tools_table(&[tool("demo__echo", "Echo.\nMore."), tool("t__x", "")]);
        assert_eq!(table, "TOOL        DESCRIPTION\ndemo__echo  Echo.\nt__x        \n");
    }
}
