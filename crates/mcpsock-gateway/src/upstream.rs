//! One upstream MCP server: its process, its MCP client session, and the
//! catalog of what it offers.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, Prompt, Resource, ResourceTemplate, Tool,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use tokio::sync::watch;

use crate::spawn::{kill_group_now, spawn_stdio, stop_group};

/// Longest JSON-RPC line accepted from an upstream's stdout.
const MAX_UPSTREAM_LINE: usize = 8 * 1024 * 1024;
/// How long a stopping upstream gets to exit on its own after its stdin closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to start one upstream: a program speaking MCP on stdio.
#[derive(Clone)]
#[non_exhaustive]
pub struct UpstreamSpec {
    pub name: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Extra environment, typically secrets: never printed.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl UpstreamSpec {
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>) -> Self {
        Self { name: name.into(), command: command.into(), args: Vec::new(), env: Vec::new(), cwd: None }
    }

    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = env.into_iter().collect();
        self
    }

    pub fn cwd(mut self, cwd: Option<PathBuf>) -> Self {
        self.cwd = cwd;
        self
    }
}

impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("UpstreamSpec")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env_keys", &env_keys)
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// Lifecycle state of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    Running,
    Failed,
    Stopped,
}

/// What the gateway reports about one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamReport {
    pub name: String,
    pub state: UpstreamState,
    pub pid: Option<u32>,
    pub tools: usize,
    pub error: Option<String>,
}

/// Everything an upstream offers, refreshed when it says its lists changed.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) tools: Vec<Tool>,
    pub(crate) resources: Vec<Resource>,
    pub(crate) resource_templates: Vec<ResourceTemplate>,
    pub(crate) prompts: Vec<Prompt>,
    pub(crate) instructions: Option<String>,
}

/// The MCP client side of the connection to one upstream.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamClient {
    name: String,
    catalog: Arc<RwLock<Catalog>>,
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcpsock", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_tools().await {
            Ok(tools) => write(&self.catalog).tools = tools,
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the tool list")
            }
        }
    }

    async fn on_resource_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_resources().await {
            Ok(resources) => write(&self.catalog).resources = resources,
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the resource list")
            }
        }
    }

    async fn on_prompt_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_prompts().await {
            Ok(prompts) => write(&self.catalog).prompts = prompts,
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "could not refresh the prompt list")
            }
        }
    }
}

/// A started (or failed) upstream.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) catalog: Arc<RwLock<Catalog>>,
    connection: Mutex<Connection>,
}

enum Connection {
    Running {
        service: RunningService<RoleClient, UpstreamClient>,
        pid: u32,
        exited: watch::Receiver<Option<String>>,
    },
    Failed {
        error: String,
    },
    Stopped,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Starts the process, completes the MCP handshake within
    /// `init_timeout`, and reads the catalog. Never fails: a failure is
    /// recorded in the upstream's state, where health reports show it.
    pub(crate) async fn start(spec: &UpstreamSpec, init_timeout: Duration, stop_grace: Duration) -> Self {
        let catalog = Arc::new(RwLock::new(Catalog::default()));
        let connection = match connect(spec, &catalog, init_timeout, stop_grace).await {
            Ok(connection) => {
                tracing::info!(upstream = %spec.name, tools = read(&catalog).tools.len(), "upstream started");
                connection
            }
            Err(error) => {
                tracing::error!(upstream = %spec.name, "upstream failed to start: {error}");
                Connection::Failed { error }
            }
        };
        Self { name: spec.name.clone(), catalog, connection: Mutex::new(connection) }
    }

