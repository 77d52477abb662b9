//! Point-in-time recovery of one tenant.
//!
//! The steps, each recorded in the job's `step` for progress:
//! 1. the window: the instant must lie after the end of a backup that holds the tenant's
//!    database, and not in the future;
//! 2. everything committed until now is archived (a commit is made, the segment switched, and
//!    pg_stat_archiver watched until it has gone), so any past instant has a commit after it
//!    in the archive and recovery stops exactly there;
//! 3. pgBackRest restores that database alone into a scratch cluster, which recovers to the
//!    instant and is promoted; the database is dumped from it and the scratch server stopped;
//! 4. the dump is loaded into a new database owned by the tenant's role, closed to PUBLIC:
//!    `--into` keeps it under its new name (a database of the tenant's, reachable like its own);
//!    in place, the tenant's sessions are ended and, in one transaction with the job and audit
//!    rows and the access files, the old database is renamed to a dated name (kept, reachable
//!    by the tenant, until the operator drops it) and the restored one takes its name;
//! 5. the scratch directory is removed.
//!
//! A failure undoes what the job made (the new database, a closed old one reopened); a crash
//! leaves a `running` job that [`super::jobs::recover_interrupted`] undoes the same way.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Executor, PgConnection};
use uuid::Uuid;

use super::{
    ArchiveError, Engine, Progress, carry,
    info::Info,
    jobs::{self, RestoreJob},
    scratch::{HotStandbyFloor, Scratch, Target},
};
use crate::{
    backup::{BackupFile, Backups, Checksum, RestoreMode, superuser_connect, targets},
    hba::apply::HbaApplier,
    pg::{binaries::PgBinaries, quote::quote_ident},
    settings::{Settings, is_plain_identifier},
    tenant::{AuditContext, audit},
};

/// Everything a restore, a drill or a backup needs on this host.
#[derive(Clone)]
pub struct ArchiveHost {
    pub settings: Arc<Settings>,
    pub engine: Engine,
    pub bin: PgBinaries,
    pub backups: Backups,
    /// Writes the access files when a restore adds a database of a tenant's (absent: the job
    /// fails before changing anything that would need them).
    pub hba: Option<Arc<HbaApplier>>,
    /// The longest one restore job may run (`archive.restore_job_timeout_secs`).
    pub job_timeout: Duration,
}

impl ArchiveHost {
    pub fn new(
        settings: Arc<Settings>,
        hba: Option<Arc<HbaApplier>>,
    ) -> Result<Self, ArchiveError> {
        let engine = Engine::new(&settings)?;
        let bin = PgBinaries::find(settings.postgres.version)
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        let backups = Backups::new(&settings)?;
        Ok(Self {
            job_timeout: Duration::from_secs(settings.archive.restore_job_timeout_secs),
            settings,
            engine,
            bin,
            backups,
            hba,
        })
    }

    /// A superuser session on `database` over the local socket.
    pub async fn superuser(&self, database: &str) -> Result<PgConnection, ArchiveError> {
        Ok(superuser_connect(&self.settings, database).await?)
    }

    /// Whether this host is a cluster's standby, which leaves archiving, backups, drills and
    /// restores to the primary (a single host never is).
    pub async fn is_standby(&self) -> Result<bool, ArchiveError> {
        if !self.settings.cluster.enabled() {
            return Ok(false);
        }
        let mut conn = self.superuser("postgres").await?;
        Ok(sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?)
    }

    /// What a standby says instead of running `what`.
    pub fn standby_note(&self, what: &str) -> String {
        let c = &self.settings.cluster;
        format!(
            "this node ({}) is a standby of cluster {}: {what} run on the primary (`pgaas status` names it); nothing to do here",
            c.node.as_deref().unwrap_or("?"),
            c.name.as_deref().unwrap_or("?")
        )
    }

    pub async fn control(&self) -> Result<PgConnection, ArchiveError> {
        let name = self.settings.control_db.name.clone();
        self.superuser(&name).await
    }
}

