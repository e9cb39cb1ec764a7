//! Where the daemon is: `--endpoint` > `--socket` > `MCPSOCK_ENDPOINT` >
//! the socket path the daemon itself would pick.

use std::fmt;
use std::path::{Path, PathBuf};

use mcpsock_config::Env;

use crate::ClientError;

/// An address of an mcpsock daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///path/to/mcpsock.sock`, or a bare path.
    Unix(PathBuf),
    /// `http://127.0.0.1:PORT` or `https://…`.
    Http(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Http(url) => f.write_str(url),
        }
    }
}

impl Endpoint {
    /// Parses `unix:///path`, `http://…`, `https://…`, or an absolute path.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        if let Some(path) = text.strip_prefix("unix://") {
            return Self::unix(Path::new(path));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Self::Http(text.to_string()));
        }
        if text.starts_with('/') {
            return Self::unix(Path::new(text));
        }
        Err(ClientError::InvalidEndpoint(format!(
            "{text:?} is not an endpoint: write unix:///path/to/mcpsock.sock, http://127.0.0.1:PORT or an absolute socket path"
        )))
    }

    fn unix(path: &Path) -> Result<Self, ClientError> {
        mcpsock_config::check_socket_path(path).map_err(ClientError::InvalidEndpoint)?;
        Ok(Self::Unix(path.to_path_buf()))
    }

    /// Resolves the endpoint the way the CLI does: `--endpoint` >
    /// `--socket` > `MCPSOCK_ENDPOINT` > the daemon's own socket choice
    /// (`MCPSOCK_SOCKET` > config `socket` > default).
    pub fn resolve(
        endpoint_flag: Option<&str>,
        socket_flag: Option<&Path>,
        env: &dyn Env,
        config_socket: Option<&Path>,
    ) -> Result<Self, ClientError> {
        if let Some(text) = endpoint_flag {
            return Self::parse(text);
        }
        if let Some(path) = socket_flag {
            return Self::unix(path);
        }
        if let Some(text) = env.var_os("MCPSOCK_ENDPOINT") {
            return Self::parse(&text.to_string_lossy());
        }
        Self::unix(&mcpsock_config::socket_path(None, env, config_socket))
    }

    /// Resolves the endpoint exactly as the `mcpsock` command does, first
    /// found wins: `endpoint_flag`, `socket_flag`, `MCPSOCK_ENDPOINT`,
    /// `MCPSOCK_SOCKET`, the `socket` key of the config file (found through
    /// `config_flag`, `MCPSOCK_CONFIG` or the default location, and read
    /// only when nothing before it decided), the default socket path.
    ///
    /// A program that takes no flags calls `Endpoint::discover(None, None, None)`.
    pub fn discover(
        endpoint_flag: Option<&str>,
        socket_flag: Option<&Path>,
        config_flag: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let env = mcpsock_config::ProcessEnv;
        let needs_config = endpoint_flag.is_none()
            && socket_flag.is_none()
            && env.var_os("MCPSOCK_ENDPOINT").is_none()
            && env.var_os("MCPSOCK_SOCKET").is_none();
        let config_socket = if needs_config {
            let location = mcpsock_config::config_location(config_flag, &env);
            mcpsock_config::Config::load(&location.path, location.explicit)?.socket
        } else {
            None
        };
        Self::resolve(endpoint_flag, socket_flag, &env, config_socket.as_deref())
    }

    pub(crate) fn socket_path(&self) -> Result<&Path, ClientError> {
        match self {
            Self::Unix(path) => Ok(path),
            Self::Http(url) => Err(ClientError::InvalidEndpoint(format!(
                "{url}: this version of the client talks to the daemon over its Unix socket only; use a unix:// endpoint"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var_os(&self, key: &str) -> Option<OsString> {
            self.0.get(key).map(OsString::from)
        }
        fn uid(&self) -> u32 {
            7
        }
    }

    #[test]
    fn parse_forms() {
        assert_eq!(Endpoint::parse("unix:///run/a.sock").unwrap(), Endpoint::Unix("/run/a.sock".into()));
        assert_eq!(Endpoint::parse("/run/a.sock").unwrap(), Endpoint::Unix("/run/a.sock".into()));
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9/mcp").unwrap(),
            Endpoint::Http("http://127.0.0.1:9/mcp".into())
        );
        assert!(Endpoint::parse("relative.sock").unwrap_err().to_string().contains("is not an endpoint"));
        assert!(Endpoint::parse("unix://@abstract").unwrap_err().to_string().contains("abstract"));
    }

    #[test]
    fn resolution_order() {
        let env =
            FakeEnv([("MCPSOCK_ENDPOINT", "unix:///env.sock"), ("XDG_RUNTIME_DIR", "/run/user/7")].into());
        let resolve = |endpoint: Option<&str>, socket: Option<&str>, env: &FakeEnv| {
            Endpoint::resolve(endpoint, socket.map(Path::new), env, None).unwrap()
        };
        assert_eq!(resolve(Some("/flag.sock"), Some("/s.sock"), &env), Endpoint::Unix("/flag.sock".into()));
        assert_eq!(resolve(None, Some("/s.sock"), &env), Endpoint::Unix("/s.sock".into()));
        assert_eq!(resolve(None, None, &env), Endpoint::Unix("/env.sock".into()));
        let plain = FakeEnv([("XDG_RUNTIME_DIR", "/run/user/7")].into());
        assert_eq!(resolve(None, None, &plain), Endpoint::Unix("/run/user/7/mcpsock/mcpsock.sock".into()));
    }
}
