//! `pgaas render`: write every managed file from settings (and, once tenants exist, control-DB
//! rows); `--root DIR` writes the set under DIR for inspection; `--check` changes nothing and
//! exits 1 with a unified diff when a file on disk differs from what would be rendered.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::{
    hba::HbaPolicy,
    pg::binaries::PgBinaries,
    render::{self, HostFacts, RenderInputs, WriteOutcome},
    settings::LoadOptions,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the file set under this directory instead of the live paths.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Report drift instead of writing: exit 1 and print a diff when anything differs.
    #[arg(long)]
    pub check: bool,
    /// PostgreSQL major version to render for (default: settings, else the installed server).
    #[arg(long)]
    pub pg_version: Option<u32>,
    /// RAM in MB to size memory settings from (default: settings, else this machine's).
    #[arg(long)]
    pub memory_mb: Option<u64>,
}

pub fn run(config: Option<PathBuf>, args: Args) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(LoadOptions::from_process(config)) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let pg_version = match args.pg_version.or(settings.postgres.version) {
        Some(v) => v,
        None => PgBinaries::find(None)?.version,
    };
    let memory_mb = match args.memory_mb.or(settings.postgres.memory_mb) {
        Some(m) => m,
        None => {
            crate::host::memory_mb().context("reading /proc/meminfo (set postgres.memory_mb)")?
        }
    };
    let mut admin_os_users = vec![settings.postgres.os_user.clone()];
    if !admin_os_users.iter().any(|u| u == "root") {
        admin_os_users.push("root".into());
    }
    let policy = HbaPolicy {
        superuser: settings.postgres.superuser.clone(),
        api_role: settings.control_db.user.clone(),
        control_db: settings.control_db.name.clone(),
        tenant_group: crate::control_db::TENANT_GROUP.to_string(),
        admin_os_users,
        tenants: Vec::new(),
    };
    let files = render::managed_files(&RenderInputs {
        settings: &settings,
        facts: HostFacts {
            pg_version,
            memory_mb,
        },
        hba: &policy,
        generation: 0,
        pg_config_dir: settings.postgres.config_dir_for(pg_version),
        include_systemd: true,
        include_pgbouncer: settings.pgbouncer.enabled,
    })?;
    let root = args.root.as_deref();
    if args.check {
        let drift = render::check_all(&files, root)?;
        if drift.is_empty() {
            println!("{} managed files match", files.len());
            return Ok(ExitCode::SUCCESS);
        }
        for d in &drift {
            println!("{}", d.diff);
        }
        eprintln!(
            "{} of {} managed files differ from what pgaas renders; run `pgaas render` to restore them",
            drift.len(),
            files.len()
        );
        return Ok(ExitCode::from(1));
    }
    let results = render::write_all(&files, root)?;
    for (path, outcome) in &results {
        let word = match outcome {
            WriteOutcome::Changed => "changed",
            WriteOutcome::Unchanged => "unchanged",
        };
        println!("{word:>9}  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
