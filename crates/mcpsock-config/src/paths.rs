//! Path resolution with one documented precedence order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the process environment is read from. The real one is
/// [`ProcessEnv`]; tests pass a map.
pub trait Env {
    /// The value of an environment variable, if set and not empty.
    fn var_os(&self, key: &str) -> Option<OsString>;
    /// The effective uid of this process.
    fn uid(&self) -> u32;
}

/// The environment of the running process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var_os(&self, key: &str) -> Option<OsString> {
        std::env::var_os(key).filter(|value| !value.is_empty())
    }

    fn uid(&self) -> u32 {
        rustix::process::geteuid().as_raw()
    }
}

/// Longest socket path the platform accepts, in bytes, without the
/// terminating NUL that `sun_path` also has to hold.
#[cfg(target_os = "linux")]
pub const SOCKET_PATH_MAX: usize = 107;
/// Longest socket path the platform accepts, in bytes, without the
/// terminating NUL that `sun_path` also has to hold.
#[cfg(not(target_os = "linux"))]
pub const SOCKET_PATH_MAX: usize = 103;

/// Which config file to read, and whether the user named it (a named file
/// must exist; the default one may be absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLocation {
    pub path: PathBuf,
    pub explicit: bool,
}

/// The config file: `--config` > `MCPSOCK_CONFIG` >
/// `$XDG_CONFIG_HOME/mcpsock/config.json` > `$HOME/.config/mcpsock/config.json`.
pub fn config_location(flag: Option<&Path>, env: &dyn Env) -> ConfigLocation {
    if let Some(path) = flag {
        return ConfigLocation { path: path.to_path_buf(), explicit: true };
    }
    if let Some(path) = env.var_os("MCPSOCK_CONFIG") {
        return ConfigLocation { path: PathBuf::from(path), explicit: true };
    }
    let config_home = env
        .var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    ConfigLocation { path: config_home.join("mcpsock").join("config.json"), explicit: false }
}

/// The daemon's socket: `--socket` > `MCPSOCK_SOCKET` > config `socket` >
/// `$XDG_RUNTIME_DIR/mcpsock/mcpsock.sock` > `/tmp/mcpsock-$UID/mcpsock.sock`.
///
/// Clients find the daemon with the same function, so both sides agree
/// without any configuration.
pub fn socket_path(flag: Option<&Path>, env: &dyn Env, from_config: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    if let Some(path) = env.var_os("MCPSOCK_SOCKET") {
        return PathBuf::from(path);
    }
    if let Some(path) = from_config {
        return path.to_path_buf();
    }
    let dir = match env.var_os("XDG_RUNTIME_DIR") {
        Some(runtime_dir) => PathBuf::from(runtime_dir).join("mcpsock"),
        None => PathBuf::from(format!("/tmp/mcpsock-{}", env.uid())),
    };
    dir.join("mcpsock.sock")
}

/// mcpsock's data directory (state database, generated API key):
/// `$XDG_DATA_HOME/mcpsock`, else `$HOME/.local/share/mcpsock`.
pub fn data_dir(env: &dyn Env) -> PathBuf {
    env.var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("share")))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/mcpsock-{}-data", env.uid())))
        .join("mcpsock")
}

/// The state database: `--db` > `MCPSOCK_DB` > config `db` > `default`
/// ([`default_db_path`] for `serve`, [`app_db_path`] for `socket`).
pub fn db_path(flag: Option<&Path>, env: &dyn Env, from_config: Option<&Path>, default: PathBuf) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| env.var_os("MCPSOCK_DB").filter(|value| !value.is_empty()).map(PathBuf::from))
        .or_else(|| from_config.map(Path::to_path_buf))
        .unwrap_or(default)
}

/// The daemon's own database: `<data dir>/state.db`.
pub fn default_db_path(env: &dyn Env) -> PathBuf {
    data_dir(env).join("state.db")
}

/// The database of `mcpsock socket` for `app`: `<data dir>/sockets/<app>.db`,
/// so that servers on their own sockets never share one.
pub fn app_db_path(env: &dyn Env, app: &str) -> PathBuf {
    data_dir(env).join("sockets").join(format!("{app}.db"))
}

/// The log file of a daemon in the background: `--log-file` >
/// `$XDG_STATE_HOME/mcpsock/<socket name>.log` >
/// `$HOME/.local/state/mcpsock/<socket name>.log`, where `<socket name>` is
/// the socket's file name without `.sock` (`mcpsock`, or the app of
/// `mcpsock socket`). `mcpsock logs` finds it the same way.
pub fn log_file(flag: Option<&Path>, env: &dyn Env, socket_path: &Path) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    let stem = socket_path.file_stem().map(|stem| stem.to_string_lossy().into_owned());
    let state = env
        .var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/mcpsock-{}-state", env.uid())));
    state.join("mcpsock").join(format!("{}.log", stem.as_deref().unwrap_or("mcpsock")))
}

