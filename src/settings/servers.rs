//! The servers pgaas runs and configures: PostgreSQL and PgBouncer.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
