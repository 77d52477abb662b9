//! Playbooks: ordered lists of typed steps in YAML. Each step has a `name` and exactly one kind
//! key (`apt`, `user`, `dir`, `file`, `render`, `systemd`, `command`, `sql`, `secret`, `tls`,
//! `control_db`, `api_key`); unknown keys are errors. String values may use a small, typed set
//! of variables ([`Vars`], e.g. `{{ pg_version }}`, `{{ config_dir }}`), rendered by a strict
//! minijinja environment before the steps are typed: an unknown variable fails the parse rather
//! than leaving an empty path. Logic (what to compare, when to restart) stays in Rust.

use std::{fmt, path::PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

/// The variables a playbook may use, all derived from the settings.
#[derive(Clone, Debug, Serialize)]
pub struct Vars {
    pub pg_version: u32,
    /// `/etc/postgresql/<ver>/main`.
    pub pg_config_dir: String,
    pub pg_data_dir: String,
    /// Where pg_hba.conf / pg_ident.conf live (API-writable).
    pub hba_dir: String,
    pub pgbouncer_dir: String,
    /// Where PgBouncer's hba and auth file live (API-writable).
    pub pgbouncer_auth_dir: String,
    /// The systemd unit of the cluster (`postgresql@15-main`).
    pub postgres_unit: String,
    /// `/etc/pgaas`.
    pub config_dir: String,
    pub secrets_dir: String,
    pub tls_dir: String,
    pub state_dir: String,
    pub backup_dir: String,
    pub systemd_dir: String,
    /// The installed pgaas binary and the directory of the command wrappers.
    pub binary: String,
    pub bin_dir: String,
    pub api_user: String,
    /// The cluster's OS user (and group).
    pub pg_user: String,
    pub control_db: String,
    pub control_db_password_file: String,
    /// The settings file's contents, as `pgaas install` writes it.
    pub settings_yaml: String,
    /// pgBackRest's directories (`archive.*`).
    pub archive_config_dir: String,
    pub archive_repo_path: String,
    pub archive_spool_path: String,
    pub archive_log_path: String,
    pub archive_lock_path: String,
    pub archive_scratch_dir: String,
    /// etcd's data directory on a cluster's nodes (`cluster.etcd_data_dir`).
    pub etcd_data_dir: String,
}

/// One step: a name and its action.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Units whose pending reload/restart must happen before this step runs.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Handlers to queue when this step changed something.
    #[serde(default)]
    pub notify: Vec<Handler>,
    /// The hosts this step runs on (`single`, `node`, `witness`); a single host and a
    /// cluster's PostgreSQL nodes when not given.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    pub apt: Option<AptStep>,
    pub user: Option<UserStep>,
    pub dir: Option<DirStep>,
    pub file: Option<FileStep>,
    pub render: Option<Empty>,
    pub systemd: Option<SystemdStep>,
    pub command: Option<CommandStep>,
    pub sql: Option<SqlStep>,
    pub secret: Option<SecretStep>,
    pub tls: Option<Empty>,
    pub control_db: Option<Empty>,
    pub api_key: Option<ApiKeyStep>,
    /// A cluster's shared secrets (replication, rewind and API passwords, the local CA), made
    /// by `pgaas cluster secrets` and copied to every node.
    pub cluster_secrets: Option<Empty>,
    /// etcd's certificates (server, peer and client) from the cluster's CA.
    pub etcd_tls: Option<Empty>,
    /// Wait until etcd has a majority (the other nodes' installs bring theirs up).
    pub etcd_quorum: Option<Empty>,
    /// Wait until Patroni runs this node's PostgreSQL, as primary or standby.
    pub patroni_ready: Option<Empty>,
    /// Patroni's cluster-wide settings (kept in etcd) brought in line with pgaas.yaml.
    pub patroni_config: Option<Empty>,
    /// Continuous archiving: pgBackRest's secrets, stanza, first backups, worker and timers.
    pub archive: Option<Empty>,
    /// The man pages and shell completions of this binary, where `man` and the shells look.
    pub docs: Option<Empty>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// What a host is: a single host, a PostgreSQL node of a cluster, or a cluster's witness (etcd
/// only). Steps name the roles they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Single,
    Node,
    Witness,
}

impl Role {
    pub fn of(settings: &crate::settings::Settings) -> Role {
        match settings.cluster.this_node() {
            None => Role::Single,
            Some(n) if n.witness => Role::Witness,
            Some(_) => Role::Node,
        }
    }
}

