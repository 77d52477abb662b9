//! `pgaas cert issue|renew|status`: ACME certificates for PostgreSQL and PgBouncer. Thin: parse,
//! call `crate::acme`, print, and map the outcome to the documented exit codes.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use crate::{
    acme::{self, ChallengeKind, IssueReport, ReloadOutcome, RenewReport, Served, ServedCheck},
    settings::Settings,
};

const EXIT_CODES: &str = "\
Exit codes:
  0  done, or nothing to do (renew: more days left than --days)
  1  failure (the CA, the network, the challenge, writing files); the old key and
     certificate stay in place and in use
  2  bad arguments or settings
  3  the certificate is in place but a running PostgreSQL or PgBouncer does not serve it";

#[derive(Debug, clap::Subcommand)]
// Parsed once per process: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Obtain a certificate, install it where PostgreSQL and PgBouncer read it, reload them.
    #[command(after_help = EXIT_CODES)]
    Issue(IssueArgs),
    /// Renew the certificate when due (what pgaas-cert-renew.timer runs), reusing the account
    /// and the parameters of the last `cert issue`.
    #[command(after_help = EXIT_CODES)]
    Renew(RenewArgs),
    /// Show the certificate on disk and whether PostgreSQL and PgBouncer serve it.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The host name clients connect to (must resolve to this host for the CA).
    #[arg(long, value_name = "NAME")]
    pub domain: String,
    /// Contact address for the ACME account (expiry and problem notices).
    #[arg(long, value_name = "ADDR")]
    pub email: String,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, value_name = "URL", conflicts_with = "staging")]
    pub directory: Option<String>,
    /// Use Let's Encrypt's staging directory (untrusted certificates, for trying things out).
    #[arg(long)]
    pub staging: bool,
    /// Where the challenge responder listens (default 0.0.0.0:80 for http-01, 0.0.0.0:443 for
    /// tls-alpn-01). The CA always dials the standard port; forward it if you change this.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,
    /// Challenge type.
    #[arg(long, value_enum, default_value = "http-01")]
    pub challenge: ChallengeArg,
    /// External account binding key id (CAs such as ZeroSSL or a corporate CA require it).
    #[arg(long, value_name = "K", requires = "eab_hmac_key")]
    pub eab_kid: Option<String>,
    /// External account binding HMAC key, base64url. Prefer the environment variable: a flag
    /// is visible to every user in the process list.
    #[arg(
        long,
        value_name = "B64",
        env = "ACME_EAB_HMAC_KEY",
        hide_env_values = true,
        requires = "eab_kid"
    )]
    pub eab_hmac_key: Option<String>,
    /// Extra trusted root (PEM) for the ACME server's HTTPS, for private and test CAs.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Write server.key/server.crt here instead of where settings.tls points (no reloads then).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    #[command(flatten)]
    pub dns: DnsArgs,
}

/// Where DNS-01 writes its TXT records: RFC 2136 dynamic updates signed with a TSIG key, or
/// Cloudflare's API.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// For --challenge dns-01 with RFC 2136: the DNS server that takes updates for the name's
    /// zone (its primary), HOST or HOST:PORT.
    #[arg(long, value_name = "HOST[:PORT]", requires = "dns_key_file")]
    pub dns_server: Option<String>,
    /// For --challenge dns-01 with RFC 2136: the TSIG key allowed to update the zone, in BIND's
    /// format (`tsig-keygen NAME`), readable by its owner only.
    #[arg(long, value_name = "FILE", requires = "dns_server")]
    pub dns_key_file: Option<PathBuf>,
    /// For --challenge dns-01 with Cloudflare: a file (readable by its owner only) holding an
    /// API token with Zone.DNS Edit on the name's zone.
    #[arg(long, value_name = "FILE", conflicts_with = "dns_server")]
    pub cloudflare_token_file: Option<PathBuf>,
    /// Cloudflare's API base URL (default https://api.cloudflare.com/client/v4).
    #[arg(long, value_name = "URL", requires = "cloudflare_token_file")]
    pub cloudflare_api: Option<String>,
    /// With Cloudflare: check that the record is visible at this server (HOST[:PORT]) instead
    /// of at every name server Cloudflare lists for the zone.
    #[arg(long, value_name = "HOST[:PORT]", requires = "cloudflare_token_file")]
    pub dns_check_server: Option<String>,
    /// For --challenge dns-01: the zone holding the name, when it is not the name's parent.
    #[arg(long, value_name = "ZONE")]
    pub dns_zone: Option<String>,
}

