//! `pgaas backup run|list|prune`: dumps of the control DB and the tenants, as the superuser over
//! the local socket (the nightly timer runs `backup run --all` as the cluster's OS user). Progress
//! goes to stderr, one line per database; stdout carries only results (the paths made, or
//! `--json`), so scripts can read it. A failed database does not stop `--all`, but makes the exit
//! status 1.

use std::{process::ExitCode, time::Instant};

use chrono::Utc;

use crate::{
    backup::{
        BackupError, BackupFile, Backups, Checksum, Login, Target, superuser_connect, targets,
    },
    settings::{Settings, is_plain_identifier},
    tenant::size_pretty,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Dump databases now into paths.backup_dir, verified and with a SHA-256 sidecar.
    Run(RunArgs),
    /// The backups on disk, newest first per database.
    List(ListArgs),
    /// Delete backups older than backups.retention_days, keeping each database's newest verified one.
    Prune(PruneArgs),
    /// A physical backup with pgBackRest now, into every repository (what the timers run).
    Base(BaseArgs),
    /// Continuous archiving: each repository's backups and recoverable window, the WAL
    /// archiver, the last drill; exits 1 when something needs attention.
    Status(JsonArgs),
    /// Restore the newest backup into a scratch cluster and check it; exits 1 when it fails.
    Drill(JsonArgs),
}

#[derive(Debug, clap::Args)]
pub struct BaseArgs {
    /// full (weekly), diff (daily: changes since the last full) or incr.
    #[arg(long = "type", value_enum, default_value = "full")]
    pub kind: crate::archive::BackupKind,
    /// Only this repository (1: local, 2: S3).
    #[arg(long)]
    pub repo: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["control", "database", "all"])))]
pub struct RunArgs {
    /// The control database only.
    #[arg(long)]
    pub control: bool,
    /// One database: a tenant id, a tenant database name, or the control database name.
    #[arg(long, value_name = "ID_OR_NAME")]
    pub database: Option<String>,
    /// The control database and every tenant in use (what the nightly timer runs).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this database (a tenant id or a database name).
    #[arg(long, value_name = "ID_OR_NAME")]
    pub database: Option<String>,
    /// Recompute every checksum (reads every file) instead of trusting the sidecar's presence.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let archived = match &cmd {
        Command::Base(a) => {
            Some(super::tokio_runtime()?.block_on(super::archive::base(&settings, a.kind, a.repo)))
        }
        Command::Status(a) => {
            Some(super::tokio_runtime()?.block_on(super::archive::status(&settings, a.json)))
        }
        Command::Drill(a) => {
            Some(super::tokio_runtime()?.block_on(super::archive::drill(&settings, a.json)))
        }
        _ => None,
    };
    if let Some(result) = archived {
        return Ok(result.unwrap_or_else(|e| super::archive::explain(&e)));
    }
    let backups = Backups::new(&settings)?;
    let result = match cmd {
        Command::Run(a) => run_backups(&settings, &backups, &a),
        Command::List(a) => list(&settings, &backups, &a),
        Command::Prune(a) => prune(&backups, &a),
        Command::Base(_) | Command::Status(_) | Command::Drill(_) => unreachable!("handled above"),
    };
    result.or_else(|e| Ok(explain(&e)))
}

