//! `pgaas dev`: bring the platform up under a state directory and serve the API until Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;

use crate::{
    api::{self, AppState},
    dev::{DevOptions, DevPlatform, install_deps},
    settings::EnvFile,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the cluster, certificates and secrets live.
    #[arg(long, default_value = ".pgaas", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1:3000", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// PostgreSQL port of the local cluster.
    #[arg(long, default_value_t = 55432)]
    pub pg_port: u16,
    /// PgBouncer port of the local platform.
    #[arg(long, default_value_t = 56432)]
    pub pgbouncer_port: u16,
    /// Install PostgreSQL, PgBouncer and pgBackRest with apt-get when any of them is missing
    /// (root only).
    #[arg(long)]
    pub install_deps: bool,
    /// Bring everything up, print the summary, stop again (for scripts and checks).
    #[arg(long, hide = true)]
    pub exit_after_start: bool,
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let mut options = config.with_environment();
    if options.env_file.is_none() {
        // A developer's `.env` next to the checkout, as the original API read it; only here:
        // `pgaas dev` runs as the developer, in the developer's own directory.
        options.env_file = Some(EnvFile {
            path: PathBuf::from(".env"),
            required: false,
        });
    }
    let mut settings = match super::load_settings(options) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Err(e) = settings.resolve_secret_files() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    if args.install_deps
        && (crate::pg::binaries::PgBinaries::find(settings.postgres.version).is_err()
            || crate::pg::pgbouncer::find_binary().is_none()
            || crate::archive::find_binary(&settings.archive.binary).is_none())
    {
        install_deps()?;
    }
    let opts = DevOptions {
        state_dir: args.state_dir.clone(),
        listen: args.listen,
        pg_port: args.pg_port,
        pgbouncer_port: args.pgbouncer_port,
    };
    let rt = super::tokio_runtime()?;
    rt.block_on(async move {
        let platform = DevPlatform::up(settings, &opts).await?;
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                platform.down().ok();
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot listen on {} (is another program using it? choose another with --listen)",
                    args.listen
                )));
            }
        };
        println!("{}", platform.summary());
        let mut state = AppState::new(platform.pool.clone(), Arc::new(platform.settings.clone()))
            .with_pooler_available(platform.pooler_available());
        state.tenants = platform.tenants();
        if args.exit_after_start {
            drop(listener);
        } else {
            let (state, stats) = super::start_background(state).await;
            // The restore worker runs in this process: dev runs as the cluster's OS user.
            let worker = platform.archive.clone().map(|host| {
                tokio::spawn(async move {
                    if let Err(e) = crate::archive::jobs::work(host, std::time::Duration::from_secs(5)).await {
                        tracing::error!(error = %crate::error_chain(&e), "the restore worker stopped");
                    }
                })
            });
            api::serve(listener, state, super::shutdown_signal()).await.context("serving the API")?;
            stats.abort();
            if let Some(w) = worker {
                w.abort();
            }
        }
        eprintln!("==> stopping PostgreSQL");
        platform.pool.close().await;
        platform.down()?;
        Ok(ExitCode::SUCCESS)
    })
}
