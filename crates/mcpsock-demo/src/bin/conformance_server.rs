//! The upstream the official MCP conformance suite expects, as a stdio MCP
//! server: `mcpsock serve` fronts it in the conformance run.

use mcpsock_demo::conformance::Fixture;
use rmcp::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = Fixture::new()?.serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
