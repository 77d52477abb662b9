//! `pgaas serve`: the REST API against an existing cluster and control database.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::Context;

use crate::{
    api::{self, AppState},
    control_db,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Override api.listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let mut options = config.with_environment();
    if let Some(l) = args.listen {
        options = options.flag("api.listen", l);
    }
    let mut settings = match super::load_settings(options) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Err(e) = settings.resolve_secret_files() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let password = settings
        .control_db_password()
        .context("reading the control DB password file")?;
    let rt = super::tokio_runtime()?;
    rt.block_on(async move {
        let pool = control_db::pool(
            control_db::connect_options(&settings, password.as_ref()),
            settings.api.pool_size,
        );
        // A cluster's standby cannot write: its schema is the primary's, arriving by replication.
        let standby = settings.cluster.enabled()
            && sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&pool)
                .await
                .unwrap_or(false);
        if standby {
            tracing::info!("this node is a standby: the primary's pgaas applies the control DB migrations");
        } else if let Err(e) = control_db::migrate(&pool).await {
            tracing::warn!(error = %e, "control DB migrations not applied at start; /health will report it");
        }
        let listener = tokio::net::TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.api.listen))?;
        tracing::info!(listen = %settings.api.listen, "API listening");
        let settings = Arc::new(settings);
        let mut state = AppState::new(pool.clone(), settings.clone());
        state.tenants = super::host_tenants(pool, settings.clone());
        let mut pooler = false;
        if let Some(applier) = state.tenants.hba() {
            // Files in line with the rows before the first request (a crash may have left them behind).
            if let Err(e) = applier.sync(state.tenants.pool()).await {
                tracing::warn!(error = %e, "pg_hba.conf could not be brought in line with the control DB; run `pgaas doctor`");
            }
            pooler = settings.pgbouncer.enabled && applier.pooler.is_some();
            if settings.cluster.enabled() {
                // Every node renders its own files from the rows it sees (a standby's arrive
                // by replication), within half a second of a change.
                tokio::spawn(applier.clone().follow(
                    state.tenants.pool().clone(),
                    std::time::Duration::from_millis(250),
                    std::time::Duration::from_secs(30),
                ));
            }
        }
        let state = state.with_pooler_available(pooler);
        let (state, stats) = super::start_background(state).await;
        api::serve(listener, state, super::shutdown_signal()).await?;
        stats.abort();
        Ok(ExitCode::SUCCESS)
    })
}