    /// The MCP peer, while the upstream runs.
    pub(crate) fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut connection = lock(&self.connection);
        let ended = match &*connection {
            Connection::Running { pid, exited, .. } => exited.borrow().clone().map(|how| (*pid, how)),
            _ => None,
        };
        if let Some((pid, how)) = ended {
            // The leader is gone; take down whatever it left in its group.
            kill_group_now(pid);
            *connection = Connection::Failed { error: format!("the process ended ({how})") };
        }
        match &*connection {
            Connection::Running { service, .. } => Ok(service.peer().clone()),
            Connection::Failed { error } => Err(format!("upstream {} is not running: {error}", self.name)),
            Connection::Stopped => Err(format!("upstream {} was stopped", self.name)),
        }
    }

    pub(crate) fn report(&self) -> UpstreamReport {
        let error = self.peer().err();
        let connection = lock(&self.connection);
        let (state, pid) = match &*connection {
            Connection::Running { pid, .. } => (UpstreamState::Running, Some(*pid)),
            Connection::Failed { .. } => (UpstreamState::Failed, None),
            Connection::Stopped => (UpstreamState::Stopped, None),
        };
        UpstreamReport { name: self.name.clone(), state, pid, tools: read(&self.catalog).tools.len(), error }
    }

    /// Closes the MCP session and stops the process group.
    pub(crate) async fn stop(&self, grace: Duration) {
        let connection = std::mem::replace(&mut *lock(&self.connection), Connection::Stopped);
        if let Connection::Running { mut service, pid, mut exited } = connection {
            // Closing stdin is the polite stop for a stdio server; the
            // group signals below follow for one that does not listen.
            let polite = CLOSE_TIMEOUT.min(grace);
            let _ = service.close_with_timeout(polite).await;
            let _ = tokio::time::timeout(polite, exited.wait_for(Option::is_some)).await;
            stop_group(pid, &mut exited, grace).await;
        }
    }
}

async fn connect(
    spec: &UpstreamSpec,
    catalog: &Arc<RwLock<Catalog>>,
    init_timeout: Duration,
    stop_grace: Duration,
) -> Result<Connection, String> {
    let child = spawn_stdio(spec).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: {} (install it, or give its absolute path in the config)",
            spec.command.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("command is not executable: {} (check its permissions)", spec.command.display())
        }
        _ => format!("cannot start {}: {error}", spec.command.display()),
    })?;
    let pid = child.pid;
    let mut exited = child.exited;
    let client = UpstreamClient { name: spec.name.clone(), catalog: catalog.clone() };
    let transport = AsyncRwTransport::new(child.stdout, child.stdin).with_max_line_length(MAX_UPSTREAM_LINE);
    let handshake = tokio::select! {
        result = tokio::time::timeout(init_timeout, client.serve(transport)) => result,
        how = exited.wait_for(Option::is_some) => {
            let how = how.map(|how| how.clone().unwrap_or_default()).unwrap_or_default();
            return Err(format!("the process ended during the MCP handshake ({how}); see its stderr in the log"));
        }
    };
    let service = match handshake {
        Ok(Ok(service)) => service,
        Ok(Err(error)) => {
            stop_group(pid, &mut exited, stop_grace).await;
            return Err(format!("the MCP handshake failed: {error}"));
        }
        Err(_) => {
            stop_group(pid, &mut exited, stop_grace).await;
            return Err(format!("no answer to initialize within {}", humanize(init_timeout)));
        }
    };
    if let Err(error) = load_catalog(service.peer(), catalog).await {
        // Dropping the service closes its transport (stdin) at once.
        drop(service);
        stop_group(pid, &mut exited, stop_grace).await;
        return Err(format!("listing its capabilities failed: {error}"));
    }
    Ok(Connection::Running { service, pid, exited })
}

async fn load_catalog(peer: &Peer<RoleClient>, catalog: &RwLock<Catalog>) -> Result<(), rmcp::ServiceError> {
    let info = peer.peer_info();
    let capabilities = info.as_ref().map(|info| info.capabilities.clone()).unwrap_or_default();
    let tools = if capabilities.tools.is_some() { peer.list_all_tools().await? } else { Vec::new() };
    let (resources, resource_templates) = if capabilities.resources.is_some() {
        (peer.list_all_resources().await?, peer.list_all_resource_templates().await?)
    } else {
        (Vec::new(), Vec::new())
    };
    let prompts = if capabilities.prompts.is_some() { peer.list_all_prompts().await? } else { Vec::new() };
    *write(catalog) = Catalog {
        tools,
        resources,
        resource_templates,
        prompts,
        instructions: info.and_then(|info| info.instructions.clone()),
    };
    Ok(())
}

fn humanize(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

// The locks guard plain data and are never held across an await; a panic
// while holding one cannot leave the data half-written in a way that
// matters, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn read(lock: &RwLock<Catalog>) -> std::sync::RwLockReadGuard<'_, Catalog> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(lock: &RwLock<Catalog>) -> std::sync::RwLockWriteGuard<'_, Catalog> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