/// The socket of `mcpsock socket` for `app`: `$XDG_RUNTIME_DIR/mcpsock/sockets/<app>.sock`,
/// else `/tmp/mcpsock-$UID/sockets/<app>.sock` (`--socket` and
/// `MCPSOCK_SOCKET` take precedence, as for `serve`).
pub fn app_socket_path(flag: Option<&Path>, env: &dyn Env, app: &str) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    if let Some(path) = env.var_os("MCPSOCK_SOCKET") {
        return PathBuf::from(path);
    }
    let dir = match env.var_os("XDG_RUNTIME_DIR") {
        Some(runtime_dir) => PathBuf::from(runtime_dir).join("mcpsock"),
        None => PathBuf::from(format!("/tmp/mcpsock-{}", env.uid())),
    };
    dir.join("sockets").join(format!("{app}.sock"))
}

/// Parses a TCP listen address (`127.0.0.1:8765`, `[::1]:8765`,
/// `localhost:8765`). Anything but loopback is refused unless
/// `allow_non_loopback` (the `--dangerously-bind-non-loopback` flag).
pub fn parse_listen(text: &str, allow_non_loopback: bool) -> Result<std::net::SocketAddr, String> {
    let address: std::net::SocketAddr = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}").parse(),
        None => text.parse(),
    }
    .map_err(|_| format!("listen address {text:?} is not IP:PORT; write e.g. 127.0.0.1:8765"))?;
    if !address.ip().is_loopback() && !allow_non_loopback {
        return Err(format!(
            "listen address {address} is not a loopback address, so other machines could reach it; use 127.0.0.1:PORT, or pass --dangerously-bind-non-loopback if you really mean it"
        ));
    }
    Ok(address)
}

