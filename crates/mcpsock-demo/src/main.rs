//! A small stdio MCP server for the quick start and the benchmarks.
//!
//! It offers `echo`, `add` and `now`: enough to see the gateway work in one
//! command and, through `echo`, a fast upstream whose own cost barely shows
//! in a benchmark of the gateway path. `countdown` is a slow tool that
//! reports progress, for watching long calls (and restarts during them).

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// First addend.
    a: f64,
    /// Second addend.
    b: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CountdownArgs {
    /// How many steps to count down.
    steps: u32,
    /// Milliseconds between steps.
    interval_ms: u64,
}

#[derive(Debug, Clone)]
struct Demo {
    tool_router: ToolRouter<Self>,
}

#[tool_router(router = tool_router)]
impl Demo {
    fn new() -> Self {
        Self { tool_router: Self::tool_router() }
    }

    #[tool(description = "Return the given text unchanged.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    #[tool(description = "Add two numbers.")]
    async fn add(&self, Parameters(args): Parameters<AddArgs>) -> String {
        (args.a + args.b).to_string()
    }

    #[tool(description = "Count down, one step per interval, reporting progress after each; then say done.")]
    async fn countdown(
        &self,
        Parameters(args): Parameters<CountdownArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        let token = context.meta.get_progress_token();
        for step in 1..=args.steps {
            tokio::time::sleep(std::time::Duration::from_millis(args.interval_ms)).await;
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(args.steps))
                    .with_message(format!("{} to go", args.steps - step));
                if context.peer.notify_progress(progress).await.is_err() {
                    break;
                }
            }
        }
        "done".to_string()
    }

    #[tool(description = "The current time in UTC, RFC 3339.")]
    async fn now(&self) -> String {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcpsock-demo", env!("CARGO_PKG_VERSION")))
            .with_instructions("A demonstration server: echo, add, now, countdown.")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = Demo::new().serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
