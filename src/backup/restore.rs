//! Restore: choose and verify the dump before anything is touched, then either restore in place
//! (`--clean --if-exists --single-transaction`: all of it or none of it) or into a new database
//! owned by the same role, leaving the original alone. pg_restore runs as the superuser over the
//! local socket; into a new database it restores as the owner role (`--no-owner --role`), so
//! every object belongs to the tenant, as if the tenant had made it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use sqlx::{Executor, PgConnection};

use super::{
    BackupError, Backups, Login, Target, io_err,
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
    /// database, a failure drops the database this call created, and nothing else.
    pub async fn restore(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        file: &BackupFile,
        mode: &RestoreMode,
    ) -> Result<(), BackupError> {
        self.check_restore(conn, target, mode).await?;
        match mode {
            RestoreMode::InPlace => {
                let args = [
                    "--clean",
                    "--if-exists",
                    "--single-transaction",
                    "--exit-on-error",
                ];
                self.pg_restore_async(&target.database, &args, &file.path)
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
                let role = format!("--role={}", target.owner);
                let result = match made {
                    Ok(()) => {
                        self.pg_restore_async(
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

    /// [`Backups::pg_restore`] on a blocking thread: it waits for a child process.
    async fn pg_restore_async(
        &self,
        database: &str,
        args: &[&str],
        file: &Path,
    ) -> Result<(), BackupError> {
        let (this, database, file) = (self.clone(), database.to_string(), file.to_path_buf());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            this.pg_restore(&database, &args, &file)
        })
        .await
        .map_err(|e| BackupError::Restore {
            database: String::new(),
            detail: format!("the restore task failed: {e}"),
        })?
    }

    fn pg_restore(&self, database: &str, args: &[&str], file: &Path) -> Result<(), BackupError> {
        let (mut cmd, _guard): (Command, _) =
            self.client("pg_restore", &Login::Superuser, database)?;
        let out = cmd
            .args(args)
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io_err(&self.bin.tool("pg_restore")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(BackupError::Restore {
            database: database.to_string(),
            detail: format!(
                "{}; nothing was changed (the restore runs in one transaction)",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}
