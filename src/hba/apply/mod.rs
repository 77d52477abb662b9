//! Applying the access policy is a transaction. The caller opens a control-DB transaction holding
//! its change (an allow-list entry added, a tenant removed, ...) and calls [`HbaApplier::apply`]
//! inside it. The applier serialises with every other applier (transaction-scoped advisory
//! lock), compiles the rules from the rows as the transaction sees them, writes pg_hba.conf
//! atomically, has PostgreSQL validate the file on disk (`pg_hba_file_rules`), restores the previous
//! file on any error, reloads and confirms the reload took. Only then may the caller commit; if
//! the commit fails, [`Applied::undo`] puts the previous files back. So a row and the file never
//! disagree after a request returns, and an invalid file never stays on disk.
//!
//! The SQL of the `hba_state` table lives here (each domain module owns its tables' SQL);
//! file I/O and PgBouncer's reload run on the blocking pool (`files`); PgBouncer's own files
//! (auth file, per-tenant limits) are `pooler`'s.

mod files;
mod pooler;
mod rows;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use sqlx::{PgConnection, PgPool};

pub use pooler::{AppliedPooler, PoolerFiles};
pub use rows::{current_generation, load_tenants, tenant_secrets};

use self::files::{Owner, Previous, blocking, read_async, restore_async};
use super::{HbaPolicy, compile, compile_pgbouncer};
pub use crate::pg::pgbouncer::{PoolerReload, ReloadError};
use crate::{
    files::FileError,
    pg::cluster::{ClusterError, reload},
    render::{
        RenderError,
        hba::{render_pg_hba, render_pgbouncer_hba},
    },
    settings::Settings,
};

