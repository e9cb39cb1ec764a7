//! `--background`: the launching process starts the daemon as a detached
//! child and exits only once the child is ready (0) or has failed (with the
//! child's error and exit code).
//!
//! The child is this same program, started again with `--daemonized`
//! instead of `--background` (a fork of a process with threads is not
//! safe). It starts a new session (no controlling terminal), logs to its
//! standard error, which is the log file, and reports on its standard
//! output, which is a pipe to the launcher: `ready PID` once the socket
//! accepts connections and the upstreams have started or failed, or
//! `error CODE MESSAGE`. After that its standard output is `/dev/null`, and
//! once every path is resolved it moves to `/`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use mcpsock_config::{Config, ProcessEnv};

use crate::exit::{Code, Failure};
use crate::flags::{Command, Flags};

/// Opens (creating) a log file for appending: mode 0600, in a directory
/// created 0700 when missing; a symlink at the path is refused.
pub(crate) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// In the detached child, first thing: a session of its own, so no
/// terminal can send it signals or become its controlling terminal.
pub(crate) fn detach() {
    // Only fails for a process group leader, which this child is not.
    let _ = rustix::process::setsid();
}

/// In the detached child: tells the launcher the daemon is ready, then
/// points standard output at /dev/null.
pub(crate) fn report_ready(pid: u32) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "ready {pid}");
    let _ = stdout.flush();
    drop(stdout);
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// In the detached child: tells the launcher why the daemon did not start.
pub(crate) fn report_failure(failure: &Failure) {
    let message = format!("{:#}", failure.error).replace('\n', " ");
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "error {} {message}", failure.code.value());
    let _ = stdout.flush();
}

/// The socket the daemon will serve, to name its default log file.
fn socket_of(flags: &Flags) -> Result<std::path::PathBuf, Failure> {
    let env = ProcessEnv;
    match &flags.command {
        Command::Serve(serve) => {
            let location = mcpsock_config::config_location(serve.config.as_deref(), &env);
            let config = Config::load(&location.path, location.explicit).map_err(Failure::config)?;
            Ok(mcpsock_config::socket_path(serve.socket.as_deref(), &env, config.socket.as_deref()))
        }
        Command::Socket(socket) => {
            let app = crate::lifecycle::app_name(socket.name.as_deref(), &socket.command)?;
            Ok(mcpsock_config::app_socket_path(socket.socket.as_deref(), &env, &app))
        }
        _ => Err(Failure::config(anyhow::anyhow!("--background applies to serve and socket only"))),
    }
}

/// The arguments of the detached child: ours, with `--background` and any
/// `--log-file` replaced by `--daemonized --log-file PATH`. Arguments after
/// `--` (the server command of `socket`) are left alone.
fn child_arguments(args: &[std::ffi::OsString], log_file: &Path) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len() + 3);
    let mut iter = args.iter();
    let mut subcommand_seen = false;
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            out.push("--daemonized".into());
            out.push("--log-file".into());
            out.push(log_file.into());
            out.push(arg.clone());
            out.extend(iter.cloned());
            return out;
        }
        match text.as_ref() {
            "-b" | "--background" => continue,
            "--log-file" => {
                iter.next();
                continue;
            }
            _ if text.starts_with("--log-file=") => continue,
            _ => {}
        }
        out.push(arg.clone());
        subcommand_seen = true;
    }
    debug_assert!(subcommand_seen);
    out.push("--daemonized".into());
    out.push("--log-file".into());
    out.push(log_file.into());
    out
}

/// The launcher: starts the detached daemon and waits for its word.
pub(crate) fn launch(flags: &Flags) -> ExitCode {
    match try_launch(flags) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("mcpsock: {:#}", failure.error);
            ExitCode::from(failure.code.value())
        }
    }
}

fn try_launch(flags: &Flags) -> Result<ExitCode, Failure> {
    let daemon = match &flags.command {
        Command::Serve(serve) => &serve.daemon,
        Command::Socket(socket) => &socket.daemon,
        _ => return Err(Failure::config(anyhow::anyhow!("--background applies to serve and socket only"))),
    };
    let socket = socket_of(flags)?;
    let log_file = crate::lifecycle::absolute(&mcpsock_config::log_file(
        daemon.log_file.as_deref(),
        &ProcessEnv,
        &socket,
    ));
    let log = open_log(&log_file).map_err(|error| {
        Failure::config(
            anyhow::Error::new(error).context(format!("cannot open the log file {}", log_file.display())),
        )
    })?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let program = std::env::current_exe().map_err(|error| {
        Failure::internal(anyhow::Error::new(error).context("cannot find the mcpsock program"))
    })?;
    let mut child = std::process::Command::new(program)
        .args(child_arguments(&args, &log_file))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|error| Failure::internal(anyhow::Error::new(error).context("cannot start the daemon")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(Failure::internal(anyhow::anyhow!("the daemon's readiness pipe is missing")));
    };
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ready ") {
        outln!(
            "mcpsock is running in the background (pid {pid}, socket {}, log {})",
            socket.display(),
            log_file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(rest) = line.strip_prefix("error ") {
        let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
        eprintln!("mcpsock: {message}");
        return Ok(ExitCode::from(code.parse::<u8>().unwrap_or(1)));
    }
    let status = child.wait().map_err(|error| Failure::internal(error.into()))?;
    Err(Failure::new(
        Code::Internal,
        anyhow::anyhow!(
            "the daemon exited ({status}) before it was ready; see its log {}",
            log_file.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_gets_our_arguments_daemonized() {
        let check = |args: &[&str], expected: &[&str]| {
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let got = child_arguments(&args, Path::new("/l.log"));
            let got: Vec<String> = got.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
            assert_eq!(got, expected);
        };
        check(
            &["serve", "-b", "--config", "c.json", "--log-file", "old.log"],
            &["serve", "--config", "c.json", "--daemonized", "--log-file", "/l.log"],
        );
        check(
            &["socket", "--background", "--log-file=x", "--", "npx", "-b", "--log-file", "y"],
            &["socket", "--daemonized", "--log-file", "/l.log", "--", "npx", "-b", "--log-file", "y"],
        );
    }
}
