//! The socket file and everything around it: the private directory, the
//! `flock`-held PID file, stale-socket removal and binding with the final
//! mode.
//!
//! All file operations after the directory is opened are relative to the
//! directory's file descriptor (`openat`, `statat`, `unlinkat`), so a path
//! that changes underneath us cannot redirect them.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use tokio::net::{UnixListener, UnixSocket};

use crate::SocketError;

/// Permission bits of a directory we create for sockets.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Permission bits of the PID/lock file.
const LOCK_FILE_MODE: u32 = 0o600;
/// Backlog of the listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// Holds the single-instance lock of one socket path for as long as it
/// lives. On drop it removes the socket (when it bound one) and the PID
/// file, then releases the lock, in that order, so the next instance never
/// sees a socket without a lock holder.
#[derive(Debug)]
pub struct SocketGuard {
    socket_path: PathBuf,
    dir: OwnedFd,
    socket_name: String,
    lock_name: String,
    /// Held open for its `flock`; closing it releases the lock.
    _lock_file: File,
    bound: bool,
}

/// A listening socket and the guard that removes it.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub guard: SocketGuard,
}

impl SocketGuard {
    /// Verifies (or creates) the socket's private directory, takes the
    /// `flock` on `<socket>.pid`, writes our PID into it, and removes a
    /// stale socket left by a dead instance. Refuses anything at the socket
    /// path that is not a socket, and a socket that still answers.
    pub fn acquire(socket_path: &Path) -> Result<Self, SocketError> {
        let (dir_path, socket_name) = split_socket_path(socket_path)?;
        let dir = open_private_dir(&dir_path)?;
        let lock_name = format!("{socket_name}.pid");
        let lock_path = dir_path.join(&lock_name);
        let lock_file = lock_pid_file(&dir, &lock_name, &lock_path, socket_path)?;
        let guard = Self {
            socket_path: socket_path.to_path_buf(),
            dir,
            socket_name,
            lock_name,
            _lock_file: lock_file,
            bound: false,
        };
        guard.remove_stale_socket()?;
        Ok(guard)
    }

    /// The socket path this guard protects.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The PID/lock file next to the socket.
    pub fn lock_path(&self) -> PathBuf {
        self.socket_path.with_file_name(&self.lock_name)
    }

    /// Binds the socket, sets its final `mode` (and `group`, when given)
    /// while nobody can connect yet (between `bind()` and `listen()`), then
    /// listens.
    pub fn bind(mut self, mode: u32, group: Option<u32>) -> Result<BoundSocket, SocketError> {
        let bind_error = |source: io::Error| SocketError::Bind { path: self.socket_path.clone(), source };
        let socket = UnixSocket::new_stream().map_err(bind_error)?;
        match socket.bind(&self.socket_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                return Err(SocketError::AlreadyRunning { socket: self.socket_path.clone(), pid: None });
            }
            Err(error) => return Err(bind_error(error)),
        }
        self.bound = true;
        // The directory is ours and closed to others, so the entry we just
        // bound is the one we stat and chmod; check anyway, without
        // following links.
        let stat = rustix::fs::statat(&self.dir, self.socket_name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| bind_error(errno.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Socket
            || stat.st_uid != rustix::process::geteuid().as_raw()
        {
            return Err(bind_error(io::Error::other(
                "the bound socket was replaced before it could be secured",
            )));
        }
        if let Some(gid) = group {
            rustix::fs::chownat(
                &self.dir,
                self.socket_name.as_str(),
                None,
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| bind_error(errno.into()))?;
        }
        rustix::fs::chmodat(
            &self.dir,
            self.socket_name.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|errno| bind_error(errno.into()))?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        Ok(BoundSocket { listener, guard: self })
    }

    fn remove_stale_socket(&self) -> Result<(), SocketError> {
        let stat = match rustix::fs::statat(&self.dir, self.socket_name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(()),
            Err(errno) => {
                return Err(SocketError::Bind { path: self.socket_path.clone(), source: errno.into() });
            }
        };
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Socket => None,
            FileType::Symlink => Some("a symbolic link"),
            FileType::RegularFile => Some("a regular file"),
            FileType::Directory => Some("a directory"),
            FileType::Fifo => Some("a FIFO"),
            _ => Some("a device or other special file"),
        };
        if let Some(kind) = kind {
            return Err(SocketError::NotASocket { path: self.socket_path.clone(), kind });
        }
        match std::os::unix::net::UnixStream::connect(&self.socket_path) {
            Ok(_) => Err(SocketError::AlreadyRunning { socket: self.socket_path.clone(), pid: None }),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                rustix::fs::unlinkat(&self.dir, self.socket_name.as_str(), AtFlags::empty()).map_err(
                    |errno| SocketError::Bind { path: self.socket_path.clone(), source: errno.into() },
                )?;
                tracing::info!(socket = %self.socket_path.display(), "removed a stale socket left by an instance that is gone");
                Ok(())
            }
            Err(source) => Err(SocketError::Bind { path: self.socket_path.clone(), source }),
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.bound {
            let _ = rustix::fs::unlinkat(&self.dir, self.socket_name.as_str(), AtFlags::empty());
        }
        let _ = rustix::fs::unlinkat(&self.dir, self.lock_name.as_str(), AtFlags::empty());
        // Dropping `_lock_file` afterwards releases the flock.
    }
}

