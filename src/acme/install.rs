//! Putting a new key and chain in place and making the servers use them.
//!
//! The pair is checked before anything is written (the leaf must carry our public key and cover
//! the name), then written key first, chain second, each atomically (`write_if_changed`: temp
//! file, fsync, rename, previous copy kept as `.pgaas-prev`). Should the chain fail to land, the
//! old key is written back, so the files on disk always form a pair. PostgreSQL then reloads over
//! the superuser's local socket (no restart: open sessions survive) and PgBouncer gets SIGHUP;
//! a service that is not running reads the files when it starts.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, pem::PemObject};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AcmeError, order::Issued};
use crate::{
    files::write_if_changed,
    pg::{
        cluster::OsUser,
        pgbouncer::{self, LocalPgBouncer},
        tls::CertInfo,
    },
    settings::Settings,
};

/// Where the key and chain go, and who must own the key.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Set when we are root: PostgreSQL insists on a 0600 key owned by the user it runs as.
    pub key_owner: Option<OsUser>,
}

impl TlsTarget {
    /// The files the rendered configs point at, or the same names under `tls_dir`, with the key
    /// owner resolved (a missing PostgreSQL user is a settings error, found before any order).
    pub fn from_settings(settings: &Settings, tls_dir: Option<&Path>) -> Result<Self, AcmeError> {
        let Self {
            cert_file,
            key_file,
            ..
        } = Self::paths(settings, tls_dir);
        let key_owner = if nix::unistd::Uid::effective().is_root() {
            let user = &settings.postgres.os_user;
            Some(OsUser::lookup(user).map_err(|_| {
                AcmeError::Usage(format!(
                    "postgres.os_user {user:?} does not exist, so nobody could read the key; fix the setting or install PostgreSQL"
                ))
            })?)
        } else {
            None
        };
        Ok(Self {
            cert_file,
            key_file,
            key_owner,
        })
    }

    /// Just the paths, for reading.
    pub fn paths(settings: &Settings, tls_dir: Option<&Path>) -> Self {
        let (cert_file, key_file) = (&settings.tls.cert_file, &settings.tls.key_file);
        let Some(dir) = tls_dir else {
            return Self {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                key_owner: None,
            };
        };
        let name = |p: &Path, default: &str| {
            p.file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| default.into())
        };
        Self {
            cert_file: dir.join(name(cert_file, "server.crt")),
            key_file: dir.join(name(key_file, "server.key")),
            key_owner: None,
        }
    }

    /// The certificate on disk now, if any.
    pub fn current(&self) -> Result<Option<CertInfo>, AcmeError> {
        match std::fs::read_to_string(&self.cert_file) {
            Ok(pem) => CertInfo::from_pem(&pem).map(Some).ok_or_else(|| {
                AcmeError::Usage(format!(
                    "{} holds no readable PEM certificate; run `pgaas cert issue`",
                    self.cert_file.display()
                ))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AcmeError::Io {
                path: self.cert_file.clone(),
                source: e,
            }),
        }
    }
}

/// The leaf of `issued`, once it is known to match our key and cover `domain`.
pub(crate) fn check_pair(issued: &Issued, domain: &str) -> Result<CertInfo, AcmeError> {
    let bad = |what: &str| AcmeError::BadCertificate(what.to_string());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("is not PEM"))?;
    let leaf = chain.first().ok_or_else(|| bad("is empty"))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| bad("does not parse"))?;
    let key = rcgen::KeyPair::from_pem(&issued.key_pem)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad("is not for the key made for it"));
    }
    let info = CertInfo::from_der(leaf.as_ref()).ok_or_else(|| bad("does not parse"))?;
    if !info.sans.iter().any(|s| s.eq_ignore_ascii_case(domain)) {
        return Err(bad(&format!(
            "does not name {domain} (names: {:?})",
            info.sans
        )));
    }
    Ok(info)
}

