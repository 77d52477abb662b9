//! Typed settings for every pgaas command, and where they come from.
//!
//! Layers, lowest first: built-in defaults, the YAML file (`/etc/pgaas/pgaas.yaml` or `--config`),
//! the original API's `.env` names (from a `.env` file in the working directory, then the process
//! environment), `PGAAS_*` environment variables (`PGAAS_POSTGRES__PORT=5433`: `__` separates
//! levels), then command-line flags. Unknown keys are errors in every layer. Loading collects every
//! problem it finds instead of stopping at the first, so `pgaas config check` can list them all with
//! the file and line they come from.

mod layers;
mod limits;
mod validate;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use layers::{Layer, Source};
pub use limits::{LimitsSettings, TenantSettings};
pub use validate::{is_host_name, is_plain_identifier};

/// The system-wide settings file read when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pgaas/pgaas.yaml";

/// A secret value: deserialises like a string, never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call sites are the places a secret is used; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialises masked: settings written back to a file never carry a secret (use `*_file`).
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything pgaas can be told. Every struct rejects unknown keys and fills missing ones with
/// defaults, so a settings file only names what it changes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Host name written into tenant connection strings and into the server certificate
    /// (the original's `PUBLIC_HOST`).
    pub public_host: String,
    /// Reported by `/health` (the original's `NODE_ENV`).
    pub environment: String,
    pub postgres: PostgresSettings,
    pub pgbouncer: PgBouncerSettings,
    pub api: ApiSettings,
    pub control_db: ControlDbSettings,
    pub admin: AdminSettings,
    pub tls: TlsSettings,
    pub paths: PathSettings,
    pub tenants: TenantSettings,
    pub limits: LimitsSettings,
    pub backups: BackupSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_host: "localhost".into(),
            environment: "production".into(),
            postgres: PostgresSettings::default(),
            pgbouncer: PgBouncerSettings::default(),
            api: ApiSettings::default(),
            control_db: ControlDbSettings::default(),
            admin: AdminSettings::default(),
            tls: TlsSettings::default(),
            paths: PathSettings::default(),
            tenants: TenantSettings::default(),
            limits: LimitsSettings::default(),
            backups: BackupSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// Major version to manage; detected from the installed server binaries when absent.
    pub version: Option<u32>,
    pub port: u16,
    /// `listen_addresses`: `*`, IP addresses or host names.
    pub listen_addresses: Vec<String>,
    pub max_connections: u32,
    pub superuser_reserved_connections: u32,
    /// Slots kept for the API role on PostgreSQL 16+ (`reserved_connections`, granted through
    /// `pg_use_reserved_connections`), so tenants at their limits never lock the platform out.
    pub reserved_connections: u32,
    /// RAM to size memory settings from, in MB; read from /proc/meminfo when absent.
    pub memory_mb: Option<u64>,
    /// Directory holding postgresql.conf, pg_hba.conf and conf.d/ (Debian:
    /// `/etc/postgresql/<version>/main`, derived when absent).
    pub config_dir: Option<PathBuf>,
    /// Data directory (Debian: `/var/lib/postgresql/<version>/main`, derived when absent).
    pub data_dir: Option<PathBuf>,
    /// Where pg_hba.conf and pg_ident.conf live (the config dir when absent). `pgaas install`
    /// sets `/etc/pgaas/postgresql`: a directory the API's system user owns, so it can replace
    /// pg_hba.conf atomically without write access to the cluster's own directory.
    pub hba_dir: Option<PathBuf>,
    pub socket_dir: PathBuf,
    /// The cluster's superuser role. It logs in only over the local socket, by peer.
    pub superuser: String,
    /// The operating-system user that runs the cluster.
    pub os_user: String,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            version: None,
            port: 5432,
            listen_addresses: vec!["*".into()],
            max_connections: 500,
            superuser_reserved_connections: 10,
            reserved_connections: 10,
            memory_mb: None,
            config_dir: None,
            data_dir: None,
            hba_dir: None,
            socket_dir: PathBuf::from("/var/run/postgresql"),
            superuser: "postgres".into(),
            os_user: "postgres".into(),
        }
    }
}

impl PostgresSettings {
    /// `conf.d/`, pg_hba.conf and pg_ident.conf live here.
    pub fn config_dir_for(&self, version: u32) -> PathBuf {
        self.config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/etc/postgresql/{version}/main")))
    }

