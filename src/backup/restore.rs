//! Restore: choose and verify the dump before anything is touched, then either restore in place
//! (`--clean --if-exists --single-transaction`: all of it or none of it) or into a new database
//! owned by the same role, leaving the original alone. A tenant's dump is loaded over the local
//! socket by a throwaway role that is a member of the tenant's role and of nothing else
//! (`load.rs`), as the tenant's role (`--no-owner --role`), so every object belongs to the
//! tenant, as if the tenant had made it, and a function of the tenant's that runs during the
//! load has the tenant's rights at most.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{Executor, PgConnection};

use super::{
    BackupError, Backups, Login, Target, io_err,
    load::{self, LoadRole},
    store::{self, BackupFile, Checksum},
};
use crate::{pg::quote::quote_ident, settings::is_plain_identifier};

/// Where a restore writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreMode {
    /// Over the database the dump came from.
    InPlace,
    /// Into a new database of this name.
    Into(String),
}

async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

fn ident(name: &str) -> Result<String, BackupError> {
    quote_ident(name).map_err(|e| BackupError::Invalid(e.to_string()))
}

impl Backups {
    /// The dump a restore of `target` uses, with its checksum recomputed and matching: `from`,
    /// or else the newest verified dump of the database.
    pub fn choose(&self, target: &Target, from: Option<&Path>) -> Result<BackupFile, BackupError> {
        let Some(path) = from else {
            return store::newest_verified(&self.root, &target.database)?.ok_or_else(|| {
                BackupError::NoBackup {
                    database: target.database.clone(),
                    dir: self.dir_of(&target.database),
                }
            });
        };
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let file_name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut file = BackupFile {
            database: target.database.clone(),
            created_at: store::parse_file_name(&file_name)
                .or_else(|| meta.modified().ok().map(Into::into))
                .unwrap_or_default(),
            file_name,
            path: path.to_path_buf(),
            size_bytes: meta.len(),
            sha256: None,
            checksum: Checksum::Missing,
        };
        file.verify()?;
        let sidecar = store::sidecar_path(path);
        match file.checksum {
            Checksum::Verified => Ok(file),
            Checksum::Missing => Err(BackupError::NoSidecar {
                file: path.to_path_buf(),
                sidecar,
            }),
            _ => Err(BackupError::Mismatch {
                file: path.to_path_buf(),
                sidecar,
            }),
        }
    }

    /// Check that the restore can go ahead, without changing anything: the new name is usable
    /// and free, or the database to restore over exists. `conn` is a superuser connection.
    pub async fn check_restore(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        mode: &RestoreMode,
    ) -> Result<(), BackupError> {
        match mode {
            RestoreMode::Into(new) => {
                if !is_plain_identifier(new) {
                    return Err(BackupError::Invalid(format!(
                        "{new:?} is not a usable database name: use 1-63 characters from a-z, 0-9 and _, starting with a letter or _"
                    )));
                }
                if let Some(why) = crate::model::reserved_companion(new) {
                    return Err(BackupError::Invalid(format!(
                        "{new} is {why}; choose another name for --into"
                    )));
                }
                if exists(conn, new).await? {
                    return Err(BackupError::Invalid(format!(
                        "database {new} already exists; choose a name that is not taken (pg_restore never writes into a database it did not create)"
                    )));
                }
            }
            RestoreMode::InPlace => {
                if !exists(conn, &target.database).await? {
                    return Err(BackupError::State(format!(
                        "database {} does not exist; restore into a new one with --into NEW_NAME",
                        target.database
                    )));
                }
            }
        }
        Ok(())
    }

