//! `pgaas restore DB [--from FILE] [--into NEW_NAME] [--yes]`: restore a database from a backup.
//! The dump's checksum is verified before anything is touched; `--into` restores into a new
//! database owned by the same role and leaves the original alone; in place, the dump's objects
//! are dropped and recreated in one transaction, after a typed confirmation on a terminal (or
//! `--yes`; without a terminal, `--yes` is required). A point-in-time restore in place (`--time`
//! without `--into`) asks the same way.

use std::{
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
};

use crate::{
    backup::{BackupError, Backups, RestoreMode, superuser_connect, targets},
    tenant::size_pretty,
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["db", "cluster"])))]
pub struct Args {
    /// A tenant id, a tenant database name, or the control database name.
    #[arg(value_name = "DB")]
    pub db: Option<String>,
    /// The dump to restore (its `.sha256` sidecar must match); default: DB's newest verified backup.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["time", "cluster"])]
    pub from: Option<PathBuf>,
    /// Point-in-time recovery with pgBackRest to this instant, with its offset
    /// ('2026-11-29 14:32:00+00'); without --into, DB is replaced (its old data kept under a
    /// dated name) and its sessions are ended.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Restore into a new database: a dump restore names it freely; a point-in-time restore
    /// takes a suffix (DB_SUFFIX), so the tenant reaches it like its own.
    #[arg(long, value_name = "NEW_NAME", conflicts_with = "cluster")]
    pub into: Option<String>,
    /// The whole cluster to --time: every tenant, the control DB and the roles (prints the
    /// steps and risks; --yes to go ahead).
    #[arg(long, requires = "time", conflicts_with = "db")]
    pub cluster: bool,
    /// Go ahead without asking; required when stdin is not a terminal.
    #[arg(long)]
    pub yes: bool,
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Some(time) = &args.time {
        let rt = super::tokio_runtime()?;
        let result = match &args.db {
            _ if args.cluster => {
                rt.block_on(super::archive::restore_cluster(&settings, time, args.yes))
            }
            Some(db) => rt.block_on(super::archive::restore_tenant(
                &settings,
                db,
                time,
                args.into.as_deref(),
                args.yes,
            )),
            None => unreachable!("clap requires DB or --cluster"),
        };
        return Ok(result.unwrap_or_else(|e| super::archive::explain(&e)));
    }
    let Some(db) = args.db.clone() else {
        eprintln!("error: --cluster needs --time");
        return Ok(ExitCode::from(2));
    };
    let args = Args {
        db: Some(db),
        ..args
    };
    let backups = Backups::new(&settings)?;
    let rt = super::tokio_runtime()?;
    let result: Result<ExitCode, BackupError> = rt.block_on(async {
        let mut conn = superuser_connect(&settings, &settings.control_db.name).await?;
        let target =
            targets::resolve(&mut conn, &settings, args.db.as_deref().unwrap_or_default()).await?;
        let mode = match &args.into {
            Some(name) => RestoreMode::Into(name.clone()),
            None => RestoreMode::InPlace,
        };
        // Everything that can refuse does so before the confirmation and before any change.
        let file = backups.choose(&target, args.from.as_deref())?;
        backups.check_restore(&mut conn, &target, &mode).await?;
        eprintln!(
            "==> {} from {} (taken {}, {}, checksum verified)",
            target.database,
            file.path.display(),
            file.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            size_pretty(i64::try_from(file.size_bytes).unwrap_or(i64::MAX))
        );
        if mode == RestoreMode::InPlace
            && !args.yes
            && !confirmed(
                &target.database,
                "Every object in the dump is dropped and recreated; changes made since the dump are lost.",
            )
            .map_err(|e| BackupError::Invalid(format!("reading the confirmation: {e}")))?
        {
            return Ok(ExitCode::from(2));
        }
        backups.restore(&mut conn, &target, &file, &mode).await?;
        match &mode {
            RestoreMode::InPlace => println!(
                "restored {} in place from {}",
                target.database, file.file_name
            ),
            RestoreMode::Into(new) => println!(
                "restored {} into the new database {new} (owner {}) from {}; {} was not touched",
                target.database, target.owner, file.file_name, target.database
            ),
        }
        Ok(ExitCode::SUCCESS)
    });
    result.or_else(|e| Ok(super::backup::explain(&e)))
}

/// Ask on a terminal for the database's name, after saying what an in-place restore of it
/// loses; refuse outright without a terminal. Shared by the dump and point-in-time restores.
pub(super) fn confirmed(database: &str, consequence: &str) -> std::io::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!(
            "error: refusing to restore {database} in place without --yes when stdin is not a terminal; nothing was changed"
        );
        return Ok(false);
    }
    eprint!(
        "Restore {database} in place? {consequence}\n\
         Type the database name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != database {
        eprintln!("not confirmed; nothing was changed");
        return Ok(false);
    }
    Ok(true)
}
