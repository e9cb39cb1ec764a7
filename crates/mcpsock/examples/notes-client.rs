//! Calls the notes server (`examples/notes-server.rs`) over its socket.
//!
//! ```text
//! cargo run -p mcpsock --example notes-client -- [--socket PATH]
//! ```

// An example program talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use mcpsock::client::{Endpoint, connect};
use rmcp::model::CallToolRequestParams;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let socket = match std::env::args_os().nth(1) {
        Some(flag) if flag == "--socket" => {
            PathBuf::from(std::env::args_os().nth(2).ok_or("--socket needs a path")?)
        }
        Some(other) => return Err(format!("unknown argument {other:?}; use --socket PATH").into()),
        None => {
            let runtime =
                std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
            runtime.join("mcpsock-notes").join("notes.sock")
        }
    };
    let session = connect(&Endpoint::parse(&socket.to_string_lossy())?).await?;

    let tools = session.list_all_tools().await?;
    println!("tools: {}", tools.iter().map(|tool| tool.name.as_ref()).collect::<Vec<_>>().join(", "));

    let call = |name: &'static str, arguments: serde_json::Value| {
        let arguments = arguments.as_object().cloned();
        let mut params = CallToolRequestParams::new(name);
        params.arguments = arguments;
        session.call_tool(params)
    };
    let added =
        call("add_note", json!({"title": "socket", "text": "mcpsock serves MCP on a Unix socket"})).await?;
    println!("add_note: {}", text_of(&added));
    let found = call("search_notes", json!({"word": "unix"})).await?;
    println!("search_notes: {}", found.structured_content.unwrap_or_default());
    let read = call("read_note", json!({"title": "socket"})).await?;
    println!("read_note: {}", text_of(&read));

    session.cancel().await?;
    Ok(())
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    result.content.iter().filter_map(|content| content.as_text()).map(|text| text.text.clone()).collect()
}
