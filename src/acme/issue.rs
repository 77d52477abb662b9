//! The three operations behind `pgaas cert`: issue, renew and status, composed from the account,
//! the responder, the order, the install and the served check. The order of steps is the safety
//! argument: bind the challenge port, then talk to the CA, then (everything in hand) swap the
//! files, then reload, then look at what is served.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use super::{
    AcmeError, ChallengeKind, ORDER_TIMEOUT_SECS,
    client::{AccountOrigin, Eab, create_account, http_client, open_account},
    dns::DnsPublisher,
    install::{ReloadOutcome, TlsTarget, check_pair, install, reload_pgbouncer, reload_postgres},
    order::{Answer, Issued, order_certificate},
    responder::Responder,
    served::{ServedCheck, check_served},
    store::{AcmeStore, IssueParams},
};
use crate::{pg::tls::CertInfo, settings::Settings};

/// What `pgaas cert issue` was asked for.
#[derive(Debug)]
pub struct IssueRequest {
    pub domain: String,
    pub email: String,
    pub directory: String,
    pub challenge: ChallengeKind,
    /// Where the responder listens; the challenge type's standard port when absent.
    pub listen: Option<SocketAddr>,
    pub eab: Option<Eab>,
    pub ca_file: Option<PathBuf>,
    pub tls_dir: Option<PathBuf>,
    /// For DNS-01: where the challenge records are written.
    pub dns: Option<super::DnsProvider>,
}

#[derive(Debug)]
pub struct IssueReport {
    pub domain: String,
    pub cert: CertInfo,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub account_created: bool,
    pub postgres: ReloadOutcome,
    pub pgbouncer: ReloadOutcome,
    pub served: Vec<ServedCheck>,
}

impl IssueReport {
    /// A running service that does not serve the new certificate: exit code 3.
    pub fn served_mismatch(&self) -> bool {
        self.served.iter().any(ServedCheck::is_mismatch)
    }
}

fn validate(req: &IssueRequest) -> Result<(), AcmeError> {
    let domain = req.domain.trim_end_matches('.');
    if !crate::settings::is_host_name(domain) || domain.starts_with("*.") {
        return Err(AcmeError::Usage(format!(
            "--domain {:?} is not a host name (one name, no wildcard)",
            req.domain
        )));
    }
    let email_ok = req.email.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty() && crate::settings::is_host_name(host) && host.contains('.')
    }) && !req
        .email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if !email_ok {
        return Err(AcmeError::Usage(format!(
            "--email {:?} is not an e-mail address; the CA writes to it about expiry and problems",
            req.email
        )));
    }
    match (req.challenge, &req.dns) {
        (ChallengeKind::Dns01, None) => {
            return Err(AcmeError::Usage(
                "--challenge dns-01 needs where to write the record: --dns-server HOST[:PORT] and --dns-key-file FILE (RFC 2136 with a TSIG key), or --cloudflare-token-file FILE".into(),
            ));
        }
        (ChallengeKind::Http01 | ChallengeKind::TlsAlpn01, Some(_)) => {
            return Err(AcmeError::Usage(
                "--dns-server, --dns-key-file and --cloudflare-token-file are for --challenge dns-01".into(),
            ));
        }
        _ => {}
    }
    if !req.directory.starts_with("https://") {
        return Err(AcmeError::Usage(format!(
            "--directory {:?} must be an https:// URL",
            req.directory
        )));
    }
    Ok(())
}

/// Issue a certificate and put it in use.
pub async fn issue(settings: &Settings, req: IssueRequest) -> Result<IssueReport, AcmeError> {
    validate(&req)?;
    let store = AcmeStore::for_settings(settings);
    let _lock = store.lock()?;
    let params = IssueParams {
        domain: req.domain.trim_end_matches('.').to_ascii_lowercase(),
        email: req.email,
        directory: req.directory,
        challenge: req.challenge,
        listen: req.listen.unwrap_or_else(|| req.challenge.default_listen()),
        ca_file: req.ca_file,
        tls_dir: req.tls_dir,
        dns: req.dns,
    };
    run(settings, &store, &params, req.eab.as_ref(), None).await
}

