//! `pgaas render`: write every managed file from settings (and, once tenants exist, control-DB
//! rows); `--root DIR` writes the set under DIR for inspection; `--check` changes nothing and
//! exits 1 with a unified diff when a file on disk differs from what would be rendered.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::{
    files::WriteOutcome,
    hba::HbaPolicy,
    pg::binaries::PgBinaries,
    render::{self, HostFacts, RenderInputs},
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

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if settings.cluster.enabled() {
        eprintln!(
            "note: this host is node {} of cluster {}: Patroni's and etcd's files are written by `pgaas install` \
             (run it again after changing the cluster section; it changes only what differs)",
            settings.cluster.node.as_deref().unwrap_or("?"),
            settings.cluster.name.as_deref().unwrap_or("?")
        );
    }
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
    // The access rules come from the control DB: without its rows, pg_hba.conf would lose every
    // allow-list, so the hba files are rendered only when the rows can be read.
    let mut policy = HbaPolicy::base(&settings);
    let (generation, skip_hba) = match read_rows(&settings) {
        Ok((tenants, generation)) => {
            policy.tenants = tenants;
            (u64::try_from(generation).unwrap_or(0), false)
        }
        Err(e) if args.root.is_some() => {
            eprintln!(
                "note: control DB not reachable ({e:#}); rendering the hba files without tenant rules"
            );
            (0, false)
        }
        Err(e) => {
            eprintln!(
                "warning: control DB not reachable ({e:#}); pg_hba.conf and pgbouncer_hba.conf are left as they are \
                 (they are only ever rendered with the allow-lists). Start PostgreSQL and run `pgaas render` again."
            );
            (0, true)
        }
    };
    let rules = crate::hba::compile_all(&policy)?;
    let files = render::managed_files(&RenderInputs {
        settings: &settings,
        facts: HostFacts {
            pg_version,
            memory_mb,
        },
        hba: &policy,
        rules: &rules,
        generation,
        pg_config_dir: settings.postgres.config_dir_for(pg_version),
        data_dir: settings.postgres.data_dir_for(pg_version),
        include_systemd: true,
        include_pgbouncer: settings.pgbouncer.enabled,
    })?;
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| {
            !(skip_hba
                && f.path
                    .file_name()
                    .is_some_and(|n| n == "pg_hba.conf" || n == "pgbouncer_hba.conf"))
        })
        .collect();
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
    // Live: the access files go through the host's applier (under the appliers' lock, validated
    // by PostgreSQL, reloaded, with the owner and mode their readers need); the rest is written
    // here.
    let (access, files): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| {
        root.is_none()
            && f.path
                .file_name()
                .is_some_and(|n| n == "pg_hba.conf" || n == "pgbouncer_hba.conf")
    });
    let results = render::write_all(&files, root)?;
    if !access.is_empty() {
        sync_access_files(&settings, pg_version)?;
        for f in &access {
            println!("{:>9}  {}", "synced", f.path.display());
        }
    }
    for (path, outcome) in &results {
        let word = match outcome {
            WriteOutcome::Changed => "changed",
            WriteOutcome::Unchanged => "unchanged",
        };
        println!("{word:>9}  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Rewrite the access files from the rows through the host's applier (see `HbaApplier::sync`).
fn sync_access_files(settings: &crate::settings::Settings, pg_version: u32) -> anyhow::Result<()> {
    let applier = crate::hba::apply::HbaApplier::for_host(settings, pg_version);
    let rt = super::tokio_runtime()?;
    rt.block_on(async {
        let pool = super::control_pool(settings)?;
        applier
            .sync(&pool)
            .await
            .context("rewriting the access files from the control DB")?;
        pool.close().await;
        Ok(())
    })
}

/// Tenants with allow-lists and the generation in force, read as the API role.
fn read_rows(
    settings: &crate::settings::Settings,
) -> anyhow::Result<(Vec<crate::hba::TenantAccess>, i64)> {
    let password = settings
        .control_db_password()
        .context("reading the control DB password file")?;
    let rt = super::tokio_runtime()?;
    rt.block_on(async {
        let opts = crate::control_db::connect_options(settings, password.as_ref());
        let mut conn = sqlx::Connection::connect_with(&opts)
            .await
            .context("connecting to the control DB")?;
        let tenants = crate::hba::apply::load_tenants(&mut conn).await?;
        let generation = crate::hba::apply::current_generation(&mut conn).await?;
        Ok((tenants, generation))
    })
}
