//! The install manifest (`<state_dir>/install-manifest.json`): everything `pgaas install` created
//! or replaced on this host, so `pgaas uninstall` removes exactly that and nothing else. It is
//! written after every step that changed something, so a run that fails half-way is still
//! fully recorded. Things that existed before the install (the `postgres` user, Debian's
//! `postgresql@` unit, packages already present) are never recorded, so never removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::reroot;

pub const MANIFEST_NAME: &str = "install-manifest.json";

/// One thing the installer made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A file that did not exist before.
    File {
        path: PathBuf,
    },
    /// A file that existed and was overwritten; its original is kept at `backup`, and its
    /// mode and owner are restored with it.
    Replaced {
        path: PathBuf,
        backup: PathBuf,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        owner: Option<(u32, u32)>,
    },
    Dir {
        path: PathBuf,
    },
    /// A system user (and its group) made with useradd.
    User {
        name: String,
    },
    /// A unit enabled by the installer.
    Unit {
        name: String,
    },
    /// A package installed by the installer (uninstall keeps packages; it lists them).
    Package {
        name: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub pg_version: Option<u32>,
    pub records: Vec<Record>,
}

impl Manifest {
    pub fn path(state_dir: &Path, root: Option<&Path>) -> PathBuf {
        reroot(&state_dir.join(MANIFEST_NAME), root)
    }

    /// The manifest on disk, or an empty one when there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a pgaas install manifest ({e}); move it away to start a new one",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
                version: 1,
                ..Manifest::default()
            }),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        crate::files::write_if_changed(path, &text, 0o600)?;
        Ok(())
    }

    /// Add a record unless the same thing is already recorded (a `Replaced` entry wins over a
    /// later `File` entry for the same path: its backup must survive re-runs).
    pub fn add(&mut self, record: Record) {
        let same_path = |r: &Record, p: &Path| match r {
            Record::File { path } | Record::Replaced { path, .. } => path == p,
            _ => false,
        };
        let dup = match &record {
            Record::File { path } | Record::Replaced { path, .. } => {
                self.records.iter().any(|r| same_path(r, path))
            }
            other => self.records.contains(other),
        };
        if !dup {
            self.records.push(record);
        }
    }

    /// Whether the installer made (or replaced) this path earlier.
    pub fn owns_path(&self, p: &Path) -> bool {
        self.records.iter().any(|r| match r {
            Record::File { path } | Record::Replaced { path, .. } | Record::Dir { path } => {
                path == p
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_deduplicated_and_a_backup_survives_reruns() {
        let mut m = Manifest::default();
        m.add(Record::Replaced {
            path: "/etc/pgbouncer/pgbouncer.ini".into(),
            backup: "/var/lib/pgaas/install-backup/etc/pgbouncer/pgbouncer.ini".into(),
            mode: Some(0o640),
            owner: Some((0, 0)),
        });
        m.add(Record::File {
            path: "/etc/pgbouncer/pgbouncer.ini".into(),
        });
        m.add(Record::User {
            name: "pgaas".into(),
        });
        m.add(Record::User {
            name: "pgaas".into(),
        });
        assert_eq!(m.records.len(), 2);
        assert!(matches!(m.records[0], Record::Replaced { .. }));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"kind\": \"replaced\""), "{text}");
    }
}