/// The longest a scratch cluster may take to recover.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The name a restore `--into` creates: `<database>_<suffix>`, or the full name when it already
/// starts with the tenant's database name and `_`.
pub fn into_name(database: &str, into: &str) -> Result<String, ArchiveError> {
    if into == database {
        return Err(ArchiveError::Invalid(format!(
            "\"into\" names {database} itself; leave it out to restore {database} in place"
        )));
    }
    let full = if into.starts_with(&format!("{database}_")) {
        into.to_string()
    } else {
        format!("{database}_{into}")
    };
    let suffix = &full[database.len() + 1..];
    let suffix_ok = !suffix.is_empty()
        && suffix.len() <= 24
        && suffix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !suffix_ok || !is_plain_identifier(&full) {
        return Err(ArchiveError::Invalid(format!(
            "\"into\" must be a suffix of 1-24 characters from a-z, 0-9 and _ (such as before_drop, giving {database}_before_drop), or such a full name; at most 63 characters in all"
        )));
    }
    if let Some(why) = crate::model::reserved_companion(&full) {
        return Err(ArchiveError::Invalid(format!(
            "\"into\" would make {full}, which is {why}; choose another name"
        )));
    }
    Ok(full)
}

/// How the window reads in an error message.
pub fn describe_window(earliest: Option<DateTime<Utc>>, latest: DateTime<Utc>) -> String {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S+00").to_string();
    match earliest {
        Some(e) => format!("from {} to {}", fmt(e), fmt(latest)),
        None => "empty: no backup holds this database yet (take one with `pgaas backup base --type full`)".into(),
    }
}

