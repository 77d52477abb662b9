//! What continuous archiving buys, measured in one run: `cargo bench --bench pitr`.
//!
//! Brings up its own platform with pgBackRest (archive_timeout at its default, 60 s) and
//! measures:
//!
//! RPO: a client commits a timestamped row every 100 ms while, at several instants, the host
//!      "dies": the repository is copied as it is at that instant (what survives a dead disk),
//!      and later restored to the end of its archive in a scratch cluster. The newest row there
//!      against the instant is what that death would have lost.
//! RTO: tenants of `BENCH_PITR_SIZES_MB` (default 10,100,1000) are restored one at a time to a
//!      point in time (`pgaas restore DB --time T --into NEW`, the whole job: window check,
//!      scratch restore of that database alone, recovery, dump, load), against the whole cluster
//!      restored and recovered into a scratch directory from the same backup (what recovering
//!      one tenant costs without `--db-include`). The ratio is tenant / cluster.
//!
//! `BENCH_RPO_SAMPLES` (default 4) host deaths, `BENCH_RPO_SPACING_SECS` (default 47) apart.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use pgaas::{
    archive::{
        self, Progress,
        restore::ArchiveHost,
        scratch::{HotStandbyFloor, Scratch, Target},
    },
    dev::{DevOptions, DevPlatform},
    model::{FriendlyName, OwnerEmail},
    settings::{LoadOptions, Settings},
    tenant::{AuditContext, NewTenant, Provisioned},
};
use sqlx::{Connection, PgConnection};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn superuser(p: &DevPlatform, db: &str) -> PgConnection {
    PgConnection::connect_with(
        &sqlx::postgres::PgConnectOptions::new()
            .socket(&p.cluster.socket_dir)
            .port(p.cluster.port)
            .username(&p.cluster.superuser)
            .database(db),
    )
    .await
    .unwrap()
}

