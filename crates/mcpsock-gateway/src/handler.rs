//! The aggregating MCP server handler.
//!
//! Tools and prompts are offered as `<server><separator><name>` in the
//! order of server names, then of the upstream's own order; resources keep
//! their URIs and are routed by the upstream that listed them.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ResultType, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleClient, RoleServer, ServerHandler, ServiceError};

use crate::upstream::{Lease, Timing, Upstream, read};
use crate::{UpstreamEvent, UpstreamReport, UpstreamSpec};

/// Settings of the gateway.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayOptions {
    /// Joins server and tool names.
    pub separator: String,
    /// How long an upstream may take to start and answer `initialize`.
    pub init_timeout: Duration,
    /// How long a stopping upstream gets before its process group is killed.
    pub stop_grace: Duration,
    /// How long an upstream may take to answer a request; then the client
    /// gets an error and the upstream a `notifications/cancelled`.
    pub request_timeout: Duration,
    /// Where upstream events are sent, when someone follows them.
    pub events: Option<tokio::sync::broadcast::Sender<UpstreamEvent>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            separator: "__".into(),
            init_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            events: None,
        }
    }
}

impl GatewayOptions {
    pub fn separator(mut self, separator: impl Into<String>) -> Self {
        self.separator = separator.into();
        self
    }

    pub fn init_timeout(mut self, init_timeout: Duration) -> Self {
        self.init_timeout = init_timeout;
        self
    }

    pub fn stop_grace(mut self, stop_grace: Duration) -> Self {
        self.stop_grace = stop_grace;
        self
    }

    pub fn request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    pub fn events(mut self, events: tokio::sync::broadcast::Sender<UpstreamEvent>) -> Self {
        self.events = Some(events);
        self
    }
}

/// The shared gateway. Cloning is cheap; every downstream session gets a
/// clone and all clones share the same upstreams.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Sorted by name, which makes every listing deterministic. Replaced
    /// as a whole when upstreams are added, removed or restarted (see
    /// `change`); a request takes its [`Lease`] under this lock.
    pub(crate) upstreams: RwLock<Arc<Vec<Arc<Upstream>>>>,
    pub(crate) options: GatewayOptions,
    /// Serializes changes to the set of upstreams.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Replaced upstreams still finishing their requests.
    pub(crate) draining: std::sync::Mutex<Vec<Arc<Upstream>>>,
}