    /// pg_hba.conf and pg_ident.conf live here.
    pub fn hba_dir_for(&self, version: u32) -> PathBuf {
        self.hba_dir
            .clone()
            .unwrap_or_else(|| self.config_dir_for(version))
    }

    pub fn data_dir_for(&self, version: u32) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/postgresql/{version}/main")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgBouncerSettings {
    pub enabled: bool,
    pub port: u16,
    /// PgBouncer's `listen_addr`: `*`, or a comma-free IP address or host name.
    pub listen_addr: String,
    pub pool_mode: PoolMode,
    /// The most server connections one tenant's pool opens (never more than its
    /// `maxConnections`).
    pub default_pool_size: u32,
    /// Client connections PgBouncer takes in all, logins in progress included; its systemd unit
    /// gets a file-descriptor limit to match.
    pub max_client_conn: u32,
    /// Seconds a client may take to log in (TLS + SCRAM) before its slot is freed: a flood of
    /// connections that never log in holds slots only this long.
    pub client_login_timeout_secs: u32,
    /// Seconds a client waits for a server connection (its tenant at its limit) before it is
    /// refused.
    pub query_wait_timeout_secs: u32,
    /// Seconds an idle server connection is kept: a tenant's pooled connections count against its
    /// `maxConnections` like direct ones, so they are given back quickly.
    pub server_idle_timeout_secs: u32,
    /// PgBouncer 1.24+: client connections per tenant, as a multiple of its `maxConnections`
    /// (`max_db_client_connections` / `max_user_client_connections`).
    pub clients_per_connection: u32,
    pub config_dir: PathBuf,
    /// Where pgbouncer_hba.conf and userlist.txt live (`config_dir` when absent); like
    /// `postgres.hba_dir`, a directory the API's system user may write.
    pub auth_dir: Option<PathBuf>,
    pub pidfile: PathBuf,
    pub logfile: PathBuf,
}

impl PgBouncerSettings {
    /// The directory of the files that follow the control DB (auth_hba_file, auth_file).
    pub fn auth_dir(&self) -> PathBuf {
        self.auth_dir
            .clone()
            .unwrap_or_else(|| self.config_dir.clone())
    }
}

impl Default for PgBouncerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 6432,
            listen_addr: "*".into(),
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            max_client_conn: 5000,
            client_login_timeout_secs: 10,
            query_wait_timeout_secs: 30,
            server_idle_timeout_secs: 10,
            clients_per_connection: 10,
            config_dir: PathBuf::from("/etc/pgbouncer"),
            auth_dir: None,
            pidfile: PathBuf::from("/var/run/postgresql/pgbouncer.pid"),
            logfile: PathBuf::from("/var/log/postgresql/pgbouncer.log"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// A bootstrap key accepted with every scope (the original's `API_KEY`). Prefer keys made with
    /// `pgaas key create`, which are stored hashed.
    pub api_key: Option<Secret>,
    /// The system user `pgaas-api.service` runs as.
    pub system_user: String,
    pub max_body_bytes: usize,
    /// How often usage rows are written to `database_stats`.
    pub stats_interval_secs: u64,
    /// How often database sizes are recomputed (`pg_database_size` walks the files); storage
    /// quotas are enforced at this pace.
    pub stats_size_interval_secs: u64,
    /// Connections the API keeps to the control DB (they count against the server's
    /// `max_connections`, before any tenant's).
    pub pool_size: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            api_key: None,
            system_user: "pgaas".into(),
            max_body_bytes: 64 * 1024,
            stats_interval_secs: 60,
            stats_size_interval_secs: 60,
            pool_size: 16,
        }
    }
}

/// How the API reaches the control database (the original's `DB_*` names).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlDbSettings {
    /// A host name, an IP address, or an absolute socket directory.
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub password: Option<Secret>,
    /// Read the password from this file (mode 0600) instead.
    pub password_file: Option<PathBuf>,
    pub name: String,
    /// Require TLS (ignored for socket directories).
    pub ssl: bool,
}

impl Default for ControlDbSettings {
    fn default() -> Self {
        Self {
            host: "/var/run/postgresql".into(),
            port: None,
            user: "pgaas_api".into(),
            password: None,
            password_file: Some(PathBuf::from("/etc/pgaas/secrets/control-db-password")),
            name: "postgres_control".into(),
            ssl: false,
        }
    }
}