/// The repository to restore from: the first healthy one whose window holds `time`, or why
/// none does.
pub fn choose_repo(
    info: &Info,
    repos: &[u32],
    database: &str,
    created: DateTime<Utc>,
    time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u32, ArchiveError> {
    if time > now {
        return Err(ArchiveError::OutsideWindow(format!(
            "{} is in the future; the recoverable window of {database} is {}",
            time.format("%Y-%m-%d %H:%M:%S+00"),
            describe_window(
                repos
                    .iter()
                    .filter_map(|r| info.earliest_for(*r, created))
                    .min(),
                now
            )
        )));
    }
    let windows = info.windows(repos);
    for w in &windows {
        if !w.ok {
            continue;
        }
        if info
            .earliest_for(w.repo, created)
            .is_some_and(|e| e <= time)
        {
            return Ok(w.repo);
        }
    }
    let earliest = windows
        .iter()
        .filter(|w| w.ok)
        .filter_map(|w| info.earliest_for(w.repo, created))
        .min();
    Err(ArchiveError::OutsideWindow(format!(
        "{} is outside the recoverable window of {database}, which is {}",
        time.format("%Y-%m-%d %H:%M:%S+00"),
        describe_window(earliest, now)
    )))
}

/// Make a commit now, switch to a new WAL segment and wait until the archiver has it: then
/// every instant before now has a commit after it in the archive.
pub async fn archive_now(conn: &mut PgConnection, timeout: Duration) -> Result<(), ArchiveError> {
    sqlx::query("SELECT txid_current()")
        .execute(&mut *conn)
        .await?;
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut *conn)
        .await?;
    let deadline = std::time::Instant::now() + timeout;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let (archived, failed, failed_at): (Option<String>, Option<String>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver",
            )
            .fetch_one(&mut *conn)
            .await?;
        // Same timeline, so names order like positions; a .history or .partial name is longer.
        if archived
            .as_deref()
            .is_some_and(|a| a.len() == 24 && a >= segment.as_str())
        {
            return Ok(());
        }
        // The archiver says it failed on this very segment: a repository is down. Some moments
        // for a retry, then the caller decides (the other repositories may have it).
        let failing_here =
            failed.as_deref().is_some_and(|f| f >= segment.as_str()) && failed_at.is_some();
        if failing_here && failing_since.is_none() {
            failing_since = Some(std::time::Instant::now());
        }
        let gave_up = failing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(15));
        if gave_up || std::time::Instant::now() > deadline {
            return Err(ArchiveError::Archiving(format!(
                "segment {segment} was not archived within {}s (last archived: {}, last failure: {} at {}); see the PostgreSQL log and `pgaas backup status`",
                timeout.as_secs(),
                archived.unwrap_or_else(|| "none".into()),
                failed.unwrap_or_else(|| "none".into()),
                failed_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into()),
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    database_name: String,
    username: String,
    status: String,
    created_at: DateTime<Utc>,
}

async fn tenant_row(conn: &mut PgConnection, id: Uuid) -> Result<TenantRow, ArchiveError> {
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT id, database_name, username, status::text AS status, created_at FROM databases WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or_else(|| ArchiveError::NotFound(format!("database {id} not found")))?;
    if !matches!(row.status.as_str(), "active" | "suspended") {
        return Err(ArchiveError::Busy(format!(
            "{} is {}; restore it once that has finished",
            row.database_name, row.status
        )));
    }
    Ok(row)
}

async fn db_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

fn ident(name: &str) -> Result<String, ArchiveError> {
    quote_ident(name).map_err(|e| ArchiveError::Invalid(e.to_string()))
}

/// Check a request before it is queued: the tenant, the instant (against the window the
/// repositories last reported, when known), the name `--into` makes. The job checks again.
pub async fn check_request(
    conn: &mut PgConnection,
    tenant: Uuid,
    time: DateTime<Utc>,
    into: Option<&str>,
    repos: &[u32],
) -> Result<Option<String>, ArchiveError> {
    let row = tenant_row(conn, tenant).await?;
    // The name first: a malformed request is refused before the window is looked at.
    let name = into.map(|i| into_name(&row.database_name, i)).transpose()?;
    if let Some(info) = super::status::cached_info(conn).await? {
        choose_repo(
            &info,
            repos,
            &row.database_name,
            row.created_at,
            time,
            Utc::now(),
        )?;
    } else if time > Utc::now() {
        return Err(ArchiveError::OutsideWindow(format!(
            "{} is in the future",
            time.format("%Y-%m-%d %H:%M:%S+00")
        )));
    }
    let Some(name) = name else {
        return Ok(None);
    };
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)
             OR EXISTS (SELECT 1 FROM tenant_databases WHERE name = $1)
             OR EXISTS (SELECT 1 FROM restore_jobs WHERE into_name = $1 AND status IN ('queued', 'running'))",
    )
    .bind(&name)
    .fetch_one(&mut *conn)
    .await?;
    if taken {
        return Err(ArchiveError::Invalid(format!(
            "database {name} already exists; choose another name for \"into\""
        )));
    }
    Ok(Some(name))
}

/// Run a claimed job to its end; the job row says how it ended either way.
pub async fn run(
    host: &ArchiveHost,
    conn: &mut PgConnection,
    job: &RestoreJob,
    progress: &Progress,
) -> Result<RestoreJob, ArchiveError> {
    let mut made = Made::default();
    // A wall-clock limit on the whole job: a step that hangs (a repository that stops
    // answering, a replay that never ends) fails this job, undone as any failure is, and frees
    // the worker for the other tenants' restores.
    let result = match tokio::time::timeout(
        host.job_timeout,
        steps(host, conn, job, progress, &mut made),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ArchiveError::JobTimedOut {
            secs: host.job_timeout.as_secs(),
        }),
    };
    match result {
        Ok(()) => Ok(jobs::get(conn, job.id).await?),
        Err(e) => {
            undo(host, conn, job, &made).await;
            let message = e.to_string();
            // The summary for API clients first, the operator's detail (which may quote
            // pg_restore, pgBackRest or a tenant's own RAISE text) after it.
            jobs::fail(conn, job.id, &format!("{}\n{message}", jobs::summary(&e))).await?;
            let mut details = json!({
                "database_name": job.database_name,
                "target_time": job.target_time,
                "job": job.id,
                "error": message,
            });
            if let Some(n) = &job.into_name {
                details["into"] = json!(n);
            }
            audit::record_failure(
                conn,
                &AuditContext::cli(),
                "database.restore",
                "database",
                job.database_id.map(|d| d.to_string()).as_deref(),
                details,
            )
            .await;
            Err(e)
        }
    }
}

