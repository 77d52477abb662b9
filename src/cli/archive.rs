//! The pgBackRest side of the CLI: `backup base|status|drill`, `restore DB --time`,
//! `restore --cluster --time`, and `worker` (the service that runs the API's restore jobs).
//! pgBackRest and the scratch clusters run as the cluster's OS user: these commands run as root
//! (or as that user), never as the API's.

use std::{process::ExitCode, sync::Arc};

use chrono::{DateTime, Utc};

use crate::{
    archive::{
        self, ArchiveError, BackupKind, Progress,
        restore::ArchiveHost,
        status::{self, BackupStatus},
    },
    hba::apply::HbaApplier,
    pg::binaries::PgBinaries,
    settings::Settings,
};

/// This host's archive, with the access files' applier.
pub(super) fn host(settings: &Settings) -> Result<ArchiveHost, ArchiveError> {
    let version = settings
        .postgres
        .version
        .or_else(|| PgBinaries::find(None).ok().map(|b| b.version))
        .ok_or_else(|| ArchiveError::Invalid("PostgreSQL is not installed".into()))?;
    let hba = HbaApplier::for_host(settings, version);
    ArchiveHost::new(Arc::new(settings.clone()), Some(Arc::new(hba)))
}

/// Print the error and choose the exit status: 2 for a request to correct, 1 otherwise.
pub(super) fn explain(e: &ArchiveError) -> ExitCode {
    eprintln!("error: {e}");
    if e.is_request_error() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// `pgaas backup base`: a physical backup into each repository (or one).
pub(super) async fn base(
    settings: &Settings,
    kind: BackupKind,
    repo: Option<u32>,
) -> Result<ExitCode, ArchiveError> {
    let host = host(settings)?;
    if host.is_standby().await? {
        println!("{}", host.standby_note("backups"));
        return Ok(ExitCode::SUCCESS);
    }
    let repos: Vec<u32> = match repo {
        Some(r) if host.engine.repos.contains(&r) => vec![r],
        Some(r) => {
            return Err(ArchiveError::Invalid(format!(
                "repository {r} is not configured (this host has {})",
                host.engine
                    .repos
                    .iter()
                    .map(|r| format!("repository {r}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )));
        }
        None => host.engine.repos.clone(),
    };
    let progress = archive::terminal_progress();
    for r in repos {
        let started = std::time::Instant::now();
        progress(&format!("{} backup into repository {r}", kind.as_str()));
        host.engine.backup(kind, r).await?;
        println!(
            "repository {r}: {} backup taken in {:.1}s",
            kind.as_str(),
            started.elapsed().as_secs_f64()
        );
    }
    status::refresh_cache(&host).await?;
    Ok(ExitCode::SUCCESS)
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The status as text.
pub(super) fn print_status(s: &BackupStatus) {
    if !s.enabled {
        println!("Continuous archiving: off (archive.enabled); nightly dumps only");
        return;
    }
    println!("Continuous archiving: stanza {}", s.stanza);
    if s.archiver.is_none() {
        println!("  WAL archiver:  the primary's (this node is a standby)");
    }
    if let Some(a) = &s.archiver {
        println!(
            "  WAL archiver:  {} segments archived, last {} at {} ({}), {} failures{}",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or("-"),
            when(a.last_archived_time),
            a.lag_seconds
                .map(|l| format!("{l:.0}s ago"))
                .unwrap_or_else(|| "never".into()),
            a.failed_count,
            if a.failing { " (FAILING NOW)" } else { "" }
        );
    }
    for r in &s.repositories {
        println!(
            "  repository {}:  {} ({} backups)\n    last full:   {}\n    last diff:   {}\n    recoverable: {} .. {}",
            r.repo,
            r.status,
            r.backups,
            when(r.last_full),
            when(r.last_diff),
            when(r.earliest),
            when(r.latest),
        );
    }
    match &s.last_drill {
        Some(d) => println!(
            "  last drill:    {} {} ({})",
            when(Some(d.started_at)),
            match d.succeeded {
                Some(true) => "passed",
                Some(false) => "FAILED",
                None => "did not finish",
            },
            d.detail.as_deref().unwrap_or("")
        ),
        None => println!("  last drill:    never (`pgaas backup drill`)"),
    }
    println!("  checked:       {}", when(s.refreshed_at));
    for p in &s.problems {
        println!("  PROBLEM: {p}");
    }
}

/// `pgaas backup status`: ask pgBackRest now, then report; exit 1 when something is wrong.
pub(super) async fn status(settings: &Settings, json: bool) -> Result<ExitCode, ArchiveError> {
    let s = if settings.archive.enabled {
        let host = host(settings)?;
        // A failure is recorded and reported as a problem below. A standby's control DB is
        // read-only: it shows what the primary's worker last recorded.
        if !host.is_standby().await? {
            let _ = status::refresh_cache(&host).await;
        }
        let mut conn = host.control().await?;
        status::read(&mut conn, settings).await?
    } else {
        BackupStatus {
            enabled: false,
            stanza: settings.archive.stanza.clone(),
            repositories: Vec::new(),
            archiver: None,
            last_drill: None,
            refreshed_at: None,
            refresh_error: None,
            problems: Vec::new(),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print_status(&s);
    }
    Ok(if s.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pgaas backup drill`: exit 1 when the drill fails.
pub(super) async fn drill(settings: &Settings, json: bool) -> Result<ExitCode, ArchiveError> {
    let host = host(settings)?;
    if host.is_standby().await? {
        let note = host.standby_note("restore drills");
        if json {
            println!(
                "{}",
                serde_json::json!({ "skipped": "standby", "detail": note })
            );
        } else {
            println!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = archive::drill::run(&host, &archive::terminal_progress()).await?;
    let _ = status::refresh_cache(&host).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if report.succeeded {
        println!(
            "drill {} passed in {:.1}s: {}",
            report.id,
            report.duration_ms as f64 / 1000.0,
            report.detail
        );
    } else {
        eprintln!(
            "DRILL {} FAILED after {:.1}s: {}",
            report.id,
            report.duration_ms as f64 / 1000.0,
            report.detail
        );
    }
    Ok(if report.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pgaas restore DB --time T [--into NEW]`: queue the job and run it here.
pub(super) async fn restore_tenant(
    settings: &Settings,
    db: &str,
    time: &str,
    into: Option<&str>,
    yes: bool,
) -> Result<ExitCode, ArchiveError> {
    let time = archive::parse_time(time)?;
    let host = host(settings)?;
    if host.is_standby().await? {
        return Err(ArchiveError::Invalid(format!(
            "this node ({}) is a standby, whose databases are read-only copies of the primary's: run the restore on the primary (`pgaas status` names it), or ask the API",
            settings.cluster.node.as_deref().unwrap_or("?")
        )));
    }
    let mut conn = host.control().await?;
    let target = crate::backup::targets::resolve(&mut conn, settings, db).await?;
    let Some(tenant) = target.tenant else {
        return Err(ArchiveError::Invalid(format!(
            "{db} is the control database; restore it with the whole cluster (`pgaas restore --cluster --time ...`)"
        )));
    };
    // Fresh windows for the check, not the worker's cache.
    let _ = status::refresh_cache(&host).await;
    let into = archive::restore::check_request(
        &mut conn,
        *tenant.as_uuid(),
        time,
        into,
        &host.engine.repos,
    )
    .await?;
    // In place replaces the database: asked like a dump restore in place, after every check.
    if into.is_none()
        && !yes
        && !super::restore::confirmed(
            &target.database,
            "Its sessions end and it goes back to that instant; its current data is kept under a dated name.",
        )
        .map_err(|e| ArchiveError::Invalid(format!("reading the confirmation: {e}")))?
    {
        return Ok(ExitCode::from(2));
    }
    let job = archive::jobs::enqueue(&mut conn, *tenant.as_uuid(), time, into.as_deref()).await?;
    let Some(job) = archive::jobs::claim(&mut conn, job.id).await? else {
        return Err(ArchiveError::Busy(format!(
            "restore job {} was taken by the worker; follow it with GET /api/databases/{}/restore/{}",
            job.id, tenant, job.id
        )));
    };
    let progress: Progress = archive::terminal_progress();
    let done = archive::jobs::run_claimed(&host, &mut conn, &job, &progress).await?;
    match (&done.into_name, &done.kept_as) {
        (Some(new), _) => println!(
            "restored {} as of {} into the new database {new} (owner {}); {} was not touched",
            target.database,
            done.target_time.format("%Y-%m-%d %H:%M:%S%.f+00"),
            target.owner,
            target.database
        ),
        (None, kept) => println!(
            "restored {} in place as of {}; the data it replaced is kept as {} (drop it with `pgaas db drop-extra {}` when you no longer need it)",
            target.database,
            done.target_time.format("%Y-%m-%d %H:%M:%S%.f+00"),
            kept.as_deref().unwrap_or("?"),
            kept.as_deref().unwrap_or("?"),
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `pgaas restore --cluster --time T`: print the plan; carry it out with `--yes`.
pub(super) async fn restore_cluster(
    settings: &Settings,
    time: &str,
    yes: bool,
) -> Result<ExitCode, ArchiveError> {
    let time = archive::parse_time(time)?;
    if settings.cluster.enabled() {
        return Err(ArchiveError::Invalid(
            "this host is a node of a Patroni cluster, whose PostgreSQL Patroni runs: taking the whole cluster back in time is not done by pgaas here. \
             Restore one tenant at a time (`pgaas restore DB --time T`), or rebuild the cluster from the repository with Patroni's own procedure \
             (bootstrap the new cluster from a pgBackRest restore)"
                .into(),
        ));
    }
    let host = host(settings)?;
    let plan = archive::cluster::plan(&host, time).await?;
    eprintln!("{}", plan.describe());
    if !yes {
        eprintln!("\nNothing was changed. Run again with --yes to go ahead.");
        return Ok(ExitCode::from(2));
    }
    let progress = archive::terminal_progress();
    let version = host.bin.version;
    let result = if settings.environment == "development" {
        let cluster = crate::pg::cluster::LocalCluster {
            bin: host.bin.clone(),
            data_dir: plan.data_dir.clone(),
            socket_dir: settings.postgres.socket_dir.clone(),
            port: settings.postgres.port,
            log_file: settings.paths.state_dir.join("log").join("postgresql.log"),
            owner: host.engine.owner.clone(),
            superuser: settings.postgres.superuser.clone(),
        };
        archive::cluster::run(&host, &plan, &cluster, &progress).await
    } else {
        let cluster = crate::pg::systemd_cluster::SystemdCluster::main(settings, version);
        archive::cluster::run(&host, &plan, &cluster, &progress).await
    };
    result?;
    println!(
        "the cluster is back at {}; the data directory it replaced is kept in {} (remove it once you are sure)",
        time.format("%Y-%m-%d %H:%M:%S+00"),
        plan.kept_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pgaas worker`: run restore jobs the API queues, until stopped.
pub(super) async fn worker(settings: &Settings) -> Result<ExitCode, ArchiveError> {
    let host = host(settings)?;
    tracing::info!("pgaas worker: running restore jobs and checking the repositories");
    tokio::select! {
        r = archive::jobs::work(host, std::time::Duration::from_secs(10)) => r?,
        _ = super::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `pgaas worker` from the command line.
pub(super) fn run_worker(config: super::Sources) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = super::tokio_runtime()?;
    Ok(rt
        .block_on(worker(&settings))
        .unwrap_or_else(|e| explain(&e)))
}
