//! What the operator relies on: drills that pass on a sound repository and fail loudly on a
//! damaged one (status, metrics, exit codes), archiving that survives a PostgreSQL restart, and
//! the whole cluster taken back to an instant.

use std::sync::Arc;

use pgaas::pg::cluster::Cluster;

use super::{ArchivePlatform, count, instant, pg_time, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_pass_on_a_sound_repository_and_fail_loudly_on_a_damaged_one() {
    let ap = ArchivePlatform::up("drill", |_, _| {}).await;
    let a = ap.tenant("d").await;
    let s = ap.session(&a, None, ap.pg_port()).await.unwrap();
    s.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        .await
        .unwrap();
    ap.backup("full");
    let out = ap.cli(&["backup", "drill"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("passed"), "{}", text(&out));
    let out = ap.cli(&["backup", "status"]);
    assert!(
        out.status.success(),
        "a healthy host has nothing to report: {}",
        text(&out)
    );
    assert!(text(&out).contains("recoverable:"), "{}", text(&out));

    // Damage: one data file of the newest backup has a byte changed.
    let repo = &ap.platform.settings.archive.repo_path;
    let backups = repo
        .join("backup")
        .join(&ap.platform.settings.archive.stanza);
    let newest = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().ends_with('F'))
        .max()
        .expect("a full backup directory");
    let victim = walk(&newest)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pg_data"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a file in the backup");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let out = ap.cli(&["backup", "drill"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a drill on a damaged repository fails: {}",
        text(&out)
    );
    assert!(text(&out).contains("FAILED"), "{}", text(&out));
    let out = ap.cli(&["backup", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("drill") && text(&out).contains("FAILED"),
        "{}",
        text(&out)
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", ap.base_url))
        .bearer_auth(&ap.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pgaas_backup_drill_success 0"),
        "{metrics}"
    );
    assert!(metrics.contains("pgaas_archive_lag_seconds"), "{metrics}");
    assert!(
        metrics.contains("pgaas_backup_last_age_seconds{repository=\"1\"}"),
        "{metrics}"
    );
    let status = ap.cli(&["status"]);
    assert!(
        text(&status).contains("WARNING") && text(&status).contains("drill"),
        "{}",
        text(&status)
    );
    // Nothing of the drills is left running or on disk.
    let scratch = &ap.platform.settings.archive.scratch_dir;
    assert_eq!(
        std::fs::read_dir(scratch).map(|d| d.count()).unwrap_or(0),
        0
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_survives_a_restart_and_the_whole_cluster_goes_back_to_an_instant() {
    let ap = ArchivePlatform::up("cluster", |_, _| {}).await;
    let a = ap.tenant("c").await;
    ap.backup("incr");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let cluster = &ap.platform.cluster;
    cluster.stop().unwrap();
    cluster.start().unwrap();
    let s = ap.session(&a, None, ap.pg_port()).await.unwrap();
    s.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 300) AS id")
        .await
        .unwrap();
    let t = instant(&s).await;
    s.batch_execute("DROP TABLE t").await.unwrap();
    let late = ap.tenant("late").await;
    // After the restart every segment still reaches the repository.
    let host = ap.platform.archive.clone().unwrap();
    let mut su = host.superuser("postgres").await.unwrap();
    pgaas::archive::restore::archive_now(&mut su, std::time::Duration::from_secs(60))
        .await
        .expect("archiving works after a restart");
    let failing: bool = sqlx::query_scalar(
        "SELECT last_failed_time IS NOT NULL AND last_failed_time > last_archived_time FROM pg_stat_archiver",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(!failing);
    drop(su);

    // The plan is printed and nothing happens without --yes.
    let out = ap.cli(&["restore", "--cluster", "--time", &pg_time(t)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("EVERY database") && text(&out).contains("--yes"),
        "{}",
        text(&out)
    );
    assert!(
        ap.session(&late, None, ap.pg_port()).await.is_ok(),
        "nothing changed"
    );

    let plan = pgaas::archive::cluster::plan(&host, t).await.unwrap();
    let quiet: pgaas::archive::Progress = Arc::new(|_: &str| {});
    pgaas::archive::cluster::run(&host, &plan, cluster, &quiet)
        .await
        .unwrap();
    let s = ap.session(&a, None, ap.pg_port()).await.unwrap();
    assert_eq!(
        count(&s, "t").await.unwrap(),
        300,
        "the table is back as at the instant"
    );
    let r = ap.session(&late, None, ap.pg_port()).await;
    assert!(r.is_err(), "a tenant made after the instant is gone");
    assert!(
        plan.kept_dir.join("PG_VERSION").exists(),
        "the replaced data directory is kept"
    );
    let mut conn = host.control().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM databases WHERE id = $1")
        .bind(late.tenant.id.as_uuid())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the control DB went back with the cluster");
    let _ = std::fs::remove_dir_all(&plan.kept_dir);
}