impl DnsArgs {
    /// The provider these flags describe, if any.
    pub fn provider(&self) -> Option<acme::DnsProvider> {
        if let Some(token_file) = &self.cloudflare_token_file {
            return Some(acme::DnsProvider::Cloudflare {
                token_file: token_file.clone(),
                zone: self.dns_zone.clone(),
                api: self
                    .cloudflare_api
                    .clone()
                    .unwrap_or_else(|| acme::CLOUDFLARE_API.to_string()),
                check_server: self.dns_check_server.clone(),
            });
        }
        Some(acme::DnsProvider::Rfc2136 {
            server: self.dns_server.clone()?,
            key_file: self.dns_key_file.clone()?,
            zone: self.dns_zone.clone(),
        })
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ChallengeArg {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// A TXT record, written with RFC 2136 (--dns-server, --dns-key-file) or through Cloudflare
    /// (--cloudflare-token-file): no port here is used.
    #[value(name = "dns-01")]
    Dns01,
}

#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// Renew even when enough days are left.
    #[arg(long)]
    pub force: bool,
    /// Renew when this many days or fewer are left.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub days: i64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = super::tokio_runtime()?;
    let result = rt.block_on(async {
        match cmd {
            Command::Issue(args) => issue(&settings, args).await,
            Command::Renew(args) => renew(&settings, args).await,
            Command::Status(args) => status(&settings, args).await,
        }
    });
    match result {
        Ok(code) => Ok(code),
        Err(e) if e.is_usage() => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn issue(settings: &Settings, args: IssueArgs) -> Result<ExitCode, acme::AcmeError> {
    let eab = match (&args.eab_kid, &args.eab_hmac_key) {
        (Some(kid), Some(key)) => Some(acme::Eab::new(kid, key)?),
        _ => None,
    };
    let directory = match (args.directory, args.staging) {
        (Some(d), _) => d,
        (None, true) => acme::LETS_ENCRYPT_STAGING.to_string(),
        (None, false) => acme::LETS_ENCRYPT.to_string(),
    };
    let challenge = match args.challenge {
        ChallengeArg::Http01 => ChallengeKind::Http01,
        ChallengeArg::TlsAlpn01 => ChallengeKind::TlsAlpn01,
        ChallengeArg::Dns01 => ChallengeKind::Dns01,
    };
    eprintln!(
        "==> requesting a certificate for {} from {directory} ({challenge})",
        args.domain
    );
    let report = acme::issue(
        settings,
        acme::IssueRequest {
            domain: args.domain,
            email: args.email,
            directory,
            challenge,
            listen: args.http_listen,
            eab,
            ca_file: args.ca_file,
            tls_dir: args.tls_dir,
            dns: args.dns.provider(),
        },
    )
    .await?;
    Ok(print_issued(&report))
}

async fn renew(settings: &Settings, args: RenewArgs) -> Result<ExitCode, acme::AcmeError> {
    if args.days < 0 {
        return Err(acme::AcmeError::Usage("--days must not be negative".into()));
    }
    let report = acme::renew(
        settings,
        acme::RenewRequest {
            force: args.force,
            days: args.days,
        },
    )
    .await?;
    match report {
        RenewReport::NotDue {
            domain,
            days_left,
            threshold,
        } => {
            println!(
                "certificate for {domain} has {days_left} days left; renewal starts at {threshold} days: nothing to do"
            );
            Ok(ExitCode::SUCCESS)
        }
        RenewReport::Renewed { reason, report } => {
            eprintln!("==> renewed: {reason}");
            Ok(print_issued(&report))
        }
    }
}

fn print_issued(r: &IssueReport) -> ExitCode {
    println!("certificate for {} installed", r.domain);
    println!("  chain:      {}", r.cert_file.display());
    println!("  key:        {}", r.key_file.display());
    println!("  issuer:     {}", r.cert.issuer);
    println!("  days left:  {}", r.cert.days_left());
    println!(
        "  account:    {}",
        if r.account_created {
            "created"
        } else {
            "reused"
        }
    );
    println!("  PostgreSQL: {}", reload_word(&r.postgres));
    println!("  PgBouncer:  {}", reload_word(&r.pgbouncer));
    print_served(&r.served);
    let reload_failed = [&r.postgres, &r.pgbouncer]
        .iter()
        .any(|o| matches!(o, ReloadOutcome::Failed(_)));
    if r.served_mismatch() || reload_failed {
        eprintln!(
            "error: the new certificate is on disk but not in use everywhere (see above); reload the service (systemctl reload postgresql / pgbouncer) and check with `pgaas cert status`"
        );
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn reload_word(o: &ReloadOutcome) -> String {
    match o {
        ReloadOutcome::Reloaded => "reloaded".into(),
        ReloadOutcome::NotRunning => "not running (reads the files when it starts)".into(),
        ReloadOutcome::Disabled => "disabled in the settings".into(),
        ReloadOutcome::OtherFiles => "not reloaded (--tls-dir is not where it reads)".into(),
        ReloadOutcome::Failed(e) => format!("reload FAILED: {e}"),
    }
}

fn print_served(checks: &[ServedCheck]) {
    for c in checks {
        let state = match &c.served {
            Served::Matches => "serves this certificate".to_string(),
            Served::Differs { subject, not_after } => format!(
                "MISMATCH: serves another certificate ({subject}, not after {})",
                chrono::DateTime::from_timestamp(*not_after, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
            Served::NotRunning => "not running".into(),
            Served::Disabled => "disabled".into(),
            Served::Unreachable { detail } => {
                format!("MISMATCH: cannot read what is served: {detail}")
            }
        };
        println!("  served by {} on {}: {state}", c.service, c.address);
    }
}

async fn status(settings: &Settings, args: StatusArgs) -> Result<ExitCode, acme::AcmeError> {
    let s = acme::status(settings).await?;
    let mismatch = s.served.iter().any(ServedCheck::is_mismatch);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        println!("certificate: {}", s.cert_file.display());
        println!("  subject:    {}", s.subject);
        println!("  names:      {}", s.sans.join(", "));
        println!("  issuer:     {}", s.issuer);
        println!("  not after:  {} ({} days left)", s.not_after, s.days_left);
        if let (Some(d), Some(dir)) = (&s.acme_domain, &s.acme_directory) {
            println!("  ACME:       {d} from {dir}");
        }
        print_served(&s.served);
    }
    Ok(if mismatch {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
