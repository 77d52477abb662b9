//! Scratch directories nobody is using any more. A restore or drill killed after its last
//! database step but before it removed its scratch cluster (a restore's job row already says
//! `succeeded`) leaves hundreds of megabytes of a tenant's data under `archive.scratch_dir`, and
//! sometimes a running scratch server. Each runner holds a session advisory lock for as long as
//! it runs (a restore on its job, a drill on its `backup_drills` row), and takes it before it
//! makes its directory: a directory whose runner holds no lock is left over. The worker removes
//! them at its start; `pgaas doctor` names them.

use std::path::{Path, PathBuf};

use sqlx::PgConnection;

use super::{ArchiveError, restore::ArchiveHost};

/// First key of a drill's advisory lock (the second is its `backup_drills` id).
pub(super) const DRILL_LOCK_CLASS: i32 = 0x7067_6164; // "pgad"

/// Whether a live runner owns the scratch directory called `name`.
async fn owned(conn: &mut PgConnection, name: &str) -> Result<bool, ArchiveError> {
    if let Some(short) = name.strip_prefix("restore-") {
        if short.len() != 12 || !short.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        // The runner's lock: (class, hashtext(job id)), shown in pg_locks as classid/objid.
        return Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM restore_jobs j JOIN pg_locks l
                              ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                             AND l.classid = ($1::int4)::oid AND l.objid = hashtext(j.id::text)::oid
                            WHERE left(replace(j.id::text, '-', ''), 12) = lower($2))",
        )
        .bind(super::jobs::LOCK_CLASS)
        .bind(short)
        .fetch_one(&mut *conn)
        .await?);
    }
    if let Some(id) = name.strip_prefix("drill-") {
        let Ok(id) = id.parse::<i32>() else {
            return Ok(false);
        };
        return Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l
                            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                              AND l.classid = ($1::int4)::oid AND l.objid = ($2::int4)::oid)",
        )
        .bind(DRILL_LOCK_CLASS)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?);
    }
    // Nothing else writes under archive.scratch_dir.
    Ok(false)
}

/// The entries under `base` that no live restore or drill owns, sorted.
pub async fn find(conn: &mut PgConnection, base: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut entries = match tokio::fs::read_dir(base).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ArchiveError::Io {
                path: base.to_path_buf(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| ArchiveError::Io {
            path: base.to_path_buf(),
            source,
        })?
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !owned(conn, &name).await? {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Stop and remove every scratch cluster no live runner owns; the directories removed.
pub async fn sweep(host: &ArchiveHost) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut conn = host.control().await?;
    let found = find(&mut conn, &host.settings.archive.scratch_dir).await?;
    let mut removed = Vec::new();
    for dir in found {
        let (bin, owner, d) = (host.bin.clone(), host.engine.owner.clone(), dir.clone());
        let gone = tokio::task::spawn_blocking(move || {
            super::scratch::clean_leftovers_at(&d, &bin, &owner)
        })
        .await
        .unwrap_or(false);
        if gone {
            tracing::warn!(dir = %dir.display(), "removed a scratch cluster a killed restore or drill left behind");
            removed.push(dir);
        } else {
            tracing::error!(dir = %dir.display(), "could not remove a scratch cluster a killed restore or drill left behind; `pgaas doctor` says how");
        }
    }
    Ok(removed)
}
