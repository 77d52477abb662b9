//! The backup directory on disk: file names (the UTC time of the dump, so names sort by age and
//! say when they were taken), `sha256sum`-format sidecars, private directories and files, and
//! reading it all back. Dotted `.partial` names are work in progress and never listed.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BackupError, io_err};
use crate::settings::{Secret, is_plain_identifier};

const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";
pub const DUMP_EXT: &str = ".dump";
const SIDECAR_EXT: &str = ".sha256";
pub const PARTIAL_EXT: &str = ".partial";

/// Whether a dump's contents match its sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// Recomputed and equal to the sidecar's.
    Verified,
    /// A well-formed sidecar is present; the file was not re-read (`--verify` re-reads it).
    Unchecked,
    /// Recomputed and different: the file is damaged.
    Mismatch,
    /// No sidecar: the run that made it did not finish.
    Missing,
}

/// One dump on disk.
#[derive(Clone, Debug, Serialize)]
pub struct BackupFile {
    pub database: String,
    pub file_name: String,
    #[serde(skip)]
    pub path: PathBuf,
    pub created_at: DateTime<Utc>,
    pub size_bytes: u64,
    /// From the sidecar.
    pub sha256: Option<String>,
    pub checksum: Checksum,
}

impl BackupFile {
    /// Recompute the checksum (reads the whole file).
    pub fn verify(&mut self) -> Result<(), BackupError> {
        let sidecar = sidecar_path(&self.path);
        self.sha256 = read_sidecar(&sidecar)?;
        self.checksum = match &self.sha256 {
            None => Checksum::Missing,
            Some(want) if *want == sha256_file(&self.path)? => Checksum::Verified,
            Some(_) => Checksum::Mismatch,
        };
        Ok(())
    }
}

pub fn file_name_for(at: DateTime<Utc>) -> String {
    format!("{}{DUMP_EXT}", at.format(STAMP))
}

/// When the dump named `name` was taken; `None` for names pgaas did not make.
pub fn parse_file_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_suffix(DUMP_EXT)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// `<dump>.sha256`, beside the dump.
pub fn sidecar_path(dump: &Path) -> PathBuf {
    let mut s = dump.as_os_str().to_owned();
    s.push(SIDECAR_EXT);
    PathBuf::from(s)
}

/// `.<name>.partial` in the same directory.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}{PARTIAL_EXT}"))
}

/// The sidecar line, as `sha256sum` writes it, so `sha256sum -c` works in the directory.
pub fn sidecar_text(sha256: &str, file_name: &str) -> String {
    format!("{sha256}  {file_name}\n")
}

