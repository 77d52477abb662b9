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
use crate::hba::apply::PoolerReload;

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

/// The auth file: one `"role" "verifier"` line per tenant, and one per console user.
///
/// PgBouncer accepts a SCRAM login against an empty secret (it builds a verifier of the empty
/// password), so no entry is ever empty. Console users log in only by peer over PgBouncer's
/// socket (its hba refuses them over TCP), but PgBouncer needs them in this file: each gets the
/// verifier of a random password that is thrown away, kept from `existing` when it already has
/// one so the file only changes when tenants do. A tenant entry that is not a well-formed SCRAM
/// verifier is left out: PgBouncer stops reading the file at a broken line, and leaves every
/// user after it with an empty password.
pub fn render_userlist(
    console_users: &[String],
    secrets: &[(String, String)],
    existing: Option<&str>,
) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from(
        "; pgaas managed file: SCRAM verifiers of tenant roles, and unusable ones for the console's \
         peer-only users\n",
    );
    let kept = existing.map(parse_userlist).unwrap_or_default();
    for user in console_users {
        let verifier = kept
            .iter()
            .find(|(u, v)| u == user && is_scram_verifier(v))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(unusable_verifier);
        out.push_str(&format!("{} {}\n", q(user), q(&verifier)));
    }
    for (role, verifier) in secrets {
        if console_users.contains(role) {
            continue;
        }
        if !is_scram_verifier(verifier) {
            tracing::warn!(
                role,
                "left out of PgBouncer's auth file: its stored password is not a SCRAM verifier"
            );
            continue;
        }
        out.push_str(&format!("{} {}\n", q(role), q(verifier)));
    }
    out
}

/// `(user, secret)` pairs of an auth file pgaas wrote (quoted fields, `""` for a quote).
fn parse_userlist(text: &str) -> Vec<(String, String)> {
    fn field(s: &str) -> Option<(String, &str)> {
        let mut rest = s.trim_start().strip_prefix('"')?;
        let mut out = String::new();
        loop {
            let end = rest.find('"')?;
            out.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(r) => {
                    out.push('"');
                    rest = r;
                }
                None => return Some((out, rest)),
            }
        }
    }
    text.lines()
        .filter_map(|l| {
            let (user, rest) = field(l)?;
            let (secret, _) = field(rest)?;
            Some((user, secret))
        })
        .collect()
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields, as PostgreSQL
/// stores it (and nothing PgBouncer would read as a plaintext password).
pub fn is_scram_verifier(v: &str) -> bool {
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    let Some(rest) = v.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iter_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iter, salt)), Some((stored, server))) =
        (iter_salt.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    iter.parse::<u32>().is_ok_and(|n| n > 0) && b64(salt) && b64(stored) && b64(server)
}

/// The verifier of a random password nobody is told: a well-formed secret no client can match.
fn unusable_verifier() -> String {
    let password = hex::encode(crate::model::os_random_bytes::<32>());
    crate::pg::scram::scram_sha256_verifier(&password)
        .expect("a hex password has nothing SCRAM's normalisation refuses")
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
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-d").arg(&self.ini);
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
    pub fn signal_reload(&self) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| "pgbouncer is not running".to_string())?;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGHUP)
            .map_err(|e| format!("SIGHUP to pgbouncer: {e}"))?;
        // PgBouncer handles SIGHUP in its event loop. An answer to an SSLRequest on a new
        // connection comes from that loop, after the signal (already pending) was handled.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ssl_request_answered(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("pgbouncer did not answer after the reload".into())
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
    fn reload(&self) -> Result<(), String> {
        // Not running: nothing holds old rules; it reads the files when it starts.
        if !self.is_running() {
            return Ok(());
        }
        self.signal_reload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy";

    #[test]
    fn userlist_holds_verifiers_quoted_and_never_an_empty_secret() {
        let console = vec!["postgres".to_string(), "pgaas".to_string()];
        let text = render_userlist(
            &console,
            &[("tenant_0011223344556677".into(), VERIFIER.into())],
            None,
        );
        assert!(text.contains(&format!("\"tenant_0011223344556677\" \"{VERIFIER}\"\n")));
        assert!(!text.contains("\"\"\n"), "an empty secret:\n{text}");
        let entries = parse_userlist(&text);
        assert_eq!(entries.len(), 3);
        for (user, secret) in &entries {
            assert!(is_scram_verifier(secret), "{user}: {secret}");
        }
        // The console's secrets are kept across rewrites, so the file changes only with tenants.
        assert_eq!(
            render_userlist(
                &console,
                &[("tenant_0011223344556677".into(), VERIFIER.into())],
                Some(&text)
            ),
            text
        );
        // ... and they are not something anyone could type.
        let fresh = render_userlist(&console, &[], None);
        assert_ne!(parse_userlist(&fresh)[0].1, entries[0].1);
    }

    #[test]
    fn malformed_verifiers_are_left_out() {
        for bad in [
            "",
            "md5abcdef",
            "plaintext",
            "SCRAM-SHA-256$4096:c2FsdA==$a\"b:c",
            "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy\nZXI=",
            "SCRAM-SHA-256$x:c2FsdA==$a2V5:c2VydmVy",
            "SCRAM-SHA-256$4096:$a2V5:c2VydmVy",
        ] {
            let text = render_userlist(&[], &[("tenant_00112233".into(), bad.into())], None);
            assert!(!text.contains("tenant_00112233"), "{bad:?}:\n{text}");
        }
    }
}