async fn run(
    settings: &Settings,
    store: &AcmeStore,
    params: &IssueParams,
    eab: Option<&Eab>,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<IssueReport, AcmeError> {
    let target = TlsTarget::from_settings(settings, params.tls_dir.as_deref())?;
    // Before any request to the CA: a busy port or an unreadable key must not cost an order.
    let answer = match (params.challenge, &params.dns) {
        (ChallengeKind::Dns01, Some(provider)) => {
            Answer::Dns(DnsPublisher::prepare(provider, params.ca_file.as_deref())?)
        }
        (ChallengeKind::Dns01, None) => {
            return Err(AcmeError::Usage(
                "the stored parameters ask for dns-01 but name no DNS server; run `pgaas cert issue --challenge dns-01 ...` again".into(),
            ));
        }
        (kind, _) => Answer::Serve(Responder::bind(kind, params.listen).await?),
    };
    let obtained = tokio::time::timeout(
        Duration::from_secs(ORDER_TIMEOUT_SECS),
        obtain(store, params, eab, &answer, replaces),
    )
    .await;
    answer.finish().await;
    let (issued, origin) = obtained.map_err(|_| AcmeError::Timeout(ORDER_TIMEOUT_SECS))??;
    let info = check_pair(&issued, &params.domain)?;
    install(&target, &issued)?;
    store.save_params(params)?;

    // Files elsewhere (--tls-dir) are not what the servers read: nothing to reload or compare.
    let in_use =
        target.cert_file == settings.tls.cert_file && target.key_file == settings.tls.key_file;
    let (postgres, pgbouncer, served) = if in_use {
        let postgres = reload_postgres(settings).await;
        let pgbouncer = reload_pgbouncer(settings).await;
        let served = check_served(settings, &info.der, Duration::from_secs(5)).await;
        (postgres, pgbouncer, served)
    } else {
        (
            ReloadOutcome::OtherFiles,
            ReloadOutcome::OtherFiles,
            Vec::new(),
        )
    };
    Ok(IssueReport {
        domain: params.domain.clone(),
        cert: info,
        cert_file: target.cert_file,
        key_file: target.key_file,
        account_created: origin == AccountOrigin::Created,
        postgres,
        pgbouncer,
        served,
    })
}

/// How many times an order is tried when the CA refuses a nonce.
const NONCE_ATTEMPTS: u32 = 3;

fn is_bad_nonce(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Problem { kind: Some(k), .. } if k.ends_with(":badNonce"))
}