/// The hash a sidecar records; `None` when there is none. A malformed sidecar is treated as a
/// hash that matches nothing, so the dump shows as damaged rather than silently unverified.
pub fn read_sidecar(path: &Path) -> Result<Option<String>, BackupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let hash = text.split_whitespace().next().unwrap_or_default();
            let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            Ok(Some(if ok {
                hash.to_ascii_lowercase()
            } else {
                String::from("malformed")
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Create `dir` (and parents) private to the user running pgaas; existing ones are left as they are.
pub fn ensure_dir(dir: &Path) -> Result<(), BackupError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Give `path` the owner of the backup root when running as root: the nightly timer (the
/// cluster's user), the API and an operator's `sudo pgaas backup run` then share one owner for
/// every directory and dump, whoever made it first, and each can prune and verify the others'.
pub fn adopt(root: &Path, path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(root).map_err(io_err(root))?;
    let here = std::fs::metadata(path).map_err(io_err(path))?;
    if (here.uid(), here.gid()) != (owner.uid(), owner.gid()) {
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .map_err(io_err(path))?;
    }
    Ok(())
}

/// A new file, 0600, failing if it exists (two runs never share a file).
pub fn create_private(path: &Path) -> Result<File, BackupError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// Make renames and unlinks in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A libpq password file for `user`, in a fresh private directory removed when the guard drops.
pub fn pgpass(user: &str, password: &Secret) -> Result<(tempfile::TempDir, PathBuf), BackupError> {
    let dir = tempfile::Builder::new()
        .prefix("pgaas-pgpass-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let path = dir.path().join("pgpass");
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    let mut f = create_private(&path)?;
    f.write_all(format!("*:*:*:{}:{}\n", escape(user), escape(password.expose())).as_bytes())
        .map_err(io_err(&path))?;
    Ok((dir, path))
}

/// The database directories under `root` (names pgaas could have made).
pub fn databases(root: &Path) -> Result<Vec<String>, BackupError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_plain_identifier(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The dumps of one database, newest first.
pub fn dumps_of(root: &Path, database: &str, verify: bool) -> Result<Vec<BackupFile>, BackupError> {
    let dir = root.join(database);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(created_at) = parse_file_name(&file_name) else {
            continue;
        };
        let path = entry.path();
        let meta = entry.metadata().map_err(io_err(&path))?;
        if !meta.is_file() {
            continue;
        }
        let sha256 = read_sidecar(&sidecar_path(&path))?;
        let checksum = if sha256.is_some() {
            Checksum::Unchecked
        } else {
            Checksum::Missing
        };
        let mut file = BackupFile {
            database: database.to_string(),
            file_name,
            path,
            created_at,
            size_bytes: meta.len(),
            sha256,
            checksum,
        };
        if verify && file.checksum == Checksum::Unchecked {
            file.verify()?;
        }
        out.push(file);
    }
    out.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.file_name.cmp(&a.file_name))
    });
    Ok(out)
}

pub fn list(
    root: &Path,
    database: Option<&str>,
    verify: bool,
) -> Result<Vec<BackupFile>, BackupError> {
    let names = match database {
        Some(d) => vec![d.to_string()],
        None => databases(root)?,
    };
    let mut all = Vec::new();
    for name in names {
        all.extend(dumps_of(root, &name, verify)?);
    }
    Ok(all)
}

/// The newest dump of `database` whose checksum is recomputed and matches; older ones are read
/// only when newer ones fail.
pub fn newest_verified(root: &Path, database: &str) -> Result<Option<BackupFile>, BackupError> {
    for mut f in dumps_of(root, database, false)? {
        if f.checksum == Checksum::Unchecked {
            f.verify()?;
            if f.checksum == Checksum::Verified {
                return Ok(Some(f));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_time_and_sort_by_it() {
        let t = DateTime::parse_from_rfc3339("2025-01-02T03:04:05.678Z")
            .unwrap()
            .to_utc();
        let name = file_name_for(t);
        assert_eq!(name, "20250102T030405.678Z.dump");
        assert_eq!(parse_file_name(&name), Some(t));
        assert!(file_name_for(t + chrono::Duration::milliseconds(1)) > name);
        for other in [
            ".20250102T030405.678Z.dump.partial",
            "20250102T030405.678Z.dump.sha256",
            "notes.dump",
            "x",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
        assert_eq!(
            partial_path(Path::new("/b/db/20250102T030405.678Z.dump")),
            Path::new("/b/db/.20250102T030405.678Z.dump.partial")
        );
        assert_eq!(
            sidecar_path(Path::new("/b/a.dump")),
            Path::new("/b/a.dump.sha256")
        );
    }

    #[test]
    fn sidecars_read_like_sha256sum_and_malformed_ones_match_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("db1")).unwrap();
        let dump = root.path().join("db1").join("20250102T030405.678Z.dump");
        std::fs::write(&dump, b"archive").unwrap();
        let hash = sha256_file(&dump).unwrap();
        assert_eq!(hash, hex::encode(Sha256::digest(b"archive")));
        let side = sidecar_path(&dump);
        assert_eq!(
            dumps_of(root.path(), "db1", true).unwrap()[0].checksum,
            Checksum::Missing
        );
        std::fs::write(&side, sidecar_text(&hash, "20250102T030405.678Z.dump")).unwrap();
        assert_eq!(
            dumps_of(root.path(), "db1", false).unwrap()[0].checksum,
            Checksum::Unchecked
        );
        assert_eq!(
            dumps_of(root.path(), "db1", true).unwrap()[0].checksum,
            Checksum::Verified
        );
        assert!(newest_verified(root.path(), "db1").unwrap().is_some());
        std::fs::write(&side, "not a hash\n").unwrap();
        assert_eq!(
            dumps_of(root.path(), "db1", true).unwrap()[0].checksum,
            Checksum::Mismatch
        );
        assert!(newest_verified(root.path(), "db1").unwrap().is_none());
        assert_eq!(list(root.path(), None, false).unwrap().len(), 1);
    }
}
