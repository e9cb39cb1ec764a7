//! Upstreams that run on their own and speak Streamable HTTP: over TCP
//! (`http://`, `https://`, through rmcp's reqwest client with rustls) or
//! over a Unix socket (rmcp's hyper client), never a hand-written HTTP
//! client.
//!
//! The transport is wrapped in [`Watched`], which does for an HTTP upstream
//! what the stdout filter does for a stdio one: it counts progress and log
//! notifications in arrival order for the [`Ledger`], and it reports when
//! the connection is gone for good, which is what a process exit is to a
//! stdio upstream.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rmcp::RoleClient;
use rmcp::model::{ServerJsonRpcMessage, ServerNotification};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::UnixSocketHttpClient;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use tokio::sync::watch;

use crate::upstream::Ledger;

/// Where a Streamable HTTP upstream listens.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpEndpoint {
    /// An `http://` or `https://` URL, used as it is.
    Url(String),
    /// HTTP over the Unix socket `socket`, at `path` (such as `/mcp`).
    Unix { socket: PathBuf, path: String },
}

/// Shown in status and logs. A query string may carry a token, so it is
/// replaced by `?<redacted>`.
impl fmt::Display for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => match url.split_once('?') {
                Some((base, _)) => write!(f, "{base}?<redacted>"),
                None => f.write_str(url),
            },
            Self::Unix { socket, path } if path == "/mcp" => write!(f, "unix://{}", socket.display()),
            Self::Unix { socket, path } => write!(f, "unix://{}?path={path}", socket.display()),
        }
    }
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How to reach a Streamable HTTP upstream.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpSpec {
    pub endpoint: HttpEndpoint,
    /// Sent with every request; the values are secrets (tokens), never
    /// printed.
    pub headers: Vec<(String, String)>,
}

impl HttpSpec {
    pub fn new(endpoint: HttpEndpoint) -> Self {
        Self { endpoint, headers: Vec::new() }
    }

    pub fn headers(mut self, headers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }
}

impl fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpSpec")
            .field("endpoint", &self.endpoint)
            .field("header_names", &header_names)
            .finish()
    }
}

/// The transport to one HTTP upstream, watched.
pub(crate) type HttpTransport = Watched<Box<dyn DynTransport>>;

/// An rmcp client transport of either HTTP client, boxed so that both
/// kinds of endpoint give one type.
pub(crate) trait DynTransport: Send + 'static {
    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> futures::future::BoxFuture<'static, Result<(), rmcp::transport::DynamicTransportError>>;
    fn receive(&mut self) -> futures::future::BoxFuture<'_, Option<RxJsonRpcMessage<RoleClient>>>;
    fn close(&mut self)
    -> futures::future::BoxFuture<'_, Result<(), rmcp::transport::DynamicTransportError>>;
}

impl<C: StreamableHttpClient + Send + Sync + 'static> DynTransport for StreamableHttpClientTransport<C> {
    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> futures::future::BoxFuture<'static, Result<(), rmcp::transport::DynamicTransportError>> {
        let sending = Transport::<RoleClient>::send(self, item);
        Box::pin(async move {
            sending.await.map_err(rmcp::transport::DynamicTransportError::new::<Self, RoleClient>)
        })
    }

    fn receive(&mut self) -> futures::future::BoxFuture<'_, Option<RxJsonRpcMessage<RoleClient>>> {
        Box::pin(Transport::<RoleClient>::receive(self))
    }

    fn close(
        &mut self,
    ) -> futures::future::BoxFuture<'_, Result<(), rmcp::transport::DynamicTransportError>> {
        Box::pin(async move {
            Transport::<RoleClient>::close(self)
                .await
                .map_err(rmcp::transport::DynamicTransportError::new::<Self, RoleClient>)
        })
    }
}

/// Builds the transport. Nothing is sent yet: rmcp connects with the
/// `initialize` request. `closed` becomes `Some` when the transport ends.
pub(crate) fn transport(
    spec: &HttpSpec,
    ledger: Arc<Ledger>,
    closed: watch::Sender<Option<String>>,
) -> Result<HttpTransport, String> {
    let mut headers = HashMap::new();
    for (name, value) in &spec.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header {name:?} is not a valid HTTP header name"))?;
        let mut value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} is not a valid HTTP header value"))?;
        // Keeps it out of the HTTP clients' own debug output.
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let inner: Box<dyn DynTransport> = match &spec.endpoint {
        HttpEndpoint::Url(url) => {
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers);
            Box::new(StreamableHttpClientTransport::with_client(mcpsock_client::http_client()?, config))
        }
        HttpEndpoint::Unix { socket, path } => {
            // The host only fills the Host header; the socket decides where
            // the request goes.
            let uri = format!("http://localhost{path}");
            let client = UnixSocketHttpClient::new(&socket.to_string_lossy(), &uri);
            let config = StreamableHttpClientTransportConfig::with_uri(uri).custom_headers(headers);
            Box::new(StreamableHttpClientTransport::with_client(client, config))
        }
    };
    Ok(Watched { inner, ledger, closed: Some(closed) })
}

/// Counts what the [`Ledger`] needs and reports the end of the transport.
pub(crate) struct Watched<T> {
    inner: T,
    ledger: Arc<Ledger>,
    closed: Option<watch::Sender<Option<String>>>,
}

impl<T> Watched<T> {
    fn mark_closed(&mut self) {
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(Some("the connection to the server ended".into()));
        }
    }
}

impl Transport<RoleClient> for Watched<Box<dyn DynTransport>> {
    type Error = rmcp::transport::DynamicTransportError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        match &message {
            Some(ServerJsonRpcMessage::Notification(notification))
                if matches!(
                    notification.notification,
                    ServerNotification::ProgressNotification(_)
                        | ServerNotification::LoggingMessageNotification(_)
                ) =>
            {
                self.ledger.read_one();
            }
            Some(_) => {}
            None => self.mark_closed(),
        }
        message
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        let result = self.inner.close().await;
        self.mark_closed();
        result
    }
}
