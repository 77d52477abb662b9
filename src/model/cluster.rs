//! The secrets a cluster's nodes share: the passwords of the replication and rewind roles. One
//! small file (`replication=...` and `rewind=...` lines), made on the first node and copied once
//! by the operator to the others, root-only on each.

use super::Secret;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub replication: Secret,
    pub rewind: Secret,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterSecretsError {
    #[error("line {0} is not `name=value`")]
    Line(usize),
    #[error("`{0}` is not a cluster secret (replication, rewind)")]
    Unknown(String),
    #[error("`{0}` is missing or empty")]
    Missing(&'static str),
    #[error(
        "`{0}` must be ASCII letters and digits (it is written into Patroni's YAML and libpq's pgpass)"
    )]
    Characters(&'static str),
}

impl ClusterSecrets {
    pub fn generate() -> Self {
        Self {
            replication: Secret::generate(),
            rewind: Secret::generate(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, ClusterSecretsError> {
        let (mut replication, mut rewind) = (None, None);
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
        Ok(Self {
            replication: take(replication, "replication")?,
            rewind: take(rewind, "rewind")?,
        })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "# pgaas cluster secrets: copy this file unchanged to every node (root-only, 0600)\nreplication={}\nrewind={}\n",
            self.replication.expose(),
            self.rewind.expose()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_carry() {
        let s = ClusterSecrets::generate();
        assert_eq!(ClusterSecrets::parse(&s.render()).unwrap(), s);
        assert_ne!(s.replication, s.rewind);
        assert_eq!(
            ClusterSecrets::parse("replication=abc\n"),
            Err(ClusterSecretsError::Missing("rewind"))
        );
        assert_eq!(
            ClusterSecrets::parse("replication=a b\nrewind=x"),
            Err(ClusterSecretsError::Characters("replication"))
        );
        assert_eq!(
            ClusterSecrets::parse("replication=a\nrewind=b\nsuperuser=c"),
            Err(ClusterSecretsError::Unknown("superuser".into()))
        );
        assert_eq!(
            ClusterSecrets::parse("garbage"),
            Err(ClusterSecretsError::Line(1))
        );
        // Debug never shows them.
        assert!(!format!("{s:?}").contains(s.replication.expose()));
    }
}