/// Which process holds the instance lock of `socket_path` (its
/// `<socket>.pid`), if any. The lock, not the PID written in the file, is
/// the proof: a PID file left by a crashed daemon can name a process that
/// has nothing to do with mcpsock, and that process holds no lock on the
/// file. Read from `/proc/locks`, so nothing here ever takes the lock (a
/// daemon starting meanwhile is not disturbed).
pub fn lock_holder(socket_path: &Path) -> io::Result<Option<u32>> {
    let (dir_path, socket_name) = split_socket_path(socket_path)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    let lock_path = dir_path.join(format!("{socket_name}.pid"));
    let file = match rustix::fs::open(
        &lock_path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(file) => file,
        Err(Errno::NOENT) => return Ok(None),
        Err(errno) => return Err(errno.into()),
    };
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let device = (rustix::fs::major(stat.st_dev), rustix::fs::minor(stat.st_dev));
    // The kernel hands `/proc/locks` out a page per read and carries on by
    // position, so a lock another process takes or drops meanwhile can hide
    // a line of a later page: a holder not seen is looked for again.
    for _ in 0..PROC_LOCKS_READS {
        let locks = std::fs::read_to_string("/proc/locks")?;
        if let Some(pid) = flock_holder(&locks, device, stat.st_ino) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// How often [`lock_holder`] reads `/proc/locks` before it concludes that
/// nobody holds the lock.
const PROC_LOCKS_READS: usize = 4;

/// The pid holding a `flock` on the file `(device, inode)`, from the text
/// of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF`).
fn flock_holder(locks: &str, device: (u32, u32), inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter is listed as "1: -> FLOCK ..."; only holders count.
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let mut parts = fields.get(5)?.split(':');
        let major = u32::from_str_radix(parts.next()?, 16).ok()?;
        let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
        let file_inode: u64 = parts.next()?.parse().ok()?;
        ((major, minor) == device && file_inode == inode).then_some(pid)
    })
}

/// Binds a TCP listener (the caller has checked the address is loopback or
/// that the user insisted otherwise). Must be called inside a tokio runtime.
pub fn bind_tcp(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener, SocketError> {
    let bind_error = |source: io::Error| SocketError::BindTcp { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(listener).map_err(bind_error)
}

fn split_socket_path(socket_path: &Path) -> Result<(PathBuf, String), SocketError> {
    let invalid = |message: String| SocketError::InvalidPath(message);
    let name = socket_path.file_name().and_then(|name| name.to_str()).ok_or_else(|| {
        invalid(format!("{}: the socket path must end in a UTF-8 file name", socket_path.display()))
    })?;
    let dir = match socket_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string()))
}

