//! `pgaas uninstall`: remove what `pgaas install` recorded in its manifest. Keeps the cluster
//! and the backups unless `--purge-data`, which needs the host name typed back (or given with
//! `--confirm-host` when there is no terminal).

use std::{
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
    sync::Arc,
};

use anyhow::bail;

use crate::{
    install::{self, Cx, TlsMode, manifest::Manifest, uninstall},
    system::RealSystem,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// No questions (except for --purge-data, which needs --confirm-host without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Also drop the cluster (every database) and delete the backups and the state directory.
    #[arg(long)]
    pub purge_data: bool,
    /// This host's name, confirming --purge-data without a terminal.
    #[arg(long, value_name = "HOSTNAME", requires = "purge_data")]
    pub confirm_host: Option<String>,
}

fn read_line(prompt: &str) -> String {
    eprint!("{prompt} ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
    line.trim().to_string()
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("pgaas uninstall must run as root: sudo pgaas uninstall");
    }
    let options = config.without_environment();
    let settings = match super::load_settings(options) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let path = Manifest::path(&settings.paths.state_dir, None);
    if !path.exists() {
        bail!(
            "{} does not exist: nothing was installed here by pgaas install (or it was uninstalled already)",
            path.display()
        );
    }
    let manifest = Manifest::load(&path)?;
    let terminal = std::io::stdin().is_terminal();
    if args.purge_data {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string();
        let typed = match (&args.confirm_host, terminal) {
            (Some(h), _) => h.clone(),
            (None, true) => read_line(&format!(
                "--purge-data drops every database on this host and deletes the backups. Type the host name ({host}) to confirm:"
            )),
            (None, false) => bail!("--purge-data without a terminal needs --confirm-host {host}"),
        };
        if typed != host {
            eprintln!("the host name did not match; nothing changed");
            return Ok(ExitCode::from(1));
        }
    } else if !args.yes {
        if !terminal {
            bail!("pass --yes to uninstall without a terminal");
        }
        let answer = read_line(&format!(
            "Remove the {} things pgaas install recorded (data and backups stay)? [y/N]",
            manifest.records.len()
        ));
        if !matches!(answer.as_str(), "y" | "Y" | "yes") {
            eprintln!("nothing changed");
            return Ok(ExitCode::from(1));
        }
    }
    let version = manifest
        .pg_version
        .or(settings.postgres.version)
        .unwrap_or(15);
    let vars = install::vars(&settings, version);
    let cx = Cx::new(
        None,
        Arc::new(RealSystem),
        settings.clone(),
        vars,
        TlsMode::SelfSigned,
        None,
        0,
    );
    let mut out = std::io::stdout();
    let removal = uninstall::uninstall(&cx, &manifest, args.purge_data, &mut out);
    if !removal.packages_kept.is_empty() {
        println!(
            "\nPackages installed by pgaas stay (other software may use them); remove them with:\n  apt-get purge {}",
            removal.packages_kept.join(" ")
        );
    }
    if !removal.failed.is_empty() {
        eprintln!(
            "\n{} action(s) failed; fix them and run `pgaas uninstall` again (the manifest is kept)",
            removal.failed.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !args.purge_data {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(settings.paths.state_dir.join("install-backup"));
        println!(
            "\npgaas is uninstalled; the cluster and the backups in {} are kept",
            settings.paths.backup_dir.display()
        );
    } else {
        println!("\npgaas and its data are removed");
    }
    Ok(ExitCode::SUCCESS)
}
