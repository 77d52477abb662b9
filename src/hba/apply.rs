//! Applying the access policy is a transaction. The caller opens a control-DB transaction holding
//! its change (an allow-list entry added, a tenant removed, ...) and calls [`HbaApplier::apply`]
//! inside it. The applier serialises with every other applier (transaction-scoped advisory
//! lock), compiles the rules from the rows as the transaction sees them, writes pg_hba.conf
//! atomically, has PostgreSQL validate the file on disk (`pg_hba_file_rules`), restores the previous
//! file on any error, reloads and confirms the reload took. Only then may the caller commit; if
//! the commit fails, [`Applied::undo`] puts the previous files back. So a row and the file never
//! disagree after a request returns, and an invalid file never stays on disk.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use sqlx::{PgConnection, PgPool};

use super::{
    HbaPolicy, TenantAccess, compile, compile_pgbouncer, render_pg_hba, render_pgbouncer_hba,
};
use crate::{
    pg::cluster::reload,
    render::{WriteOutcome, reroot, write_if_changed},
};

/// The advisory lock key every applier takes ("pgaashba").
const LOCK_KEY: i64 = 0x7067_6161_7368_6261;
const HBA_MODE: u32 = 0o640;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the compiled pg_hba.conf was refused by PostgreSQL (line {line}: {error}); the previous file was restored"
    )]
    Invalid { line: i32, error: String },
    #[error("cannot write {path}: {reason}; the previous file is still in force")]
    Write { path: PathBuf, reason: String },
    #[error("{0}")]
    Compile(#[from] super::HbaError),
    #[error("control database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("reloading: {0}")]
    Reload(String),
}

/// Reloads PgBouncer after its hba file changed.
pub trait PoolerReload: Send + Sync {
    fn reload(&self) -> Result<(), String>;
}

/// Where the policy is written, and what it is built from besides the rows.
#[derive(Clone)]
pub struct HbaApplier {
    /// The policy without tenants (superuser, API role, ...); tenants come from the rows.
    pub base: HbaPolicy,
    pub pg_hba_file: PathBuf,
    pub pgbouncer: Option<PoolerFiles>,
    pub pooler: Option<Arc<dyn PoolerReload>>,
    /// uid/gid the files must have. Root gives every file it writes this owner (a file left
    /// root-owned would lock PostgreSQL or PgBouncer out); another user gives it to the files it
    /// creates when it may, and otherwise relies on the setgid directory for the group.
    pub file_owner: Option<(u32, u32)>,
    /// The OS user whose programs read the files (PostgreSQL and PgBouncer), for checks.
    pub reader: Option<String>,
}

/// PgBouncer's files that follow the control DB.
#[derive(Clone, Debug)]
pub struct PoolerFiles {
    pub hba_file: PathBuf,
    pub userlist_file: PathBuf,
    /// PgBouncer's pid file: the auth file names the process it was written for (see
    /// `pg::userlist`).
    pub pidfile: Option<PathBuf>,
    /// The per-tenant limits file (`render::render_tenants`) and what it is made with.
    pub tenants_file: PathBuf,
    pub limits: crate::render::PoolerLimits,
}

impl PoolerFiles {
    /// PgBouncer's files as `settings` place them (under `root` when given), with the limits
    /// the installed PgBouncer can enforce.
    pub fn for_settings(settings: &crate::settings::Settings, root: Option<&Path>) -> Self {
        let pgb = &settings.pgbouncer;
        let dir = pgb.auth_dir();
        let version =
            crate::pg::pgbouncer::find_binary().and_then(|b| crate::pg::pgbouncer::version(&b));
        let client_limits = crate::pg::pgbouncer::has_client_limits(version);
        PoolerFiles {
            hba_file: reroot(&dir.join("pgbouncer_hba.conf"), root),
            userlist_file: reroot(&dir.join("userlist.txt"), root),
            pidfile: Some(reroot(&pgb.pidfile, root)),
            tenants_file: reroot(&dir.join(crate::render::TENANTS_FILE), root),
            limits: crate::render::PoolerLimits::from_settings(settings, client_limits)
                .unwrap_or_else(|_| crate::render::PoolerLimits {
                    server: format!("port={}", settings.postgres.port),
                    default_pool_size: pgb.default_pool_size.max(1),
                    client_limits,
                    clients_per_connection: pgb.clients_per_connection.max(1),
                }),
        }
    }
}

