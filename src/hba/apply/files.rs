//! The file side of applying: reading, writing (atomically, through `files`) and restoring the
//! access files, and giving them the owner and mode their readers need. Every operation here is
//! blocking I/O and runs on tokio's blocking pool, never on an async worker.

use std::path::{Path, PathBuf};

use crate::files::{FileError, WriteOutcome, write_if_changed};

/// Mode of every access file: the server's group reads it.
pub(super) const MODE: u32 = 0o640;

/// A file and what it held before a change (`None`: it did not exist).
pub(super) type Previous = Vec<(PathBuf, Option<String>)>;

/// Who must own the files (see `HbaApplier::file_owner`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Owner(pub Option<(u32, u32)>);

/// Run blocking file work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking file task panicked")
}

pub(super) fn read(path: &Path) -> Result<Option<String>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::new(path, e)),
    }
}

pub(super) async fn read_async(path: &Path) -> Result<Option<String>, FileError> {
    let path = path.to_path_buf();
    blocking(move || read(&path)).await
}

impl Owner {
    /// Write a file, then give it the owner it must have: root gives every file it writes that
    /// owner, another user the files it creates.
    pub(super) fn write(self, path: &Path, text: &str) -> Result<WriteOutcome, FileError> {
        let existed = path.exists();
        let outcome = write_if_changed(path, text, MODE)?;
        if nix::unistd::Uid::effective().is_root() || !existed {
            self.set(path)?;
        }
        Ok(outcome)
    }

    pub(super) async fn write_async(
        self,
        path: &Path,
        text: String,
    ) -> Result<WriteOutcome, FileError> {
        let path = path.to_path_buf();
        blocking(move || self.write(&path, &text)).await
    }

    fn set(self, path: &Path) -> Result<(), FileError> {
        use std::os::unix::fs::MetadataExt;
        let Some((uid, gid)) = self.0 else {
            return Ok(());
        };
        let meta = std::fs::metadata(path).map_err(|e| FileError::new(path, e))?;
        if (meta.uid(), meta.gid()) == (uid, gid) {
            return Ok(());
        }
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| FileError::new(path, e))
    }

    /// Put back the mode (and, as root, the owner) an access file must have; whether anything
    /// changed.
    pub(super) fn repair(self, path: &Path) -> Result<bool, FileError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let io = |e| FileError::new(path, e);
        let before = std::fs::metadata(path).map_err(io)?;
        if before.mode() & 0o7777 != MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE)).map_err(io)?;
        }
        if nix::unistd::Uid::effective().is_root() {
            self.set(path)?;
        }
        let after = std::fs::metadata(path).map_err(io)?;
        Ok((before.mode(), before.uid(), before.gid()) != (after.mode(), after.uid(), after.gid()))
    }

    /// Repair every one of `paths` that exists; whether any changed.
    pub(super) async fn repair_all(self, paths: Vec<PathBuf>) -> Result<bool, FileError> {
        blocking(move || {
            let mut changed = false;
            for p in paths.iter().filter(|p| p.exists()) {
                changed |= self.repair(p)?;
            }
            Ok(changed)
        })
        .await
    }
}

/// Put the files back as they were (best effort: the next apply or `pgaas render` rewrites
/// them from the rows anyway).
pub(super) fn restore(previous: &Previous) {
    for (path, old) in previous {
        if let Some(old) = old {
            if let Err(e) = write_if_changed(path, old, MODE) {
                tracing::error!(path = %path.display(), error = %crate::error_chain(&e), "could not restore an access file");
            }
        }
    }
}

pub(super) async fn restore_async(previous: &Previous) {
    let previous = previous.clone();
    blocking(move || restore(&previous)).await
}
