//! Files written atomically: a temp file in the same directory, fsync, rename, fsync of the
//! directory, so a crash leaves either the old or the new file and never half of one; the
//! replaced version is kept as `<name>.pgaas-prev`, and the new file keeps the owner and group
//! of the one it replaces. The leaf every layer that writes a file uses (rendered configuration,
//! access rules, secrets, certificates).

use std::{
    fs::{self, File},
    io::{ErrorKind, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

/// A file operation that failed, with the file it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cannot access {}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Changed,
    Unchanged,
}

/// `/etc/x` under `root` is `root/etc/x`; without a root, the path itself.
pub fn reroot(path: &Path, root: Option<&Path>) -> PathBuf {
    match root {
        None => path.to_path_buf(),
        Some(root) => {
            let rel: PathBuf = path
                .components()
                .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
                .collect();
            root.join(rel)
        }
    }
}

fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".pgaas-prev");
    path.with_file_name(name)
}

pub fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::new(path, e)),
    }
}

/// Give the new file the owner and group of the one it replaces, so a service that could read the
/// old file (PostgreSQL reading a postgres-owned pg_hba.conf) can read the new one. Without the
/// privilege to change the owner, keeping the group is enough for mode 0640 files.
fn keep_ownership(file: &File, tmp: &Path, old: &fs::Metadata) -> Result<(), FileError> {
    use nix::unistd::{Gid, Uid, fchown};
    let (uid, gid) = (Uid::from_raw(old.uid()), Gid::from_raw(old.gid()));
    let meta = file.metadata().map_err(|e| FileError::new(tmp, e))?;
    if meta.uid() == old.uid() && meta.gid() == old.gid() {
        return Ok(());
    }
    fchown(file, Some(uid), Some(gid))
        .or_else(|_| fchown(file, None, Some(gid)))
        .map_err(|e| FileError::new(tmp, std::io::Error::from(e)))
}

/// Write `contents` to `path` with `mode` unless it already holds exactly that (mode included).
pub fn write_if_changed(path: &Path, contents: &str, mode: u32) -> Result<WriteOutcome, FileError> {
    let old_meta = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(FileError::new(path, e)),
    };
    let old = read_existing(path)?;
    let same_mode = old_meta
        .as_ref()
        .is_some_and(|m| m.permissions().mode() & 0o7777 == mode);
    if old.as_deref() == Some(contents.as_bytes()) && same_mode {
        return Ok(WriteOutcome::Unchanged);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgaas-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| FileError::new(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp.as_file_mut();
    file.write_all(contents.as_bytes())
        .map_err(|e| FileError::new(&tmp_path, e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| FileError::new(&tmp_path, e))?;
    if let Some(m) = &old_meta {
        keep_ownership(file, &tmp_path, m)?;
    }
    file.sync_all().map_err(|e| FileError::new(&tmp_path, e))?;
    if let Some(old) = &old {
        // Written (not hard-linked) so the backup is a plain copy even on filesystems without links.
        let prev = prev_path(path);
        fs::write(&prev, old).map_err(|e| FileError::new(&prev, e))?;
        fs::set_permissions(&prev, fs::Permissions::from_mode(mode))
            .map_err(|e| FileError::new(&prev, e))?;
        // The copy belongs to whoever owned the original: a root-owned copy inside a data
        // directory would stop the cluster's own user (pgBackRest, pg_basebackup) reading it.
        if let Some(m) = &old_meta {
            let _ = std::os::unix::fs::chown(&prev, Some(m.uid()), Some(m.gid()));
        }
    }
    tmp.persist(path)
        .map_err(|e| FileError::new(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new(dir, e))?;
    Ok(WriteOutcome::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_creates_dirs_keeps_previous_and_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/pg_hba.conf");
        assert_eq!(
            write_if_changed(&path, "one\n", 0o640).unwrap(),
            WriteOutcome::Changed
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            write_if_changed(&path, "one\n", 0o640).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            write_if_changed(&path, "two\n", 0o640).unwrap(),
            WriteOutcome::Changed
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b/pg_hba.conf.pgaas-prev")).unwrap(),
            "one\n"
        );
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_mode_change_alone_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_if_changed(&path, "x", 0o644).unwrap();
        assert_eq!(
            write_if_changed(&path, "x", 0o600).unwrap(),
            WriteOutcome::Changed
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn rerooting() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            reroot(Path::new("/etc/x"), Some(root.path())),
            root.path().join("etc/x")
        );
        assert_eq!(reroot(Path::new("/etc/x"), None), PathBuf::from("/etc/x"));
    }
}