/// Opens the socket directory without following a symlink and checks that
/// it is ours and closed to writers other than us. A directory that does
/// not exist is created with mode 0700 (and fixed to exactly that, whatever
/// the umask).
fn open_private_dir(dir_path: &Path) -> Result<OwnedFd, SocketError> {
    let created = match std::fs::DirBuilder::new().recursive(false).mode(PRIVATE_DIR_MODE).create(dir_path) {
        Ok(()) => true,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => false,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(dir_path)
                .map_err(|source| SocketError::CreateDir { dir: dir_path.to_path_buf(), source })?;
            true
        }
        Err(source) => {
            return Err(SocketError::CreateDir { dir: dir_path.to_path_buf(), source });
        }
    };
    let dir = rustix::fs::open(
        dir_path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::LOOP | Errno::NOTDIR if is_symlink(dir_path) => {
            SocketError::DirIsSymlink { dir: dir_path.to_path_buf() }
        }
        errno => SocketError::OpenDir { dir: dir_path.to_path_buf(), source: errno.into() },
    })?;
    let stat = rustix::fs::fstat(&dir)
        .map_err(|errno| SocketError::OpenDir { dir: dir_path.to_path_buf(), source: errno.into() })?;
    let uid = rustix::process::geteuid().as_raw();
    if stat.st_uid != uid {
        return Err(SocketError::DirNotOwned { dir: dir_path.to_path_buf(), owner: stat.st_uid, uid });
    }
    let mode = stat.st_mode & 0o7777;
    if created && mode != PRIVATE_DIR_MODE {
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(PRIVATE_DIR_MODE))
            .map_err(|errno| SocketError::CreateDir { dir: dir_path.to_path_buf(), source: errno.into() })?;
    } else if mode & 0o022 != 0 {
        return Err(SocketError::DirWritableByOthers { dir: dir_path.to_path_buf(), mode });
    }
    Ok(dir)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink())
}

