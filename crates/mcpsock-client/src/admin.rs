//! Admin API calls: status, servers, reload, config, metrics.

use http::Method;
use mcpsock_api::{EffectiveConfig, ReloadAccepted, ServerActionReply, Status, UpstreamStatus};

use crate::{ClientError, Endpoint, request, request_json};

/// `GET /status`.
pub async fn status(endpoint: &Endpoint) -> Result<Status, ClientError> {
    request_json(endpoint, Method::GET, mcpsock_api::STATUS_PATH).await
}

/// `GET /servers`.
pub async fn servers(endpoint: &Endpoint) -> Result<Vec<UpstreamStatus>, ClientError> {
    request_json(endpoint, Method::GET, mcpsock_api::SERVERS_PATH).await
}

/// `POST /servers/{name}/{action}` (`enable`, `disable` or `restart`);
/// returns once the daemon is done.
pub async fn server_action(
    endpoint: &Endpoint,
    name: &str,
    action: &str,
) -> Result<ServerActionReply, ClientError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(ClientError::InvalidEndpoint(format!(
            "{name:?} is not a server name: names use only A-Z a-z 0-9 _ -"
        )));
    }
    request_json(endpoint, Method::POST, &format!("{}/{name}/{action}", mcpsock_api::SERVERS_PATH)).await
}

/// `POST /reload`: the daemon validated the config and will apply it.
pub async fn reload(endpoint: &Endpoint) -> Result<ReloadAccepted, ClientError> {
    request_json(endpoint, Method::POST, mcpsock_api::RELOAD_PATH).await
}

/// `GET /config`: the effective config, secrets redacted.
pub async fn config(endpoint: &Endpoint) -> Result<EffectiveConfig, ClientError> {
    request_json(endpoint, Method::GET, mcpsock_api::CONFIG_PATH).await
}

/// `GET /metrics`: the Prometheus text.
pub async fn metrics(endpoint: &Endpoint) -> Result<String, ClientError> {
    let body = request(endpoint, Method::GET, mcpsock_api::METRICS_PATH).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
