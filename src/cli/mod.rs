//! The command line: one file per subcommand, each an `Args` struct and a `run()` that calls
//! library code. Only this module knows clap.

mod allow;
mod archive;
mod backup;
mod cert;
mod cluster;
mod config;
mod db;
mod dev;
pub mod docs;
mod doctor;
mod install;
mod key;
mod render;
mod restore;
mod serve;
mod status;
mod uninstall;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::settings::{LoadOptions, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "pgaas",
    version,
    about = "Self-hosted PostgreSQL-as-a-service in one binary"
)]
pub struct Cli {
    #[command(flatten)]
    pub sources: Sources,
    #[command(subcommand)]
    pub command: Command,
}

/// Where a command's settings come from, besides the process environment.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Sources {
    /// Settings file (default /etc/pgaas/pgaas.yaml when it exists).
    #[arg(long, global = true, env = "PGAAS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read environment variables (KEY=value lines, the original API's `.env`) from this file;
    /// the process environment wins. No command reads a `.env` unless told, except `pgaas dev`,
    /// which reads the working directory's.
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
}

impl Sources {
    /// The settings file, the env file when named, and the process environment.
    pub(crate) fn with_environment(&self) -> LoadOptions {
        self.add_env_file(LoadOptions::from_process(self.config.clone()))
    }

    /// The settings file and the env file when named, without the process environment.
    pub(crate) fn without_environment(&self) -> LoadOptions {
        self.add_env_file(LoadOptions {
            config_file: self.config.clone(),
            ..LoadOptions::default()
        })
    }

