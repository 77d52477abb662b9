//! `pgaas config check`: load the settings exactly as every command does and report every
//! problem at once, with file and line; exit 2 when there is any. A settings file with nothing
//! in it (empty, or only comments) is such a problem: it almost always means the wrong file.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

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
            if let Some(why) = empty_file(&shown) {
                eprintln!(
                    "{}: {why}; every setting would be a default, which is rarely what was meant: check the path, or write the settings (`pgaas install` writes a commented file)",
                    shown.display()
                );
                return Ok(ExitCode::from(2));
            }
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

/// Why the settings file at `path` holds no settings (empty, or only blank lines and
/// comments), or `None` when it holds some or cannot be read (the load reports that).
fn empty_file(path: &Path) -> Option<&'static str> {
    let text = std::fs::read_to_string(path).ok()?;
    if text.trim().is_empty() {
        return Some("the settings file is empty");
    }
    let content = text
        .lines()
        .map(str::trim)
        .any(|l| !l.is_empty() && !l.starts_with('#') && l != "---" && l != "...");
    (!content).then_some("the settings file holds only comments")
}