/// A successful apply, not yet committed.
pub struct Applied {
    pub generation: i64,
    previous: Vec<(PathBuf, Option<String>)>,
    pooler: Option<Arc<dyn PoolerReload>>,
}

impl Applied {
    /// The caller's commit failed: restore the files as they were (best effort; the next apply
    /// or `pgaas render` rewrites them from rows anyway).
    pub async fn undo(self, conn: &mut PgConnection) {
        for (path, old) in &self.previous {
            if let Some(old) = old {
                if let Err(e) = write_if_changed(path, old, HBA_MODE) {
                    tracing::error!(path = %path.display(), error = %e, "could not restore the previous hba file");
                }
            }
        }
        if let Err(e) = reload(conn).await {
            tracing::error!(error = %e, "reload after restoring hba files failed");
        }
        if let Some(p) = &self.pooler {
            let _ = p.reload();
        }
    }
}

/// A successful pooler apply, not yet committed.
#[derive(Default)]
pub struct AppliedPooler {
    previous: Vec<(PathBuf, Option<String>)>,
    pooler: Option<Arc<dyn PoolerReload>>,
}

impl AppliedPooler {
    /// The caller's commit failed: the files as they were, and PgBouncer told (best effort; the
    /// next refresh rewrites them from the rows anyway).
    pub fn undo(self) {
        for (path, old) in &self.previous {
            if let Some(old) = old {
                if let Err(e) = write_if_changed(path, old, HBA_MODE) {
                    tracing::error!(path = %path.display(), error = %e, "could not restore a pooler file");
                }
            }
        }
        if let Some(p) = &self.pooler {
            let _ = p.reload();
        }
    }
}

/// The tenants that need lines of their own (an allow-list, or a role not named after its
/// database), as the connection's transaction sees the rows.
pub async fn load_tenants(conn: &mut PgConnection) -> Result<Vec<TenantAccess>, sqlx::Error> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT d.database_name, d.username, w.ip_address::text
         FROM databases d LEFT JOIN ip_whitelist w ON w.database_id = d.id
         WHERE w.id IS NOT NULL OR d.database_name <> d.username
         ORDER BY d.database_name, w.ip_address",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tenants: Vec<TenantAccess> = Vec::new();
    for (database, role, net) in rows {
        // The column is `cidr`, so PostgreSQL already normalised it; a parse failure means the
        // row was written around pgaas, and the compiler must not guess.
        let net: Option<ipnetwork::IpNetwork> = net
            .map(|n| n.parse())
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if tenants.last().is_none_or(|t| t.database != database) {
            tenants.push(TenantAccess {
                database,
                role,
                allow: Vec::new(),
            });
        }
        let t = tenants.last_mut().expect("pushed above");
        t.allow.extend(net);
    }
    Ok(tenants)
}

/// The tenants' SCRAM verifiers, for PgBouncer's auth file (see `control_db::bootstrap`).
pub async fn tenant_secrets(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT rolname, rolpassword FROM pgaas_priv.tenant_secrets()")
        .fetch_all(conn)
        .await
}

/// The generation of the file in force, as the control DB records it.
pub async fn current_generation(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT generation FROM hba_state")
        .fetch_one(conn)
        .await
}

fn read(path: &Path) -> Result<Option<String>, ApplyError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApplyError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

impl HbaApplier {
    /// The policy the rows describe, as `conn` sees them.
    pub async fn policy(&self, conn: &mut PgConnection) -> Result<HbaPolicy, sqlx::Error> {
        let mut policy = self.base.clone();
        policy.tenants = load_tenants(conn).await?;
        Ok(policy)
    }

    /// Compile, write, validate, reload; inside the caller's transaction (see module docs).
    pub async fn apply(&self, tx: &mut PgConnection) -> Result<Applied, ApplyError> {
        self.apply_generation(tx, true).await
    }

