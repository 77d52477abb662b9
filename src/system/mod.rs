//! pgaas's window on the machine: running programs (apt-get, systemctl, useradd, pg_ctlcluster,
//! ...) and looking up accounts. Every external program the installer or the Debian cluster
//! control runs goes through [`System`], so tests drive them against a simulated host
//! (`fake::FakeSystem`, built for tests and the `test-support` feature only), which records each
//! call and simulates just enough of dpkg, apt, systemd and useradd for the checks to converge.
//!
//! Programs get argv vectors, never a shell string, and no secret is ever an argument: secrets
//! travel in files written 0600 by the installer itself.

use std::{io, path::PathBuf, process::Command};

/// What a program printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn ok(stdout: impl Into<String>) -> Self {
        Self {
            success: true,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn fail(stderr: impl Into<String>) -> Self {
        Self {
            success: false,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    /// The last lines of stderr (else stdout), for an error message.
    pub fn detail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.trim().lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

/// A system account as the installer needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

pub trait System: Send + Sync {
    /// Run `argv[0]` with the rest as arguments and `env` added to the environment.
    fn run(&self, argv: &[String], env: &[(&str, &str)]) -> io::Result<CmdOutput>;
    fn user(&self, name: &str) -> Option<Account>;
    fn group(&self, name: &str) -> Option<u32>;
    /// Whether systemd is the running init (services can be managed with systemctl).
    fn systemd_running(&self) -> bool;
    /// The pgaas binary to install at `paths.binary`.
    fn current_exe(&self) -> io::Result<PathBuf>;
}

/// The real machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealSystem;

impl System for RealSystem {
    fn run(&self, argv: &[String], env: &[(&str, &str)]) -> io::Result<CmdOutput> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        tracing::debug!(?argv, "running");
        let out = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("running {program}: {e}")))?;
        Ok(CmdOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn user(&self, name: &str) -> Option<Account> {
        let u = nix::unistd::User::from_name(name).ok()??;
        Some(Account {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }

    fn group(&self, name: &str) -> Option<u32> {
        Some(nix::unistd::Group::from_name(name).ok()??.gid.as_raw())
    }

    fn systemd_running(&self) -> bool {
        std::path::Path::new("/run/systemd/system").is_dir()
    }

    fn current_exe(&self) -> io::Result<PathBuf> {
        std::env::current_exe()
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
