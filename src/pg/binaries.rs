//! Finding PostgreSQL's server binaries and their major version: `pg_config --bindir` first, then
//! `/usr/lib/postgresql/<version>/bin`, newest first.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Supported major versions (Debian 12 ships 15, Ubuntu 24.04 16, Debian 13 17).
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 15..=17;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub version: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(
        "PostgreSQL server binaries not found (looked for initdb and postgres via pg_config and in /usr/lib/postgresql/*/bin).\n\
         Install them with: apt-get install postgresql postgresql-contrib\n\
         (as root, `pgaas dev --install-deps` does this for you)"
    )]
    NotFound,
    #[error(
        "PostgreSQL {wanted} server binaries not found; installed: {found}.\n\
         Install them with: apt-get install postgresql-{wanted} postgresql-contrib"
    )]
    WrongVersion { wanted: u32, found: String },
    #[error("PostgreSQL {0} is not supported; pgaas supports 15, 16 and 17")]
    Unsupported(u32),
}

impl PgBinaries {
    /// The newest supported installation, or exactly `wanted`.
    pub fn find(wanted: Option<u32>) -> Result<Self, FindError> {
        if let Some(w) = wanted {
            if !SUPPORTED.contains(&w) {
                return Err(FindError::Unsupported(w));
            }
        }
        let found = candidates();
        let pick = found
            .iter()
            .filter(|b| SUPPORTED.contains(&b.version))
            .find(|b| wanted.is_none_or(|w| w == b.version));
        match (pick, wanted) {
            (Some(b), _) => Ok(b.clone()),
            (None, Some(w)) if !found.is_empty() => Err(FindError::WrongVersion {
                wanted: w,
                found: found
                    .iter()
                    .map(|b| b.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            (None, _) => Err(FindError::NotFound),
        }
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// Every usable bindir found, newest version first, without duplicates.
fn candidates() -> Vec<PgBinaries> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !dir.is_empty() {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            dirs.push(e.path().join("bin"));
        }
    }
    let mut found: Vec<PgBinaries> = Vec::new();
    for dir in dirs {
        if let Some(b) = probe(&dir) {
            if !found.iter().any(|f| f.bindir == b.bindir) {
                found.push(b);
            }
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse(b.version));
    found
}

fn probe(dir: &Path) -> Option<PgBinaries> {
    let dir = dir.canonicalize().ok()?;
    if !dir.join("initdb").is_file() || !dir.join("postgres").is_file() {
        return None;
    }
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let version = parse_version(&String::from_utf8_lossy(&out.stdout))?;
    Some(PgBinaries {
        bindir: dir,
        version,
    })
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> 15.
pub fn parse_version(text: &str) -> Option<u32> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let major: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    major.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_real_banners() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version("postgres (PostgreSQL) 17.2\n"), Some(17));
        assert_eq!(parse_version("postgres (PostgreSQL) 16beta1"), Some(16));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn unsupported_versions_are_refused_before_searching() {
        assert!(matches!(
            PgBinaries::find(Some(9)),
            Err(FindError::Unsupported(9))
        ));
    }
}