/// The original's `PG_ADMIN_*`. pgaas itself reaches the superuser by peer over the local socket;
/// a password is accepted for compatibility and never sent over TCP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub user: String,
    pub password: Option<Secret>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            user: "postgres".into(),
            password: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Full chain, PEM. PostgreSQL and PgBouncer both point here.
    pub cert_file: PathBuf,
    /// Private key, PEM, 0600 (or 0640 root-owned).
    pub key_file: PathBuf,
    /// The local CA's certificate, for hosts without a public name.
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::from("/etc/pgaas/tls/server.crt"),
            key_file: PathBuf::from("/etc/pgaas/tls/server.key"),
            ca_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathSettings {
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub backup_dir: PathBuf,
    /// Where the pgaas binary is installed (systemd units run it from here).
    pub binary: PathBuf,
    pub systemd_dir: PathBuf,
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/pgaas"),
            config_dir: PathBuf::from("/etc/pgaas"),
            backup_dir: PathBuf::from("/var/backups/pgaas"),
            binary: PathBuf::from("/usr/local/bin/pgaas"),
            systemd_dir: PathBuf::from("/etc/systemd/system"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSettings {
    /// `pgaas backup prune` deletes dumps older than this; the newest verified dump of each
    /// database is kept whatever its age.
    pub retention_days: u32,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self { retention_days: 7 }
    }
}

/// One problem found while loading settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsProblem {
    pub source: Source,
    /// 1-based line in the settings file, when the problem comes from a file.
    pub line: Option<usize>,
    /// Dotted key, e.g. `postgres.port` (empty for whole-file problems such as YAML syntax).
    pub key: String,
    pub message: String,
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.line) {
            (Source::File(path), Some(line)) => write!(f, "{}:{line}: ", path.display())?,
            (source, _) => write!(f, "{source}: ")?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found, in the order found.
#[derive(Debug, thiserror::Error)]
pub struct SettingsErrors(pub Vec<SettingsProblem>);

impl fmt::Display for SettingsErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the settings:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Where to load settings from, and what the command line overrides.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config FILE`; when `None`, [`DEFAULT_CONFIG_FILE`] is read if it exists.
    pub config_file: Option<PathBuf>,
    /// Read `.env` in this directory (normally the working directory); `None` skips it.
    pub dotenv_dir: Option<PathBuf>,
    /// Environment variables to consider (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Flag overrides as `(dotted.key, YAML scalar)`, highest precedence.
    pub flags: Vec<(String, String)>,
}

impl LoadOptions {
    /// What a command normally uses: the process environment and `.env` in the working directory.
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        Self {
            config_file,
            dotenv_dir: std::env::current_dir().ok(),
            env: std::env::vars().collect(),
            flags: Vec::new(),
        }
    }

    pub fn flag(mut self, key: &str, value: impl ToString) -> Self {
        self.flags.push((key.to_string(), value.to_string()));
        self
    }
}

impl Settings {
    /// Load and validate; every problem is reported, not just the first.
    pub fn load(options: &LoadOptions) -> Result<Settings, SettingsErrors> {
        let layers = layers::collect(options);
        let mut problems = layers.problems;
        let settings = layers::build(&layers.layers, &mut problems);
        if let Some(settings) = &settings {
            validate::check(settings, &layers.layers, &mut problems);
        }
        match settings {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(SettingsErrors(problems)),
        }
    }

    /// YAML for a settings file, without any secret (secrets are dropped, not masked, so the file
    /// loads again).
    pub fn to_yaml_without_secrets(&self) -> String {
        let mut s = self.clone();
        s.api.api_key = None;
        s.admin.password = None;
        s.control_db.password = None;
        yaml_serde::to_string(&s).unwrap_or_default()
    }

    /// The control DB password: inline value, else the password file, else none.
    pub fn control_db_password(&self) -> std::io::Result<Option<Secret>> {
        if let Some(p) = &self.control_db.password {
            return Ok(Some(p.clone()));
        }
        match &self.control_db.password_file {
            Some(path) => read_secret_file(path),
            None => Ok(None),
        }
    }
}

/// Read a secret file; a missing file is `None`, anything else unreadable is an error.
pub fn read_secret_file(path: &Path) -> std::io::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(Secret::new(s.trim_end_matches(['\n', '\r'])))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
