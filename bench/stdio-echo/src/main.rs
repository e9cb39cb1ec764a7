//! A minimal MCP server over stdio for the gateway benchmark: one `echo`
//! tool, answered with one JSON parse and one write per request.
//!
//! The gateway benchmark compares `mcpsock serve` fronting this server with
//! a client calling it directly over stdio. An rmcp server spends tens of
//! microseconds per request of its own, which would hide what the gateway
//! adds; this one spends a few. It speaks just enough of MCP for a client to
//! initialize, list and call (`initialize`, `ping`, `tools/list`,
//! `tools/call`); anything else gets "method not found". It is a benchmark
//! fixture, not a model: real servers are written with rmcp (see
//! `mcpsock-demo`).

use std::io::{self, BufRead, Write};

use serde_json::{Value, json};

/// Protocol versions this server accepts from a client; any other request
/// is answered with the newest.
const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

fn main() -> io::Result<()> {
    // std's reader over the locked stdin: its `buffer` tells whether more
    // requests were already read.
    let mut input = io::BufReader::new(io::stdin().lock());
    let mut output = io::BufWriter::new(io::stdout().lock());
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
        // Notifications need no answer, and this server sends no requests,
        // so it never receives responses.
        let (Some(id), Some(method)) = (message.get("id"), message.get("method").and_then(Value::as_str))
        else {
            continue;
        };
        let reply = match answer(method, message.get("params")) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, text)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}})
            }
        };
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        // Requests already read are answered in one write.
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}

fn answer(method: &str, params: Option<&Value>) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => {
            let asked = params.and_then(|params| params.get("protocolVersion")).and_then(Value::as_str);
            let version =
                asked.filter(|asked| VERSIONS.contains(asked)).unwrap_or(VERSIONS[VERSIONS.len() - 1]);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-stdio-echo", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [{
            "name": "echo",
            "description": "Return the given text.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "The text to send back."}},
                "required": ["text"],
            },
        }]})),
        "tools/call" => {
            let params = params.ok_or((-32602, "tools/call needs params".to_string()))?;
            match params.get("name").and_then(Value::as_str) {
                Some("echo") => {
                    let text = params
                        .get("arguments")
                        .and_then(|arguments| arguments.get("text"))
                        .and_then(Value::as_str)
                        .ok_or((-32602, "echo needs a string argument `text`".to_string()))?;
                    Ok(json!({"content": [{"type": "text", "text": text}]}))
                }
                other => Err((-32602, format!("unknown tool {other:?}; this server has only `echo`"))),
            }
        }
        other => Err((-32601, format!("method not found: {other}"))),
    }
}