    /// `bump`: a new policy gets a new generation; restoring the files of the policy in force
    /// (after a hand edit, or a lost file) keeps the one the control DB records.
    async fn apply_generation(
        &self,
        tx: &mut PgConnection,
        bump: bool,
    ) -> Result<Applied, ApplyError> {
        // Appliers queue behind each other; each takes tens of milliseconds, so a longer wait
        // than the session's default is normal here.
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let policy = self.policy(tx).await?;
        let generation: i64 = if bump {
            sqlx::query_scalar("UPDATE hba_state SET generation = generation + 1, applied_at = now() RETURNING generation")
                .fetch_one(&mut *tx)
                .await?
        } else {
            current_generation(&mut *tx).await?
        };
        let gen_u = u64::try_from(generation).unwrap_or(0);
        let pg_text = render_pg_hba(&compile(&policy)?, gen_u)?;
        let bouncer_text = match &self.pgbouncer {
            Some(_) => Some(render_pgbouncer_hba(&compile_pgbouncer(&policy)?, gen_u)?),
            None => None,
        };

        let mut previous = vec![(self.pg_hba_file.clone(), read(&self.pg_hba_file)?)];
        self.write(&self.pg_hba_file, &pg_text, &previous)?;
        let errors: Vec<(i32, String)> = sqlx::query_as(
            "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number",
        )
        .fetch_all(&mut *tx)
        .await
        .inspect_err(|_| self.restore(&previous))?;
        if let Some((line, error)) = errors.into_iter().next() {
            self.restore(&previous);
            return Err(ApplyError::Invalid { line, error });
        }
        if let Err(e) = reload(tx).await {
            self.restore(&previous);
            return Err(ApplyError::Reload(e.to_string()));
        }
        if let (Some(files), Some(text)) = (&self.pgbouncer, &bouncer_text) {
            let path = &files.hba_file;
            previous.push((path.clone(), read(path)?));
            let pooler_result =
                self.write(path, text, &previous)
                    .and_then(|()| match &self.pooler {
                        Some(p) => p.reload().map_err(ApplyError::Reload),
                        None => Ok(()),
                    });
            if let Err(e) = pooler_result {
                self.restore(&previous);
                let _ = reload(tx).await;
                if let Some(p) = &self.pooler {
                    let _ = p.reload();
                }
                return Err(e);
            }
        }
        Ok(Applied {
            generation,
            previous,
            pooler: self.pooler.clone(),
        })
    }

    fn write(
        &self,
        path: &Path,
        text: &str,
        previous: &[(PathBuf, Option<String>)],
    ) -> Result<(), ApplyError> {
        self.write_owned(path, text)
            .map(|_| ())
            .inspect_err(|_| self.restore(previous))
    }