/// Opens and `flock`s the PID file, retrying when the file we locked was
/// unlinked by an exiting instance between our open and our lock (then the
/// lock guards nothing, and a third instance could lock a new file).
fn lock_pid_file(
    dir: &OwnedFd,
    lock_name: &str,
    lock_path: &Path,
    socket_path: &Path,
) -> Result<File, SocketError> {
    let lock_error = |errno: Errno| SocketError::Lock { path: lock_path.to_path_buf(), source: errno.into() };
    for _ in 0..16 {
        let fd = rustix::fs::openat(
            dir,
            lock_name,
            OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(LOCK_FILE_MODE),
        )
        .map_err(lock_error)?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = File::from(fd).read_to_string(&mut text);
                return Err(SocketError::AlreadyRunning {
                    socket: socket_path.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(errno) => return Err(lock_error(errno)),
        }
        let locked = rustix::fs::fstat(&fd).map_err(lock_error)?;
        match rustix::fs::statat(dir, lock_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(current) if current.st_dev == locked.st_dev && current.st_ino == locked.st_ino => {}
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(errno) => return Err(lock_error(errno)),
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(LOCK_FILE_MODE)).map_err(lock_error)?;
        rustix::fs::ftruncate(&fd, 0).map_err(lock_error)?;
        let mut file = File::from(fd);
        writeln!(file, "{}", std::process::id())
            .map_err(|source| SocketError::Lock { path: lock_path.to_path_buf(), source })?;
        return Ok(file);
    }
    Err(SocketError::Lock {
        path: lock_path.to_path_buf(),
        source: io::Error::other("the lock file kept being replaced by other instances"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn creates_private_dir_lock_and_socket() {
        let temp = tempfile::tempdir().unwrap();
        let socket_path = temp.path().join("run").join("s.sock");
        let bound = SocketGuard::acquire(&socket_path).unwrap().bind(0o600, None).unwrap();
        assert_eq!(mode(&temp.path().join("run")), 0o700);
        assert_eq!(mode(&socket_path), 0o600);
        let lock_path = bound.guard.lock_path();
        assert_eq!(mode(&lock_path), 0o600);
        assert_eq!(std::fs::read_to_string(&lock_path).unwrap().trim(), std::process::id().to_string());

        let second = SocketGuard::acquire(&socket_path).unwrap_err();
        assert!(second.is_already_running(), "{second}");
        assert!(second.to_string().contains(&format!("(pid {})", std::process::id())), "{second}");

        drop(bound);
        assert!(!socket_path.exists());
        assert!(!lock_path.exists());
        // The lock is free again.
        drop(SocketGuard::acquire(&socket_path).unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_socket() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("d");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let socket_path = dir.join("s.sock");
        let victim = temp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();

        std::os::unix::fs::symlink(&victim, &socket_path).unwrap();
        let error = SocketGuard::acquire(&socket_path).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link, not a socket"), "{error}");
        assert!(std::fs::symlink_metadata(&socket_path).unwrap().file_type().is_symlink());
        std::fs::remove_file(&socket_path).unwrap();

        std::fs::write(&socket_path, "data").unwrap();
        let error = SocketGuard::acquire(&socket_path).unwrap_err();
        assert!(error.to_string().contains("is a regular file"), "{error}");
        assert_eq!(std::fs::read_to_string(&socket_path).unwrap(), "data");
        std::fs::remove_file(&socket_path).unwrap();

        std::fs::create_dir(&socket_path).unwrap();
        let error = SocketGuard::acquire(&socket_path).unwrap_err();
        assert!(error.to_string().contains("is a directory"), "{error}");
        assert!(socket_path.is_dir());
        // No lock file is left behind by a refused start.
        assert!(!dir.join("s.sock.pid").exists());
    }

    #[test]
    fn refuses_unsafe_directories() {
        let temp = tempfile::tempdir().unwrap();
        let real = temp.path().join("real");
        std::fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let error = SocketGuard::acquire(&link.join("s.sock")).unwrap_err();
        assert!(matches!(error, SocketError::DirIsSymlink { .. }), "{error}");

        let open = temp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = SocketGuard::acquire(&open.join("s.sock")).unwrap_err();
        assert!(error.to_string().contains("has mode 0777"), "{error}");
        assert_eq!(mode(&open), 0o777, "an existing directory is never changed");
    }

    #[test]
    fn the_lock_holder_is_found_by_device_and_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 77 00:2a:99 0 EOF\n3: POSIX  ADVISORY  WRITE 55 08:01:99 0 EOF\n4: FLOCK  ADVISORY  WRITE 31 08:01:99 0 EOF\n";
        assert_eq!(flock_holder(locks, (0, 0x2a), 1234), Some(4242));
        assert_eq!(flock_holder(locks, (0, 0x2a), 99), None, "a waiter does not hold the lock");
        assert_eq!(flock_holder(locks, (8, 1), 99), Some(31), "POSIX locks are not ours");
        assert_eq!(flock_holder(locks, (8, 1), 1234), None);

        let temp = tempfile::tempdir().unwrap();
        let socket_path = temp.path().join("s.sock");
        assert_eq!(lock_holder(&socket_path).unwrap(), None, "no PID file");
        let guard = SocketGuard::acquire(&socket_path).unwrap();
        assert_eq!(lock_holder(&socket_path).unwrap(), Some(std::process::id()));
        drop(guard);
        // A PID file naming a live process that holds no lock: not running.
        std::fs::write(temp.path().join("s.sock.pid"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(lock_holder(&socket_path).unwrap(), None);
    }

    #[tokio::test]
    async fn removes_a_stale_socket_only_when_nobody_answers() {
        let temp = tempfile::tempdir().unwrap();
        let socket_path = temp.path().join("s.sock");
        // A socket file with no listener behind it: what kill -9 leaves.
        drop(std::os::unix::net::UnixListener::bind(&socket_path).unwrap());
        assert!(socket_path.exists());
        let bound = SocketGuard::acquire(&socket_path).unwrap().bind(0o600, None).unwrap();
        drop(bound);

        // A live listener that does not hold our lock is still refused.
        let _live = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
        let error = SocketGuard::acquire(&socket_path).unwrap_err();
        assert!(error.is_already_running(), "{error}");
        assert!(socket_path.exists());
    }
}