/// The account and the order, tried again when the CA refuses a nonce: RFC 8555 (6.5) lets a
/// CA refuse any nonce and expects clients to retry (Let's Encrypt does it now and then; Pebble
/// does it to 5% of requests on purpose).
async fn obtain(
    store: &AcmeStore,
    params: &IssueParams,
    eab: Option<&Eab>,
    answer: &Answer,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<(Issued, AccountOrigin), AcmeError> {
    let mut attempt = 1;
    loop {
        match obtain_once(store, params, eab, answer, replaces.clone()).await {
            Err(e) if is_bad_nonce(&e) && attempt < NONCE_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "the CA refused a nonce; trying again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn obtain_once(
    store: &AcmeStore,
    params: &IssueParams,
    eab: Option<&Eab>,
    answer: &Answer,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<(Issued, AccountOrigin), AcmeError> {
    let ca_file = params.ca_file.as_deref();
    let (account, origin) =
        open_account(store, &params.directory, ca_file, &params.email, eab).await?;
    match order_certificate(&account, &params.domain, answer, replaces.clone()).await {
        // The CA forgot the stored account (a test CA restarted, or it was deactivated).
        Err(AcmeError::Problem { kind: Some(k), .. })
            if origin == AccountOrigin::Reused && k.ends_with(":accountDoesNotExist") =>
        {
            tracing::warn!("the CA no longer knows the stored account; creating a new one");
            let account =
                create_account(store, &params.directory, ca_file, &params.email, eab).await?;
            let issued = order_certificate(&account, &params.domain, answer, replaces).await?;
            Ok((issued, AccountOrigin::Created))
        }
        result => result.map(|issued| (issued, origin)),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RenewRequest {
    pub force: bool,
    /// Renew when this many days or fewer are left.
    pub days: i64,
}

#[derive(Debug)]
pub enum RenewReport {
    NotDue {
        domain: String,
        days_left: i64,
        threshold: i64,
    },
    Renewed {
        reason: String,
        report: Box<IssueReport>,
    },
}

/// Renew with the stored parameters when due (or forced).
pub async fn renew(settings: &Settings, req: RenewRequest) -> Result<RenewReport, AcmeError> {
    let store = AcmeStore::for_settings(settings);
    let _lock = store.lock()?;
    let params = store.load_params()?.ok_or_else(|| {
        AcmeError::Usage(format!(
            "no certificate was issued here with `pgaas cert issue` ({} is missing); run that first",
            store.params_file().display()
        ))
    })?;
    let target = TlsTarget::paths(settings, params.tls_dir.as_deref());
    let current = target.current()?;
    let ari = match &current {
        Some(cert) => renewal_window(&store, &params, cert).await,
        None => None,
    };
    let reason = match &current {
        None => Some(format!("{} is missing", target.cert_file.display())),
        Some(_) if req.force => Some("forced with --force".to_string()),
        Some(c) if c.days_left() <= req.days => Some(format!(
            "{} days left, renewing at {} or fewer",
            c.days_left(),
            req.days
        )),
        Some(_) if ari.as_ref().is_some_and(|(open, _)| *open) => {
            Some("the CA's renewal information says renew now".to_string())
        }
        Some(c) => {
            return Ok(RenewReport::NotDue {
                domain: params.domain,
                days_left: c.days_left(),
                threshold: req.days,
            });
        }
    };
    let replaces = ari.map(|(_, id)| id);
    let report = run(settings, &store, &params, None, replaces).await?;
    Ok(RenewReport::Renewed {
        reason: reason.unwrap_or_default(),
        report: Box::new(report),
    })
}

/// ACME renewal information (RFC 9773) when the CA offers it: whether its suggested window has
/// opened, and the id to name in the replacing order. Absence or failure is no error: the day
/// count decides then.
async fn renewal_window(
    store: &AcmeStore,
    params: &IssueParams,
    cert: &CertInfo,
) -> Option<(bool, CertificateIdentifier<'static>)> {
    let credentials = store.load_account(&params.directory).ok()??;
    let lookup = async {
        let http = http_client(params.ca_file.as_deref()).ok()?;
        let account = Account::builder_with_http(http)
            .from_credentials(credentials)
            .await
            .ok()?;
        let der = CertificateDer::from(cert.der.clone());
        let id = CertificateIdentifier::try_from(&der).ok()?.into_owned();
        match account.renewal_info(&id).await {
            Ok((info, _)) => Some((
                info.suggested_window.start <= time::OffsetDateTime::now_utc(),
                id,
            )),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "renewal information unavailable; deciding by days left");
                None
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), lookup)
        .await
        .ok()
        .flatten()
}

/// `pgaas cert status`: the file and what each service serves.
#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub subject: String,
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i64,
    /// The stored issue parameters' domain and directory, when issued with ACME.
    pub acme_domain: Option<String>,
    pub acme_directory: Option<String>,
    pub served: Vec<ServedCheck>,
}

pub async fn status(settings: &Settings) -> Result<CertStatus, AcmeError> {
    let store = AcmeStore::for_settings(settings);
    let params = store.load_params()?;
    let target = TlsTarget::paths(settings, params.as_ref().and_then(|p| p.tls_dir.as_deref()));
    let cert = target.current()?.ok_or_else(|| {
        AcmeError::Usage(format!(
            "{} does not exist; run `pgaas cert issue`",
            target.cert_file.display()
        ))
    })?;
    let in_use = target.cert_file == settings.tls.cert_file;
    let served = if in_use {
        check_served(settings, &cert.der, Duration::ZERO).await
    } else {
        Vec::new()
    };
    Ok(CertStatus {
        not_after: chrono::DateTime::from_timestamp(cert.not_after, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        days_left: cert.days_left(),
        subject: cert.subject,
        sans: cert.sans,
        issuer: cert.issuer,
        cert_file: target.cert_file,
        key_file: target.key_file,
        acme_domain: params.as_ref().map(|p| p.domain.clone()),
        acme_directory: params.map(|p| p.directory),
        served,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_nonce_is_retried() {
        let problem = |kind: &str| AcmeError::Problem {
            during: "fetching the authorization",
            kind: Some(format!("urn:ietf:params:acme:error:{kind}")),
            detail: "x".into(),
        };
        assert!(is_bad_nonce(&problem("badNonce")));
        assert!(!is_bad_nonce(&problem("rateLimited")));
        assert!(!is_bad_nonce(&AcmeError::Timeout(1)));
    }
}
