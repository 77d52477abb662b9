//! Native ACME (RFC 8555) certificates for PostgreSQL and PgBouncer, with instant-acme.
//!
//! `issue` creates or reuses an account, answers the CA's challenge itself (HTTP-01 or
//! TLS-ALPN-01 on a port bound *before* anything is ordered, so a busy port costs no order),
//! finalizes with an ECDSA P-256 key made here, and only when the whole chain is in hand swaps
//! key and chain atomically where the rendered configs point. Then it reloads PostgreSQL
//! (`pg_reload_conf()`, no restart, open sessions survive) and PgBouncer (SIGHUP), and checks
//! what each actually serves. `renew` decides from the days left (and the CA's renewal
//! information when it offers it) and repeats the issue with the stored parameters; `status`
//! reports both the file and what is served. Any failure before the swap leaves the old files
//! untouched and in use.

mod client;
mod dns;
mod install;
mod issue;
mod order;
mod responder;
mod served;
mod store;

use std::{fmt, net::SocketAddr, path::PathBuf};

pub use client::Eab;
pub use dns::{CLOUDFLARE_API, DnsProvider, record_name};
pub use install::{ReloadOutcome, TlsTarget};
pub use issue::{
    CertStatus, IssueReport, IssueRequest, RenewReport, RenewRequest, issue, renew, status,
};
pub use served::{Served, ServedCheck, check_served, served_leaf};
pub use store::{AcmeStore, IssueParams};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--staging`): untrusted certificates, generous limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the CA checks that we control the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// A TXT record in the name's zone: nothing listens here (ports 80 and 443 may be taken).
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeKind {
    /// The port the CA dials: what the responder listens on unless told otherwise.
    pub fn default_listen(self) -> SocketAddr {
        match self {
            Self::Http01 => SocketAddr::from(([0, 0, 0, 0], 80)),
            Self::TlsAlpn01 => SocketAddr::from(([0, 0, 0, 0], 443)),
            // Nothing is bound for DNS-01; kept for the stored parameters' shape.
            Self::Dns01 => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    fn acme_type(self) -> instant_acme::ChallengeType {
        match self {
            Self::Http01 => instant_acme::ChallengeType::Http01,
            Self::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
            Self::Dns01 => instant_acme::ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        })
    }
}

/// Everything that can go wrong, each saying what to do next. Until `Install` or later, the old
/// key and certificate are untouched.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the challenge port {port} ({addr}) is already in use by another program; stop it while the certificate is issued, or answer on another address with --http-listen ADDR:PORT (and forward the CA's port to it)"
    )]
    PortBusy { addr: SocketAddr, port: u16 },
    #[error(
        "cannot listen on the challenge port {port} ({addr}): {source}; ports below 1024 need root (run as root or with CAP_NET_BIND_SERVICE)"
    )]
    PortDenied {
        addr: SocketAddr,
        port: u16,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the ACME directory {url}; check the URL (--directory, --staging), DNS and that this host may open HTTPS connections to it (--ca-file for a private CA)"
    )]
    DirectoryUnreachable {
        url: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("{}", problem_message(.during, .kind.as_deref(), .detail))]
    Problem {
        during: &'static str,
        kind: Option<String>,
        detail: String,
    },
    #[error("the ACME server failed while {during}")]
    Protocol {
        during: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error(
        "the CA could not validate {identifier} with {challenge}: {detail}; make sure {identifier} resolves to this host and the CA can reach the challenge port from outside (firewall, port forwarding)"
    )]
    ChallengeRejected {
        identifier: String,
        challenge: ChallengeKind,
        detail: String,
    },
    #[error(
        "the DNS server {server} refused to update {name}: {detail}; check the TSIG key (--dns-key-file) and that the server lets that key update the zone (--dns-zone when it cannot tell which); nothing was changed"
    )]
    DnsUpdate {
        server: String,
        name: String,
        detail: String,
    },
    #[error(
        "the challenge record {name} did not appear at {server} within {secs} s; check that the server is the zone's primary and answers for it; nothing was changed"
    )]
    DnsPropagation {
        name: String,
        server: String,
        secs: u64,
    },
    #[error(
        "the CA marked the order invalid: {0}; nothing was changed, try again or pick another challenge type"
    )]
    OrderInvalid(String),
    #[error("the CA offers no {challenge} challenge for {identifier}; try --challenge {other}")]
    ChallengeNotOffered {
        identifier: String,
        challenge: ChallengeKind,
        other: ChallengeKind,
    },
    #[error("the ACME server did not finish within {0} s; nothing was changed, try again later")]
    Timeout(u64),
    #[error("making the key or the certificate request failed: {0}")]
    Key(#[from] rcgen::Error),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the CA returned a certificate that {0}; nothing was changed")]
    BadCertificate(String),
    #[error("writing the new key and certificate failed; the previous ones are back in place")]
    Install(#[source] crate::files::FileError),
    #[error(transparent)]
    Write(#[from] crate::files::FileError),
}

impl AcmeError {
    /// Bad arguments or settings: exit code 2 rather than 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }

    fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Sort an instant-acme error: problem documents keep their type and detail.
    fn acme(during: &'static str, e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(p) => Self::Problem {
                during,
                kind: p.r#type.clone(),
                detail: problem_detail(&p),
            },
            instant_acme::Error::Timeout(_) => Self::Timeout(ORDER_TIMEOUT_SECS),
            source => Self::Protocol { during, source },
        }
    }
}

/// How long one issuance may take, from the first request to the certificate.
pub(crate) const ORDER_TIMEOUT_SECS: u64 = 300;

pub(crate) fn problem_detail(p: &instant_acme::Problem) -> String {
    let mut out = p.detail.clone().unwrap_or_else(|| "no detail given".into());
    for sub in &p.subproblems {
        out.push_str(&format!("; {sub}"));
    }
    out
}

const PROBLEM_PREFIX: &str = "urn:ietf:params:acme:error:";

fn problem_message(during: &str, kind: Option<&str>, detail: &str) -> String {
    let short = kind.map(|k| k.trim_start_matches(PROBLEM_PREFIX));
    let hint = match short {
        Some("rateLimited") => {
            "the CA's rate limit was hit; wait until it resets (the detail says when) and use --staging while testing"
        }
        Some("externalAccountRequired") => {
            "this CA requires external account binding: pass --eab-kid and --eab-hmac-key (or ACME_EAB_HMAC_KEY) from your CA account"
        }
        Some("unauthorized") => {
            "the account may not be used for this; check the EAB credentials and the domain"
        }
        Some("rejectedIdentifier") => "the CA will not issue for this name; check --domain",
        Some("invalidContact") => "the CA refuses the contact address; check --email",
        Some("badNonce" | "serverInternal") => "a temporary problem at the CA; try again",
        _ => "nothing was changed; check the detail and try again",
    };
    format!(
        "the CA refused {during}: {detail} [{}]; {hint}",
        kind.unwrap_or("no problem type")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_keep_type_and_detail_and_say_what_to_do() {
        let e = AcmeError::Problem {
            during: "placing the order",
            kind: Some("urn:ietf:params:acme:error:rateLimited".into()),
            detail: "too many certificates (5) already issued for this exact set of domains".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("urn:ietf:params:acme:error:rateLimited"),
            "{msg}"
        );
        assert!(msg.contains("too many certificates (5)"), "{msg}");
        assert!(msg.contains("wait until it resets"), "{msg}");
    }

    #[test]
    fn a_busy_port_is_named() {
        let e = AcmeError::PortBusy {
            addr: "0.0.0.0:80".parse().unwrap(),
            port: 80,
        };
        assert!(e.to_string().contains("challenge port 80"));
    }
}