/// What a job made, for undoing it.
#[derive(Default)]
struct Made {
    scratch: Option<PathBuf>,
    /// A database created for the restored data, not yet handed to the tenant.
    new_db: Option<String>,
    /// The tenant's own database, closed for the swap.
    closed: Option<String>,
}

async fn steps(
    host: &ArchiveHost,
    conn: &mut PgConnection,
    job: &RestoreJob,
    progress: &Progress,
    made: &mut Made,
) -> Result<(), ArchiveError> {
    async fn step(
        conn: &mut PgConnection,
        id: Uuid,
        progress: &Progress,
        text: String,
    ) -> Result<(), ArchiveError> {
        progress(&text);
        jobs::set_step(conn, id, &text).await
    }
    let (id, p) = (job.id, progress);
    let tenant_id = job.database_id.ok_or_else(|| {
        ArchiveError::NotFound(format!("database {} was deleted", job.database_name))
    })?;
    let tenant = tenant_row(conn, tenant_id).await?;
    let db = tenant.database_name.clone();
    let time = job.target_time;
    if host.hba.is_none() {
        return Err(ArchiveError::Invalid(
            "this process cannot write the access files; run the restore on the database host (`pgaas restore` as root, or the pgaas worker)".into(),
        ));
    }

    step(
        conn,
        id,
        p,
        format!("{db}: checking the recoverable window"),
    )
    .await?;
    let info = host.engine.info().await?;
    let repo = choose_repo(
        &info,
        &host.engine.repos,
        &db,
        tenant.created_at,
        time,
        Utc::now(),
    )?;

    step(conn, id, p, "archiving the WAL written until now".into()).await?;
    let timeout = Duration::from_secs(u64::from(host.settings.archive.archive_timeout_secs) + 120);
    if let Err(e) = archive_now(conn, timeout).await {
        // A repository that refuses WAL does not stop a restore from the others: recovery
        // replays what reached them, and says so if the instant is beyond it.
        p(&format!(
            "WARNING: {e}; restoring from what the repositories hold"
        ));
        tracing::warn!(job = %id, error = %e, "restoring while archiving fails");
    }

    step(
        conn,
        id,
        p,
        format!(
            "{db}: restoring from repository {repo} into a scratch cluster, to {}",
            time.format("%Y-%m-%d %H:%M:%S%.6f+00")
        ),
    )
    .await?;
    let short = &job.id.simple().to_string()[..12];
    let scratch = Scratch::create(
        &host.settings.archive.scratch_dir,
        &format!("restore-{short}"),
        &host.engine.owner,
        &host.bin,
        &host.settings.postgres.superuser,
    )?;
    made.scratch = Some(scratch.dir.clone());
    let floor = HotStandbyFloor::read(conn).await?;
    let scratch = {
        let (engine, db2) = (host.engine.clone(), db.clone());
        tokio::task::spawn_blocking(move || {
            scratch
                .restore(&engine, &[&db2], &Target::Time(time), Some(repo))
                .map(|_| scratch)
        })
        .await
        .map_err(|e| ArchiveError::Invalid(format!("the restore task failed: {e}")))??
    };
    let mut scratch = scratch;
    step(conn, id, p, format!("{db}: replaying WAL up to the target")).await?;
    scratch.start_and_recover(&floor, RECOVERY_TIMEOUT).await?;

    step(conn, id, p, format!("{db}: dumping the recovered database")).await?;
    let dump = scratch.dir.join(format!("{db}.dump"));
    let scratch = {
        let (db2, dump2) = (db.clone(), dump.clone());
        tokio::task::spawn_blocking(move || scratch.dump(&db2, &dump2).map(|_| scratch))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("the dump task failed: {e}")))??
    };
    let size = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
    let file = BackupFile {
        database: db.clone(),
        file_name: format!("{db}.dump"),
        path: dump.clone(),
        created_at: Utc::now(),
        size_bytes: size,
        sha256: None,
        checksum: Checksum::Verified,
    };
    let target = targets::Target {
        database: db.clone(),
        tenant: Some(crate::model::TenantId::from_uuid(tenant.id)),
        owner: tenant.username.clone(),
    };

    let new_name = match &job.into_name {
        Some(n) => n.clone(),
        None => format!("{db}_r{}", &short[..8]),
    };
    if db_exists(conn, &new_name).await? {
        return Err(ArchiveError::Invalid(format!(
            "database {new_name} already exists; choose another name"
        )));
    }
    step(
        conn,
        id,
        p,
        format!("{db}: loading the recovered data into {new_name}"),
    )
    .await?;
    made.new_db = Some(new_name.clone());
    host.backups
        .restore(conn, &target, &file, &RestoreMode::Into(new_name.clone()))
        .await?;

    match &job.into_name {
        Some(_) => {
            step(
                conn,
                id,
                p,
                format!("{db}: opening {new_name} to its owner"),
            )
            .await?;
            hand_over(host, conn, job, &tenant, &new_name).await?;
        }
        None => {
            step(
                conn,
                id,
                p,
                format!("{db}: swapping the restored database in"),
            )
            .await?;
            swap(host, conn, job, &tenant, &new_name, made).await?;
        }
    }
    made.new_db = None;
    made.closed = None;
    progress(&format!("{db}: removing the scratch cluster"));
    scratch.discard()?;
    made.scratch = None;
    Ok(())
}