    /// Restore `file` (already chosen and verified with [`Backups::choose`]). Into a new
    /// database, a failure drops the database this call created, and nothing else. A tenant's
    /// data is loaded as a [`LoadRole`] of the tenant's role (the module docs of `load` say
    /// why); the control DB, which holds no tenant code, as the superuser.
    pub async fn restore(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        file: &BackupFile,
        mode: &RestoreMode,
    ) -> Result<(), BackupError> {
        self.check_restore(conn, target, mode).await?;
        let role = format!("--role={}", target.owner);
        match mode {
            RestoreMode::InPlace => {
                let mut args = vec![
                    "--clean",
                    "--if-exists",
                    "--single-transaction",
                    "--exit-on-error",
                ];
                if target.tenant.is_some() {
                    args.extend(["--no-owner", role.as_str()]);
                }
                self.load(conn, target, &target.database, &args, &file.path)
                    .await
            }
            RestoreMode::Into(new) => {
                let (new_q, owner_q) = (ident(new)?, ident(&target.owner)?);
                // Made closed, like a tenant database: nobody connects before CONNECT is
                // revoked from PUBLIC; then only its owner (and the superuser) may.
                conn.execute(
                    format!(
                        "CREATE DATABASE {new_q} OWNER {owner_q} TEMPLATE template0 ALLOW_CONNECTIONS false"
                    )
                    .as_str(),
                )
                .await?;
                let mut made = Ok(());
                for stmt in [
                    format!("REVOKE ALL ON DATABASE {new_q} FROM PUBLIC"),
                    format!("ALTER DATABASE {new_q} ALLOW_CONNECTIONS true"),
                ] {
                    if made.is_ok() {
                        made = conn.execute(stmt.as_str()).await.map(|_| ());
                    }
                }
                let result = match made {
                    Ok(()) => {
                        self.load(
                            conn,
                            target,
                            new,
                            &[
                                "--no-owner",
                                &role,
                                "--single-transaction",
                                "--exit-on-error",
                            ],
                            &file.path,
                        )
                        .await
                    }
                    Err(e) => Err(e.into()),
                };
                if result.is_err() {
                    if let Err(e) = conn
                        .execute(format!("DROP DATABASE IF EXISTS {new_q} WITH (FORCE)").as_str())
                        .await
                    {
                        tracing::error!(database = %new, error = %e, "could not drop the database of a failed restore; drop it by hand");
                    }
                }
                result
            }
        }
    }

    /// Run pg_restore into `database`: for a tenant as a fresh [`LoadRole`], dropped afterwards
    /// whatever happened; for the control DB as the superuser.
    async fn load(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        database: &str,
        args: &[&str],
        file: &Path,
    ) -> Result<(), BackupError> {
        if target.tenant.is_none() {
            return self
                .pg_restore_async(Login::Superuser, database, args, file)
                .await;
        }
        // Load roles a crash left behind go first; a failure to sweep stops nothing.
        if let Err(e) = load::sweep(self, conn).await {
            tracing::warn!(error = %e, "could not drop expired load roles");
        }
        let role = LoadRole::create(conn, &target.owner, database).await?;
        let login = Login::Load {
            role: role.name.clone(),
            password: role.password.clone(),
        };
        let result = self.pg_restore_async(login, database, args, file).await;
        let name = role.name.clone();
        let mut in_db = match self.superuser(database).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(database, error = %e, "the restored database is not reachable");
                None
            }
        };
        if let Err(e) = role.drop(conn, in_db.as_mut()).await {
            tracing::error!(role = %name, error = %e, "could not drop the load role; the next restore drops it once it expires");
        }
        if let Some(c) = in_db {
            let _ = sqlx::Connection::close(c).await;
        }
        result
    }

    /// [`Backups::pg_restore`] on a blocking thread: it waits for a child process.
    async fn pg_restore_async(
        &self,
        login: Login,
        database: &str,
        args: &[&str],
        file: &Path,
    ) -> Result<(), BackupError> {
        let (this, database, file) = (self.clone(), database.to_string(), file.to_path_buf());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            this.pg_restore(&login, &database, &args, &file)
        })
        .await
        .map_err(|e| BackupError::Restore {
            database: String::new(),
            detail: format!("the restore task failed: {e}"),
        })?
    }

    /// pg_restore, stopped at `backups.restore_timeout_secs`: a load that a tenant's function
    /// holds (it may lift `statement_timeout` and sleep) ends there and the job fails. Its
    /// server session is ended by the caller, which drops the load role.
    fn pg_restore(
        &self,
        login: &Login,
        database: &str,
        args: &[&str],
        file: &Path,
    ) -> Result<(), BackupError> {
        let (mut cmd, _guard): (Command, _) = self.client("pg_restore", login, database)?;
        let mut child = cmd
            .args(args)
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(&self.bin.tool("pg_restore")))?;
        // stderr is read on its own thread so a chatty pg_restore never blocks on a full pipe.
        let mut stderr = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let deadline = Instant::now() + self.restore_timeout;
        let status = loop {
            match child
                .try_wait()
                .map_err(io_err(&self.bin.tool("pg_restore")))?
            {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let stderr = reader.join().unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(_) => Err(BackupError::Restore {
                database: database.to_string(),
                detail: format!(
                    "{}; nothing was changed (the restore runs in one transaction)",
                    stderr.trim()
                ),
            }),
            None => Err(BackupError::Restore {
                database: database.to_string(),
                detail: format!(
                    "the load ran past backups.restore_timeout_secs ({} s) and was stopped; nothing was changed (the restore runs in one transaction)",
                    self.restore_timeout.as_secs()
                ),
            }),
        }
    }
}
