//! What a server actually presents, as a client sees it: TCP connect, the PostgreSQL SSLRequest
//! (PgBouncer speaks the same protocol), a TLS handshake, the leaf certificate. The handshake
//! accepts any certificate on purpose: the point is to compare the served leaf with the file, not
//! to trust it, and an expired or wrong certificate must be reported rather than refused. The
//! handshake signature is still verified, so the server holds the key it presents.

use std::{net::IpAddr, sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::install::{pgbouncer_handle, postgres_running};
use crate::{pg::tls::CertInfo, settings::Settings};

/// Length 8, then the SSLRequest code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The leaf served on `host:port` after an SSLRequest, as DER.
pub async fn served_leaf(host: IpAddr, port: u16) -> Result<Vec<u8>, String> {
    let probe = async {
        let mut tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| format!("sending SSLRequest: {e}"))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| format!("no answer to SSLRequest: {e}"))?;
        if answer[0] != b'S' {
            return Err(format!(
                "{host}:{port} does not offer TLS (answered {:?} to SSLRequest); check ssl = on / client_tls_sslmode",
                answer[0] as char
            ));
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(compare_only_config()?));
        let mut tls = connector
            .connect(ServerName::IpAddress(host.into()), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| format!("{host}:{port} presented no certificate"))?;
        let _ = tls.shutdown().await;
        Ok(leaf)
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{host}:{port} did not finish a TLS handshake within 10 s"
            ))
        })
}

fn compare_only_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CompareOnly(provider)))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct CompareOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for CompareOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a service's certificate compares with the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Served {
    Matches,
    Differs { subject: String, not_after: i64 },
    NotRunning,
    Disabled,
    Unreachable { detail: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServedCheck {
    pub service: &'static str,
    pub address: String,
    #[serde(flatten)]
    pub served: Served,
}

impl ServedCheck {
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self.served,
            Served::Differs { .. } | Served::Unreachable { .. }
        )
    }
}

/// Loopback when the server listens on every address (or on loopback), else its first address.
fn probe_host(listen: &[String]) -> IpAddr {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    if listen
        .iter()
        .any(|a| a == "*" || a == "localhost" || a == "0.0.0.0" || a == "127.0.0.1")
    {
        return loopback;
    }
    listen
        .iter()
        .find_map(|a| a.parse::<IpAddr>().ok())
        .unwrap_or(loopback)
}

/// Compare what PostgreSQL and PgBouncer serve with `file_leaf`. A reload is asynchronous in
/// PostgreSQL's postmaster, so a difference is re-checked for a few seconds before it counts.
pub async fn check_served(
    settings: &Settings,
    file_leaf: &[u8],
    patience: Duration,
) -> Vec<ServedCheck> {
    let pg_host = probe_host(&settings.postgres.listen_addresses);
    let mut checks = vec![
        check_one(
            "PostgreSQL",
            pg_host,
            settings.postgres.port,
            postgres_running(settings),
            file_leaf,
            patience,
        )
        .await,
    ];
    let bouncer_host = probe_host(std::slice::from_ref(&settings.pgbouncer.listen_addr));
    let check = match pgbouncer_handle(settings) {
        None => ServedCheck {
            service: "PgBouncer",
            address: format!("{bouncer_host}:{}", settings.pgbouncer.port),
            served: Served::Disabled,
        },
        Some(b) => {
            check_one(
                "PgBouncer",
                bouncer_host,
                settings.pgbouncer.port,
                b.is_running(),
                file_leaf,
                patience,
            )
            .await
        }
    };
    checks.push(check);
    checks
}

async fn check_one(
    service: &'static str,
    host: IpAddr,
    port: u16,
    running: bool,
    file_leaf: &[u8],
    patience: Duration,
) -> ServedCheck {
    let address = format!("{host}:{port}");
    if !running {
        return ServedCheck {
            service,
            address,
            served: Served::NotRunning,
        };
    }
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let served = match served_leaf(host, port).await {
            Ok(der) if der == file_leaf => Served::Matches,
            Ok(der) => match CertInfo::from_der(&der) {
                Some(info) => Served::Differs {
                    subject: info.subject,
                    not_after: info.not_after,
                },
                None => Served::Differs {
                    subject: "(unparsable certificate)".into(),
                    not_after: 0,
                },
            },
            Err(detail) => Served::Unreachable { detail },
        };
        if served == Served::Matches || tokio::time::Instant::now() >= deadline {
            return ServedCheck {
                service,
                address,
                served,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