/// Checks that `path` can name a filesystem Unix socket. Abstract addresses
/// (`@name` or a leading NUL) are refused: no file permission applies to them.
/// The message says what to do.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(
            "the socket path is empty: give a file path such as /run/user/1000/mcpsock/mcpsock.sock".into()
        );
    }
    if bytes[0] == b'@' || bytes.contains(&0) {
        return Err(format!(
            "{}: abstract socket addresses are not supported because no file permission protects them; give a file path instead",
            path.display()
        ));
    }
    if path.file_name().is_none() {
        return Err(format!("{}: the socket path must end in a file name", path.display()));
    }
    if bytes.len() > SOCKET_PATH_MAX {
        return Err(format!(
            "{}: the socket path is {} bytes long, but this platform allows at most {SOCKET_PATH_MAX}; choose a shorter path with --socket or MCPSOCK_SOCKET",
            path.display(),
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var_os(&self, key: &str) -> Option<OsString> {
            self.0.get(key).map(OsString::from)
        }
        fn uid(&self) -> u32 {
            4242
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> FakeEnv {
        FakeEnv(pairs.iter().copied().collect())
    }

    #[test]
    fn socket_precedence() {
        let check = |flag: Option<&str>,
                     vars: &[(&'static str, &'static str)],
                     file: Option<&str>,
                     expected: &str| {
            let got = socket_path(flag.map(Path::new), &env(vars), file.map(Path::new));
            assert_eq!(got, PathBuf::from(expected), "flag={flag:?} vars={vars:?} file={file:?}");
        };
        let all = [("MCPSOCK_SOCKET", "/env.sock"), ("XDG_RUNTIME_DIR", "/run/user/7")];
        check(Some("/flag.sock"), &all, Some("/file.sock"), "/flag.sock");
        check(None, &all, Some("/file.sock"), "/env.sock");
        check(None, &all[1..], Some("/file.sock"), "/file.sock");
        check(None, &all[1..], None, "/run/user/7/mcpsock/mcpsock.sock");
        check(None, &[], None, "/tmp/mcpsock-4242/mcpsock.sock");
    }

    #[test]
    fn config_precedence() {
        let vars = [("MCPSOCK_CONFIG", "/env.json"), ("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")];
        let flag = config_location(Some(Path::new("/flag.json")), &env(&vars));
        assert_eq!(flag, ConfigLocation { path: "/flag.json".into(), explicit: true });
        let from_env = config_location(None, &env(&vars));
        assert_eq!(from_env, ConfigLocation { path: "/env.json".into(), explicit: true });
        let xdg = config_location(None, &env(&vars[1..]));
        assert_eq!(xdg, ConfigLocation { path: "/xdg/mcpsock/config.json".into(), explicit: false });
        let home = config_location(None, &env(&vars[2..]));
        assert_eq!(home.path, PathBuf::from("/home/u/.config/mcpsock/config.json"));
    }

    #[test]
    fn log_and_app_socket_paths() {
        let socket = Path::new("/run/user/7/mcpsock/mcpsock.sock");
        let state = env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")]);
        assert_eq!(log_file(None, &state, socket), PathBuf::from("/s/mcpsock/mcpsock.log"));
        assert_eq!(
            log_file(None, &env(&[("HOME", "/h")]), socket),
            PathBuf::from("/h/.local/state/mcpsock/mcpsock.log")
        );
        assert_eq!(log_file(Some(Path::new("/x.log")), &state, socket), PathBuf::from("/x.log"));
        assert_eq!(
            log_file(None, &state, Path::new("/r/mcpsock/sockets/time.sock")),
            PathBuf::from("/s/mcpsock/time.log")
        );
        let runtime = env(&[("XDG_RUNTIME_DIR", "/run/user/7")]);
        assert_eq!(
            app_socket_path(None, &runtime, "time"),
            PathBuf::from("/run/user/7/mcpsock/sockets/time.sock")
        );
        assert_eq!(
            app_socket_path(None, &env(&[]), "time"),
            PathBuf::from("/tmp/mcpsock-4242/sockets/time.sock")
        );
        assert_eq!(app_socket_path(Some(Path::new("/a.sock")), &runtime, "time"), PathBuf::from("/a.sock"));
    }

    #[test]
    fn listen_addresses() {
        let ok = |text: &str| parse_listen(text, false).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8765"), "127.0.0.1:8765");
        assert_eq!(ok("localhost:9"), "127.0.0.1:9");
        assert_eq!(ok("[::1]:9"), "[::1]:9");
        assert_eq!(ok("127.1.2.3:9"), "127.1.2.3:9");
        for refused in ["0.0.0.0:9", "[::]:9", "192.168.1.10:9", "10.0.0.1:9"] {
            let error = parse_listen(refused, false).unwrap_err();
            assert!(error.contains("--dangerously-bind-non-loopback"), "{refused}: {error}");
            assert!(parse_listen(refused, true).is_ok(), "{refused}");
        }
        for invalid in ["0", "8765", "localhost", "example.com:80", ""] {
            assert!(parse_listen(invalid, true).unwrap_err().contains("is not IP:PORT"), "{invalid}");
        }
    }

    #[test]
    fn data_dir_precedence() {
        assert_eq!(data_dir(&env(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")])), PathBuf::from("/d/mcpsock"));
        assert_eq!(data_dir(&env(&[("HOME", "/h")])), PathBuf::from("/h/.local/share/mcpsock"));
    }

    #[test]
    fn db_precedence() {
        let both = env(&[("MCPSOCK_DB", "/env.db"), ("XDG_DATA_HOME", "/d")]);
        let default = || default_db_path(&both);
        assert_eq!(
            db_path(Some(Path::new("/flag.db")), &both, Some(Path::new("/c.db")), default()),
            PathBuf::from("/flag.db")
        );
        assert_eq!(db_path(None, &both, Some(Path::new("/c.db")), default()), PathBuf::from("/env.db"));
        let data_only = env(&[("XDG_DATA_HOME", "/d")]);
        assert_eq!(db_path(None, &data_only, Some(Path::new("/c.db")), default()), PathBuf::from("/c.db"));
        assert_eq!(
            db_path(None, &data_only, None, default_db_path(&data_only)),
            PathBuf::from("/d/mcpsock/state.db")
        );
        assert_eq!(app_db_path(&data_only, "everything"), PathBuf::from("/d/mcpsock/sockets/everything.db"));
    }

    #[test]
    fn socket_path_checks() {
        assert!(check_socket_path(Path::new("/run/user/1/mcpsock/mcpsock.sock")).is_ok());
        let abstract_name = check_socket_path(Path::new("@mcpsock")).unwrap_err();
        assert!(abstract_name.contains("abstract"), "{abstract_name}");
        assert!(check_socket_path(Path::new("\0mcpsock")).unwrap_err().contains("abstract"));
        let long = format!("/tmp/{}", "x".repeat(SOCKET_PATH_MAX));
        let too_long = check_socket_path(Path::new(&long)).unwrap_err();
        assert!(too_long.contains(&format!("at most {SOCKET_PATH_MAX}")), "{too_long}");
        let exact = format!("/{}", "x".repeat(SOCKET_PATH_MAX - 1));
        assert!(check_socket_path(Path::new(&exact)).is_ok());
        assert!(check_socket_path(Path::new("")).is_err());
    }
}
