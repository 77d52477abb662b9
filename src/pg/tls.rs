//! The local certificate authority used by `pgaas dev`, the tests, and hosts without a public
//! name: a CA kept beside the state, and a server certificate for PostgreSQL and PgBouncer signed
//! by it, so clients can connect with `sslmode=verify-full sslrootcert=<ca>`. Certificates are
//! reissued only when missing, expiring within 30 days, or not covering the wanted names.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::files::{WriteOutcome, write_if_changed};

/// Reissue when fewer days than this are left.
const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: not a usable PEM certificate or key: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] crate::files::FileError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of the local CA's files.
#[derive(Clone, Debug)]
pub struct LocalCa {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Where a server certificate and its key go, and who must be able to read the key.
#[derive(Clone, Debug)]
pub struct ServerCertTarget {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// uid/gid to own the key (PostgreSQL insists on 0600 owned by itself, or 0640 owned by root).
    pub key_owner: Option<(u32, u32)>,
}

impl LocalCa {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert_file: dir.join("ca.crt"),
            key_file: dir.join("ca.key"),
        }
    }

    /// Create the CA if it does not exist yet; reuse it otherwise.
    pub fn ensure(&self) -> Result<(), TlsError> {
        if self.cert_file.exists() && self.key_file.exists() {
            return Ok(());
        }
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_if_changed(&self.key_file, &key.serialize_pem(), 0o600)?;
        write_if_changed(&self.cert_file, &cert.pem(), 0o644)?;
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key_pem = std::fs::read_to_string(&self.key_file).map_err(io_err(&self.key_file))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Parse {
            path: self.key_file.clone(),
            reason: e.to_string(),
        })?;
        let cert_pem = std::fs::read_to_string(&self.cert_file).map_err(io_err(&self.cert_file))?;
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::Parse {
            path: self.cert_file.clone(),
            reason: e.to_string(),
        })
    }

    /// Make sure `target` holds a certificate from this CA covering `names`, valid for more than
    /// 30 days. Returns whether anything was written.
    pub fn ensure_server_cert(
        &self,
        target: &ServerCertTarget,
        names: &[String],
    ) -> Result<WriteOutcome, TlsError> {
        self.ensure_cert(target, names, false)
    }

    /// [`Self::ensure_server_cert`] for a certificate that also authenticates its holder as a
    /// client (etcd members to each other, and their clients to them).
    pub fn ensure_peer_cert(
        &self,
        target: &ServerCertTarget,
        names: &[String],
    ) -> Result<WriteOutcome, TlsError> {
        self.ensure_cert(target, names, true)
    }

    fn ensure_cert(
        &self,
        target: &ServerCertTarget,
        names: &[String],
        client_auth: bool,
    ) -> Result<WriteOutcome, TlsError> {
        self.ensure()?;
        if let Ok(pem) = std::fs::read_to_string(&target.cert_file) {
            if target.key_file.exists() && cert_is_current(&pem, names, &self.cert_file) {
                chown_key(target)?;
                return Ok(WriteOutcome::Unchanged);
            }
        }
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(names.first().map(String::as_str).unwrap_or("localhost"));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = time_now();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(397);
        let cert = params.signed_by(&key, &issuer)?;
        // Key first: a reader never sees a new certificate paired with the old key for long, and
        // a crash between the two writes is repaired on the next run (the pair won't verify).
        write_if_changed(&target.key_file, &key.serialize_pem(), 0o600)?;
        chown_key(target)?;
        write_if_changed(&target.cert_file, &cert.pem(), 0o644)?;
        Ok(WriteOutcome::Changed)
    }
}

fn chown_key(target: &ServerCertTarget) -> Result<(), TlsError> {
    if let Some((uid, gid)) = target.key_owner {
        std::os::unix::fs::chown(&target.key_file, Some(uid), Some(gid))
            .map_err(io_err(&target.key_file))?;
    }
    Ok(())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgaas");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    // A name of its own per CA: verifiers look issuers up by name, and two dev CAs sharing one
    // would make a wrong-CA failure read like a key error instead of an unknown issuer.
    let mut id = [0u8; 6];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut id).expect("OS randomness");
    params.distinguished_name = dn(&format!("pgaas local CA {}", hex::encode(id)));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time_now();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// Whether a PEM certificate covers every name, was issued by the CA in `ca_file`, and has more
/// than [`RENEW_BEFORE_DAYS`] left.
pub fn cert_is_current(pem: &str, names: &[String], ca_file: &Path) -> bool {
    let Some(info) = CertInfo::from_pem(pem) else {
        return false;
    };
    let Some(ca) = std::fs::read_to_string(ca_file)
        .ok()
        .and_then(|p| CertInfo::from_pem(&p))
    else {
        return false;
    };
    info.issuer == ca.subject
        && info.days_left() > RENEW_BEFORE_DAYS
        && names
            .iter()
            .all(|n| info.sans.iter().any(|s| s.eq_ignore_ascii_case(n)))
}

/// What an operator wants to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    /// Seconds since the epoch.
    pub not_after: i64,
    pub der: Vec<u8>,
}

impl CertInfo {
    /// The first certificate (the leaf) of a PEM chain.
    pub fn from_pem(pem: &str) -> Option<Self> {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()?
            .ok()?;
        Self::from_der(der.as_ref())
    }

    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            sans.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_after: cert.validity().not_after.timestamp(),
            der: der.to_vec(),
        })
    }

    pub fn days_left(&self) -> i64 {
        (self.not_after - time_now().unix_timestamp()) / 86_400
    }
}

/// The names a dev or self-signed server certificate covers.
pub fn server_names(public_host: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !names.iter().any(|n| n == public_host) {
        names.push(public_host.to_string());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cert_is_issued_once_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::in_dir(dir.path());
        let target = ServerCertTarget {
            cert_file: dir.path().join("server.crt"),
            key_file: dir.path().join("server.key"),
            key_owner: None,
        };
        let names = server_names("db.example.com");
        assert_eq!(
            ca.ensure_server_cert(&target, &names).unwrap(),
            WriteOutcome::Changed
        );
        assert_eq!(
            ca.ensure_server_cert(&target, &names).unwrap(),
            WriteOutcome::Unchanged
        );

        let pem = std::fs::read_to_string(&target.cert_file).unwrap();
        let info = CertInfo::from_pem(&pem).unwrap();
        for n in ["localhost", "127.0.0.1", "::1", "db.example.com"] {
            assert!(
                info.sans.iter().any(|s| s == n),
                "{n} missing from {:?}",
                info.sans
            );
        }
        assert!(info.days_left() > 300);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target.key_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        let more = server_names("other.example.com");
        assert_eq!(
            ca.ensure_server_cert(&target, &more).unwrap(),
            WriteOutcome::Changed
        );
    }
}
