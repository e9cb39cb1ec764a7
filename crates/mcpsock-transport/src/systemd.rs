//! systemd integration: a listening socket passed by socket activation
//! (`LISTEN_FDS`/`LISTEN_PID`), state notices (`NOTIFY_SOCKET`) and the
//! watchdog (`WATCHDOG_USEC`/`WATCHDOG_PID`).

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use rustix::fs::FileType;

use crate::SocketError;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: i32 = 3;

/// The values of `LISTEN_PID`, `LISTEN_FDS`, `NOTIFY_SOCKET`,
/// `WATCHDOG_USEC` and `WATCHDOG_PID`, read once by the caller.
#[derive(Clone, Debug, Default)]
pub struct SystemdEnv {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub notify_socket: Option<String>,
    pub watchdog_usec: Option<String>,
    pub watchdog_pid: Option<String>,
}

impl SystemdEnv {
    /// Reads the three variables from the process environment.
    pub fn from_process() -> Self {
        let read = |key: &str| std::env::var(key).ok().filter(|value| !value.is_empty());
        Self {
            listen_pid: read("LISTEN_PID"),
            listen_fds: read("LISTEN_FDS"),
            notify_socket: read("NOTIFY_SOCKET"),
            watchdog_usec: read("WATCHDOG_USEC"),
            watchdog_pid: read("WATCHDOG_PID"),
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval the service
    /// manager asked for (`WatchdogSec=`), when it asked this process.
    pub fn watchdog_interval(&self) -> Option<std::time::Duration> {
        self.notify_socket.as_ref()?;
        let usec: u64 = self.watchdog_usec.as_ref()?.parse().ok().filter(|usec| *usec > 0)?;
        if let Some(pid) = &self.watchdog_pid
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        Some(std::time::Duration::from_micros(usec / 2))
    }

    /// The listening Unix socket systemd passed to this process, if any.
    ///
    /// Passed descriptors count only when `LISTEN_PID` names this process
    /// (otherwise they were meant for a parent: ignored with a warning). The
    /// first one must be a listening Unix stream socket; it is used as it
    /// is, never unlinked or rebound.
    pub fn activated_listener(&self) -> Result<Option<std::os::unix::net::UnixListener>, SocketError> {
        let (Some(pid), Some(count)) = (&self.listen_pid, &self.listen_fds) else {
            return Ok(None);
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            tracing::warn!(listen_pid = %pid, "ignoring LISTEN_FDS: LISTEN_PID names another process");
            return Ok(None);
        }
        let count: u32 = count.parse().unwrap_or(0);
        if count == 0 {
            return Ok(None);
        }
        if count > 1 {
            tracing::warn!(count, "socket activation passed several sockets; serving the first one only");
        }
        let invalid = |message: &str| {
            SocketError::InvalidPath(format!("the socket passed by systemd (fd 3) {message}"))
        };
        // SAFETY: systemd hands fd 3 to this process (LISTEN_PID checked
        // above) and nothing else in mcpsock opens or closes it; taking
        // ownership here makes this the only owner.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(FIRST_PASSED_FD) };
        let stat = rustix::fs::fstat(&fd).map_err(|_| invalid("is not open"))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
            return Err(invalid("is not a socket"));
        }
        let domain = rustix::net::sockopt::socket_domain(&fd).map_err(|_| invalid("is not a socket"))?;
        if domain != rustix::net::AddressFamily::UNIX {
            return Err(invalid("is not a Unix socket; use ListenStream=/path/to.sock"));
        }
        if !rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false) {
            return Err(invalid("is not listening"));
        }
        // It must not leak into children.
        rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)
            .map_err(|_| invalid("cannot be configured"))?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true).map_err(|_| invalid("cannot be made non-blocking"))?;
        Ok(Some(listener))
    }

    /// Sends state lines (`READY=1`, `STOPPING=1`, …) to the service manager,
    /// when it asked for notices. Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.notify_socket else { return };
        let address = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(target),
        };
        let sent =
            address.and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
        if let Err(error) = sent {
            tracing::warn!(%error, notify_socket = %target, "could not notify the service manager");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_only_when_asked_of_this_process() {
        let ours = std::process::id().to_string();
        let env = |usec: Option<&str>, pid: Option<&str>, notify: bool| SystemdEnv {
            watchdog_usec: usec.map(str::to_string),
            watchdog_pid: pid.map(str::to_string),
            notify_socket: notify.then(|| "/run/notify".to_string()),
            ..SystemdEnv::default()
        };
        let half = Some(std::time::Duration::from_secs(15));
        assert_eq!(env(Some("30000000"), None, true).watchdog_interval(), half);
        assert_eq!(env(Some("30000000"), Some(&ours), true).watchdog_interval(), half);
        assert_eq!(env(Some("30000000"), Some("1"), true).watchdog_interval(), None);
        assert_eq!(env(Some("30000000"), None, false).watchdog_interval(), None);
        assert_eq!(env(Some("0"), None, true).watchdog_interval(), None);
        assert_eq!(env(Some("soon"), None, true).watchdog_interval(), None);
        assert_eq!(env(None, None, true).watchdog_interval(), None);
    }
}
