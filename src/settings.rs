//! Typed settings for every pgaas command, and where they come from.
//!
//! Layers, lowest first: built-in defaults, the YAML file (`/etc/pgaas/pgaas.yaml` or `--config`),
//! the original API's `.env` names (from an env file when asked for one, with `--env-file` or by
//! `pgaas dev`, then the process environment), `PGAAS_*` environment variables (`PGAAS_POSTGRES__PORT=5433`: `__` separates
//! levels), then command-line flags. Unknown keys are errors in every layer. Loading collects every
//! problem it finds instead of stopping at the first, so `pgaas config check` can list them all with
//! the file and line they come from.

mod archive;
mod cluster;
mod layers;
mod limits;
mod servers;
mod validate;

use std::{
    fmt,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use archive::{ArchiveSettings, S3Repository};
#[cfg(test)]
pub(crate) use cluster::example_nodes;
pub use cluster::{ClusterNode, ClusterSettings, EtcdTls};
pub use layers::{Layer, Source};
pub use limits::{LimitsSettings, TenantSettings};
pub use servers::{PgBouncerSettings, PoolMode, PostgresSettings};
pub use validate::{is_host_name, is_plain_identifier, is_system_user};

/// The system-wide settings file read when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pgaas/pgaas.yaml";

pub use crate::model::Secret;

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
    pub archive: ArchiveSettings,
    /// Absent from a single host's settings file (written back by `pgaas install`).
    #[serde(skip_serializing_if = "ClusterSettings::is_single_host")]
    pub cluster: ClusterSettings,
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
            archive: ArchiveSettings::default(),
            cluster: ClusterSettings::default(),
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
    /// Read the bootstrap key from this file instead (`API_KEY_FILE`), so it stays out of the
    /// settings file and the environment.
    pub api_key_file: Option<PathBuf>,
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
            api_key_file: None,
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
    /// Read the password from this file instead (`PG_ADMIN_PASSWORD_FILE`).
    pub password_file: Option<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            user: "postgres".into(),
            password: None,
            password_file: None,
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
    /// A restore's load (pg_restore) is stopped past this many seconds and the restore fails,
    /// changing nothing: a tenant's function that sleeps during its own restore holds nothing
    /// for longer.
    pub restore_timeout_secs: u64,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            retention_days: 7,
            restore_timeout_secs: 6 * 3600,
        }
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

/// An env file to read, and whether its absence is an error (it is when the operator named it).
#[derive(Clone, Debug)]
pub struct EnvFile {
    pub path: PathBuf,
    pub required: bool,
}

/// Where to load settings from, and what the command line overrides.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config FILE`; when `None`, [`DEFAULT_CONFIG_FILE`] is read if it exists.
    pub config_file: Option<PathBuf>,
    /// An env file (`KEY=value` lines) read before the process environment; `None` reads none.
    /// Never the working directory's `.env` implicitly: a root command run from a directory
    /// another user controls would take its settings (and send the control DB password to the
    /// server it names).
    pub env_file: Option<EnvFile>,
    /// Environment variables to consider (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Flag overrides as `(dotted.key, YAML scalar)`, highest precedence.
    pub flags: Vec<(String, String)>,
}

impl LoadOptions {
    /// What a command normally uses: the process environment (no env file).
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        Self {
            config_file,
            env_file: None,
            env: std::env::vars().collect(),
            flags: Vec::new(),
        }
    }

    /// Also read this env file, which must exist (`--env-file FILE`).
    pub fn env_file(mut self, path: PathBuf) -> Self {
        self.env_file = Some(EnvFile {
            path,
            required: true,
        });
        self
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

impl Settings {
    /// pgBackRest's repositories, by number: 1 is this host's directory (`archive.repo_path`),
    /// 2 the S3 one (`archive.s3`). A cluster's nodes have only the shared repository 2: a
    /// directory on one node would be lost with it and hold nothing the next primary wrote.
    pub fn archive_repos(&self) -> Vec<u32> {
        match (self.cluster.enabled(), self.archive.s3.is_some()) {
            (true, _) => vec![2],
            (false, true) => vec![1, 2],
            (false, false) => vec![1],
        }
    }

    /// Read the secrets given as files (`api.api_key_file`, `admin.password_file`) into their
    /// settings, for the commands that use them; a file named but unreadable is an error that
    /// names it.
    pub fn resolve_secret_files(&mut self) -> Result<(), String> {
        let read = |path: &Path| -> Result<Secret, String> {
            match read_secret_file(path) {
                Ok(Some(s)) if !s.expose().is_empty() => Ok(s),
                Ok(_) => Err(format!("{} is missing or empty", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        };
        if let Some(p) = &self.api.api_key_file {
            self.api.api_key = Some(read(p)?);
        }
        if let Some(p) = &self.admin.password_file {
            self.admin.password = Some(read(p)?);
        }
        Ok(())
    }
}

/// Read a secret file; a missing file is `None`, anything else unreadable is an error, and so is
/// a file any group or other user may access (see [`InsecureSecretFile`]).
pub fn read_secret_file(path: &Path) -> std::io::Result<Option<Secret>> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The mode of the file opened, not of whatever the path names a moment later.
    check_secret_mode(path, file.metadata()?.mode(), credentials_dir().as_deref())?;
    let mut s = String::new();
    file.read_to_string(&mut s)?;
    Ok(Some(Secret::new(s.trim_end_matches(['\n', '\r']))))
}

/// A secret file that a group or other users may read or write. pgaas writes every secret file
/// 0600 and reads none through a group, so any group or other bit means someone loosened it (or
/// copied it with a umask): refused rather than used, as PostgreSQL refuses its key.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} holds a secret but its mode {mode:04o} lets others access it; refused: \
     chmod 600 {path} (owned by the user that runs pgaas)",
    path = path.display()
)]
pub struct InsecureSecretFile {
    pub path: PathBuf,
    pub mode: u32,
}

/// systemd's `LoadCredential=` directory (`$CREDENTIALS_DIRECTORY`): systemd makes its files
/// readable by the service alone, whatever the source's mode.
fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn check_secret_mode(path: &Path, mode: u32, credentials: Option<&Path>) -> std::io::Result<()> {
    if mode & 0o077 == 0 || credentials.is_some_and(|d| path.starts_with(d)) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        InsecureSecretFile {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        },
    ))
}

#[cfg(test)]
mod tests;