/// The advisory lock key every writer of the access files takes ("pgaashba").
const LOCK_KEY: i64 = 0x7067_6161_7368_6261;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the compiled pg_hba.conf was refused by PostgreSQL (line {line}: {error}); the previous file was restored"
    )]
    Invalid { line: i32, error: String },
    #[error("cannot write the access files; the previous ones are still in force")]
    Write(#[from] FileError),
    #[error("compiling the access rules")]
    Compile(#[from] super::HbaError),
    #[error("rendering the access rules")]
    Render(#[from] RenderError),
    #[error("control database")]
    Db(#[from] sqlx::Error),
    #[error("PostgreSQL did not reload its configuration")]
    Reload(#[source] ClusterError),
    #[error("PgBouncer did not reload its files")]
    PoolerReload(#[source] ReloadError),
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

/// A successful apply, not yet committed.
pub struct Applied {
    pub generation: i64,
    previous: Previous,
    pooler: Option<Arc<dyn PoolerReload>>,
}

impl Applied {
    /// The caller's commit failed: restore the files as they were (best effort; the next apply
    /// or `pgaas render` rewrites them from rows anyway).
    pub async fn undo(self, conn: &mut PgConnection) {
        restore_async(&self.previous).await;
        if let Err(e) = reload(conn).await {
            tracing::error!(error = %crate::error_chain(&e), "reload after restoring hba files failed");
        }
        reload_pooler(&self.pooler).await.ok();
    }
}

/// Serialise with every other writer of the access files, in any process, until `tx` ends.
/// Writers queue behind each other and each takes tens of milliseconds, so the wait may be
/// longer than the session's default `lock_timeout`.
async fn lock(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL lock_timeout = '30s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Tell PgBouncer (if any) to re-read its files, on a blocking thread.
async fn reload_pooler(pooler: &Option<Arc<dyn PoolerReload>>) -> Result<(), ApplyError> {
    match pooler.clone() {
        Some(p) => blocking(move || p.reload())
            .await
            .map_err(ApplyError::PoolerReload),
        None => Ok(()),
    }
}

impl HbaApplier {
    /// The applier for `settings`' files (under `root` when given), with `pg_hba.conf` in the
    /// hba directory of `pg_version`, PgBouncer's files when it is enabled, `pooler` to reload
    /// it, and `file_owner` for the files it writes.
    pub fn new(
        settings: &Settings,
        pg_version: u32,
        root: Option<&Path>,
        pooler: Option<Arc<dyn PoolerReload>>,
        file_owner: Option<(u32, u32)>,
    ) -> HbaApplier {
        let hba_dir = settings.postgres.hba_dir_for(pg_version);
        HbaApplier {
            base: HbaPolicy::base(settings),
            pg_hba_file: crate::files::reroot(&hba_dir.join("pg_hba.conf"), root),
            pgbouncer: settings
                .pgbouncer
                .enabled
                .then(|| PoolerFiles::for_settings(settings, root)),
            pooler,
            file_owner,
            reader: Some(settings.postgres.os_user.clone()),
        }
    }

    /// The applier of a host configured by `settings`. PgBouncer is reloaded with SIGHUP when
    /// this process may signal it (root, or its own user), else through its admin console as
    /// this process's OS user (the installed API, user `pgaas`, listed in `admin_users`). Root
    /// gives the files to the API's user and the server's group (the API rewrites them,
    /// PostgreSQL and PgBouncer read them); an unprivileged API creates them in a setgid
    /// directory the server's group can read.
    pub fn for_host(settings: &Settings, pg_version: u32) -> HbaApplier {
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
        let file_owner = if me.is_root() {
            owner.map(|o| {
                let api = OsUser::lookup(&settings.api.system_user).ok();
                (api.map_or(o.uid, |a| a.uid), o.gid)
            })
        } else {
            None
        };
        HbaApplier::new(settings, pg_version, None, pooler, file_owner)
    }

    fn owner(&self) -> Owner {
        Owner(self.file_owner)
    }

    /// The policy the rows describe, as `conn` sees them.
    pub async fn policy(&self, conn: &mut PgConnection) -> Result<HbaPolicy, sqlx::Error> {
        let mut policy = self.base.clone();
        policy.tenants = load_tenants(conn).await?;
        Ok(policy)
    }

    /// The files the rows as `conn` sees them render to, with `generation` in their header:
    /// `(pg_hba.conf, pgbouncer_hba.conf)`.
    async fn rendered(
        &self,
        conn: &mut PgConnection,
        generation: i64,
    ) -> Result<(String, Option<String>), ApplyError> {
        let policy = self.policy(conn).await?;
        let g = u64::try_from(generation).unwrap_or(0);
        let pg = render_pg_hba(&compile(&policy)?, g)?;
        let bouncer = match &self.pgbouncer {
            Some(_) => Some(render_pgbouncer_hba(&compile_pgbouncer(&policy)?, g)?),
            None => None,
        };
        Ok((pg, bouncer))
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
        lock(tx).await?;
        let generation = if bump {
            rows::next_generation(tx).await?
        } else {
            current_generation(tx).await?
        };
        let (pg_text, bouncer_text) = self.rendered(tx, generation).await?;

        let mut previous = vec![(
            self.pg_hba_file.clone(),
            read_async(&self.pg_hba_file).await?,
        )];
        if let Err(e) = self.owner().write_async(&self.pg_hba_file, pg_text).await {
            restore_async(&previous).await;
            return Err(e.into());
        }
        let errors: Vec<(i32, String)> = match sqlx::query_as(
            "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number",
        )
        .fetch_all(&mut *tx)
        .await
        {
            Ok(errors) => errors,
            Err(e) => {
                restore_async(&previous).await;
                return Err(e.into());
            }
        };
        if let Some((line, error)) = errors.into_iter().next() {
            restore_async(&previous).await;
            return Err(ApplyError::Invalid { line, error });
        }
        if let Err(e) = reload(tx).await {
            restore_async(&previous).await;
            return Err(ApplyError::Reload(e));
        }
        if let (Some(files), Some(text)) = (&self.pgbouncer, bouncer_text) {
            let path = files.hba_file.clone();
            previous.push((path.clone(), read_async(&path).await?));
            let written = self.owner().write_async(&path, text).await;
            let result = match written {
                Ok(_) => reload_pooler(&self.pooler).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                restore_async(&previous).await;
                let _ = reload(tx).await;
                reload_pooler(&self.pooler).await.ok();
                return Err(e);
            }
        }
        Ok(Applied {
            generation,
            previous,
            pooler: self.pooler.clone(),
        })
    }

    /// Bring the files in line with the rows without a change of policy: at start-up, after a
    /// crash, or for `pgaas render`. Rewrites a file only when it differs, with the generation
    /// the control DB records; repairs the owner and mode of files whose text is right.
    pub async fn sync(&self, pool: &PgPool) -> Result<i64, ApplyError> {
        let mut tx = pool.begin().await?;
        lock(&mut tx).await?;
        let generation = current_generation(&mut tx).await?;
        let (pg_text, bouncer_text) = self.rendered(&mut tx, generation).await?;
        let mut in_sync = read_async(&self.pg_hba_file).await? == Some(pg_text);
        if let (Some(files), Some(text)) = (&self.pgbouncer, bouncer_text) {
            in_sync &= read_async(&files.hba_file).await? == Some(text);
        }
        if in_sync {
            // Same text, but a careless tool may have left an owner or a mode behind that locks
            // the readers out; the servers re-read what was repaired.
            let mut paths = vec![self.pg_hba_file.clone()];
            if let Some(files) = &self.pgbouncer {
                paths.extend([files.hba_file.clone(), files.userlist_file.clone()]);
            }
            if self.owner().repair_all(paths).await? {
                reload(&mut tx).await.map_err(ApplyError::Reload)?;
                reload_pooler(&self.pooler).await?;
            }
            tx.commit().await?;
        } else {
            let applied = self.apply_generation(&mut tx, false).await?;
            if let Err(e) = tx.commit().await {
                let mut conn = pool.acquire().await?;
                applied.undo(&mut conn).await;
                return Err(e.into());
            }
        }
        self.refresh_pooler_users(pool).await?;
        Ok(generation)
    }

    /// On a cluster node: keep this node's files in line with the rows it sees. A standby's
    /// rows arrive by replication, never through this node's API, so nothing else would write
    /// its files; the primary's API writes its own on every change, and this finds them in
    /// line. Polls every `interval` (cheap reads that work on a standby): the generation of the
    /// access rules, the node's role, and a digest of what PgBouncer's files are made of (the
    /// tenants' secrets and rows, which change without a new generation: a tenant created or
    /// dropped, a password rotated, a limit changed); syncs when any moved, and every
    /// `full_every` anyway. When the role changes (and when it starts), PgBouncer's pools start
    /// again (`RECONNECT`): each keeps the `in_hot_standby` its first server connection
    /// reported, and libpq's `target_session_attrs=read-write` would go on skipping a promoted
    /// node's pooler, or taking a demoted one's.
    pub async fn follow(
        self,
        pool: PgPool,
        interval: std::time::Duration,
        full_every: std::time::Duration,
    ) {
        let mut seen: Option<(i64, bool, String)> = None;
        let mut last_full = tokio::time::Instant::now();
        let mut failing = false;
        let mut pooled_role: Option<bool> = None;
        let mut reconnect_failing = false;
        loop {
            let now: Result<(i64, bool, String), sqlx::Error> = async {
                let mut conn = pool.acquire().await?;
                let g = current_generation(&mut conn).await?;
                let (standby, digest): (bool, Option<String>) = sqlx::query_as(
                    "SELECT pg_is_in_recovery(),
                            md5((SELECT coalesce(string_agg(rolname || ':' || rolpassword, ',' ORDER BY rolname), '')
                                   FROM pgaas_priv.tenant_secrets())
                                || (SELECT coalesce(string_agg(d::text, ',' ORDER BY d.id), '') FROM databases d))",
                )
                .fetch_one(&mut *conn)
                .await?;
                Ok((g, standby, digest.unwrap_or_default()))
            }
            .await;
            match now {
                Ok(state) if seen.as_ref() != Some(&state) || last_full.elapsed() >= full_every => {
                    match self.sync(&pool).await {
                        Ok(_) => {
                            if seen.as_ref().is_some_and(|(g, _, _)| *g != state.0) {
                                tracing::info!(
                                    generation = state.0,
                                    standby = state.1,
                                    "access rules followed the control DB"
                                );
                            }
                            seen = Some(state);
                            last_full = tokio::time::Instant::now();
                            failing = false;
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %crate::error_chain(&e), "this node's access files could not follow the control DB; retrying");
                        }
                        Err(_) => {}
                    }
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %crate::error_chain(&e), "cannot read the access rules' generation; retrying");
                }
                Err(_) => {}
            }
            if let (Some((_, standby, _)), Some(pooler)) = (&seen, &self.pooler) {
                if pooled_role != Some(*standby) {
                    let pooler = pooler.clone();
                    match tokio::task::spawn_blocking(move || pooler.reconnect()).await {
                        Ok(Ok(())) => {
                            if pooled_role.is_some() {
                                tracing::info!(
                                    standby = *standby,
                                    "the node changed role: PgBouncer's pools start again"
                                );
                            }
                            pooled_role = Some(*standby);
                            reconnect_failing = false;
                        }
                        Ok(Err(e)) if !reconnect_failing => {
                            reconnect_failing = true;
                            tracing::warn!(error = %crate::error_chain(&e), "PgBouncer's pools could not be restarted after a change of role; retrying");
                        }
                        Ok(Err(_)) => {}
                        Err(e) => tracing::warn!(error = %e, "the RECONNECT task failed"),
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}