    /// Write a file, then give it the owner it must have (see [`HbaApplier::file_owner`]).
    fn write_owned(&self, path: &Path, text: &str) -> Result<WriteOutcome, ApplyError> {
        let existed = path.exists();
        let outcome = write_if_changed(path, text, HBA_MODE).map_err(|e| ApplyError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let root = nix::unistd::Uid::effective().is_root();
        if root || !existed {
            self.set_owner(path)?;
        }
        Ok(outcome)
    }

    /// Put back the mode (and, as root, the owner) an access file must have; whether anything
    /// changed.
    fn repair_attrs(&self, path: &Path) -> Result<bool, ApplyError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let io = |e: std::io::Error| ApplyError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let before = std::fs::metadata(path).map_err(io)?;
        if before.mode() & 0o7777 != HBA_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(HBA_MODE))
                .map_err(io)?;
        }
        if nix::unistd::Uid::effective().is_root() {
            self.set_owner(path)?;
        }
        let after = std::fs::metadata(path).map_err(io)?;
        Ok((before.mode(), before.uid(), before.gid()) != (after.mode(), after.uid(), after.gid()))
    }

    fn set_owner(&self, path: &Path) -> Result<(), ApplyError> {
        use std::os::unix::fs::MetadataExt;
        let Some((uid, gid)) = self.file_owner else {
            return Ok(());
        };
        let meta = std::fs::metadata(path).map_err(|e| ApplyError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if (meta.uid(), meta.gid()) == (uid, gid) {
            return Ok(());
        }
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| ApplyError::Write {
            path: path.to_path_buf(),
            reason: format!("setting its owner to {uid}:{gid}: {e}"),
        })
    }

    /// Bring the files in line with the rows without a change of policy: at start-up, after a
    /// crash, or for `pgaas render`. Applies (new generation) only when a file differs.
    pub async fn sync(&self, pool: &PgPool) -> Result<i64, ApplyError> {
        self.sync_files(pool).await
    }

    async fn sync_files(&self, pool: &PgPool) -> Result<i64, ApplyError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let policy = self.policy(&mut tx).await?;
        let generation = current_generation(&mut tx).await?;
        let gen_u = u64::try_from(generation).unwrap_or(0);
        let mut in_sync =
            read(&self.pg_hba_file)? == Some(render_pg_hba(&compile(&policy)?, gen_u)?);
        if let Some(files) = &self.pgbouncer {
            in_sync &= read(&files.hba_file)?
                == Some(render_pgbouncer_hba(&compile_pgbouncer(&policy)?, gen_u)?);
        }
        let generation = if in_sync {
            // Same text, but a careless tool may have left an owner or a mode behind that
            // locks the readers out; the servers re-read what was repaired.
            let mut repaired = self.repair_attrs(&self.pg_hba_file)?;
            if let Some(files) = &self.pgbouncer {
                repaired |= self.repair_attrs(&files.hba_file)?;
                if files.userlist_file.exists() {
                    repaired |= self.repair_attrs(&files.userlist_file)?;
                }
            }
            if repaired {
                reload(&mut tx)
                    .await
                    .map_err(|e| ApplyError::Reload(e.to_string()))?;
                if let Some(p) = &self.pooler {
                    p.reload().map_err(ApplyError::Reload)?;
                }
            }
            tx.commit().await?;
            generation
        } else {
            let applied = self.apply_generation(&mut tx, false).await?;
            let generation = applied.generation;
            if let Err(e) = tx.commit().await {
                let mut conn = pool.acquire().await?;
                applied.undo(&mut conn).await;
                return Err(e.into());
            }
            generation
        };
        self.refresh_pooler_users(pool).await?;
        Ok(generation)
    }

    /// Rewrite PgBouncer's auth file (the tenants' verifiers) and its per-tenant limits from the
    /// rows, and reload it when either changed. Called after every create, password rotation and
    /// delete, and periodically (a tenant can change its own password).
    pub async fn refresh_pooler_users(&self, pool: &PgPool) -> Result<(), ApplyError> {
        let mut tx = pool.begin().await?;
        let applied = self.apply_pooler(&mut tx).await?;
        if let Err(e) = tx.commit().await {
            applied.undo();
            return Err(e.into());
        }
        Ok(())
    }

    /// Inside the caller's transaction (a PATCH of a limit, say): write PgBouncer's auth file and
    /// per-tenant limits as `tx` sees the rows, and reload it. Serialised with every other writer
    /// of the access files, in any process, by the appliers' advisory lock; if the caller's
    /// commit fails, [`AppliedPooler::undo`] puts the files back.
    pub async fn apply_pooler(&self, tx: &mut PgConnection) -> Result<AppliedPooler, ApplyError> {
        let Some(files) = &self.pgbouncer else {
            return Ok(AppliedPooler::default());
        };
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let secrets = tenant_secrets(&mut *tx).await?;
        let existing = read(&files.userlist_file)?;
        let userlist = self.userlist(files, &secrets, existing.as_deref());
        let tenants = self.pooler_tenants(&mut *tx, &secrets).await?;
        let limits = crate::render::render_tenants(&tenants, &files.limits);
        let previous = vec![
            (files.userlist_file.clone(), existing),
            (files.tenants_file.clone(), read(&files.tenants_file)?),
        ];
        let mut changed = false;
        for (path, text) in [
            (&files.userlist_file, &userlist),
            (&files.tenants_file, &limits),
        ] {
            changed |= self
                .write_owned(path, text)
                .inspect_err(|_| self.restore(&previous))?
                == WriteOutcome::Changed;
        }
        if changed {
            if let Some(p) = &self.pooler {
                if let Err(e) = p.reload() {
                    self.restore(&previous);
                    let _ = p.reload();
                    return Err(ApplyError::Reload(e));
                }
            }
        }
        Ok(AppliedPooler {
            previous,
            pooler: self.pooler.clone(),
        })
    }

    /// Every tenant whose role is in the auth file, with its limit.
    pub async fn pooler_tenants(
        &self,
        tx: &mut PgConnection,
        secrets: &[(String, String)],
    ) -> Result<Vec<crate::render::PoolerTenant>, ApplyError> {
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT database_name, username, max_connections FROM databases
             WHERE status <> 'deleting' ORDER BY database_name",
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, role, _)| secrets.iter().any(|(r, _)| r == role))
            .map(|(database, role, n)| crate::render::PoolerTenant {
                database,
                role,
                max_connections: u32::try_from(n).unwrap_or(1),
            })
            .collect())
    }

    /// The auth file for these tenant verifiers, given the file as it is now.
    pub fn userlist(
        &self,
        files: &PoolerFiles,
        secrets: &[(String, String)],
        existing: Option<&str>,
    ) -> String {
        let process = files
            .pidfile
            .as_deref()
            .and_then(crate::pg::userlist::process_identity);
        crate::pg::userlist::Userlist {
            console_users: &self.base.pooler_admins,
            secrets,
            existing,
            process: process.as_deref(),
        }
        .render()
    }

    fn restore(&self, previous: &[(PathBuf, Option<String>)]) {
        for (path, old) in previous {
            if let Some(old) = old {
                if let Err(e) = write_if_changed(path, old, HBA_MODE) {
                    tracing::error!(path = %path.display(), error = %e, "could not restore the previous hba file");
                }
            }
        }
    }
}

