//! Recoverability you can see: each repository's window and newest backups (from pgBackRest,
//! cached in `archive_status` by whoever may run it: the worker, `pgaas backup` commands, `pgaas
//! dev`), the WAL archiver's health (`pg_stat_archiver`, which any role may read), the last
//! restore drill, and the problems an operator must hear about.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::{ArchiveError, info::Info, info::RepoWindow, restore::ArchiveHost};
use crate::settings::Settings;

/// `pg_stat_archiver`, with the lag since the last segment archived.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Archiver {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// Seconds since the last segment was archived.
    pub lag_seconds: Option<f64>,
    /// The last attempt failed (a failure newer than the last success).
    pub failing: bool,
}

pub async fn archiver(conn: &mut PgConnection) -> Result<Archiver, sqlx::Error> {
    sqlx::query_as(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
                last_failed_time,
                extract(epoch FROM now() - last_archived_time)::float8 AS lag_seconds,
                (last_failed_time IS NOT NULL AND (last_archived_time IS NULL OR last_failed_time > last_archived_time)) AS failing
         FROM pg_stat_archiver",
    )
    .fetch_one(conn)
    .await
}

/// The last restore drill.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DrillRow {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub succeeded: Option<bool>,
    pub backup_label: Option<String>,
    pub duration_ms: Option<i64>,
    pub detail: Option<String>,
}

pub async fn last_drill(conn: &mut PgConnection) -> Result<Option<DrillRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, started_at, finished_at, succeeded, backup_label, duration_ms, detail
         FROM backup_drills WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await
}

/// Everything about backups, for `pgaas backup status`, `pgaas status`, the API and `/metrics`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    pub enabled: bool,
    pub stanza: String,
    pub repositories: Vec<RepoWindow>,
    pub archiver: Option<Archiver>,
    pub last_drill: Option<DrillRow>,
    /// When pgBackRest was last asked (the repositories' part is as of then).
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed.
    pub refresh_error: Option<String>,
    /// What is wrong, in words an operator can act on; empty when all is well.
    pub problems: Vec<String>,
}

impl BackupStatus {
    /// The earliest instant any healthy repository can restore to.
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.repositories
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| r.earliest)
            .min()
    }

    /// The newest backup in any repository.
    pub fn last_backup(&self) -> Option<DateTime<Utc>> {
        self.repositories.iter().filter_map(|r| r.last_backup).max()
    }
}

/// Ask pgBackRest and store the answer in `archive_status`; returns the windows.
pub async fn refresh_cache(host: &ArchiveHost) -> Result<Vec<RepoWindow>, ArchiveError> {
    let mut conn = host.control().await?;
    let result = async {
        let info = host.engine.info().await?;
        let mut windows = info.windows(&host.engine.repos);
        for w in &mut windows {
            if let (Some(id), Some(seg)) = (info.archive_id(w.repo), w.newest_wal.clone()) {
                if let Ok(Some(t)) = host.engine.newest_wal_upload(w.repo, id, &seg).await {
                    w.latest = chrono::TimeZone::timestamp_opt(&Utc, t, 0).single();
                }
            }
        }
        Ok::<_, ArchiveError>((info, windows))
    }
    .await;
    match result {
        Ok((info, windows)) => {
            sqlx::query(
                "INSERT INTO archive_status (id, info, repos, error, refreshed_at) VALUES (true, $1, $2, NULL, now())
                 ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info, repos = EXCLUDED.repos, error = NULL, refreshed_at = now()",
            )
            .bind(sqlx::types::Json(&info))
            .bind(sqlx::types::Json(&windows))
            .execute(&mut conn)
            .await?;
            Ok(windows)
        }
        Err(e) => {
            sqlx::query(
                "INSERT INTO archive_status (id, error, refreshed_at) VALUES (true, $1, now())
                 ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, refreshed_at = now()",
            )
            .bind(e.to_string())
            .execute(&mut conn)
            .await?;
            Err(e)
        }
    }
}

/// The stanza as last cached, if any refresh succeeded.
pub async fn cached_info(conn: &mut PgConnection) -> Result<Option<Info>, sqlx::Error> {
    let row: Option<Option<sqlx::types::Json<Info>>> =
        sqlx::query_scalar("SELECT info FROM archive_status WHERE id")
            .fetch_optional(conn)
            .await?;
    Ok(row.flatten().map(|j| j.0))
}

