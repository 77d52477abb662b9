//! `pgaas status` (also installed as `pg-status`): services, version, connections and sizes per
//! database, certificate days left, last backups, hba generation.

use std::process::ExitCode;

use sqlx::postgres::PgConnectOptions;

use crate::{install::status, system::RealSystem};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let admin = PgConnectOptions::new()
        .socket(&settings.postgres.socket_dir)
        .port(settings.postgres.port)
        .username(&settings.postgres.superuser)
        .application_name("pgaas status");
    let rt = super::tokio_runtime()?;
    let st = rt.block_on(status::gather(&settings, &RealSystem, admin));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", status::render(&st));
    }
    Ok(if st.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