/// `--into`: the new database becomes the tenant's, with its access lines, in one transaction
/// with the job's end and the audit row.
async fn hand_over(
    host: &ArchiveHost,
    conn: &mut PgConnection,
    job: &RestoreJob,
    tenant: &TenantRow,
    name: &str,
) -> Result<(), ArchiveError> {
    let applier = host.hba.as_ref().expect("checked at the start");
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO tenant_databases (name, database_id, purpose) VALUES ($1, $2, 'restore')",
    )
    .bind(name)
    .bind(tenant.id)
    .execute(&mut *tx)
    .await?;
    jobs::succeed(&mut tx, job.id, None).await?;
    audit::record(
        &mut tx,
        &AuditContext::cli(),
        "database.restore",
        "database",
        Some(&tenant.id.to_string()),
        true,
        json!({
            "database_name": tenant.database_name,
            "target_time": job.target_time,
            "into": name,
            "job": job.id,
        }),
    )
    .await?;
    let applied = applier
        .apply(&mut tx)
        .await
        .map_err(crate::tenant::TenantError::from)?;
    let pooled = applier
        .apply_pooler(&mut tx)
        .await
        .map_err(crate::tenant::TenantError::from)?;
    if let Err(e) = tx.commit().await {
        applied.undo(conn).await;
        pooled.undo().await;
        return Err(e.into());
    }
    Ok(())
}

