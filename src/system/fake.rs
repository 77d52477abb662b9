//! A simulated Debian host for tests (see the parent module).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
    sync::Mutex,
};

use super::{Account, CmdOutput, System};

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
    /// pgBackRest repositories holding a backup (by `--repo=N`).
    pub pgbackrest_backups: BTreeSet<u32>,
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
        // pgBackRest (run through runuser): its backups per repository, and `info` about them.
        if let Some(at) = argv.iter().position(|a| a.ends_with("/pgbackrest")) {
            let rest = &argv[at + 1..];
            let sub = rest
                .iter()
                .find(|a| !a.starts_with("--"))
                .cloned()
                .unwrap_or_default();
            if sub == "backup" {
                let repo = rest
                    .iter()
                    .find_map(|a| a.strip_prefix("--repo="))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(1);
                s.pgbackrest_backups.insert(repo);
            }
            if sub == "info" {
                let backups: Vec<String> = s
                    .pgbackrest_backups
                    .iter()
                    .map(|r| format!(r#"{{"label":"F{r}","type":"full","timestamp":{{"start":1,"stop":2}},"database":{{"repo-key":{r}}}}}"#))
                    .collect();
                return Ok(CmdOutput::ok(format!(
                    r#"[{{"name":"pgaas","status":{{"code":0,"message":"ok"}},"repo":[],"archive":[],"backup":[{}]}}]"#,
                    backups.join(",")
                )));
            }
            return Ok(CmdOutput::ok(""));
        }
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
