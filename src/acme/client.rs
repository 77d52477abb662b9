//! The HTTPS client instant-acme talks through, and the account: reused from the store when it
//! exists for this directory, created (with external account binding when given) otherwise.
//!
//! The client is built here rather than taken from instant-acme's defaults for two reasons: it
//! must use the one crypto provider of the binary (ring) whatever the process has installed, and
//! `--ca-file` must *add* every certificate of a PEM file to the system roots (instant-acme's
//! `builder_with_root` trusts only the first certificate and nothing else).

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioExecutor};
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, ExternalAccountKey, HttpClient, NewAccount,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::{AcmeError, store::AcmeStore};

/// External account binding: a key id and the HMAC key the CA handed out.
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    key: Vec<u8>,
}

impl Eab {
    /// The HMAC key as CAs print it: base64url, with or without padding (standard base64 too).
    pub fn new(kid: &str, hmac_b64: &str) -> Result<Self, AcmeError> {
        use base64::Engine;
        let trimmed = hmac_b64.trim().trim_end_matches('=');
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| {
                AcmeError::Usage(
                    "the EAB HMAC key is not base64; copy it exactly as the CA shows it".into(),
                )
            })?;
        if kid.trim().is_empty() || key.is_empty() {
            return Err(AcmeError::Usage(
                "--eab-kid and --eab-hmac-key must both be non-empty".into(),
            ));
        }
        Ok(Self {
            kid: kid.trim().to_string(),
            key,
        })
    }
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("key", &"***")
            .finish()
    }
}

/// System roots plus every certificate in `ca_file`.
pub(crate) fn http_client(ca_file: Option<&Path>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| AcmeError::Usage(format!("--ca-file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(AcmeError::Usage(format!(
                "--ca-file {}: no PEM certificate in it",
                path.display()
            )));
        }
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(AcmeError::Usage(
            "no trusted root certificates found; install ca-certificates or pass --ca-file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // An address that drops packets must fail in seconds, not hang the renewal timer.
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(https);
    Ok(Box::new(client))
}

/// Whether the account came from the store or was made now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountOrigin {
    Reused,
    Created,
}

/// The stored account for `directory`, or a new one (saved before it is used).
pub(crate) async fn open_account(
    store: &AcmeStore,
    directory: &str,
    ca_file: Option<&Path>,
    email: &str,
    eab: Option<&Eab>,
) -> Result<(Account, AccountOrigin), AcmeError> {
    if let Some(credentials) = store.load_account(directory)? {
        let account = Account::builder_with_http(http_client(ca_file)?)
            .from_credentials(credentials)
            .await
            .map_err(|source| unreachable_or(directory, "loading the account", source))?;
        return Ok((account, AccountOrigin::Reused));
    }
    let account = create_account(store, directory, ca_file, email, eab).await?;
    Ok((account, AccountOrigin::Created))
}

/// Register a new account and store its credentials.
pub(crate) async fn create_account(
    store: &AcmeStore,
    directory: &str,
    ca_file: Option<&Path>,
    email: &str,
    eab: Option<&Eab>,
) -> Result<Account, AcmeError> {
    let contact = format!("mailto:{email}");
    let eab_key = eab.map(|e| ExternalAccountKey::new(e.kid.clone(), &e.key));
    let (account, credentials): (Account, AccountCredentials) =
        Account::builder_with_http(http_client(ca_file)?)
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_string(),
                eab_key.as_ref(),
            )
            .await
            .map_err(|source| unreachable_or(directory, "creating the account", source))?;
    store.save_account(directory, credentials)?;
    Ok(account)
}

/// The directory is fetched first: a transport failure there means the URL or network is wrong.
fn unreachable_or(directory: &str, during: &'static str, e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(_) => AcmeError::acme(during, e),
        source => AcmeError::DirectoryUnreachable {
            url: directory.to_string(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_keys_decode_in_every_common_base64_and_never_show() {
        let a = Eab::new(
            "kid-1",
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
        )
        .unwrap();
        assert_eq!(a.key.len(), 48);
        let b = Eab::new(
            "kid-1",
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W==",
        )
        .unwrap();
        assert_eq!(a.key, b.key);
        assert!(!format!("{a:?}").contains("zWND"));
        assert!(Eab::new("kid-1", "not base64 !").unwrap_err().is_usage());
        assert!(Eab::new(" ", "aGVsbG8").unwrap_err().is_usage());
    }
}
