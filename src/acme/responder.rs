//! Answering the CA's challenge ourselves, so nothing else (a web server, certbot) has to run.
//!
//! The socket is bound when the responder is created, before any account or order exists: a busy
//! or forbidden port is reported by number and costs the CA nothing. Answers are added once the
//! order names its tokens, and the responder stays up until the order is ready (the CA validates
//! more than once, from several vantage points). HTTP-01 serves the key authorization under
//! `/.well-known/acme-challenge/<token>`; TLS-ALPN-01 (RFC 8737) presents, only to clients
//! asking for the `acme-tls/1` protocol, a self-signed certificate for the name carrying the
//! digest of the key authorization.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair, SanType};
use rustls::{server::ResolvesServerCert, sign::CertifiedKey};
use rustls_pki_types::PrivateKeyDer;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use super::{AcmeError, ChallengeKind};

const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// A bound, serving challenge responder. Stop it with [`Responder::stop`].
pub struct Responder {
    pub kind: ChallengeKind,
    tokens: Tokens,
    certs: Arc<AlpnCerts>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Responder {
    pub async fn bind(kind: ChallengeKind, addr: SocketAddr) -> Result<Self, AcmeError> {
        let listener = TcpListener::bind(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => AcmeError::PortBusy {
                addr,
                port: addr.port(),
            },
            std::io::ErrorKind::PermissionDenied => AcmeError::PortDenied {
                addr,
                port: addr.port(),
                source: e,
            },
            _ => AcmeError::Io {
                path: format!("challenge listener {addr}").into(),
                source: e,
            },
        })?;
        let tokens = Tokens::default();
        let certs = Arc::new(AlpnCerts::default());
        let (tx, rx) = oneshot::channel::<()>();
        let task = match kind {
            ChallengeKind::Http01 => {
                let app = Router::new()
                    .route("/.well-known/acme-challenge/{token}", get(http01_answer))
                    .with_state(tokens.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                })
            }
            ChallengeKind::TlsAlpn01 => {
                let config = alpn_server_config(certs.clone())?;
                tokio::spawn(serve_alpn(listener, config, rx))
            }
            ChallengeKind::Dns01 => {
                return Err(AcmeError::Usage(
                    "dns-01 is answered in DNS, not by a listener".into(),
                ));
            }
        };
        Ok(Self {
            kind,
            tokens,
            certs,
            shutdown: Some(tx),
            task,
        })
    }

    /// Arm the answer for one challenge before telling the CA it may validate.
    pub fn add(
        &self,
        identifier: &str,
        token: &str,
        key_authorization: &instant_acme::KeyAuthorization,
    ) -> Result<(), AcmeError> {
        match self.kind {
            ChallengeKind::Http01 => {
                lock(&self.tokens)
                    .insert(token.to_string(), key_authorization.as_str().to_string());
            }
            ChallengeKind::TlsAlpn01 => {
                let key = validation_cert(identifier, key_authorization.digest().as_ref())?;
                lock(&self.certs.by_name).insert(sni_name(identifier), Arc::new(key));
            }
            // Never bound for dns-01 (see `bind`).
            ChallengeKind::Dns01 => {}
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A validator holding a keep-alive connection must not keep the command waiting.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn http01_answer(
    State(tokens): State<Tokens>,
    Path(token): Path<String>,
) -> (StatusCode, String) {
    match lock(&tokens).get(&token) {
        Some(answer) => (StatusCode::OK, answer.clone()),
        None => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
    }
}

/// The name the validator sends as SNI: the DNS name itself, or for an IP address its reverse
/// name (RFC 8738).
fn sni_name(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(ip)) => {
            let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
            let mut labels: Vec<String> = hex.chars().rev().map(String::from).collect();
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
        Err(_) => identifier.to_ascii_lowercase(),
    }
}

fn validation_cert(identifier: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![match identifier.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(identifier.try_into()?),
    }];
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .map_err(|e| AcmeError::Tls(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[derive(Debug, Default)]
struct AlpnCerts {
    by_name: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for AlpnCerts {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: the validation certificate is for acme-tls/1 clients only.
        let alpn = hello.alpn()?.any(|p| p == ACME_TLS_ALPN);
        let name = hello.server_name()?.to_ascii_lowercase();
        alpn.then(|| lock(&self.by_name).get(&name).cloned())
            .flatten()
    }
}

fn alpn_server_config(certs: Arc<AlpnCerts>) -> Result<Arc<rustls::ServerConfig>, AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

async fn serve_alpn(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "tls-alpn-01 responder: accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // The handshake is the whole answer; the validator hangs up after it.
            if let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_for_ip_identifiers() {
        assert_eq!(sni_name("127.0.0.1"), "1.0.0.127.in-addr.arpa");
        assert_eq!(sni_name("DB.Example.com"), "db.example.com");
        assert!(sni_name("::1").starts_with("1.0.0.0."));
        assert!(sni_name("::1").ends_with(".0.ip6.arpa"));
    }

    #[tokio::test]
    async fn a_busy_port_is_refused_by_number() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        match Responder::bind(ChallengeKind::Http01, addr).await {
            Err(AcmeError::PortBusy { port, .. }) => assert_eq!(port, addr.port()),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("bound a busy port"),
        }
    }
}