/// Key first, chain second; on a failed chain write the old key goes back.
pub(crate) fn install(target: &TlsTarget, issued: &Issued) -> Result<(), AcmeError> {
    let old_key = match std::fs::read_to_string(&target.key_file) {
        Ok(k) => Some(k),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(AcmeError::io(&target.key_file)(e)),
    };
    write_if_changed(&target.key_file, &issued.key_pem, 0o600).map_err(AcmeError::Install)?;
    let chown = |path: &Path| match &target.key_owner {
        Some(owner) => owner
            .chown(path)
            .map_err(|e| AcmeError::Tls(format!("giving the key to {}: {e}", owner.name))),
        None => Ok(()),
    };
    let written = chown(&target.key_file).and_then(|()| {
        write_if_changed(&target.cert_file, &issued.chain_pem, 0o644).map_err(AcmeError::Install)
    });
    if let Err(e) = written {
        if let Some(old) = old_key {
            let _ = write_if_changed(&target.key_file, &old, 0o600);
            let _ = chown(&target.key_file);
        }
        return Err(e);
    }
    Ok(())
}

/// What a reload did, per service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Reloaded,
    NotRunning,
    Disabled,
    /// The new files are not the ones the servers read (`--tls-dir`).
    OtherFiles,
    Failed(String),
}

/// The superuser's peer-authenticated socket, as the settings describe it.
pub(crate) fn admin_options(settings: &Settings) -> PgConnectOptions {
    PgConnectOptions::new()
        .socket(&settings.postgres.socket_dir)
        .port(settings.postgres.port)
        .username(&settings.postgres.superuser)
        .database("postgres")
        .application_name("pgaas cert")
}

pub(crate) fn postgres_running(settings: &Settings) -> bool {
    let socket = settings
        .postgres
        .socket_dir
        .join(format!(".s.PGSQL.{}", settings.postgres.port));
    socket.exists()
}

pub(crate) async fn reload_postgres(settings: &Settings) -> ReloadOutcome {
    if !postgres_running(settings) {
        return ReloadOutcome::NotRunning;
    }
    let result = async {
        let mut conn = PgConnection::connect_with(&admin_options(settings))
            .await
            .map_err(|e| {
                format!(
                    "connecting as {} over the socket: {e}",
                    settings.postgres.superuser
                )
            })?;
        crate::pg::cluster::reload(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.ok();
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(20), result).await {
        Ok(Ok(())) => ReloadOutcome::Reloaded,
        Ok(Err(e)) => ReloadOutcome::Failed(e),
        Err(_) => ReloadOutcome::Failed("no answer within 20 s".into()),
    }
}

pub(crate) fn pgbouncer_handle(settings: &Settings) -> Option<LocalPgBouncer> {
    if !settings.pgbouncer.enabled {
        return None;
    }
    // Only the pid file and the port matter for a reload; the rest describes how it started.
    Some(LocalPgBouncer {
        binary: pgbouncer::find_binary().unwrap_or_default(),
        ini: settings.pgbouncer.config_dir.join("pgbouncer.ini"),
        pidfile: settings.pgbouncer.pidfile.clone(),
        port: settings.pgbouncer.port,
        owner: OsUser {
            name: settings.postgres.os_user.clone(),
            uid: 0,
            gid: 0,
        },
    })
}

pub(crate) async fn reload_pgbouncer(settings: &Settings) -> ReloadOutcome {
    let Some(bouncer) = pgbouncer_handle(settings) else {
        return ReloadOutcome::Disabled;
    };
    if !bouncer.is_running() {
        return ReloadOutcome::NotRunning;
    }
    match tokio::task::spawn_blocking(move || bouncer.signal_reload()).await {
        Ok(Ok(())) => ReloadOutcome::Reloaded,
        Ok(Err(e)) => ReloadOutcome::Failed(crate::error_chain(&e)),
        Err(e) => ReloadOutcome::Failed(e.to_string()),
    }
}