type CacheRow = (
    Option<sqlx::types::Json<Vec<RepoWindow>>>,
    Option<String>,
    DateTime<Utc>,
);

/// The status as the control DB and the archiver see it now (no pgBackRest run).
pub async fn read(
    conn: &mut PgConnection,
    settings: &Settings,
) -> Result<BackupStatus, sqlx::Error> {
    let a = &settings.archive;
    if !a.enabled {
        return Ok(BackupStatus {
            enabled: false,
            stanza: a.stanza.clone(),
            repositories: Vec::new(),
            archiver: None,
            last_drill: None,
            refreshed_at: None,
            refresh_error: None,
            problems: Vec::new(),
        });
    }
    let cache: Option<CacheRow> =
        sqlx::query_as("SELECT repos, error, refreshed_at FROM archive_status WHERE id")
            .fetch_optional(&mut *conn)
            .await?;
    // A standby archives nothing: its node's primary does, into the same repository.
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    let archiver = if standby {
        None
    } else {
        Some(archiver(conn).await?)
    };
    let last_drill = last_drill(conn).await?;
    let (repositories, refresh_error, refreshed_at) = match cache {
        Some((repos, error, at)) => (repos.map(|j| j.0).unwrap_or_default(), error, Some(at)),
        None => (Vec::new(), None, None),
    };
    let mut status = BackupStatus {
        enabled: true,
        stanza: a.stanza.clone(),
        repositories,
        archiver,
        last_drill,
        refreshed_at,
        refresh_error,
        problems: Vec::new(),
    };
    status.problems = problems(&status, settings, Utc::now());
    Ok(status)
}

/// What an operator must hear about.
pub fn problems(s: &BackupStatus, settings: &Settings, now: DateTime<Utc>) -> Vec<String> {
    let a = &settings.archive;
    let mut out = Vec::new();
    if let Some(ar) = &s.archiver {
        if ar.failing {
            out.push(format!(
                "WAL archiving is failing (last failure: segment {} at {}); PostgreSQL keeps the segments until it works, and the disk fills. See the PostgreSQL log and {}",
                ar.last_failed_wal.as_deref().unwrap_or("?"),
                ar.last_failed_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                a.log_path.display()
            ));
        }
        let limit = f64::from(a.archive_timeout_secs.max(60) * 5);
        if let Some(lag) = ar.lag_seconds.filter(|l| *l > limit) {
            out.push(format!(
                "no WAL segment archived for {lag:.0}s (archive_timeout is {}s): a dead host would lose that much",
                a.archive_timeout_secs
            ));
        }
        if ar.last_archived_time.is_none() {
            out.push("no WAL segment has been archived yet".into());
        }
    }
    if let Some(e) = &s.refresh_error {
        out.push(format!(
            "pgBackRest could not be asked about the repositories: {e}"
        ));
    }
    match s.refreshed_at {
        None => out.push(
            "the repositories have never been checked: is the pgaas worker running? (`systemctl status pgaas-worker`, or `pgaas backup status` as root)".into(),
        ),
        Some(at) if (now - at).num_minutes() > 15 => out.push(format!(
            "the repositories were last checked at {at}: is the pgaas worker running? (`systemctl status pgaas-worker`)"
        )),
        _ => {}
    }
    for r in &s.repositories {
        if !r.ok {
            out.push(format!("repository {}: {}", r.repo, r.status));
        }
        match r.last_backup {
            None => out.push(format!(
                "repository {} holds no backup yet: run `pgaas backup base --type full{}`{}",
                r.repo,
                if r.repo > 1 { format!(" --repo {}", r.repo) } else { String::new() },
                // No archiver: this node is a standby.
                if s.archiver.is_none() { " on the primary" } else { "" }
            )),
            Some(t) if (now - t).num_hours() >= i64::from(a.max_backup_age_hours) => out.push(format!(
                "repository {}: the newest backup is from {} (older than {}h): check the pgaas-backup-full/-diff timers",
                r.repo,
                t.format("%Y-%m-%d %H:%M UTC"),
                a.max_backup_age_hours
            )),
            _ => {}
        }
    }
    if let Some(d) = &s.last_drill {
        if d.succeeded == Some(false) {
            out.push(format!(
                "the last restore drill ({}) FAILED: {}",
                d.started_at.format("%Y-%m-%d %H:%M UTC"),
                d.detail.as_deref().unwrap_or("no detail")
            ));
        }
    }
    out
}
