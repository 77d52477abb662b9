//! Writing managed files: atomically (temp file in the same directory, fsync, rename, fsync the
//! directory) so a crash leaves either the old or the new file and never half of one, keeping the
//! replaced version as `<name>.pgaas-prev`, and comparing rendered files with the disk for
//! `pgaas render --check`.

use std::{
    fs::{self, File},
    io::{ErrorKind, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use super::{ManagedFile, RenderError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Changed,
    Unchanged,
}

/// A managed file whose disk contents differ from what would be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub path: PathBuf,
    /// Unified diff from "on disk" to "rendered"; a missing file diffs against nothing.
    pub diff: String,
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

fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, RenderError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RenderError::io(path, e)),
    }
}

/// Give the new file the owner and group of the one it replaces, so a service that could read the
/// old file (PostgreSQL reading a postgres-owned pg_hba.conf) can read the new one. Without the
/// privilege to change the owner, keeping the group is enough for mode 0640 files.
fn keep_ownership(file: &File, tmp: &Path, old: &fs::Metadata) -> Result<(), RenderError> {
    use nix::unistd::{Gid, Uid, fchown};
    let (uid, gid) = (Uid::from_raw(old.uid()), Gid::from_raw(old.gid()));
    let meta = file.metadata().map_err(|e| RenderError::io(tmp, e))?;
    if meta.uid() == old.uid() && meta.gid() == old.gid() {
        return Ok(());
    }
    fchown(file, Some(uid), Some(gid))
        .or_else(|_| fchown(file, None, Some(gid)))
        .map_err(|e| RenderError::io(tmp, std::io::Error::from(e)))
}

/// Write `contents` to `path` with `mode` unless it already holds exactly that (mode included).
pub fn write_if_changed(
    path: &Path,
    contents: &str,
    mode: u32,
) -> Result<WriteOutcome, RenderError> {
    let old_meta = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(RenderError::io(path, e)),
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
    fs::create_dir_all(dir).map_err(|e| RenderError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgaas-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| RenderError::io(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp.as_file_mut();
    file.write_all(contents.as_bytes())
        .map_err(|e| RenderError::io(&tmp_path, e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| RenderError::io(&tmp_path, e))?;
    if let Some(m) = &old_meta {
        keep_ownership(file, &tmp_path, m)?;
    }
    file.sync_all().map_err(|e| RenderError::io(&tmp_path, e))?;
    if let Some(old) = &old {
        // Written (not hard-linked) so the backup is a plain copy even on filesystems without links.
        let prev = prev_path(path);
        fs::write(&prev, old).map_err(|e| RenderError::io(&prev, e))?;
        fs::set_permissions(&prev, fs::Permissions::from_mode(mode))
            .map_err(|e| RenderError::io(&prev, e))?;
    }
    tmp.persist(path)
        .map_err(|e| RenderError::io(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RenderError::io(dir, e))?;
    Ok(WriteOutcome::Changed)
}

/// Write every file (under `root` when given), reporting what changed.
pub fn write_all(
    files: &[ManagedFile],
    root: Option<&Path>,
) -> Result<Vec<(PathBuf, WriteOutcome)>, RenderError> {
    files
        .iter()
        .map(|f| {
            let path = reroot(&f.path, root);
            let outcome = write_if_changed(&path, &f.contents, f.mode)?;
            Ok((path, outcome))
        })
        .collect()
}

/// Every file whose disk contents differ from the rendered ones (under `root` when given).
pub fn check_all(files: &[ManagedFile], root: Option<&Path>) -> Result<Vec<Drift>, RenderError> {
    let mut drift = Vec::new();
    for f in files {
        let path = reroot(&f.path, root);
        let on_disk = match read_existing(&path)? {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => String::new(),
        };
        if on_disk != f.contents || !path.exists() {
            let diff = similar::TextDiff::from_lines(&on_disk, &f.contents)
                .unified_diff()
                .header("on disk", "rendered")
                .to_string();
            drift.push(Drift { path, diff });
        }
    }
    Ok(drift)
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
    fn rerooting_and_drift() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            reroot(Path::new("/etc/x"), Some(root.path())),
            root.path().join("etc/x")
        );
        assert_eq!(reroot(Path::new("/etc/x"), None), PathBuf::from("/etc/x"));
        let files = vec![
            ManagedFile {
                path: "/etc/pgaas/a.conf".into(),
                contents: "a = 1\n".into(),
                mode: 0o644,
            },
            ManagedFile {
                path: "/etc/pgaas/b.conf".into(),
                contents: "b = 1\n".into(),
                mode: 0o644,
            },
        ];
        let drift = check_all(&files, Some(root.path())).unwrap();
        assert_eq!(drift.len(), 2, "missing files are drift");
        let written = write_all(&files, Some(root.path())).unwrap();
        assert!(written.iter().all(|(_, o)| *o == WriteOutcome::Changed));
        assert!(check_all(&files, Some(root.path())).unwrap().is_empty());
        fs::write(root.path().join("etc/pgaas/b.conf"), "b = 2\n").unwrap();
        let drift = check_all(&files, Some(root.path())).unwrap();
        assert_eq!(drift.len(), 1);
        assert!(drift[0].diff.contains("--- on disk"), "{}", drift[0].diff);
        assert!(drift[0].diff.contains("+++ rendered"));
        assert!(drift[0].diff.contains("-b = 2") && drift[0].diff.contains("+b = 1"));
    }
}