    fn add_env_file(&self, options: LoadOptions) -> LoadOptions {
        match &self.env_file {
            Some(path) => options.env_file(path.clone()),
            None => options,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform locally without root: cluster, TLS, control DB and API.
    Dev(dev::Args),
    /// Serve the REST API.
    Serve(serve::Args),
    /// Render every managed file from settings; --check reports drift.
    Render(render::Args),
    /// Inspect the settings.
    #[command(subcommand)]
    Config(config::Command),
    /// Tenant databases: list, show, create, delete.
    #[command(subcommand)]
    Db(db::Command),
    /// Allow an address or network to reach a database (its allow-list); in force on return.
    Allow(allow::AllowArgs),
    /// Remove an allow-list entry; the last one removed opens the database to any address (TLS).
    Deny(allow::DenyArgs),
    /// API keys: create, list, revoke.
    #[command(subcommand)]
    Key(key::Command),
    /// Check the control DB and migrations, finish or undo stuck work, report orphans.
    Doctor(doctor::Args),
    /// TLS certificates from an ACME CA (Let's Encrypt by default): issue, renew, status.
    #[command(subcommand)]
    Cert(cert::Command),
    /// Bootstrap this host (root): PostgreSQL, PgBouncer, TLS, control DB, API and timers.
    Install(install::Args),
    /// Services, version, connections, sizes, certificate, backups, hba generation; on a
    /// cluster, its members and etcd.
    Status(status::Args),
    /// High availability: the secrets a cluster's nodes share.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Remove what `pgaas install` created (keeps data and backups unless --purge-data).
    Uninstall(uninstall::Args),
    /// Run the restore jobs the API queues, and keep the backup status fresh (a service, as
    /// root or the cluster's OS user).
    Worker,
    /// Backups: run (pg_dump, verified, checksummed), list, prune.
    #[command(subcommand)]
    Backup(backup::Command),
    /// Restore a database from a verified backup, in place or --into a new database.
    Restore(restore::Args),
    /// Print a shell completion script (bash: `pgaas completions bash > /etc/bash_completion.d/pgaas`).
    Completions(docs::CompletionsArgs),
    /// Write the man pages (one per command) into a directory.
    Man(docs::ManArgs),
}

/// Parse, dispatch, and turn errors into the right exit code with the whole error chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(cli.sources, args),
        Command::Serve(args) => serve::run(cli.sources, args),
        Command::Render(args) => render::run(cli.sources, args),
        Command::Config(cmd) => config::run(cli.sources, cmd),
        Command::Db(cmd) => db::run(cli.sources, cmd),
        Command::Allow(args) => allow::allow(cli.sources, args),
        Command::Deny(args) => allow::deny(cli.sources, args),
        Command::Key(cmd) => key::run(cli.sources, cmd),
        Command::Doctor(args) => doctor::run(cli.sources, args),
        Command::Cert(cmd) => cert::run(cli.sources, cmd),
        Command::Install(args) => install::run(cli.sources, args),
        Command::Status(args) => status::run(cli.sources, args),
        Command::Cluster(cmd) => cluster::run(cli.sources, cmd),
        Command::Uninstall(args) => uninstall::run(cli.sources, args),
        Command::Worker => archive::run_worker(cli.sources),
        Command::Backup(cmd) => backup::run(cli.sources, cmd),
        Command::Restore(args) => restore::run(cli.sources, args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Load settings for a command; on failure print every problem and exit 2.
pub(crate) fn load_settings(options: LoadOptions) -> Result<Settings, ExitCode> {
    Settings::load(&options).map_err(|errors| {
        eprint!("{errors}");
        eprintln!("Fix these in the settings file or environment, then run `pgaas config check`.");
        ExitCode::from(2)
    })
}

pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// What the API does before it answers: finish or undo half-done work, then keep usage stats
/// (attached to the state, so `/metrics` reports them).
pub(crate) async fn start_background(
    state: crate::api::AppState,
) -> (crate::api::AppState, tokio::task::JoinHandle<()>) {
    match state.tenants.reconcile(std::time::Duration::ZERO).await {
        Ok(report) if !report.is_clean() => tracing::warn!(?report, "reconciler acted at start"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "reconciler could not run at start; run `pgaas doctor`")
        }
    }
    let api = &state.settings.api;
    let collector = crate::tenant::StatsCollector::new(
        state.tenants.clone(),
        std::time::Duration::from_secs(api.stats_interval_secs),
        std::time::Duration::from_secs(api.stats_size_interval_secs),
    );
    let handle = collector.clone().spawn();
    (state.with_stats(collector), handle)
}

/// The tenant service of this host: allow-lists write the host's hba files (see
/// `HbaApplier::for_host`); without PostgreSQL binaries to learn the version from, and no
/// `postgres.version` setting, allow-list changes are refused with a message.
pub(crate) fn host_tenants(
    pool: sqlx::PgPool,
    settings: std::sync::Arc<crate::settings::Settings>,
) -> crate::tenant::TenantService {
    let service = crate::tenant::TenantService::new(pool, settings.clone());
    let version = settings.postgres.version.or_else(|| {
        crate::pg::binaries::PgBinaries::find(None)
            .ok()
            .map(|b| b.version)
    });
    match version {
        Some(v) => service.with_hba(crate::hba::apply::HbaApplier::for_host(&settings, v)),
        None => service,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The control-DB pool the operator commands use: the API role, as `pgaas serve` connects.
pub(crate) fn control_pool(settings: &crate::settings::Settings) -> anyhow::Result<sqlx::PgPool> {
    let password = settings
        .control_db_password()
        .map_err(|e| anyhow::Error::new(e).context("reading the control DB password file"))?;
    Ok(crate::control_db::pool(
        crate::control_db::connect_options(settings, password.as_ref()),
        2,
    ))
}

/// Columns padded to their widest cell (in characters, so names with accents line up).
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// What every control-DB command does around its work: load the settings (their problems are
/// the exit code), start a runtime, open the pool as the API role, run `f`, close the pool.
pub(crate) fn with_control_db<F, Fut>(config: Sources, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(std::sync::Arc<crate::settings::Settings>, sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let settings = match load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let pool = control_pool(&settings)?;
        let result = f(std::sync::Arc::new(settings), pool.clone()).await;
        pool.close().await;
        result
    })
}

/// Turn tenant-service errors into messages that say what to do, with the whole chain of
/// causes, and the exit code scripts can test: 2 for a value the operator must change (an
/// unknown database or entry among them), 1 for everything else.
pub(crate) fn explain(e: crate::tenant::TenantError) -> anyhow::Result<ExitCode> {
    use crate::tenant::TenantError;
    let (hint, code) = match &e {
        TenantError::Validation(_) => (None, 2),
        TenantError::NotFound(_) => (Some("`pgaas db list` shows the ids"), 2),
        TenantError::EntryNotFound(_) => (Some("`pgaas allow list DB` shows the entries"), 2),
        TenantError::Db(_) => (
            Some("is PostgreSQL running and the settings file right? `pgaas doctor` checks"),
            1,
        ),
        TenantError::Busy(_) | TenantError::Unavailable(_) => (
            Some("nothing was changed; run the same command again in a moment"),
            1,
        ),
        _ => (None, 1),
    };
    eprintln!("error: {}", crate::error_chain(&e));
    if let Some(h) = hint {
        eprintln!("  {h}");
    }
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and option says what it does in `--help` (and so in the man pages).
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != "pgaas" {
                missing.push(format!("{path}: command"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
    }
}
