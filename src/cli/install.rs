//! `pgaas install`: bootstrap this host from the install playbook. Thin: resolve flags and the
//! existing settings into the install settings and TLS mode, ask (on a TTY only), run the
//! playbook, print the summary.

use std::{
    io::{BufRead, IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

use crate::{
    install::{self, Cx, TlsMode, host},
    settings::{LoadOptions, Settings},
    system::RealSystem,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Public host name for an ACME certificate (needs --email; the CA must reach port 80 here).
    #[arg(
        long,
        value_name = "NAME",
        requires = "email",
        conflicts_with = "self_signed"
    )]
    pub domain: Option<String>,
    /// Contact address for the ACME account.
    #[arg(long, value_name = "ADDR", requires = "domain")]
    pub email: Option<String>,
    /// A local CA instead of ACME, for hosts without a public name.
    #[arg(long)]
    pub self_signed: bool,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, value_name = "URL", requires = "domain")]
    pub acme_directory: Option<String>,
    /// Extra trusted root (PEM) for the ACME server (private and test CAs).
    #[arg(long, value_name = "PEM", requires = "domain")]
    pub acme_ca_file: Option<PathBuf>,
    /// Where the HTTP-01 responder listens (default 0.0.0.0:80).
    #[arg(long, value_name = "ADDR:PORT", requires = "domain")]
    pub http_listen: Option<SocketAddr>,
    /// Answer yes: no questions, even on a terminal.
    #[arg(long)]
    pub yes: bool,
    /// PostgreSQL major version (default: the distribution's: 15 on Debian 12, 16 on Ubuntu
    /// 24.04, 17 on Debian 13).
    #[arg(long, value_name = "N")]
    pub pg_version: Option<u32>,
    /// Print the plan and the diffs of files that would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run this playbook instead of the embedded install.yaml.
    #[arg(long, value_name = "FILE")]
    pub playbook: Option<PathBuf>,
}

fn email_ok(email: &str) -> bool {
    email.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty() && crate::settings::is_host_name(host) && host.contains('.')
    }) && !email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

fn ask(question: &str) -> anyhow::Result<String> {
    eprint!("{question} ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// TLS from flags; else what the last install used; else ask on a terminal.
fn tls_mode(args: &Args, settings: &Settings, interactive: bool) -> anyhow::Result<TlsMode> {
    let acme = |domain: String, email: String| -> anyhow::Result<TlsMode> {
        if !crate::settings::is_host_name(&domain) || domain.parse::<std::net::IpAddr>().is_ok() {
            bail!(
                "--domain {domain:?} is not a DNS name; use --self-signed for a host without one"
            );
        }
        if !email_ok(&email) {
            bail!("--email {email:?} is not an e-mail address");
        }
        Ok(TlsMode::Acme {
            domain,
            email,
            directory: args
                .acme_directory
                .clone()
                .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.into()),
            ca_file: args.acme_ca_file.clone(),
            listen: args.http_listen,
        })
    };
    if let (Some(d), Some(e)) = (&args.domain, &args.email) {
        return acme(d.clone(), e.clone());
    }
    if args.self_signed {
        return Ok(TlsMode::SelfSigned);
    }
    if let Ok(Some(p)) = crate::acme::AcmeStore::for_settings(settings).load_params() {
        return Ok(TlsMode::Acme {
            domain: p.domain,
            email: p.email,
            directory: p.directory,
            ca_file: p.ca_file,
            listen: Some(p.listen),
        });
    }
    if settings.tls.ca_file.as_ref().is_some_and(|p| p.exists()) {
        return Ok(TlsMode::SelfSigned);
    }
    if !interactive {
        bail!(
            "choose the certificate: --domain NAME --email ADDR (ACME) or --self-signed (local CA)"
        );
    }
    let domain =
        ask("Public DNS name of this host for a Let's Encrypt certificate (empty: local CA):")?;
    if domain.is_empty() {
        return Ok(TlsMode::SelfSigned);
    }
    let email = ask("E-mail address for the ACME account:")?;
    acme(domain, email)
}

pub fn run(config: Option<PathBuf>, args: Args) -> anyhow::Result<ExitCode> {
    let is_root = nix::unistd::Uid::effective().is_root();
    if !is_root && !args.dry_run {
        bail!(
            "pgaas install changes the system and must run as root: sudo pgaas install ... (or --dry-run to see the plan)"
        );
    }
    // Only the settings file and flags: the environment of an interactive shell must not end
    // up in the host's settings file.
    let mut options = LoadOptions {
        config_file: config,
        dotenv_dir: None,
        env: Vec::new(),
        flags: Vec::new(),
    };
    if let Some(v) = args.pg_version {
        options = options.flag("postgres.version", v);
    }
    let base = match super::load_settings(options) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pg_version = match base
        .postgres
        .version
        .or_else(|| host::distribution_pg_version(&os_release))
    {
        Some(v) => v,
        None => bail!(
            "this distribution is not one pgaas knows (Debian 12/13, Ubuntu 24.04); pass --pg-version 15, 16 or 17"
        ),
    };
    let interactive = std::io::stdin().is_terminal() && !args.yes;
    let tls = tls_mode(&args, &base, interactive)?;
    let settings = install::install_settings(base, pg_version, &tls);
    let memory_mb = match settings.postgres.memory_mb {
        Some(m) => m,
        None => {
            crate::host::memory_mb().context("reading /proc/meminfo (or set postgres.memory_mb)")?
        }
    };
    let vars = install::vars(&settings, pg_version);
    let steps = install::load_playbook(args.playbook.as_deref(), &vars)?;
    if interactive && !args.dry_run {
        let answer = ask(&format!(
            "Install pgaas with PostgreSQL {pg_version} on this host ({} steps; --dry-run shows them)? [y/N]",
            steps.len()
        ))?;
        if !matches!(answer.as_str(), "y" | "Y" | "yes") {
            eprintln!("nothing changed");
            return Ok(ExitCode::from(1));
        }
    }
    let admin = PgConnectOptions::new()
        .socket(&settings.postgres.socket_dir)
        .port(settings.postgres.port)
        .username(&settings.postgres.superuser)
        .application_name("pgaas install");
    let mut cx = Cx::new(
        None,
        Arc::new(RealSystem),
        settings,
        vars,
        tls,
        Some(admin),
        memory_mb,
    );
    let mut out = std::io::stdout();
    let report = install::run(&steps, &mut cx, args.dry_run, &mut out);
    if !report.success() {
        return Ok(ExitCode::FAILURE);
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
    } else {
        print!("{}", install::summary(&cx));
    }
    Ok(ExitCode::SUCCESS)
}
