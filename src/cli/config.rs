//! `pgaas config check`: load the settings exactly as every command does and report every
//! problem at once, with file and line; exit 2 when there is any.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the settings (file, --env-file, environment); exit 2 on any problem.
    Check,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check => {
            let shown = config
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::settings::DEFAULT_CONFIG_FILE));
            match Settings::load(&config.with_environment()) {
                Ok(_) => {
                    println!("settings OK ({})", shown.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