/// Fill a tenant's database with about `mb` MB of rows that do not compress to nothing.
async fn fill(p: &DevPlatform, t: &Provisioned, mb: u64) {
    let mut c = superuser(p, t.tenant.database_name.as_str()).await;
    let rows = mb * 1000;
    sqlx::query(&format!(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || repeat(md5((g * 13)::text), 28) AS pad
         FROM generate_series(1, {rows}) g"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE t OWNER TO {}",
        t.tenant.username.as_str()
    ))
    .execute(&mut c)
    .await
    .unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sizes: Vec<u64> = std::env::var("BENCH_PITR_SIZES_MB")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples = env_num("BENCH_RPO_SAMPLES", 4);
    let spacing = env_num("BENCH_RPO_SPACING_SECS", 47);
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-pitr-")
        .tempdir()
        .unwrap();
    let mut settings = Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        ..LoadOptions::default()
    })
    .unwrap();
    settings.archive.enabled = true;
    settings.tenants.connection_overcommit = 100.0;
    settings.tenants.max_size_mb_cap = 0;
    let opts = DevOptions {
        state_dir: dir.path().to_path_buf(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    let p = DevPlatform::up(settings, &opts).await.unwrap();
    let host: ArchiveHost = p.archive.clone().expect("pgBackRest installed");
    let svc = p.tenants();
    let quiet: Progress = Arc::new(|_: &str| {});
    let timeout = p.settings.archive.archive_timeout_secs;
    eprintln!("pgBackRest {}, archive_timeout {timeout}s", version(&host));

    // ---- tenants of each size, then one full backup holding them all
    let mut tenants = Vec::new();
    for (i, mb) in sizes.iter().enumerate() {
        let t = svc
            .create(
                NewTenant {
                    friendly_name: FriendlyName::parse(&format!("pitr bench {mb} MB")).unwrap(),
                    owner_email: OwnerEmail::parse(&format!("pitr-{i}@bench.example.com")).unwrap(),
                    max_connections: Some(5),
                    max_size_mb: Some(0),
                },
                &AuditContext::cli(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        fill(&p, &t, *mb).await;
        eprintln!("filled {mb} MB in {:.1}s", started.elapsed().as_secs_f64());
        tenants.push((*mb, t));
    }
    let started = Instant::now();
    host.engine
        .backup(archive::BackupKind::Full, 1)
        .await
        .unwrap();
    eprintln!("full backup in {:.1}s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ---- RPO: a writer, and host deaths at several instants
    let writer_db = tenants[0].1.tenant.database_name.as_str().to_string();
    let mut w = superuser(&p, &writer_db).await;
    sqlx::query("CREATE TABLE beats (at timestamptz NOT NULL)")
        .execute(&mut w)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sqlx::query("INSERT INTO beats VALUES (clock_timestamp())")
                    .execute(&mut w)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let repo = p.settings.archive.repo_path.clone();
    let mut deaths: Vec<(DateTime<Utc>, PathBuf)> = Vec::new();
    for i in 0..samples {
        tokio::time::sleep(Duration::from_secs(spacing)).await;
        let at = Utc::now();
        let copy = dir.path().join(format!("repo-at-death-{i}"));
        copy_tree(&repo, &copy);
        eprintln!("host death {i} at {at}");
        deaths.push((at, copy));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let mut lost = Vec::new();
    let mut control = host.control().await.unwrap();
    let floor = HotStandbyFloor::read(&mut control).await.unwrap();
    for (i, (at, copy)) in deaths.iter().enumerate() {
        let mut engine = host.engine.clone();
        engine.config_dir = bench_config(&p, copy, dir.path(), i);
        let scratch = Scratch::create(
            &p.settings.archive.scratch_dir,
            &format!("rpo-{i}"),
            &engine.owner,
            &host.bin,
            &p.settings.postgres.superuser,
        )
        .unwrap();
        let db = writer_db.clone();
        let mut scratch = tokio::task::spawn_blocking(move || {
            scratch
                .restore(&engine, &[&db], &Target::Latest, Some(1))
                .map(|_| scratch)
        })
        .await
        .unwrap()
        .unwrap();
        scratch
            .start_and_recover(&floor, Duration::from_secs(600))
            .await
            .unwrap();
        let mut c = scratch.connect(&writer_db).await.unwrap();
        let newest: DateTime<Utc> = sqlx::query_scalar("SELECT max(at) FROM beats")
            .fetch_one(&mut c)
            .await
            .unwrap();
        drop(c);
        scratch.discard().unwrap();
        let secs = (*at - newest).num_milliseconds() as f64 / 1000.0;
        eprintln!("death {i}: newest surviving commit {secs:.1}s before it");
        lost.push(secs);
    }
    let mean = lost.iter().sum::<f64>() / lost.len().max(1) as f64;
    let max = lost.iter().cloned().fold(0.0, f64::max);

    // ---- RTO: one tenant to a point in time, against the whole cluster
    let t_target = Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The WAL past the instant must be in the repository before anything recovers to it (a
    // restore job does this itself; the scratch-only runs below do not).
    {
        let mut su = superuser(&p, "postgres").await;
        archive::restore::archive_now(&mut su, Duration::from_secs(120))
            .await
            .unwrap();
    }
    // What --db-include buys: the scratch phase alone (restore + recovery to the instant) of one
    // database, against the same for the whole cluster below.
    let mut scratch_only = Vec::new();
    for (mb, t) in &tenants {
        let started = Instant::now();
        let scratch = Scratch::create(
            &p.settings.archive.scratch_dir,
            &format!("one-{mb}"),
            &host.engine.owner,
            &host.bin,
            &p.settings.postgres.superuser,
        )
        .unwrap();
        let (engine, db) = (
            host.engine.clone(),
            t.tenant.database_name.as_str().to_string(),
        );
        let mut scratch = tokio::task::spawn_blocking(move || {
            scratch
                .restore(&engine, &[&db], &Target::Time(t_target), Some(1))
                .map(|_| scratch)
        })
        .await
        .unwrap()
        .unwrap();
        scratch
            .start_and_recover(&floor, Duration::from_secs(3600))
            .await
            .unwrap();
        scratch.discard().unwrap();
        let secs = started.elapsed().as_secs_f64();
        eprintln!("scratch restore of the {mb} MB tenant alone: {secs:.1}s");
        scratch_only.push(secs);
    }
    let mut rto = Vec::new();
    for (mb, t) in &tenants {
        let started = Instant::now();
        let mut conn = host.control().await.unwrap();
        let job = archive::jobs::enqueue(
            &mut conn,
            *t.tenant.id.as_uuid(),
            t_target,
            Some(&format!("{}_bench", t.tenant.database_name.as_str())),
        )
        .await
        .unwrap();
        let job = archive::jobs::claim(&mut conn, job.id)
            .await
            .unwrap()
            .unwrap();
        let done = archive::jobs::run_claimed(&host, &mut conn, &job, &quiet)
            .await
            .unwrap();
        assert_eq!(done.status, "succeeded");
        let secs = started.elapsed().as_secs_f64();
        eprintln!("one tenant of {mb} MB to a point in time: {secs:.1}s");
        rto.push((*mb, secs));
    }
    let started = Instant::now();
    let scratch = Scratch::create(
        &p.settings.archive.scratch_dir,
        "whole-cluster",
        &host.engine.owner,
        &host.bin,
        &p.settings.postgres.superuser,
    )
    .unwrap();
    let engine = host.engine.clone();
    let mut scratch = tokio::task::spawn_blocking(move || {
        scratch
            .restore(&engine, &[], &Target::Time(t_target), Some(1))
            .map(|_| scratch)
    })
    .await
    .unwrap()
    .unwrap();
    scratch
        .start_and_recover(&floor, Duration::from_secs(3600))
        .await
        .unwrap();
    scratch.discard().unwrap();
    let cluster = started.elapsed().as_secs_f64();
    let total_mb: u64 = sizes.iter().sum();

    println!(
        "\npgaas point-in-time recovery (cargo bench --bench pitr), pgBackRest {}",
        version(&host)
    );
    println!(
        "RPO with archive_timeout = {timeout}s: {} host deaths, committed writes lost: mean {mean:.1}s, max {max:.1}s (bound: {timeout}s)",
        lost.len()
    );
    println!(
        "scratch restore + recovery to the instant, whole cluster ({total_mb} MB of tenants): {cluster:.1}s"
    );
    for ((mb, secs), alone) in rto.iter().zip(&scratch_only) {
        println!(
            "one tenant of {mb} MB: scratch restore + recovery with --db-include {alone:.1}s = {:.2} x the whole cluster; the restore job end to end (archive, scratch, dump, load) {secs:.1}s = {:.2} x",
            alone / cluster,
            secs / cluster
        );
    }
    p.down().ok();
}

/// A pgBackRest configuration directory like the platform's, with the repository at `repo`.
fn bench_config(p: &DevPlatform, repo: &Path, base: &Path, i: usize) -> PathBuf {
    let conf_dir = base.join(format!("conf-{i}"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    let text = std::fs::read_to_string(p.settings.archive.config_file()).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("repo1-path=") {
                format!("repo1-path={}", repo.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(conf_dir.join("pgbackrest.conf"), text + "\n").unwrap();
    for d in [&conf_dir, &repo.to_path_buf()] {
        let _ = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:", p.cluster.owner.name))
            .arg(d)
            .status();
    }
    conf_dir
}

fn version(host: &ArchiveHost) -> String {
    Command::new(&host.engine.binary)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
