//! The secrets a cluster's nodes share: the passwords of the replication, rewind and API
//! roles, the passphrase of the backup repository they share, and the local CA (certificate and key, base64 PEM) that signs every node's
//! certificate. One small file of `name=value` lines, made once (`pgaas cluster secrets`) and
//! copied by the operator to the other nodes, root-only on each.

use base64::Engine as _;

use super::Secret;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub replication: Secret,
    pub rewind: Secret,
    /// The API role's password: every node's `pgaas serve` logs into the same (replicated)
    /// control DB.
    pub api: Secret,
    /// Basic authentication of Patroni's REST API for what changes something (switchover,
    /// restart, reload, the failsafe calls between members); reads stay open.
    pub patroni: Secret,
    /// The passphrase that encrypts the shared pgBackRest repository (`archive.s3`): whichever
    /// node is primary archives into it, so every node must hold the same one. Absent in a file
    /// made before continuous archiving ran on clusters.
    pub backup: Option<Secret>,
    /// The local CA, PEM: certificate and key.
    pub ca: Option<(String, Secret)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterSecretsError {
    #[error("line {0} is not `name=value`")]
    Line(usize),
    #[error(
        "`{0}` is not a cluster secret (replication, rewind, api, patroni, backup, ca_cert, ca_key)"
    )]
    Unknown(String),
    #[error("`{0}` is missing or empty")]
    Missing(&'static str),
    #[error(
        "`{0}` must be ASCII letters and digits (it is written into Patroni's YAML and libpq's pgpass)"
    )]
    Characters(&'static str),
    #[error("`{0}` is not a base64-encoded PEM block")]
    Pem(&'static str),
}

impl ClusterSecrets {
    pub fn generate() -> Self {
        Self {
            replication: Secret::generate(),
            rewind: Secret::generate(),
            api: Secret::generate(),
            patroni: Secret::generate(),
            backup: Some(Secret::generate()),
            ca: None,
        }
    }

    pub fn parse(text: &str) -> Result<Self, ClusterSecretsError> {
        let (mut replication, mut rewind, mut api, mut patroni, mut backup) =
            (None, None, None, None, None);
        let (mut ca_cert, mut ca_key) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or(ClusterSecretsError::Line(i + 1))?;
            let slot = match k.trim() {
                "replication" => &mut replication,
                "rewind" => &mut rewind,
                "api" => &mut api,
                "patroni" => &mut patroni,
                "backup" => &mut backup,
                "ca_cert" => &mut ca_cert,
                "ca_key" => &mut ca_key,
                other => return Err(ClusterSecretsError::Unknown(other.to_string())),
            };
            *slot = Some(v.trim().to_string());
        }
        let take = |v: Option<String>, name: &'static str| match v {
            None => Err(ClusterSecretsError::Missing(name)),
            Some(v) if v.is_empty() => Err(ClusterSecretsError::Missing(name)),
            Some(v) if !v.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Err(ClusterSecretsError::Characters(name))
            }
            Some(v) => Ok(Secret::new(v)),
        };
        let pem = |v: Option<String>,
                   name: &'static str|
         -> Result<Option<String>, ClusterSecretsError> {
            v.map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .filter(|p| p.starts_with("-----BEGIN"))
                    .ok_or(ClusterSecretsError::Pem(name))
            })
            .transpose()
        };
        let ca = match (pem(ca_cert, "ca_cert")?, pem(ca_key, "ca_key")?) {
            (Some(c), Some(k)) => Some((c, Secret::new(k))),
            (None, None) => None,
            (None, _) => return Err(ClusterSecretsError::Missing("ca_cert")),
            (_, None) => return Err(ClusterSecretsError::Missing("ca_key")),
        };
        Ok(Self {
            replication: take(replication, "replication")?,
            rewind: take(rewind, "rewind")?,
            api: take(api, "api")?,
            patroni: take(patroni, "patroni")?,
            backup: backup.map(|b| take(Some(b), "backup")).transpose()?,
            ca,
        })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# pgaas cluster secrets: copy this file unchanged to every node (root-only, 0600)\nreplication={}\nrewind={}\napi={}\npatroni={}\n",
            self.replication.expose(),
            self.rewind.expose(),
            self.api.expose(),
            self.patroni.expose()
        );
        if let Some(b) = &self.backup {
            out.push_str(&format!("backup={}\n", b.expose()));
        }
        if let Some((cert, key)) = &self.ca {
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            out.push_str(&format!(
                "ca_cert={}\nca_key={}\n",
                b64(cert),
                b64(key.expose())
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_carry() {
        let mut s = ClusterSecrets::generate();
        assert_eq!(ClusterSecrets::parse(&s.render()).unwrap(), s);
        s.ca = Some((
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            Secret::new("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"),
        ));
        assert_eq!(ClusterSecrets::parse(&s.render()).unwrap(), s);
        assert_ne!(s.replication, s.rewind);
        // A file made before the backup passphrase was shared still reads.
        s.backup = None;
        assert_eq!(ClusterSecrets::parse(&s.render()).unwrap(), s);
        assert_eq!(
            ClusterSecrets::parse("replication=abc\n"),
            Err(ClusterSecretsError::Missing("rewind"))
        );
        assert_eq!(
            ClusterSecrets::parse("replication=a b\nrewind=x\napi=y\npatroni=z"),
            Err(ClusterSecretsError::Characters("replication"))
        );
        assert_eq!(
            ClusterSecrets::parse("replication=a\nrewind=b\napi=y\npatroni=z\nsuperuser=c"),
            Err(ClusterSecretsError::Unknown("superuser".into()))
        );
        assert_eq!(
            ClusterSecrets::parse("replication=a\nrewind=b\napi=y\npatroni=z\nca_cert=eHh4"),
            Err(ClusterSecretsError::Pem("ca_cert"))
        );
        assert_eq!(
            ClusterSecrets::parse("garbage"),
            Err(ClusterSecretsError::Line(1))
        );
        // Debug never shows them.
        assert!(!format!("{s:?}").contains(s.replication.expose()));
    }
}
