//! A small MCP server with typed tools, served on a hardened Unix socket.
//!
//! ```text
//! cargo run -p mcpsock --example notes-server -- [--socket PATH] [--db PATH] [--fixtures]
//! cargo run -p mcpsock --example notes-client -- [--socket PATH]
//! ```
//!
//! The notes are shared by every session. With `--db`, sessions (not the
//! notes, which live in memory) survive a restart: a client keeps its
//! `Mcp-Session-Id`. `--fixtures` serves the MCP conformance suite's
//! fixture server instead of the notes, through this same API. Ctrl-C (or
//! SIGTERM) drains and stops; the socket and its lock are removed.

// An example program talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mcpsock::{Server, SqliteOptions, Storage};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddNote {
    /// A short, unique title; a note with the same title is replaced.
    title: String,
    /// The note itself.
    text: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Title {
    title: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Search {
    /// Found in titles and texts, ignoring case.
    word: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Titles {
    titles: Vec<String>,
}

/// The server: a few notes kept in memory, shared by every session.
#[derive(Clone)]
struct Notes {
    notes: Arc<Mutex<BTreeMap<String, String>>>,
    tool_router: ToolRouter<Self>,
}

impl Notes {
    fn new() -> Self {
        Self { notes: Arc::default(), tool_router: Self::tool_router() }
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tool_router]
impl Notes {
    #[tool(description = "Add a note, or replace the note with the same title")]
    fn add_note(&self, Parameters(AddNote { title, text }): Parameters<AddNote>) -> String {
        match self.notes().insert(title.clone(), text) {
            Some(_) => format!("replaced {title:?}"),
            None => format!("added {title:?}"),
        }
    }

    #[tool(description = "Read the note with this title")]
    fn read_note(&self, Parameters(Title { title }): Parameters<Title>) -> Result<String, ErrorData> {
        self.notes()
            .get(&title)
            .cloned()
            .ok_or_else(|| ErrorData::invalid_params(format!("no note is titled {title:?}"), None))
    }

    #[tool(description = "Titles of the notes that mention a word")]
    fn search_notes(&self, Parameters(Search { word }): Parameters<Search>) -> Json<Titles> {
        let word = word.to_lowercase();
        let titles = self
            .notes()
            .iter()
            .filter(|(title, text)| {
                title.to_lowercase().contains(&word) || text.to_lowercase().contains(&word)
            })
            .map(|(title, _)| title.clone())
            .collect();
        Json(Titles { titles })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Notes {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("notes", env!("CARGO_PKG_VERSION")))
            .with_instructions("Keeps short notes: add_note, read_note, search_notes.")
    }
}

struct Args {
    socket: PathBuf,
    db: Option<PathBuf>,
    fixtures: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args { socket: default_socket(), db: None, fixtures: false };
    let mut given = std::env::args_os().skip(1);
    while let Some(flag) = given.next() {
        match flag.to_str() {
            Some("--socket") => args.socket = given.next().ok_or("--socket needs a path")?.into(),
            Some("--db") => args.db = Some(given.next().ok_or("--db needs a path")?.into()),
            Some("--fixtures") => args.fixtures = true,
            _ => return Err(format!("unknown argument {flag:?}; use --socket PATH, --db PATH, --fixtures")),
        }
    }
    Ok(args)
}

/// `$XDG_RUNTIME_DIR/mcpsock-notes/notes.sock`, as the notes client expects.
fn default_socket() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    runtime.join("mcpsock-notes").join("notes.sock")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = args()?;
    let mut server = Server::new(&args.socket);
    if let Some(db) = args.db {
        server = server.storage(Storage::Sqlite(SqliteOptions::new(db)));
    }
    let handle = if args.fixtures {
        // One fixture for every session: a 2026-07-28 client's retry may
        // reach another session's handler, and must unseal its state.
        let fixture = mcpsock_demo::conformance::Fixture::new()?;
        server.serve(move || fixture.clone()).await
    } else {
        let notes = Notes::new();
        server.serve(move || notes.clone()).await
    }?;
    println!("serving on unix://{}", args.socket.display());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    handle.run_until(stop).await?;
    Ok(())
}