/// Print the error (it says what to do) and choose the exit status: 2 for a name the operator
/// must correct, 1 otherwise.
pub(super) fn explain(e: &BackupError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        BackupError::UnknownDatabase(_) | BackupError::Invalid(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// Resolve names against the control DB, read as the superuser over the socket.
pub(super) fn resolve(
    settings: &Settings,
    which: Option<&str>,
) -> Result<Vec<Target>, BackupError> {
    let rt = super::tokio_runtime().map_err(|e| BackupError::Invalid(e.to_string()))?;
    rt.block_on(async {
        let mut conn = superuser_connect(settings, &settings.control_db.name).await?;
        let found = match which {
            Some(x) => vec![targets::resolve(&mut conn, settings, x).await?],
            None => targets::all(&mut conn, settings).await?,
        };
        let _ = sqlx::Connection::close(conn).await;
        Ok(found)
    })
}

fn run_backups(
    settings: &Settings,
    backups: &Backups,
    a: &RunArgs,
) -> Result<ExitCode, BackupError> {
    let chosen = match (&a.database, a.control) {
        (Some(x), _) => resolve(settings, Some(x))?,
        (None, true) => vec![Target {
            database: settings.control_db.name.clone(),
            tenant: None,
            owner: settings.control_db.user.clone(),
        }],
        (None, false) => resolve(settings, None)?,
    };
    let total = chosen.len();
    let mut failed = Vec::new();
    for (i, t) in chosen.iter().enumerate() {
        eprintln!("==> [{}/{total}] {}: dumping", i + 1, t.database);
        let started = Instant::now();
        match backups.dump(&t.database, &Login::Superuser) {
            Ok(f) => {
                eprintln!(
                    "    {}: {} in {:.1} s, verified",
                    t.database,
                    size_pretty(i64::try_from(f.size_bytes).unwrap_or(i64::MAX)),
                    started.elapsed().as_secs_f64()
                );
                println!("{}", f.path.display());
            }
            Err(e) => {
                eprintln!("    {}: FAILED: {e}", t.database);
                failed.push(t.database.clone());
            }
        }
    }
    if failed.is_empty() {
        eprintln!(
            "{total} database(s) backed up into {}",
            backups.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: {} of {total} backup(s) failed: {}; no complete-looking file was left for them. Fix the cause above and run `pgaas backup run --database NAME` again",
        failed.len(),
        failed.join(", ")
    );
    Ok(ExitCode::FAILURE)
}

fn verified_label(c: Checksum) -> &'static str {
    match c {
        Checksum::Verified => "yes",
        Checksum::Unchecked => "unchecked (--verify)",
        Checksum::Mismatch => "NO: damaged",
        Checksum::Missing => "no: no checksum",
    }
}

fn list(settings: &Settings, backups: &Backups, a: &ListArgs) -> Result<ExitCode, BackupError> {
    // A plain name needs no database; an id is looked up (which also proves it exists).
    let database = match a.database.as_deref() {
        Some(x) if is_plain_identifier(x) => Some(x.to_string()),
        Some(x) => Some(resolve(settings, Some(x))?.remove(0).database),
        None => None,
    };
    let files: Vec<BackupFile> = backups.list(database.as_deref(), a.verify)?;
    // With --verify a damaged file is a failure a script must see, not just a word in a table.
    let damaged = files
        .iter()
        .filter(|f| f.checksum == Checksum::Mismatch)
        .count();
    let code = if a.verify && damaged > 0 {
        eprintln!("error: {damaged} backup(s) failed verification (their checksum does not match)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if a.json {
        let out = serde_json::json!({ "count": files.len(), "data": files });
        println!("{out:#}");
        return Ok(code);
    }
    let rows: Vec<[String; 5]> = files
        .iter()
        .map(|f| {
            [
                f.database.clone(),
                f.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                size_pretty(i64::try_from(f.size_bytes).unwrap_or(i64::MAX)),
                verified_label(f.checksum).to_string(),
                f.path.display().to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(&["DATABASE", "TAKEN", "SIZE", "VERIFIED", "FILE"], &rows)
    );
    println!("{} backup(s) in {}", rows.len(), backups.root().display());
    Ok(code)
}

fn prune(backups: &Backups, a: &PruneArgs) -> Result<ExitCode, BackupError> {
    let plan = backups.prune_plan(Utc::now())?;
    let verb = if a.dry_run { "would delete" } else { "delete" };
    for item in &plan.delete {
        println!("{verb} {} ({})", item.path.display(), item.reason);
    }
    for item in &plan.kept {
        println!("keep {} ({})", item.path.display(), item.reason);
    }
    if a.dry_run {
        eprintln!(
            "dry run: {} file(s) would be deleted; nothing changed",
            plan.delete.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let removed = backups.prune(&plan)?;
    eprintln!(
        "{removed} file(s) deleted from {}",
        backups.root().display()
    );
    Ok(ExitCode::SUCCESS)
}
