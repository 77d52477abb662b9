//! Where ACME state lives: account credentials (one file per directory URL, 0600, in a 0700
//! directory) and the parameters of the last issue, so the renewal timer can run
//! `pgaas cert renew` with no flags. As root the state goes under `<paths.config_dir>/acme`
//! (`/etc/pgaas/acme`, what the renewal unit may write); otherwise, or when that is not writable,
//! under `<paths.state_dir>/acme`. A lock file serialises concurrent runs on one host.

use std::{
    fs::{File, OpenOptions},
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{AcmeError, ChallengeKind};
use crate::{files::write_if_changed, settings::Settings};

/// What `renew` needs to repeat an issue. Nothing secret: the EAB key is only needed once, to
/// create the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueParams {
    pub domain: String,
    pub email: String,
    pub directory: String,
    pub challenge: ChallengeKind,
    pub listen: SocketAddr,
    pub ca_file: Option<PathBuf>,
    pub tls_dir: Option<PathBuf>,
    /// Where DNS-01 writes its records (absent for the other challenges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<super::DnsProvider>,
}

/// An account as stored: the directory it belongs to beside instant-acme's credentials.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: instant_acme::AccountCredentials,
}

#[derive(Clone, Debug)]
pub struct AcmeStore {
    pub dir: PathBuf,
}

impl AcmeStore {
    pub fn for_settings(settings: &Settings) -> Self {
        let preferred = settings.paths.config_dir.join("acme");
        if nix::unistd::Uid::effective().is_root() && ensure_private_dir(&preferred).is_ok() {
            return Self { dir: preferred };
        }
        Self {
            dir: settings.paths.state_dir.join("acme"),
        }
    }

    /// Create the directory (0700) and take the lock; held until the returned guard drops.
    pub fn lock(&self) -> Result<Flock<File>, AcmeError> {
        ensure_private_dir(&self.dir).map_err(AcmeError::io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(AcmeError::io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| AcmeError::Io {
            path,
            source: std::io::Error::from(errno),
        })
    }

    fn account_file(&self, directory: &str) -> PathBuf {
        // Hashed: a URL is no file name, and two directories must never share an account file.
        let digest = sha2::Sha256::digest(directory.as_bytes());
        self.dir
            .join("accounts")
            .join(format!("{}.json", &hex::encode(digest)[..16]))
    }

    pub fn params_file(&self) -> PathBuf {
        self.dir.join("certificate.json")
    }

    pub fn load_account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, AcmeError> {
        let path = self.account_file(directory);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let stored: StoredAccount = serde_json::from_str(&text).map_err(|e| {
            AcmeError::Usage(format!(
                "{}: unreadable account file ({e}); move it away to create a new account",
                path.display()
            ))
        })?;
        if stored.directory != directory {
            return Ok(None);
        }
        Ok(Some(stored.credentials))
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: instant_acme::AccountCredentials,
    ) -> Result<(), AcmeError> {
        let path = self.account_file(directory);
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir).map_err(AcmeError::io(dir))?;
        }
        let stored = StoredAccount {
            directory: directory.to_string(),
            credentials,
        };
        let json = serde_json::to_string_pretty(&stored)
            .map_err(|e| AcmeError::Tls(format!("serialising the account: {e}")))?;
        write_if_changed(&path, &json, 0o600)?;
        Ok(())
    }

    pub fn load_params(&self) -> Result<Option<IssueParams>, AcmeError> {
        let path = self.params_file();
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            AcmeError::Usage(format!(
                "{}: unreadable ({e}); run `pgaas cert issue` again to rewrite it",
                path.display()
            ))
        })
    }

    pub fn save_params(&self, params: &IssueParams) -> Result<(), AcmeError> {
        let json = serde_json::to_string_pretty(params)
            .map_err(|e| AcmeError::Tls(format!("serialising the issue parameters: {e}")))?;
        write_if_changed(&self.params_file(), &(json + "\n"), 0o600)?;
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, AcmeError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AcmeError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Account keys live here: nobody but the owner may even list the directory.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // Writable, not just present: a read-only /etc must fall back to the state dir.
    tempfile::tempfile_in(dir).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_accounts_are_keyed_by_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = AcmeStore {
            dir: dir.path().join("acme"),
        };
        let _lock = store.lock().unwrap();
        assert_eq!(store.load_params().unwrap(), None);
        let params = IssueParams {
            domain: "db.example.com".into(),
            email: "ops@example.com".into(),
            directory: super::super::LETS_ENCRYPT.into(),
            challenge: ChallengeKind::TlsAlpn01,
            listen: "0.0.0.0:443".parse().unwrap(),
            ca_file: None,
            tls_dir: None,
            dns: None,
        };
        store.save_params(&params).unwrap();
        assert_eq!(store.load_params().unwrap(), Some(params.clone()));
        // A DNS-01 issue keeps where it writes its records, for the renewals.
        let dns = IssueParams {
            challenge: ChallengeKind::Dns01,
            dns: Some(super::super::DnsProvider::Rfc2136 {
                server: "ns1.example.com:53".into(),
                key_file: "/etc/pgaas/secrets/tsig.key".into(),
                zone: Some("example.com".into()),
            }),
            ..params.clone()
        };
        store.save_params(&dns).unwrap();
        assert_eq!(store.load_params().unwrap(), Some(dns));
        store.save_params(&params).unwrap();
        let mode = std::fs::metadata(store.params_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(
            store.account_file("https://a/dir"),
            store.account_file("https://b/dir")
        );
        assert!(store.load_account("https://a/dir").unwrap().is_none());
        let text = std::fs::read_to_string(store.params_file()).unwrap();
        assert!(text.contains("\"challenge\": \"tls-alpn-01\""), "{text}");
    }
}
