//! Who may send a request, decided from the connection's `Peer` tag and
//! the request's headers, before anything else runs.
//!
//! - Any request with an `Origin` header is refused (403): browsers have no
//!   business on a local MCP endpoint, and no CORS grant is ever made.
//! - Unix-socket requests were admitted by peer credentials at accept.
//! - TCP requests must name a loopback `Host` with our port (403 otherwise,
//!   against DNS rebinding) and carry the API key in `Authorization: Bearer`
//!   or `X-API-Key` (401 otherwise), compared in constant time. A key in the
//!   query string is not looked at. The one exception is `GET /health`,
//!   which a TCP client without a key may ask (for container health checks);
//!   it then learns nothing but `ok` or `degraded`.
//!
//! Each admitted request carries its [`Caller`], which admin endpoints read
//! to decide who may change the daemon.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, StatusCode, header};
use mcpsock_config::Secret;
use mcpsock_transport::Peer;
use subtle::ConstantTimeEq;

/// The other header an API key may come in.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Who sent an admitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The daemon's own user on the Unix socket.
    Owner,
    /// Another user the socket admits (`allow_uids`, `allow_gids`).
    OtherUser,
    /// A TCP client with the API key.
    ApiKey,
    /// A TCP client without the key, on `GET /health` only.
    Anonymous,
}

impl Caller {
    /// May change the daemon and read its config: the owner, or whoever
    /// holds the API key.
    pub(crate) fn is_admin(self) -> bool {
        matches!(self, Self::Owner | Self::ApiKey)
    }
}

/// The request policy of one daemon.
#[derive(Debug)]
pub(crate) struct Access {
    api_key: Option<Secret>,
    tcp_hosts: Vec<String>,
    /// The daemon's own user, read once (a system call per request
    /// otherwise); the daemon never changes its user.
    own_uid: u32,
}

impl Access {
    /// `tcp` is the bound TCP address and its key, when TCP is on.
    pub(crate) fn new(tcp: Option<(SocketAddr, Secret)>) -> Self {
        let own_uid = rustix::process::geteuid().as_raw();
        match tcp {
            None => Self { api_key: None, tcp_hosts: Vec::new(), own_uid },
            Some((address, key)) => {
                let port = address.port();
                let mut tcp_hosts =
                    vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
                tcp_hosts.push(address.to_string());
                Self { api_key: Some(key), tcp_hosts, own_uid }
            }
        }
    }

    fn key_matches(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.api_key else { return false };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        let header_key = headers.get(X_API_KEY).and_then(|value| value.to_str().ok()).map(str::trim);
        [bearer, header_key]
            .into_iter()
            .flatten()
            .any(|presented| bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())))
    }
}

/// `GET /admin/api-key`: the TCP key, for the daemon's own user on the
/// socket only (other admitted users and TCP clients get 403).
pub(crate) async fn api_key(State(access): State<Arc<Access>>, request: Request) -> Response {
    if !matches!(request.extensions().get::<Peer>(), Some(Peer::Unix { uid, .. }) if *uid == access.own_uid) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the API key is given only to the daemon's own user on the socket",
        );
    }
    match &access.api_key {
        Some(key) => axum::Json(mcpsock_api::ApiKey { api_key: key.expose().to_string() }).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "TCP is off, so no API key is in use; start the daemon with --listen",
        ),
    }
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    let mut response = (status, axum::Json(serde_json::json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"mcpsock\""));
    }
    response
}

/// A request the access guard turned away: its status and the reason.
#[derive(Debug)]
pub(crate) struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

impl Access {
    /// Admits `request`, tagging it with its [`Caller`], or tells why not.
    pub(crate) fn admit(&self, request: &mut Request) -> Result<(), Refused> {
        let caller = self.caller(request)?;
        request.extensions_mut().insert(caller);
        Ok(())
    }

    fn caller(&self, request: &Request) -> Result<Caller, Refused> {
        if request.headers().contains_key(header::ORIGIN) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "requests from web pages (with an Origin header) are refused",
            ));
        }
        Ok(match request.extensions().get::<Peer>() {
            Some(Peer::Unix { uid, .. }) if *uid == self.own_uid => Caller::Owner,
            Some(Peer::Unix { .. }) => Caller::OtherUser,
            Some(Peer::Tcp { .. }) => {
                let host = request.headers().get(header::HOST).and_then(|value| value.to_str().ok());
                if !host.is_some_and(|host| {
                    self.tcp_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))
                }) {
                    return Err(Refused(
                        StatusCode::FORBIDDEN,
                        "the Host header must name this loopback listener",
                    ));
                }
                if self.key_matches(request.headers()) {
                    Caller::ApiKey
                } else if request.method() == http::Method::GET
                    && request.uri().path() == mcpsock_api::HEALTH_PATH
                    && !has_credentials(request.headers())
                {
                    Caller::Anonymous
                } else {
                    return Err(Refused(
                        StatusCode::UNAUTHORIZED,
                        "an API key is required: send it in Authorization: Bearer or X-API-Key",
                    ));
                }
            }
            _ => return Err(Refused(StatusCode::FORBIDDEN, "unknown connection")),
        })
    }
}

/// A request that presents a key must present the right one, even where
/// none is needed: a wrong key is an error worth seeing.
fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn keys_only_from_the_two_headers() {
        let access = Access::new(Some(("127.0.0.1:9".parse().unwrap(), Secret::new("0123456789abcdef"))));
        let check = |pairs: &[(&'static str, &'static str)], expected: bool| {
            assert_eq!(access.key_matches(&headers(pairs)), expected, "{pairs:?}");
        };
        check(&[("authorization", "Bearer 0123456789abcdef")], true);
        check(&[("authorization", "bearer 0123456789abcdef")], true);
        check(&[("x-api-key", "0123456789abcdef")], true);
        check(&[("authorization", "Basic 0123456789abcdef")], false);
        check(&[("authorization", "Bearer 0123456789abcdeF")], false);
        check(&[("x-api-key", "0123456789abcde")], false);
        check(&[], false);
        assert!(!Access::new(None).key_matches(&headers(&[("x-api-key", "0123456789abcdef")])));
    }
}