fn default_roles() -> Vec<Role> {
    vec![Role::Single, Role::Node]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptStep {
    pub packages: Vec<String>,
    /// Installed when the distribution has them (`apt-cache policy` shows a candidate).
    #[serde(default)]
    pub if_available: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserStep {
    pub name: String,
    pub home: PathBuf,
    #[serde(default = "nologin")]
    pub shell: PathBuf,
}

fn nologin() -> PathBuf {
    PathBuf::from("/usr/sbin/nologin")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirStep {
    pub path: PathBuf,
    pub owner: String,
    pub group: String,
    /// Octal, as a string (`"2750"`): YAML would read a bare 0750 as decimal 750.
    pub mode: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    pub path: PathBuf,
    /// Literal contents (after variable substitution).
    pub content: Option<String>,
    /// A copy of the running pgaas executable.
    #[serde(default)]
    pub copy_of_running_binary: bool,
    pub owner: String,
    pub group: String,
    pub mode: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    Started,
    Stopped,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdStep {
    pub unit: String,
    pub enabled: bool,
    pub state: UnitState,
    /// Start without waiting for the unit to report ready (etcd only reports ready once a
    /// majority of its members run, which the other nodes' installs bring).
    #[serde(default)]
    pub no_block: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStep {
    pub argv: Vec<String>,
    /// Skip when this path exists.
    pub creates: Option<PathBuf>,
    /// Skip when this command exits 0.
    pub unless: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub database: String,
    /// Skip when this query returns a row.
    pub unless: String,
    pub statements: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretStep {
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyStep {
    /// The name the first admin key is stored under.
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandlerAction {
    DaemonReload,
    Restart,
    Reload,
}

/// A deferred service action, run once: `reload pgbouncer`, `restart pgaas-api.service`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Handler {
    pub action: HandlerAction,
    pub unit: String,
}

impl Handler {
    pub fn new(action: HandlerAction, unit: impl Into<String>) -> Self {
        Self {
            action,
            unit: unit.into(),
        }
    }

    pub fn daemon_reload() -> Self {
        Self::new(HandlerAction::DaemonReload, "")
    }
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            HandlerAction::DaemonReload => f.write_str("systemctl daemon-reload"),
            HandlerAction::Restart => write!(f, "restart {}", self.unit),
            HandlerAction::Reload => write!(f, "reload {}", self.unit),
        }
    }
}

impl<'de> Deserialize<'de> for Handler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.split_once(' ') {
            Some(("reload", unit)) if !unit.trim().is_empty() => {
                Ok(Handler::new(HandlerAction::Reload, unit.trim()))
            }
            Some(("restart", unit)) if !unit.trim().is_empty() => {
                Ok(Handler::new(HandlerAction::Restart, unit.trim()))
            }
            _ => Err(serde::de::Error::custom(format!(
                "notify {s:?}: write `reload UNIT` or `restart UNIT`"
            ))),
        }
    }
}

impl Step {
    /// The kind's key, for messages; errors when none or several are set.
    pub fn kind(&self) -> Result<&'static str, String> {
        let set: Vec<&'static str> = [
            ("apt", self.apt.is_some()),
            ("user", self.user.is_some()),
            ("dir", self.dir.is_some()),
            ("file", self.file.is_some()),
            ("render", self.render.is_some()),
            ("systemd", self.systemd.is_some()),
            ("command", self.command.is_some()),
            ("sql", self.sql.is_some()),
            ("secret", self.secret.is_some()),
            ("tls", self.tls.is_some()),
            ("control_db", self.control_db.is_some()),
            ("api_key", self.api_key.is_some()),
            ("cluster_secrets", self.cluster_secrets.is_some()),
            ("etcd_tls", self.etcd_tls.is_some()),
            ("etcd_quorum", self.etcd_quorum.is_some()),
            ("patroni_ready", self.patroni_ready.is_some()),
            ("patroni_config", self.patroni_config.is_some()),
            ("archive", self.archive.is_some()),
            ("docs", self.docs.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        match set.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "step {:?} has no action key (apt, file, ...)",
                self.name
            )),
            many => Err(format!(
                "step {:?} has several action keys: {}",
                self.name,
                many.join(", ")
            )),
        }
    }
}

/// Parse a mode string such as `"0640"` or `"2750"`.
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {mode:?} is not an octal mode such as \"0640\""))
}

fn render_strings(
    env: &Environment,
    value: &mut yaml_serde::Value,
    vars: &Vars,
    at: &str,
) -> Result<(), String> {
    match value {
        yaml_serde::Value::String(s) if s.contains("{{") || s.contains("{%") => {
            *s = env
                .render_str(s, vars)
                .map_err(|e| format!("{at}: {e:#}"))?;
        }
        yaml_serde::Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                render_strings(env, v, vars, &format!("{at}[{i}]"))?;
            }
        }
        yaml_serde::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                render_strings(env, v, vars, &format!("{at}.{key}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parse a playbook: YAML, variables substituted, steps typed and each checked for one kind.
/// Errors name the file and the step.
pub fn parse(source: &str, text: &str, vars: &Vars) -> Result<Vec<Step>, String> {
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| format!("{source}: YAML syntax: {e}"))?;
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let items = value
        .as_sequence_mut()
        .ok_or_else(|| format!("{source}: a playbook is a list of steps (- name: ...)"))?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.iter_mut().enumerate() {
        let label = item
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("step {} ({n:?})", i + 1))
            .unwrap_or_else(|| format!("step {}", i + 1));
        render_strings(&env, item, vars, &format!("{source}: {label}"))?;
        let step: Step = serde_path_to_error::deserialize(item.clone())
            .map_err(|e| format!("{source}: {label}: {e}"))?;
        step.kind().map_err(|e| format!("{source}: {e}"))?;
        steps.push(step);
    }
    Ok(steps)
}

/// Every playbook embedded in the binary, as `(path relative to playbooks/, contents)`.
pub static PLAYBOOKS: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/playbooks.rs"));

/// An embedded playbook by name (`install.yaml`).
pub fn embedded(name: &str) -> Option<&'static str> {
    PLAYBOOKS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
