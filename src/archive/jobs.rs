//! Restore jobs: rows in `restore_jobs`, queued by the API (or the CLI), run by the worker (or
//! the CLI itself). A runner holds a session advisory lock on its job for as long as it runs,
//! so a `running` job whose lock is free was interrupted; [`recover_interrupted`] undoes it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, postgres::PgListener};
use uuid::Uuid;

use super::{ArchiveError, Progress, restore::ArchiveHost};

/// The channel the API notifies when it queues a job.
pub const CHANNEL: &str = "pgaas_restore_jobs";
/// First key of the per-job advisory locks.
pub(super) const LOCK_CLASS: i32 = 0x7067_6172; // "pgar"

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RestoreJob {
    pub id: Uuid,
    /// The tenant; null once it is deleted.
    pub database_id: Option<Uuid>,
    pub database_name: String,
    pub target_time: DateTime<Utc>,
    /// The new database restored into; null when restored in place.
    pub into_name: Option<String>,
    /// queued, running, succeeded or failed.
    pub status: String,
    /// What it is doing, or did last.
    pub step: Option<String>,
    pub error: Option<String>,
    /// In place: the name the replaced data is kept under.
    pub kept_as: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT id, database_id, database_name, target_time, into_name, status, step, error, kept_as, created_at, finished_at FROM restore_jobs";

/// Queue a restore (already checked with `restore::check_request`) and wake the worker. A
/// tenant has at most one queued or running restore (a unique index says so).
pub async fn enqueue(
    conn: &mut PgConnection,
    tenant: Uuid,
    time: DateTime<Utc>,
    into: Option<&str>,
) -> Result<RestoreJob, ArchiveError> {
    let job: Result<RestoreJob, sqlx::Error> = sqlx::query_as(
        "WITH t AS (SELECT id, database_name FROM databases WHERE id = $1)
         INSERT INTO restore_jobs (database_id, database_name, target_time, into_name)
         SELECT id, database_name, $2, $3 FROM t
         RETURNING id, database_id, database_name, target_time, into_name, status, step, error, kept_as, created_at, finished_at",
    )
    .bind(tenant)
    .bind(time)
    .bind(into)
    .fetch_one(&mut *conn)
    .await;
    let job = match job {
        Ok(j) => j,
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("restore_jobs_one_at_a_time") => {
            return Err(ArchiveError::Busy(
                "a restore of this database is already queued or running; wait for it to finish (GET its job)".into(),
            ));
        }
        Err(sqlx::Error::RowNotFound) => {
            return Err(ArchiveError::NotFound(format!(
                "database {tenant} not found"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(job.id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(job)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<RestoreJob, ArchiveError> {
    sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ArchiveError::NotFound(format!("restore job {id} not found")))
}

/// A tenant's restore jobs, newest first.
pub async fn list(conn: &mut PgConnection, tenant: Uuid) -> Result<Vec<RestoreJob>, ArchiveError> {
    Ok(sqlx::query_as(&format!(
        "{SELECT} WHERE database_id = $1 ORDER BY created_at DESC LIMIT 50"
    ))
    .bind(tenant)
    .fetch_all(conn)
    .await?)
}

pub(super) async fn set_step(
    conn: &mut PgConnection,
    id: Uuid,
    step: &str,
) -> Result<(), ArchiveError> {
    sqlx::query("UPDATE restore_jobs SET step = $2 WHERE id = $1")
        .bind(id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn succeed(
    conn: &mut PgConnection,
    id: Uuid,
    kept_as: Option<&str>,
) -> Result<(), ArchiveError> {
    sqlx::query(
        "UPDATE restore_jobs SET status = 'succeeded', step = 'done', kept_as = $2, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(kept_as)
    .execute(conn)
    .await?;
    Ok(())
}

/// The API's account of a failed job: a fixed sentence per kind of failure, never the text of
/// pg_restore, pgBackRest or the tenant's own functions (paths, RAISE messages), which stays in
/// the job row, the audit row, the log and the CLI's output for the operator.
pub fn summary(e: &ArchiveError) -> &'static str {
    match e {
        ArchiveError::OutsideWindow(_) => SUMMARIES[0],
        ArchiveError::JobTimedOut { .. } => SUMMARIES[1],
        ArchiveError::Backup(_) => SUMMARIES[2],
        ArchiveError::Recovery(_) => SUMMARIES[3],
        ArchiveError::Archiving(_) => SUMMARIES[4],
        ArchiveError::NotFound(_) => SUMMARIES[5],
        ArchiveError::Busy(_) => SUMMARIES[6],
        ArchiveError::Invalid(_) => SUMMARIES[7],
        _ => SUMMARIES[8],
    }
}

const SUMMARIES: [&str; 10] = [
    "the instant is outside the recoverable window",
    "the job ran past its time limit; nothing was changed",
    "the load of the recovered data failed; nothing was changed",
    "the recovery of the backup to the instant failed; nothing was changed",
    "WAL archiving is not keeping up; nothing was changed",
    "the database no longer exists",
    "the database is busy with another operation; ask again later",
    "the restore cannot be carried out as asked (the new database's name is taken, or this host cannot run restores); nothing was changed",
    "the restore failed on the host; nothing was changed",
    INTERRUPTED,
];

const INTERRUPTED: &str = "interrupted: the process running it stopped; what it had made was removed and the database was not changed. Ask again";

/// What an API client is told of a job's stored error: its summary line when it has one, a
/// generic sentence otherwise (rows written before summaries were stored).
pub fn public_error(stored: &str) -> String {
    let first = stored.lines().next().unwrap_or_default();
    if SUMMARIES.contains(&first) {
        first.to_string()
    } else {
        "the restore failed on the host; the operator has the details".to_string()
    }
}

pub(super) async fn fail(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
) -> Result<(), ArchiveError> {
    sqlx::query(
        "UPDATE restore_jobs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1 AND status <> 'succeeded'",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Take a queued job: its advisory lock on `conn`, then the row to `running`. `None` when
/// another runner has it or it is no longer queued.
pub async fn claim(conn: &mut PgConnection, id: Uuid) -> Result<Option<RestoreJob>, ArchiveError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let job: Option<RestoreJob> = sqlx::query_as(
        "UPDATE restore_jobs SET status = 'running', step = 'starting' WHERE id = $1 AND status = 'queued'
         RETURNING id, database_id, database_name, target_time, into_name, status, step, error, kept_as, created_at, finished_at",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if job.is_none() {
        release(conn, id).await;
    }
    Ok(job)
}

async fn release(conn: &mut PgConnection, id: Uuid) {
    let _ = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(id.to_string())
        .execute(conn)
        .await;
}

/// Run one claimed job to its end, then let go of its lock.
pub async fn run_claimed(
    host: &ArchiveHost,
    conn: &mut PgConnection,
    job: &RestoreJob,
    progress: &Progress,
) -> Result<RestoreJob, ArchiveError> {
    let result = super::restore::run(host, conn, job, progress).await;
    release(conn, job.id).await;
    result
}

/// Undo the jobs whose runner died: a database a restore made but never handed over is
/// dropped, a tenant database closed for a swap is reopened, scratch clusters are stopped and
/// removed, and the job fails saying so. Also reopens databases a swap renamed but a crash left
/// closed, and removes every scratch cluster no live runner owns (`leftovers`). Returns the
/// jobs undone.
pub async fn recover_interrupted(host: &ArchiveHost) -> Result<Vec<Uuid>, ArchiveError> {
    let mut conn = host.control().await?;
    let running: Vec<RestoreJob> = sqlx::query_as(&format!(
        "{SELECT} WHERE status = 'running' ORDER BY created_at"
    ))
    .fetch_all(&mut conn)
    .await?;
    let mut undone = Vec::new();
    for job in running {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(job.id.to_string())
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            continue; // still running somewhere
        }
        let short = &job.id.simple().to_string()[..12];
        let made = match &job.into_name {
            Some(n) => n.clone(),
            None => format!("{}_r{}", job.database_name, &short[..8]),
        };
        super::restore::drop_unowned(&mut conn, &made).await?;
        let dir = host
            .settings
            .archive
            .scratch_dir
            .join(format!("restore-{short}"));
        super::scratch::clean_leftovers_at(&dir, &host.bin, &host.engine.owner);
        fail(&mut conn, job.id, INTERRUPTED).await?;
        release(&mut conn, job.id).await;
        tracing::warn!(job = %job.id, database = %job.database_name, "undid an interrupted restore");
        undone.push(job.id);
    }
    reopen_closed(&mut conn).await?;
    drop(conn);
    // A job killed after it succeeded (or a drill killed anywhere) left its scratch cluster.
    super::leftovers::sweep(host).await?;
    Ok(undone)
}

/// Tenant databases left closed (a swap interrupted before or after its rename) when no restore
/// of theirs runs.
async fn reopen_closed(conn: &mut PgConnection) -> Result<(), ArchiveError> {
    let closed: Vec<String> = sqlx::query_scalar(
        "SELECT p.datname::text FROM pg_database p
         WHERE NOT p.datallowconn
           AND (EXISTS (SELECT 1 FROM databases d WHERE d.database_name = p.datname AND d.status IN ('active', 'suspended')
                        AND NOT EXISTS (SELECT 1 FROM restore_jobs j WHERE j.database_id = d.id AND j.status IN ('queued', 'running')))
                OR EXISTS (SELECT 1 FROM tenant_databases x JOIN databases d ON d.id = x.database_id
                           WHERE x.name = p.datname AND d.status IN ('active', 'suspended')))",
    )
    .fetch_all(&mut *conn)
    .await?;
    for name in closed {
        let q = crate::pg::quote::quote_ident(&name)
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        sqlx::query(&format!("ALTER DATABASE {q} ALLOW_CONNECTIONS true"))
            .execute(&mut *conn)
            .await?;
        tracing::warn!(database = %name, "reopened a database an interrupted restore left closed");
    }
    Ok(())
}

/// The worker: run queued jobs as they come (woken by the API's notification, when a job ends,
/// and every `poll` anyway), up to `archive.restore_concurrency` at once, refresh the cached repository status every minute, until dropped. On a
/// cluster's node it works only while the node is primary: a standby's control DB is
/// read-only and its PostgreSQL archives nothing, so it waits there, and starts (undoing what
/// the old primary's worker left half-done) when Patroni promotes it. A promotion also starts
/// an incremental backup at once: a segment the old primary finished but never pushed (its
/// repository unreachable as it died) is a gap no WAL replay crosses, and the next timer
/// backup may be a day away.
pub async fn work(host: ArchiveHost, poll: Duration) -> Result<(), ArchiveError> {
    if !host.settings.cluster.enabled() {
        return work_as_primary(&host, poll).await;
    }
    loop {
        if wait_until_primary(&host, poll).await {
            tokio::spawn(backup_after_promotion(host.clone()));
        }
        match work_as_primary(&host, poll).await {
            Ok(()) => tracing::info!("this node is now a standby: the worker waits"),
            // A failover under way: the connections end, the node may come back either way.
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "the worker lost its primary; waiting");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// An incremental backup into each repository, right after this node was promoted. A
/// promoted server writes its new timeline into pg_control only at the checkpoint that ends
/// recovery, which PostgreSQL makes in the background, and pgBackRest refuses a backup until
/// then: a checkpoint is asked for first, and a failed attempt is tried again.
async fn backup_after_promotion(host: ArchiveHost) {
    const ATTEMPTS: u32 = 3;
    for &repo in &host.engine.repos {
        tracing::info!(
            repository = repo,
            "this node was promoted: an incremental backup starts"
        );
        for attempt in 1..=ATTEMPTS {
            let result = async {
                let mut conn = host.superuser("postgres").await?;
                sqlx::query("CHECKPOINT").execute(&mut conn).await?;
                drop(conn);
                host.engine.backup(super::BackupKind::Incr, repo).await
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::info!(
                        repository = repo,
                        "incremental backup after the promotion taken"
                    );
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::info!(repository = repo, error = %crate::error_chain(&e), "the backup after the promotion will be tried again");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Err(e) => tracing::warn!(repository = repo, error = %crate::error_chain(&e),
                    "the backup after the promotion failed; the timers take the next one (or run `pgaas backup base --type incr`)"),
            }
        }
    }
    if let Err(e) = super::status::refresh_cache(&host).await {
        tracing::warn!(error = %crate::error_chain(&e), "refreshing the backup status failed");
    }
}

/// Until this cluster node's PostgreSQL answers as primary; whether it was a standby first
/// (a promotion).
async fn wait_until_primary(host: &ArchiveHost, poll: Duration) -> bool {
    let mut said = None;
    let mut was_standby = false;
    loop {
        let now = match host.is_standby().await {
            Ok(false) => {
                tracing::info!(
                    "this node is primary: the worker runs restore jobs and checks the repositories"
                );
                return was_standby;
            }
            Ok(true) => {
                was_standby = true;
                "this node is a standby: restore jobs and repository checks wait until it is primary".to_string()
            }
            Err(e) => format!(
                "PostgreSQL does not answer ({}); waiting",
                crate::error_chain(&e)
            ),
        };
        if said.as_ref() != Some(&now) {
            tracing::info!("{now}");
            said = Some(now);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The worker's loop on a primary (or a single host); `Ok` when a cluster's node has become a
/// standby.
async fn work_as_primary(host: &ArchiveHost, poll: Duration) -> Result<(), ArchiveError> {
    let host = host.clone();
    if let Err(e) = recover_interrupted(&host).await {
        tracing::error!(error = %crate::error_chain(&e), "recovering interrupted restores failed");
    }
    let opts =
        crate::backup::targets::superuser_options(&host.settings, &host.settings.control_db.name);
    let mut listener = PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(opts)).await?;
    listener.listen(CHANNEL).await?;
    let progress = super::log_progress();
    let mut last_status: Option<std::time::Instant> = None;
    let clustered = host.settings.cluster.enabled();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        host.settings.archive.restore_concurrency.max(1) as usize,
    ));
    let finished = std::sync::Arc::new(tokio::sync::Notify::new());
    loop {
        if clustered && host.is_standby().await? {
            return Ok(());
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            if let Err(e) = super::status::refresh_cache(&host).await {
                tracing::warn!(error = %crate::error_chain(&e), "refreshing the backup status failed");
            }
            last_status = Some(std::time::Instant::now());
        }
        let mut conn = host.control().await?;
        let queued: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM restore_jobs WHERE status = 'queued' ORDER BY created_at",
        )
        .fetch_all(&mut conn)
        .await?;
        drop(conn);
        for id in queued {
            // Each job on a connection of its own, which holds its lock; a tenant has at most
            // one queued or running job (a unique index), so no two run for one tenant.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let mut conn = host.control().await?;
            let Some(job) = claim(&mut conn, id).await? else {
                continue;
            };
            let (host, progress, finished) = (host.clone(), progress.clone(), finished.clone());
            tokio::spawn(async move {
                tracing::info!(job = %job.id, database = %job.database_name, "restore started");
                match run_claimed(&host, &mut conn, &job, &progress).await {
                    Ok(_) => tracing::info!(job = %job.id, "restore succeeded"),
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %crate::error_chain(&e), "restore failed")
                    }
                }
                drop(permit);
                finished.notify_one();
            });
        }
        tokio::select! {
            _ = tokio::time::timeout(poll, listener.recv()) => {}
            _ = finished.notified() => {}
        }
    }
}