/// In place: the tenant's sessions end, and the restored database takes its name.
async fn swap(
    host: &ArchiveHost,
    conn: &mut PgConnection,
    job: &RestoreJob,
    tenant: &TenantRow,
    restored: &str,
    made: &mut Made,
) -> Result<(), ArchiveError> {
    let applier = host.hba.as_ref().expect("checked at the start");
    let db = &tenant.database_name;
    let kept = format!("{db}_{}", Utc::now().format("%Y%m%d%H%M%S"));
    let (db_q, kept_q, restored_q) = (ident(db)?, ident(&kept)?, ident(restored)?);
    let props = carry::read(conn, db).await?;
    conn.execute(format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS false").as_str())
        .await?;
    if props.allow_connections {
        // A database its quota blocked stays closed when a failed restore is undone.
        made.closed = Some(db.clone());
    }
    for attempt in 1.. {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .execute(&mut *conn)
        .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let renamed = async {
            tx.execute(format!("ALTER DATABASE {db_q} RENAME TO {kept_q}").as_str())
                .await?;
            tx.execute(format!("ALTER DATABASE {restored_q} RENAME TO {db_q}").as_str())
                .await?;
            carry::carry(&mut tx, &kept, db, &props).await?;
            Ok::<_, ArchiveError>(())
        }
        .await;
        match renamed {
            Ok(()) => {}
            Err(ArchiveError::Sql(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("55006") && attempt < 20 =>
            {
                // A session got in between the terminate and the rename; end it again.
                drop(tx);
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        sqlx::query(
            "INSERT INTO tenant_databases (name, database_id, purpose) VALUES ($1, $2, 'replaced')",
        )
        .bind(&kept)
        .bind(tenant.id)
        .execute(&mut *tx)
        .await?;
        jobs::succeed(&mut tx, job.id, Some(&kept)).await?;
        audit::record(
            &mut tx,
            &AuditContext::cli(),
            "database.restore",
            "database",
            Some(&tenant.id.to_string()),
            true,
            json!({
                "database_name": db,
                "target_time": job.target_time,
                "kept_as": kept,
                "job": job.id,
            }),
        )
        .await?;
        let applied = applier
            .apply(&mut tx)
            .await
            .map_err(crate::tenant::TenantError::from)?;
        let pooled = applier
            .apply_pooler(&mut tx)
            .await
            .map_err(crate::tenant::TenantError::from)?;
        if let Err(e) = tx.commit().await {
            applied.undo(conn).await;
            pooled.undo().await;
            return Err(e.into());
        }
        break;
    }
    // The kept database is the tenant's to read (and the operator's to drop); one its quota
    // blocked stays closed, as it was.
    if props.allow_connections {
        conn.execute(format!("ALTER DATABASE {kept_q} ALLOW_CONNECTIONS true").as_str())
            .await?;
    }
    Ok(())
}

/// Undo what a failed job made: the database it created, the tenant's database it closed, its
/// scratch cluster. Best effort, logged; `recover_interrupted` repeats it after a crash.
async fn undo(host: &ArchiveHost, conn: &mut PgConnection, job: &RestoreJob, made: &Made) {
    if let Some(name) = &made.new_db {
        if let Err(e) = drop_unowned(conn, name).await {
            tracing::error!(job = %job.id, database = %name, error = %e, "could not drop the database of a failed restore; drop it by hand");
        }
    }
    if let Some(db) = &made.closed {
        if let Ok(q) = ident(db) {
            if let Err(e) = conn
                .execute(format!("ALTER DATABASE {q} ALLOW_CONNECTIONS true").as_str())
                .await
            {
                tracing::error!(job = %job.id, database = %db, error = %e, "could not reopen the database after a failed restore; run `pgaas doctor`");
            }
        }
    }
    if let Some(dir) = &made.scratch {
        super::scratch::clean_leftovers_at(dir, &host.bin, &host.engine.owner);
    }
}

/// Drop a database a restore made, unless a tenant row has taken it since.
pub(super) async fn drop_unowned(conn: &mut PgConnection, name: &str) -> Result<(), ArchiveError> {
    let owned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenant_databases WHERE name = $1)
             OR EXISTS (SELECT 1 FROM databases WHERE database_name = $1)",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    if owned || !db_exists(conn, name).await? {
        return Ok(());
    }
    let q = ident(name)?;
    conn.execute(format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
