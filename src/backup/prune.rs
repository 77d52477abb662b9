//! Retention: dumps older than `backups.retention_days` go, except the newest verified dump of
//! each database, which stays whatever its age (a database whose backups have been failing for
//! weeks must still have something to restore). A dump's age is the time in its name, which
//! copying the file does not change; a `.partial` file's is its mtime, which a live run keeps
//! fresh, so only the leftovers of killed runs (a day without a write) are removed.
//!
//! [`Backups::prune_plan`] decides and changes nothing (`--dry-run` prints it);
//! [`Backups::prune`] carries a plan out.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    BackupError, Backups, io_err,
    store::{self, Checksum, DUMP_EXT, PARTIAL_EXT},
};

/// A partial file untouched this long belongs to a run that died.
pub const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Serialize)]
pub struct PruneItem {
    pub database: String,
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    pub delete: Vec<PruneItem>,
    /// Dumps past retention kept because each is its database's newest verified one.
    pub kept: Vec<PruneItem>,
}

impl Backups {
    pub fn prune_plan(&self, now: DateTime<Utc>) -> Result<PrunePlan, BackupError> {
        let cutoff = now - chrono::Duration::days(i64::from(self.retention_days));
        let mut plan = PrunePlan::default();
        for database in store::databases(&self.root)? {
            let dumps = store::dumps_of(&self.root, &database, false)?;
            // Verify newest first and stop at the first good one: only that one is protected.
            let mut protected = None;
            for mut f in dumps.iter().cloned() {
                if f.checksum == Checksum::Unchecked {
                    f.verify()?;
                    if f.checksum == Checksum::Verified {
                        protected = Some(f.path);
                        break;
                    }
                }
            }
            for f in &dumps {
                if f.created_at >= cutoff {
                    continue;
                }
                let item = |reason: String| PruneItem {
                    database: database.clone(),
                    path: f.path.clone(),
                    reason,
                };
                if protected.as_ref() == Some(&f.path) {
                    plan.kept
                        .push(item("the newest verified backup of this database".into()));
                } else {
                    plan.delete
                        .push(item(format!("older than {} days", self.retention_days)));
                }
            }
            self.leftovers(&database, &mut plan)?;
        }
        Ok(plan)
    }

    /// Stale partial files, and sidecars whose dump is gone (a prune interrupted between them).
    fn leftovers(&self, database: &str, plan: &mut PrunePlan) -> Result<(), BackupError> {
        let dir = self.dir_of(database);
        let entries = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let reason = if name.starts_with('.') && name.ends_with(PARTIAL_EXT) {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(io_err(&path))?;
                let age = SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default();
                (age > STALE_PARTIAL)
                    .then(|| "left by a backup run that did not finish".to_string())
            } else if let Some(dump) = name.strip_suffix(".sha256") {
                (dump.ends_with(DUMP_EXT) && !dir.join(dump).exists())
                    .then(|| "checksum of a deleted dump".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                plan.delete.push(PruneItem {
                    database: database.to_string(),
                    path,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Delete what `plan` lists, each dump's sidecar first: an interruption then leaves an old
    /// unverified dump, which the next prune removes, never a verified-looking one.
    pub fn prune(&self, plan: &PrunePlan) -> Result<usize, BackupError> {
        let mut removed = 0;
        for item in &plan.delete {
            let sidecar = store::sidecar_path(&item.path);
            if item.path.to_string_lossy().ends_with(DUMP_EXT) {
                remove(&sidecar)?;
            }
            if remove(&item.path)? {
                removed += 1;
            }
        }
        for dir in plan.delete.iter().filter_map(|i| i.path.parent()) {
            store::sync_dir(dir)?;
        }
        Ok(removed)
    }
}

fn remove(path: &std::path::Path) -> Result<bool, BackupError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dump(
        root: &std::path::Path,
        db: &str,
        at: DateTime<Utc>,
        good_sidecar: bool,
    ) -> PathBuf {
        let dir = root.join(db);
        std::fs::create_dir_all(&dir).unwrap();
        let name = store::file_name_for(at);
        let path = dir.join(&name);
        std::fs::write(&path, format!("dump {at}")).unwrap();
        let hash = if good_sidecar {
            store::sha256_file(&path).unwrap()
        } else {
            "0".repeat(64)
        };
        std::fs::write(
            store::sidecar_path(&path),
            store::sidecar_text(&hash, &name),
        )
        .unwrap();
        path
    }

    fn backups(root: &std::path::Path) -> Backups {
        Backups {
            bin: crate::pg::binaries::PgBinaries {
                bindir: PathBuf::from("/nonexistent"),
                version: 15,
            },
            root: root.to_path_buf(),
            socket_dir: PathBuf::from("/nonexistent"),
            port: 5432,
            superuser: "postgres".into(),
            api_user: "pgaas_api".into(),
            control_db: "postgres_control".into(),
            retention_days: 7,
            restore_timeout: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn old_dumps_go_but_the_newest_verified_one_stays_even_past_retention() {
        let root = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let damaged_newest = write_dump(root.path(), "db_a", now - day * 10, false);
        let good = write_dump(root.path(), "db_a", now - day * 11, true);
        let older = write_dump(root.path(), "db_a", now - day * 12, true);
        let fresh = write_dump(root.path(), "db_b", now - day, true);
        let fresh_old = write_dump(root.path(), "db_b", now - day * 30, true);
        let b = backups(root.path());
        let plan = b.prune_plan(now).unwrap();
        let deleted: Vec<&PathBuf> = plan.delete.iter().map(|i| &i.path).collect();
        assert_eq!(plan.kept.len(), 1);
        assert_eq!(plan.kept[0].path, good);
        for p in [&damaged_newest, &older, &fresh_old] {
            assert!(deleted.contains(&p), "{p:?} should go: {plan:?}");
        }
        assert!(!deleted.contains(&&fresh));
        assert_eq!(b.prune(&plan).unwrap(), 3);
        assert!(good.exists() && fresh.exists() && !older.exists());
        assert!(!store::sidecar_path(&older).exists());
        // Nothing left to do: a second run is a no-op.
        assert!(b.prune_plan(now).unwrap().delete.is_empty());
    }
}
