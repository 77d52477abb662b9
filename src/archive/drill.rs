//! Restore drills: a backup nobody has restored is a hope. Weekly (and on demand), every
//! repository is verified, the newest backup is restored into a scratch cluster and recovered
//! to consistency, every database in it must open, and `pg_amcheck` (where installed) checks its
//! tables and indexes. The result is a `backup_drills` row that status, `/metrics` and the exit
//! code report; a failure is loud.

use std::time::Instant;

use serde::Serialize;

use super::{
    ArchiveError, Progress,
    restore::ArchiveHost,
    scratch::{HotStandbyFloor, Scratch, Target},
};

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub id: i64,
    pub succeeded: bool,
    pub backup_label: Option<String>,
    pub duration_ms: i64,
    pub databases_checked: usize,
    pub detail: String,
}

/// Run one drill and record it, whatever happens; `Err` only when it could not be recorded.
pub async fn run(host: &ArchiveHost, progress: &Progress) -> Result<DrillReport, ArchiveError> {
    let mut conn = host.control().await?;
    let id: i64 = sqlx::query_scalar("INSERT INTO backup_drills DEFAULT VALUES RETURNING id")
        .fetch_one(&mut conn)
        .await?;
    // Held while it runs: a scratch directory `drill-<id>` whose lock is free is left over.
    sqlx::query("SELECT pg_advisory_lock($1, $2::int4)")
        .bind(super::leftovers::DRILL_LOCK_CLASS)
        .bind(i32::try_from(id).unwrap_or(i32::MAX))
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut label = None;
    let outcome = drill(host, progress, id, &mut label).await;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (succeeded, checked, detail) = match outcome {
        Ok((n, detail)) => (true, n, detail),
        Err(e) => (false, 0, e.to_string()),
    };
    sqlx::query(
        "UPDATE backup_drills SET finished_at = now(), succeeded = $2, backup_label = $3, duration_ms = $4, detail = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(succeeded)
    .bind(&label)
    .bind(duration_ms)
    .bind(&detail)
    .execute(&mut conn)
    .await?;
    Ok(DrillReport {
        id,
        succeeded,
        backup_label: label,
        duration_ms,
        databases_checked: checked,
        detail,
    })
}

async fn drill(
    host: &ArchiveHost,
    progress: &Progress,
    id: i64,
    label: &mut Option<String>,
) -> Result<(usize, String), ArchiveError> {
    for &repo in &host.engine.repos {
        progress(&format!(
            "verifying repository {repo} (every file's checksum)"
        ));
        host.engine.verify(repo).await?;
    }
    // The first repository's newest backup: this host's own, or on a cluster the shared one.
    let first = host.engine.repos.first().copied().unwrap_or(1);
    let info = host.engine.info().await?;
    let newest = info
        .backups(first)
        .max_by_key(|b| b.timestamp.stop)
        .ok_or_else(|| {
            ArchiveError::Invalid(format!(
                "repository {first} holds no backup to drill: run `pgaas backup base --type full`"
            ))
        })?;
    *label = Some(newest.label.clone());
    progress(&format!(
        "restoring backup {} into a scratch cluster",
        newest.label
    ));
    let scratch = Scratch::create(
        &host.settings.archive.scratch_dir,
        &format!("drill-{id}"),
        &host.engine.owner,
        &host.bin,
        &host.settings.postgres.superuser,
    )?;
    let mut control = host.control().await?;
    let floor = HotStandbyFloor::read(&mut control).await?;
    drop(control);
    let set = newest.label.clone();
    let engine = host.engine.clone();
    let mut scratch = tokio::task::spawn_blocking(move || {
        // The newest backup, recovered just to consistency.
        let _ = set;
        scratch
            .restore(&engine, &[], &Target::Immediate, Some(first))
            .map(|_| scratch)
    })
    .await
    .map_err(|e| ArchiveError::Invalid(format!("the restore task failed: {e}")))??;
    progress("recovering the scratch cluster to consistency");
    scratch
        .start_and_recover(&floor, std::time::Duration::from_secs(6 * 3600))
        .await?;
    let mut conn = scratch.connect("postgres").await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    drop(conn);
    progress(&format!("opening its {} databases", names.len()));
    for name in &names {
        let mut db = scratch.connect(name).await.map_err(|e| {
            ArchiveError::Recovery(format!(
                "database {name} does not open in the restored backup: {e}"
            ))
        })?;
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class")
            .fetch_one(&mut db)
            .await
            .map_err(|e| ArchiveError::Recovery(format!("database {name} is unreadable: {e}")))?;
    }
    let mut detail = format!(
        "backup {} restored and recovered; {} databases opened",
        newest.label,
        names.len()
    );
    if scratch.has_tool("pg_amcheck") {
        progress("checking tables and indexes with pg_amcheck");
        let (back, out) = tokio::task::spawn_blocking(move || {
            let out = scratch.run_tool("pg_amcheck", &["--all", "--install-missing"]);
            (scratch, out)
        })
        .await
        .map_err(|e| ArchiveError::Invalid(format!("the check task failed: {e}")))?;
        scratch = back;
        match out {
            Ok(_) => detail.push_str("; pg_amcheck found no corruption"),
            Err(e) => return Err(ArchiveError::Recovery(format!("pg_amcheck: {e}"))),
        }
    }
    progress("removing the scratch cluster");
    scratch.discard()?;
    Ok((names.len(), detail))
}
