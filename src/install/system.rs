//! The installer's window on the machine: running programs (apt-get, systemctl, useradd, ...)
//! and looking up accounts. Every external effect of a step goes through [`System`], so the tests
//! drive the whole playbook against a temporary root with [`FakeSystem`], which records each call
//! and simulates just enough of dpkg, apt, systemd and useradd for the checks to converge.
//!
//! Programs get argv vectors, never a shell string, and no secret is ever an argument: secrets
//! travel in files written 0600 by the installer itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
    process::Command,
    sync::Mutex,
};

/// What a program printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    fn ok(stdout: impl Into<String>) -> Self {
        Self {
            success: true,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn fail(stderr: impl Into<String>) -> Self {
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

/// A simulated Debian host for tests: packages, apt candidates, units, accounts. Every call is
/// recorded; commands named in `failing` fail.
#[derive(Debug, Default)]
pub struct FakeSystem {
    pub state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub calls: Vec<String>,
    pub installed: BTreeSet<String>,
    /// Packages `apt-cache policy` knows a candidate for (after `apt-get update`).
    pub available: BTreeSet<String>,
    pub lists_fresh: bool,
    pub enabled: BTreeSet<String>,
    pub active: BTreeSet<String>,
    pub users: BTreeMap<String, Account>,
    pub groups: BTreeMap<String, u32>,
    /// Programs that exit non-zero (by argv[0]).
    pub failing: BTreeSet<String>,
    pub exe: Option<PathBuf>,
}

impl FakeSystem {
    /// A host with the given packages installable and the accounts the OS ships (root; the
    /// `postgres` user appears when a postgresql package is installed, as on Debian).
    pub fn new(available: &[&str]) -> Self {
        let me = Account {
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
        };
        let mut state = FakeState {
            available: available.iter().map(|s| s.to_string()).collect(),
            ..FakeState::default()
        };
        state.users.insert("root".into(), me);
        state.groups.insert("root".into(), me.gid);
        Self {
            state: Mutex::new(state),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    fn me(&self) -> Account {
        self.state.lock().unwrap().users["root"]
    }
}

impl System for FakeSystem {
    fn run(&self, argv: &[String], _env: &[(&str, &str)]) -> io::Result<CmdOutput> {
        let me = self.me();
        let mut s = self.state.lock().unwrap();
        s.calls.push(argv.join(" "));
        let prog = argv.first().map(String::as_str).unwrap_or("");
        if s.failing.contains(prog) {
            return Ok(CmdOutput::fail(format!("{prog}: simulated failure")));
        }
        let arg = |i: usize| argv.get(i).map(String::as_str).unwrap_or("");
        let last = argv.last().cloned().unwrap_or_default();
        Ok(match (prog, arg(1)) {
            ("dpkg-query", _) if s.installed.contains(&last) => {
                CmdOutput::ok("install ok installed")
            }
            ("dpkg-query", _) => CmdOutput::fail(format!("no packages found matching {last}")),
            ("apt-cache", "policy") if s.lists_fresh && s.available.contains(&last) => {
                CmdOutput::ok(format!(
                    "{last}:\n  Installed: (none)\n  Candidate: 1.0-1\n"
                ))
            }
            ("apt-cache", "policy") => CmdOutput::ok(""),
            ("apt-get", "update") => {
                s.lists_fresh = true;
                CmdOutput::ok("")
            }
            ("apt-get", "install") => {
                for p in argv
                    .iter()
                    .skip(2)
                    .filter(|a| !a.starts_with('-') && !a.contains("::="))
                {
                    if !s.available.contains(p) {
                        return Ok(CmdOutput::fail(format!("E: Unable to locate package {p}")));
                    }
                    s.installed.insert(p.clone());
                    // Debian enables and starts a service when its package is installed.
                    let unit = match p.strip_prefix("postgresql-") {
                        Some(v) if v.chars().all(|c| c.is_ascii_digit()) => {
                            Some(format!("postgresql@{v}-main"))
                        }
                        _ if p == "pgbouncer" => Some("pgbouncer".to_string()),
                        _ => None,
                    };
                    if let Some(u) = unit {
                        s.enabled.insert(u.clone());
                        s.active.insert(u);
                    }
                    if p.starts_with("postgresql") && !s.users.contains_key("postgres") {
                        s.users.insert("postgres".into(), me);
                        s.groups.insert("postgres".into(), me.gid);
                    }
                }
                CmdOutput::ok("")
            }
            ("useradd", _) => {
                s.users.insert(last.clone(), me);
                s.groups.insert(last, me.gid);
                CmdOutput::ok("")
            }
            ("userdel", _) => {
                s.users.remove(&last);
                s.groups.remove(&last);
                CmdOutput::ok("")
            }
            ("systemctl", "is-enabled") if s.enabled.contains(&last) => CmdOutput::ok("enabled"),
            ("systemctl", "is-enabled") => CmdOutput::fail("disabled"),
            ("systemctl", "is-active") if s.active.contains(&last) => CmdOutput::ok("active"),
            ("systemctl", "is-active") => CmdOutput::fail("inactive"),
            ("systemctl", "enable") => {
                s.enabled.insert(last);
                CmdOutput::ok("")
            }
            ("systemctl", "disable") => {
                s.enabled.remove(&last);
                CmdOutput::ok("")
            }
            ("systemctl", "start" | "restart") => {
                s.active.insert(last);
                CmdOutput::ok("")
            }
            ("systemctl", "stop") => {
                s.active.remove(&last);
                CmdOutput::ok("")
            }
            _ => CmdOutput::ok(""),
        })
    }

    fn user(&self, name: &str) -> Option<Account> {
        self.state.lock().unwrap().users.get(name).copied()
    }

    fn group(&self, name: &str) -> Option<u32> {
        self.state.lock().unwrap().groups.get(name).copied()
    }

    fn systemd_running(&self) -> bool {
        true
    }

    fn current_exe(&self) -> io::Result<PathBuf> {
        match &self.state.lock().unwrap().exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe(),
        }
    }
}
