//! Writing the managed file set (through `files`, atomically) and comparing it with the disk
//! for `pgaas render --check`.

use std::path::{Path, PathBuf};

use super::{ManagedFile, RenderError};
use crate::files::{WriteOutcome, read_existing, reroot, write_if_changed};

/// A managed file whose disk contents differ from what would be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub path: PathBuf,
    /// Unified diff from "on disk" to "rendered"; a missing file diffs against nothing.
    pub diff: String,
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
        let existing = read_existing(&path)?;
        let on_disk = existing
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if on_disk != f.contents || existing.is_none() {
            // Headers name the file, as `diff -u` does, so the report says what to look at.
            let shown = path.display();
            let old = match existing {
                Some(_) => format!("{shown} (on disk)"),
                None => format!("{shown} (missing)"),
            };
            let diff = similar::TextDiff::from_lines(&on_disk, &f.contents)
                .unified_diff()
                .header(&old, &format!("{shown} (rendered)"))
                .to_string();
            drift.push(Drift { path, diff });
        }
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn rerooting_and_drift() {
        let root = tempfile::tempdir().unwrap();
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
        let a = root.path().join("etc/pgaas/a.conf");
        assert!(
            drift[0]
                .diff
                .contains(&format!("--- {} (missing)", a.display())),
            "{}",
            drift[0].diff
        );
        let written = write_all(&files, Some(root.path())).unwrap();
        assert!(written.iter().all(|(_, o)| *o == WriteOutcome::Changed));
        assert!(check_all(&files, Some(root.path())).unwrap().is_empty());
        fs::write(root.path().join("etc/pgaas/b.conf"), "b = 2\n").unwrap();
        let drift = check_all(&files, Some(root.path())).unwrap();
        assert_eq!(drift.len(), 1);
        let b = root.path().join("etc/pgaas/b.conf");
        let d = &drift[0].diff;
        assert!(d.contains(&format!("--- {} (on disk)", b.display())), "{d}");
        assert!(
            d.contains(&format!("+++ {} (rendered)", b.display())),
            "{d}"
        );
        assert!(drift[0].diff.contains("-b = 2") && drift[0].diff.contains("+b = 1"));
    }
}
