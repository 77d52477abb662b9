//! Whole-cluster point-in-time recovery, for the operator: every tenant, the control database
//! and the roles go back to the instant together. The data directory is set aside (renamed,
//! never deleted), pgBackRest restores into an empty one, PostgreSQL recovers to the instant and
//! is promoted on a new timeline (archived like the old one), and the access files are rewritten
//! from the restored rows.

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use super::{
    ArchiveError, Progress,
    restore::{ArchiveHost, archive_now, describe_window},
};
use crate::pg::cluster::Cluster;

/// What a cluster restore will do, checked before anything changes.
#[derive(Clone, Debug)]
pub struct ClusterPlan {
    pub time: DateTime<Utc>,
    pub repo: u32,
    pub data_dir: PathBuf,
    /// Where the current data directory is kept.
    pub kept_dir: PathBuf,
}

impl ClusterPlan {
    /// The steps and their risks, for the operator to read before `--yes`.
    pub fn describe(&self) -> String {
        format!(
            "Whole-cluster point-in-time recovery to {time} from repository {repo}:\n\
             \x20 1. archive the WAL written until now, then stop PostgreSQL (every tenant is cut off);\n\
             \x20 2. move {data} aside to {kept} (kept: nothing is deleted);\n\
             \x20 3. restore the backup before {time} into an empty {data} and replay WAL to {time};\n\
             \x20 4. start PostgreSQL on a new timeline and rewrite pg_hba.conf and PgBouncer's files from the restored rows.\n\
             Risks: EVERY database, tenant and role returns to {time}; everything written after it is no longer\n\
             in the running cluster (only in {kept} and the archive); tenants created later are gone, API\n\
             keys and passwords changed later are back to their old values. It needs as much free space as\n\
             the cluster. Use `pgaas restore DB --time` to restore one tenant instead.",
            time = self.time.format("%Y-%m-%d %H:%M:%S+00"),
            repo = self.repo,
            data = self.data_dir.display(),
            kept = self.kept_dir.display(),
        )
    }
}

/// Check the instant against every repository's window (and that no tablespace would make a
/// restore write outside the data directory), without changing anything.
pub async fn plan(host: &ArchiveHost, time: DateTime<Utc>) -> Result<ClusterPlan, ArchiveError> {
    let now = Utc::now();
    let info = host.engine.info().await?;
    let windows = info.windows(&host.engine.repos);
    let earliest = windows
        .iter()
        .filter(|w| w.ok)
        .filter_map(|w| w.earliest)
        .min();
    if time > now {
        return Err(ArchiveError::OutsideWindow(format!(
            "{} is in the future; the recoverable window of the cluster is {}",
            time.format("%Y-%m-%d %H:%M:%S+00"),
            describe_window(earliest, now)
        )));
    }
    let repo = windows
        .iter()
        .find(|w| w.ok && w.earliest.is_some_and(|e| e <= time))
        .map(|w| w.repo)
        .ok_or_else(|| {
            ArchiveError::OutsideWindow(format!(
                "{} is outside the recoverable window of the cluster, which is {}",
                time.format("%Y-%m-%d %H:%M:%S+00"),
                describe_window(earliest, now)
            ))
        })?;
    let mut conn = host.superuser("postgres").await?;
    let tablespaces: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
    )
    .fetch_one(&mut conn)
    .await?;
    if tablespaces > 0 {
        return Err(ArchiveError::Invalid(
            "the cluster has tablespaces outside its data directory; pgaas does not restore those (a restore would write into them). Restore with pgBackRest by hand".into(),
        ));
    }
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await?;
    let data_dir = PathBuf::from(data_dir);
    let kept_dir = data_dir.with_file_name(format!(
        "{}.replaced-{}",
        data_dir.file_name().unwrap_or_default().to_string_lossy(),
        now.format("%Y%m%d%H%M%S")
    ));
    Ok(ClusterPlan {
        time,
        repo,
        data_dir,
        kept_dir,
    })
}

/// Carry the plan out on `cluster`.
pub async fn run(
    host: &ArchiveHost,
    plan: &ClusterPlan,
    cluster: &(dyn Cluster + Sync),
    progress: &Progress,
) -> Result<(), ArchiveError> {
    let io = |p: &PathBuf| {
        let p = p.clone();
        move |source| ArchiveError::Io { path: p, source }
    };
    progress("archiving the WAL written until now");
    {
        let mut conn = host.superuser("postgres").await?;
        let timeout =
            Duration::from_secs(u64::from(host.settings.archive.archive_timeout_secs) + 120);
        archive_now(&mut conn, timeout).await?;
        conn.close().await.ok();
    }
    progress("stopping PostgreSQL");
    cluster.stop()?;
    progress(&format!(
        "moving {} aside to {}",
        plan.data_dir.display(),
        plan.kept_dir.display()
    ));
    std::fs::rename(&plan.data_dir, &plan.kept_dir).map_err(io(&plan.data_dir))?;
    std::fs::create_dir(&plan.data_dir).map_err(io(&plan.data_dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plan.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&plan.data_dir))?;
    }
    host.engine.owner.chown(&plan.data_dir)?;
    progress(&format!(
        "restoring from repository {} and replaying WAL to {}",
        plan.repo,
        plan.time.format("%Y-%m-%d %H:%M:%S+00")
    ));
    let args = vec![
        "restore".to_string(),
        format!("--pg1-path={}", plan.data_dir.display()),
        format!("--repo={}", plan.repo),
        "--type=time".into(),
        format!("--target={}", plan.time.format("%Y-%m-%d %H:%M:%S%.6f+00")),
        "--target-action=promote".into(),
    ];
    if let Err(e) = host.engine.run_async(args).await {
        return Err(ArchiveError::Command {
            what: "pgbackrest restore".into(),
            detail: format!(
                "{e}\nThe cluster is stopped; the previous data directory is in {}: move it back to {} and start PostgreSQL to return to where you were",
                plan.kept_dir.display(),
                plan.data_dir.display()
            ),
        });
    }
    progress("starting PostgreSQL and waiting for recovery to end");
    cluster.start()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        let done = async {
            let mut conn =
                PgConnection::connect_with(&cluster.admin_options().database("postgres"))
                    .await
                    .ok()?;
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await
                .ok()
        }
        .await;
        if done == Some(false) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(ArchiveError::Recovery(
                "the cluster did not finish recovery within 6 hours; see the PostgreSQL log".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(applier) = &host.hba {
        progress("rewriting the access files from the restored rows");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(crate::backup::targets::superuser_options(
                &host.settings,
                &host.settings.control_db.name,
            ))
            .await?;
        applier
            .sync(&pool)
            .await
            .map_err(crate::tenant::TenantError::from)?;
        pool.close().await;
    }
    Ok(())
}