impl Gateway {
    /// Starts every upstream concurrently and waits until each has started
    /// or failed. A failed upstream is reported, never fatal.
    pub async fn start(mut specs: Vec<UpstreamSpec>, options: GatewayOptions) -> Self {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let upstreams = futures::future::join_all(specs.iter().map(|spec| {
            Upstream::start(
                spec,
                Timing { init_timeout: options.init_timeout, stop_grace: options.stop_grace },
                options.events.clone(),
            )
        }))
        .await;
        Self {
            inner: Arc::new(Inner {
                upstreams: RwLock::new(Arc::new(upstreams)),
                options,
                changing: tokio::sync::Mutex::new(()),
                draining: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The state of every upstream, in name order.
    pub fn report(&self) -> Vec<UpstreamReport> {
        self.upstreams().iter().map(|upstream| upstream.report()).collect()
    }

    /// Stops every upstream (their whole process groups).
    pub async fn shutdown(&self) {
        futures::future::join_all(self.upstreams().iter().map(|upstream| upstream.stop())).await;
    }

    /// The current upstreams; a snapshot, cheap to take.
    pub(crate) fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Splits `server__tool` into the upstream and the upstream's own name.
    fn route<'a>(&self, qualified: &'a str, what: &str) -> Result<(Lease, &'a str), ErrorData> {
        let unknown = || {
            ErrorData::invalid_params(
                format!("unknown {what} {qualified:?}; list the {what}s to see what is offered"),
                None,
            )
        };
        let (server, name) =
            qualified.split_once(self.inner.options.separator.as_str()).ok_or_else(unknown)?;
        // The lease is taken under the lock, so an upstream being replaced
        // is either found with the lease counted, or not found at all.
        let upstreams = self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let upstream = upstreams.iter().find(|upstream| upstream.name == server).ok_or_else(unknown)?;
        let catalog = read(&upstream.catalog);
        let offered = match what {
            "tool" => catalog.tools.iter().any(|tool| tool.name == name),
            _ => catalog.prompts.iter().any(|prompt| prompt.name == name),
        };
        if !offered {
            return Err(unknown());
        }
        Ok((upstream.lease(), name))
    }

    fn qualify(&self, server: &str, name: &str) -> String {
        format!("{server}{}{name}", self.inner.options.separator)
    }

    fn resource_owner(&self, uri: &str) -> Option<Lease> {
        let upstreams = self.inner.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let listed = upstreams
            .iter()
            .find(|upstream| read(&upstream.catalog).resources.iter().any(|resource| resource.uri == uri));
        listed.map(Upstream::lease).or_else(|| {
            // A URI made from a template: the upstream whose template shares
            // the longest literal prefix with it.
            upstreams
                .iter()
                .filter_map(|upstream| {
                    let catalog = read(&upstream.catalog);
                    catalog
                        .resource_templates
                        .iter()
                        .map(|template| template.uri_template.split('{').next().unwrap_or_default())
                        .filter(|prefix| !prefix.is_empty() && uri.starts_with(prefix))
                        .map(str::len)
                        .max()
                        .map(|length| (length, upstream))
                })
                .max_by_key(|(length, _)| *length)
                .map(|(_, upstream)| upstream.lease())
        })
    }
}

fn peer_of(upstream: &Upstream) -> Result<Peer<RoleClient>, ErrorData> {
    upstream.peer().map_err(|message| ErrorData::internal_error(message, None))
}

/// Passes an upstream's own JSON-RPC error through unchanged and turns
/// transport failures into an error that names the upstream.
fn upstream_error(upstream: &Upstream, error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => ErrorData::internal_error(
            format!(
                "upstream {} closed the connection; `mcpsock tools` or /health shows its state",
                upstream.name
            ),
            None,
        ),
        other => ErrorData::internal_error(format!("upstream {}: {other}", upstream.name), None),
    }
}

/// Runs an upstream request within the request timeout. Dropping the
/// request (on timeout, or when the downstream request is cancelled) sends
/// `notifications/cancelled` upstream.
async fn forward<T>(
    upstream: &Upstream,
    timeout: Duration,
    context: &RequestContext<RoleServer>,
    request: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ErrorData> {
    tokio::select! {
        result = tokio::time::timeout(timeout, request) => match result {
            Ok(result) => result.map_err(|error| upstream_error(upstream, error)),
            Err(_) => Err(ErrorData::internal_error(
                format!(
                    "upstream {} did not answer within {}s; the request was cancelled (raise request_timeout for slow tools)",
                    upstream.name,
                    timeout.as_secs_f64()
                ),
                None,
            )),
        },
        () = context.ct.cancelled() => Err(ErrorData::internal_error("the request was cancelled", None)),
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let capabilities =
            ServerCapabilities::builder().enable_tools().enable_resources().enable_prompts().build();
        let mut instructions = String::from("mcpsock gateway: tools and prompts are named <server>");
        instructions.push_str(&self.inner.options.separator);
        instructions.push_str("<name>.");
        for upstream in self.upstreams().iter() {
            if let Some(text) = &read(&upstream.catalog).instructions {
                instructions.push_str(&format!("\n\n[{}] {text}", upstream.name));
            }
        }
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcpsock", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = Vec::new();
        for upstream in self.upstreams().iter() {
            if upstream.peer().is_err() {
                continue;
            }
            tools.extend(read(&upstream.catalog).tools.iter().map(|tool| {
                let mut tool = tool.clone();
                tool.name = Cow::Owned(self.qualify(&upstream.name, &tool.name));
                tool
            }));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (upstream, tool) = self.route(&request.name, "tool")?;
        let peer = peer_of(&upstream)?;
        let mut upstream_request = CallToolRequestParams::new(tool.to_string());
        upstream_request.arguments = request.arguments;
        upstream_request.input_responses = request.input_responses;
        upstream_request.request_state = request.request_state;
        let mut response = forward(
            &upstream,
            self.inner.options.request_timeout,
            &context,
            peer.call_tool_once(upstream_request),
        )
        .await?;
        // The upstream session may be of an older era, whose results carry
        // no resultType; 2026-07-28 clients require it (rmcp strips it again
        // for older clients).
        if let CallToolResponse::Complete(result) = &mut response {
            result.result_type.get_or_insert(ResultType::COMPLETE);
        }
        Ok(response)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resources = self
            .upstreams()
            .iter()
            .filter(|upstream| upstream.peer().is_ok())
            .flat_map(|upstream| read(&upstream.catalog).resources.clone())
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let templates = self
            .upstreams()
            .iter()
            .filter(|upstream| upstream.peer().is_ok())
            .flat_map(|upstream| read(&upstream.catalog).resource_templates.clone())
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let upstream = self.resource_owner(&request.uri).ok_or_else(|| {
            ErrorData::resource_not_found(format!("no upstream offers the resource {:?}", request.uri), None)
        })?;
        let peer = peer_of(&upstream)?;
        let mut upstream_request = ReadResourceRequestParams::new(request.uri);
        upstream_request.input_responses = request.input_responses;
        upstream_request.request_state = request.request_state;
        let mut response = forward(
            &upstream,
            self.inner.options.request_timeout,
            &context,
            peer.read_resource_once(upstream_request),
        )
        .await?;
        // The upstream session may be of an older era, whose results carry
        // no resultType; 2026-07-28 clients require it (rmcp strips it again
        // for older clients).
        if let ReadResourceResponse::Complete(result) = &mut response {
            result.result_type.get_or_insert(ResultType::COMPLETE);
        }
        Ok(response)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let mut prompts = Vec::new();
        for upstream in self.upstreams().iter() {
            if upstream.peer().is_err() {
                continue;
            }
            prompts.extend(read(&upstream.catalog).prompts.iter().map(|prompt| {
                let mut prompt = prompt.clone();
                prompt.name = self.qualify(&upstream.name, &prompt.name);
                prompt
            }));
        }
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let (upstream, prompt) = self.route(&request.name, "prompt")?;
        let peer = peer_of(&upstream)?;
        let mut upstream_request = GetPromptRequestParams::new(prompt.to_string());
        upstream_request.arguments = request.arguments;
        upstream_request.input_responses = request.input_responses;
        upstream_request.request_state = request.request_state;
        let mut response = forward(
            &upstream,
            self.inner.options.request_timeout,
            &context,
            peer.get_prompt_once(upstream_request),
        )
        .await?;
        // The upstream session may be of an older era, whose results carry
        // no resultType; 2026-07-28 clients require it (rmcp strips it again
        // for older clients).
        if let GetPromptResponse::Complete(result) = &mut response {
            result.result_type.get_or_insert(ResultType::COMPLETE);
        }
        Ok(response)
    }
}
