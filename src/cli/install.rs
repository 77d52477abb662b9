//! `pgaas install`: bootstrap this host from the install playbook. Thin: resolve flags and the
//! existing settings into the install settings and TLS mode, ask (on a TTY only), run the
//! playbook, print the summary.

use std::{
    io::{BufRead, IsTerminal, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

use crate::{
    install::{self, Cx, TlsMode, host},
    settings::Settings,
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
    #[arg(
        long,
        value_name = "ADDR:PORT",
        requires = "domain",
        conflicts_with = "dns_server"
    )]
    pub http_listen: Option<SocketAddr>,
    /// DNS-01 instead of HTTP-01, for hosts whose port 80 belongs to something else.
    #[command(flatten)]
    pub dns: super::cert::DnsArgs,
    /// The name or address clients use to reach this host, with --self-signed: connection
    /// strings carry it and the certificate covers it (default: what the settings file says,
    /// else localhost). With --domain, the domain is the public host.
    #[arg(long, value_name = "NAME", conflicts_with = "domain", value_parser = public_host)]
    pub public_host: Option<String>,
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
            dns: args.dns.provider(),
        })
    };
    if let (Some(d), Some(e)) = (&args.domain, &args.email) {
        return acme(d.clone(), e.clone());
    }
    if args.dns.dns_server.is_some() {
        bail!(
            "--dns-server and --dns-key-file choose DNS-01 for an ACME certificate: give --domain and --email too"
        );
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
            dns: p.dns,
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

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let is_root = nix::unistd::Uid::effective().is_root();
    if !is_root && !args.dry_run {
        bail!(
            "pgaas install changes the system and must run as root: sudo pgaas install ... (or --dry-run to see the plan)"
        );
    }
    // Only the settings file, flags and an env file named with --env-file: the environment of
    // an interactive shell must not end up in the host's settings file.
    let mut options = config.without_environment();
    if let Some(v) = args.pg_version {
        options = options.flag("postgres.version", v);
    }
    if let Some(h) = &args.public_host {
        options = options.flag("public_host", h.as_str());
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
    // Installed by the pgaas package: the services run the package's binary where it put it
    // (upgrades replace it there), and its man pages and completions are the package's.
    let from_package = installed_by_package();
    let mut base = base;
    if from_package && base.paths.binary == Settings::default().paths.binary {
        base.paths.binary = PathBuf::from(PACKAGE_BINARY);
    }
    let settings = install::install_settings(base, pg_version, &tls);
    let memory_mb = match settings.postgres.memory_mb {
        Some(m) => m,
        None => {
            crate::host::memory_mb().context("reading /proc/meminfo (or set postgres.memory_mb)")?
        }
    };
    let vars = install::vars(&settings, pg_version);
    // A single host, a cluster's PostgreSQL node, or its witness: each runs its own steps.
    let role = install::playbook::Role::of(&settings);
    let steps = install::load_playbook(args.playbook.as_deref(), &vars, role)?;
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
    cx.docs = if from_package {
        None
    } else {
        // Only where something reads them: a shell that is not installed has no directory, and
        // install makes no directories for one (uninstall would leave them behind).
        let mut docs = super::docs::generated()?;
        docs.retain(|(path, _)| path.parent().is_some_and(Path::is_dir));
        Some(docs)
    };
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

/// Where the pgaas package puts the binary.
const PACKAGE_BINARY: &str = "/usr/bin/pgaas";

/// Whether this process is the binary the pgaas Debian package installed.
fn installed_by_package() -> bool {
    let exe = std::env::current_exe().and_then(std::fs::canonicalize);
    exe.is_ok_and(|e| e == Path::new(PACKAGE_BINARY))
        && std::fs::read_to_string("/var/lib/dpkg/info/pgaas.list")
            .is_ok_and(|list| list.lines().any(|l| l == PACKAGE_BINARY))
}

/// A DNS name or an IP address, as clients will type it.
fn public_host(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(s);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(s)
    } else {
        Err("a DNS name (db.example.com) or an IP address (203.0.113.5)".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn public_host_takes_names_and_addresses_and_refuses_the_rest() {
        assert_eq!(public_host("DB.Example.com.").unwrap(), "db.example.com");
        assert_eq!(public_host("203.0.113.5").unwrap(), "203.0.113.5");
        assert_eq!(public_host("2001:db8::1").unwrap(), "2001:db8::1");
        for bad in [
            "",
            "db..example.com",
            "-db.example.com",
            "db example.com",
            "db/x",
        ] {
            assert!(public_host(bad).is_err(), "{bad:?} accepted");
        }
        // With --domain the domain is the public host: both together is a mistake.
        let both = crate::cli::Cli::try_parse_from([
            "pgaas",
            "install",
            "--domain",
            "a.example.com",
            "--email",
            "x@example.com",
            "--public-host",
            "b.example.com",
        ]);
        assert!(both.is_err());
        let ok = crate::cli::Cli::try_parse_from([
            "pgaas",
            "install",
            "--self-signed",
            "--public-host",
            "db.internal",
        ]);
        assert!(ok.is_ok());
    }
}