impl HbaApplier {
    /// The applier of a host configured by `settings`: pg_hba.conf in its hba directory for
    /// `pg_version`, PgBouncer's files when it is enabled. PgBouncer is reloaded with SIGHUP when
    /// this process may signal it (root, or its own user), else through its admin console as
    /// this process's OS user (the installed API, user `pgaas`, listed in `admin_users`).
    /// `pgaas dev` builds its own (see `dev`), with its local paths.
    pub fn for_host(settings: &crate::settings::Settings, pg_version: u32) -> HbaApplier {
        use crate::pg::cluster::OsUser;
        let pgb = &settings.pgbouncer;
        let owner = OsUser::lookup(&settings.postgres.os_user).ok();
        let me = nix::unistd::Uid::effective();
        let may_signal = me.is_root() || owner.as_ref().is_some_and(|o| o.uid == me.as_raw());
        let pooler: Option<Arc<dyn PoolerReload>> =
            match (pgb.enabled, crate::pg::pgbouncer::find_binary(), &owner) {
                (true, Some(binary), Some(owner)) if may_signal => {
                    Some(Arc::new(crate::pg::pgbouncer::LocalPgBouncer {
                        binary,
                        ini: pgb.config_dir.join("pgbouncer.ini"),
                        pidfile: pgb.pidfile.clone(),
                        port: pgb.port,
                        owner: owner.clone(),
                    }))
                }
                (true, _, _) => OsUser::current().ok().map(|user| {
                    Arc::new(crate::pg::console::ConsoleReload {
                        socket_dir: settings.postgres.socket_dir.clone(),
                        port: pgb.port,
                        user: user.name,
                    }) as Arc<dyn PoolerReload>
                }),
                _ => None,
            };
        HbaApplier {
            base: HbaPolicy::base(settings),
            pg_hba_file: settings
                .postgres
                .hba_dir_for(pg_version)
                .join("pg_hba.conf"),
            pgbouncer: pgb
                .enabled
                .then(|| PoolerFiles::for_settings(settings, None)),
            pooler,
            // Root gives the files to the API's user and the server's group (the API rewrites
            // them, PostgreSQL and PgBouncer read them); an unprivileged API creates them in a
            // setgid directory the server's group can read.
            file_owner: if me.is_root() {
                owner.map(|o| {
                    let api = OsUser::lookup(&settings.api.system_user).ok();
                    (api.map_or(o.uid, |a| a.uid), o.gid)
                })
            } else {
                None
            },
            reader: Some(settings.postgres.os_user.clone()),
        }
    }
}
