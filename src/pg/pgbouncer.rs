//! PgBouncer: its auth file (SCRAM verifiers only, never a plaintext password), and running it
//! for `pgaas dev` and the tests (daemonised by itself, tracked through its pid file, reloaded
//! with SIGHUP). On an installed host systemd runs it; the same reload applies.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use super::cluster::OsUser;

/// Why PgBouncer could not be told to re-read its files.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("PgBouncer is not running")]
    NotRunning,
    #[error("signalling PgBouncer")]
    Signal(#[source] nix::Error),
    #[error("PgBouncer did not answer after the reload")]
    NoAnswer,
    #[error("PgBouncer's admin console")]
    Console(#[source] super::console::ConsoleError),
}

/// Reloads PgBouncer after its files changed. Blocking: callers run it on a blocking thread.
pub trait PoolerReload: Send + Sync {
    fn reload(&self) -> Result<(), ReloadError>;

    /// `RECONNECT`: every server connection is closed once its client is done with it. A
    /// pool keeps the parameters its first server connection reported (`in_hot_standby`,
    /// which libpq's `target_session_attrs` reads) and gives them to every client after, so
    /// when the node's PostgreSQL changes role the pools must start again.
    fn reconnect(&self) -> Result<(), ReloadError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PgBouncerError {
    #[error("pgbouncer is not installed (apt-get install pgbouncer)")]
    NotInstalled,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pgbouncer did not start: {0}")]
    Start(String),
    #[error(
        "port {0} is already in use; choose another PgBouncer port (pgbouncer.port, or --pgbouncer-port)"
    )]
    PortTaken(u16),
}

/// `pgbouncer` on PATH or where Debian puts it.
pub fn find_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The installed PgBouncer's `(major, minor)` version, from `pgbouncer --version`.
pub fn version(binary: &Path) -> Option<(u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `PgBouncer 1.18.0` (first line of `--version`) as `(1, 18)`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.lines().next()?.split_whitespace().nth(1)?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// PgBouncer 1.24 added per-database and per-user client limits.
pub fn has_client_limits(version: Option<(u32, u32)>) -> bool {
    version.is_some_and(|v| v >= (1, 24))
}

/// A PgBouncer started from a config file, owned by `owner`.
#[derive(Clone, Debug)]
pub struct LocalPgBouncer {
    pub binary: PathBuf,
    pub ini: PathBuf,
    pub pidfile: PathBuf,
    pub port: u16,
    pub owner: OsUser,
}

impl LocalPgBouncer {
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(&self.pidfile).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        nix::sys::signal::kill(Pid::from_raw(pid), None)
            .ok()
            .map(|_| pid)
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    pub fn start(&self) -> Result<(), PgBouncerError> {
        if self.is_running() {
            return Ok(());
        }
        if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            return Err(PgBouncerError::PortTaken(self.port));
        }
        // Through a shell that raises the open-files limit to the hard one first: every client
        // and server connection is a file descriptor, and PgBouncer pauses every listener when
        // it runs out (systemd does the same with the unit's LimitNOFILE).
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"",
        ])
        .arg(&self.binary)
        .arg("-d")
        .arg(&self.ini);
        if nix::unistd::Uid::effective().as_raw() != self.owner.uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(self.owner.uid).gid(self.owner.gid);
        }
        cmd.current_dir(self.ini.parent().unwrap_or(Path::new("/")));
        let out = cmd
            .output()
            .map_err(|e| PgBouncerError::Start(e.to_string()))?;
        if !out.status.success() {
            return Err(PgBouncerError::Start(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.is_running() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PgBouncerError::Start(format!(
            "not listening on port {} after 10 s",
            self.port
        )))
    }

    pub fn stop(&self) {
        if let Some(pid) = self.pid() {
            let pid = Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Re-read the config, hba and auth files (SIGHUP), then wait until the console answers so
    /// the next connection sees the new rules.
    pub fn signal_reload(&self) -> Result<(), ReloadError> {
        let pid = self.pid().ok_or(ReloadError::NotRunning)?;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(ReloadError::Signal)?;
        // PgBouncer handles SIGHUP in its event loop (libevent), where the signal may be
        // dispatched one turn after a connection accepted in the same turn. An answer to an
        // SSLRequest on a new connection proves a turn of the loop after the signal was
        // pending; a second answer, asked for after the first, proves the turn after that, by
        // which the reload has run.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answered = 0;
        while Instant::now() < deadline {
            if ssl_request_answered(self.port) {
                answered += 1;
                if answered == 2 {
                    return Ok(());
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ReloadError::NoAnswer)
    }
}

fn ssl_request_answered(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut answer = [0u8; 1];
    s.write_all(&request).is_ok()
        && s.read_exact(&mut answer).is_ok()
        && matches!(answer[0], b'S' | b'N')
}

impl PoolerReload for LocalPgBouncer {
    fn reload(&self) -> Result<(), ReloadError> {
        // Not running: nothing holds old rules; it reads the files when it starts.
        if !self.is_running() {
            return Ok(());
        }
        self.signal_reload()
    }

    fn reconnect(&self) -> Result<(), ReloadError> {
        if !self.is_running() {
            return Ok(());
        }
        // No signal does it; the console admits the API's system user by peer, not root.
        Err(ReloadError::Console(super::console::ConsoleError::Server(
            "RECONNECT needs PgBouncer's admin console, which admits the API's system user: run `pgaas serve` as that user".into(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_first_line() {
        assert_eq!(
            parse_version("PgBouncer 1.18.0\nlibevent 2.1.12-stable\n"),
            Some((1, 18))
        );
        assert_eq!(parse_version("PgBouncer 1.24.1\n"), Some((1, 24)));
        assert_eq!(parse_version("garbage"), None);
        assert!(!has_client_limits(Some((1, 18))));
        assert!(has_client_limits(Some((1, 24))));
        assert!(!has_client_limits(None));
    }
}
