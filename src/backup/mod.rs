//! Backups: `pg_dump -Fc` of the control database and of each tenant into
//! `<paths.backup_dir>/<database>/<UTC timestamp>.dump`, each with a `sha256sum`-format sidecar
//! (`<name>.dump.sha256`); listing, retention, and restore in place or into a new database.
//!
//! Crash safety is in the order of the steps (`dump.rs`): pg_dump's output is streamed by pgaas
//! (no shell pipeline, so a failed dump cannot hide behind a successful `gzip`) into
//! `.<name>.dump.partial` while it is hashed, fsynced, its exit status checked, the archive read
//! back with `pg_restore --list`, the sidecar written as `.<name>.dump.sha256.partial`, and only
//! then are the dump and, last, the sidecar renamed into place. A killed or failed run leaves at
//! most dotted `.partial` files, which nothing lists and `prune` removes once a day old; a crash
//! between the two renames leaves a dump without a sidecar, which counts as unverified.
//!
//! Who logs in. The CLI (and the nightly timer, which runs as the cluster's OS user) connects as
//! the superuser over the local socket by peer (root is mapped to it in pg_ident.conf), and reads
//! the tenant list from the control DB the same way, so it needs no password file. The API runs
//! as an unprivileged system user that cannot peer as the superuser: its backups log in as the
//! API role, with the API's password handed to pg_dump through a private, short-lived
//! `PGPASSFILE` (never argv, never the environment). That works because the API role is a member
//! of every tenant role (it created them), so it holds the owner's read rights and CONNECT, and
//! of the tenant group that pg_hba.conf admits over the socket. One path for the API whatever
//! user it runs as, so the tests exercise the production path.

mod dump;
pub mod load;
mod prune;
mod restore;
mod store;
pub mod targets;

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

pub use prune::{PruneItem, PrunePlan};
pub use restore::RestoreMode;
pub use store::{BackupFile, Checksum, sidecar_path};
pub use targets::{Target, superuser_connect};

use crate::{
    pg::binaries::{FindError, PgBinaries},
    settings::{Secret, Settings},
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Binaries(#[from] FindError),
    #[error("pg_dump of {database} failed ({status}): {stderr}")]
    Dump {
        database: String,
        status: String,
        stderr: String,
    },
    #[error(
        "the dump of {database} is not a readable archive (pg_restore --list: {detail}); it was discarded, run the backup again"
    )]
    Unreadable { database: String, detail: String },
    #[error(
        "database {0:?} not found: give a tenant id, a tenant database name or the control database name (`pgaas db list` shows them)"
    )]
    UnknownDatabase(String),
    #[error(
        "no verified backup of {database} in {dir}; run `pgaas backup run --database {database}` first, or pass --from FILE"
    )]
    NoBackup { database: String, dir: PathBuf },
    #[error(
        "{file}: the checksum does not match {sidecar}; the file is damaged, nothing was changed. Pick another backup (`pgaas backup list --verify`) and pass it with --from"
    )]
    Mismatch { file: PathBuf, sidecar: PathBuf },
    #[error(
        "{file} has no checksum sidecar ({sidecar}), so it cannot be verified; nothing was changed. Use a backup made by `pgaas backup run`"
    )]
    NoSidecar { file: PathBuf, sidecar: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    State(String),
    #[error("restoring {database} failed: {detail}")]
    Restore { database: String, detail: String },
    #[error(
        "cannot reach PostgreSQL as the superuser over {socket}: {source}; is the cluster running, and is this root or the cluster's OS user?"
    )]
    Connect {
        socket: PathBuf,
        source: sqlx::Error,
    },
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who pg_dump and pg_restore log in as.
#[derive(Clone, Debug)]
pub enum Login {
    /// The cluster's superuser, by peer over the local socket (the CLI and the timer).
    Superuser,
    /// The API role with its password (the API; see the module docs).
    ApiRole(Secret),
    /// A restore's throwaway load role (`load.rs`) with its password.
    Load { role: String, password: Secret },
}

/// The backup store and the PostgreSQL client tools that fill it.
#[derive(Clone, Debug)]
pub struct Backups {
    bin: PgBinaries,
    root: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    superuser: String,
    api_user: String,
    control_db: String,
    retention_days: u32,
    restore_timeout: std::time::Duration,
}

impl Backups {
    /// The store under `paths.backup_dir`, with the client tools matching the server's version.
    pub fn new(settings: &Settings) -> Result<Self, BackupError> {
        let bin = PgBinaries::find(settings.postgres.version)?;
        Ok(Self {
            bin,
            root: settings.paths.backup_dir.clone(),
            socket_dir: settings.postgres.socket_dir.clone(),
            port: settings.postgres.port,
            superuser: settings.postgres.superuser.clone(),
            api_user: settings.control_db.user.clone(),
            control_db: settings.control_db.name.clone(),
            retention_days: settings.backups.retention_days,
            restore_timeout: std::time::Duration::from_secs(settings.backups.restore_timeout_secs),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the dumps of `database` live.
    pub fn dir_of(&self, database: &str) -> PathBuf {
        self.root.join(database)
    }

    pub fn control_db(&self) -> &str {
        &self.control_db
    }

    /// Every backup on disk (of one database, or all), newest first within each database.
    /// With `verify`, each checksum is recomputed; otherwise only the sidecar's presence counts.
    pub fn list(
        &self,
        database: Option<&str>,
        verify: bool,
    ) -> Result<Vec<BackupFile>, BackupError> {
        store::list(&self.root, database, verify)
    }

    /// A client tool (`pg_dump`, `pg_restore`) pointed at `database` on the local socket as
    /// `login`. The returned guard owns the temporary password file; keep it until the tool exits.
    fn client(
        &self,
        tool: &str,
        login: &Login,
        database: &str,
    ) -> Result<(Command, Option<tempfile::TempDir>), BackupError> {
        let mut cmd = Command::new(self.bin.tool(tool));
        // Nothing from the caller's environment may redirect the connection or add a password.
        for var in [
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGHOST",
            "PGHOSTADDR",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        if tool == "pg_restore" {
            // A database past its quota defaults to read-only (`tenant/quota.rs`); a restore
            // the operator asked for writes anyway, for its own session only, and leaves the
            // default, like every other database setting, as it was.
            cmd.env("PGOPTIONS", "-c default_transaction_read_only=off");
        }
        cmd.env("PGAPPNAME", format!("pgaas-{tool}"))
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("--no-password")
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string());
        let guard = match login {
            Login::Superuser => {
                cmd.arg("-U").arg(&self.superuser);
                None
            }
            Login::ApiRole(password) => {
                let (dir, file) = store::pgpass(&self.api_user, password)?;
                cmd.arg("-U").arg(&self.api_user).env("PGPASSFILE", file);
                Some(dir)
            }
            Login::Load { role, password } => {
                let (dir, file) = store::pgpass(role, password)?;
                cmd.arg("-U").arg(role).env("PGPASSFILE", file);
                Some(dir)
            }
        };
        cmd.arg("-d").arg(database);
        Ok((cmd, guard))
    }

    /// A superuser connection to `database` over the local socket, by peer.
    pub(crate) async fn superuser(
        &self,
        database: &str,
    ) -> Result<sqlx::PgConnection, BackupError> {
        let options = sqlx::postgres::PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(&self.superuser)
            .database(database)
            .application_name("pgaas-restore")
            // Dropping the load role writes in the restored database, read-only or not.
            .options([("default_transaction_read_only", "off")]);
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
            .await
            .map_err(|source| BackupError::Connect {
                socket: self.socket_dir.clone(),
                source,
            })
    }
}
