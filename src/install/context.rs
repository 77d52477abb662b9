//! What every step works with: the root prefix (a temp dir in tests, `/` on a host), the
//! [`System`] that runs programs, the settings, the TLS mode, the superuser's connection options,
//! and what the run produced for the summary (the first API key). File helpers here compare and
//! write with owner and mode, so every file-like step reports a mode or owner drift as a change.

use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, anyhow};
use sqlx::postgres::PgConnectOptions;

use super::playbook::Vars;
use crate::system::System;
use crate::{
    files::reroot,
    settings::{Secret, Settings},
};

/// How the server certificate is obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// A local CA under `<config_dir>/tls` (hosts without a public name).
    SelfSigned,
    Acme {
        domain: String,
        email: String,
        directory: String,
        ca_file: Option<PathBuf>,
        listen: Option<std::net::SocketAddr>,
    },
}

pub struct Cx {
    pub root: Option<PathBuf>,
    pub system: Arc<dyn System>,
    pub settings: Settings,
    pub vars: Vars,
    pub tls: TlsMode,
    /// The superuser over the local socket; `None` when no server can be reached (tests of the
    /// file steps), which makes database steps fail with a clear message.
    pub admin: Option<PgConnectOptions>,
    pub memory_mb: u64,
    pub first_api_key: Option<Secret>,
    rt: Option<tokio::runtime::Runtime>,
}

/// Owner, group and mode a file or directory must have.
#[derive(Clone, Debug)]
pub struct Attrs {
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

impl Attrs {
    pub fn new(owner: &str, group: &str, mode: u32) -> Self {
        Self {
            owner: owner.into(),
            group: group.into(),
            mode,
        }
    }
}

impl Cx {
    pub fn new(
        root: Option<PathBuf>,
        system: Arc<dyn System>,
        settings: Settings,
        vars: Vars,
        tls: TlsMode,
        admin: Option<PgConnectOptions>,
        memory_mb: u64,
    ) -> Self {
        Self {
            root,
            system,
            settings,
            vars,
            tls,
            admin,
            memory_mb,
            first_api_key: None,
            rt: None,
        }
    }

    /// A host path under the root prefix.
    pub fn path(&self, p: &Path) -> PathBuf {
        reroot(p, self.root.as_deref())
    }

    /// Run async work (database, ACME) to completion. Steps are synchronous; the runtime is
    /// made on first use.
    pub fn block_on<F: std::future::Future>(&mut self, f: F) -> anyhow::Result<F::Output> {
        if self.rt.is_none() {
            self.rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            );
        }
        Ok(self.rt.as_ref().expect("made above").block_on(f))
    }

    pub fn admin(&self) -> anyhow::Result<PgConnectOptions> {
        self.admin.clone().ok_or_else(|| {
            anyhow!("no PostgreSQL server to talk to in this run (a root prefix was given)")
        })
    }

    /// uid and gid for names; `None` when either does not exist yet (a user made by an earlier
    /// step of a dry run).
    pub fn ids(&self, owner: &str, group: &str) -> Option<(u32, u32)> {
        Some((self.system.user(owner)?.uid, self.system.group(group)?))
    }

    /// What differs between `path` on disk and the wanted attributes (empty when all match).
    pub fn attr_drift(&self, path: &Path, want: &Attrs) -> Vec<String> {
        let Ok(meta) = fs::metadata(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mode = meta.permissions().mode() & 0o7777;
        if mode != want.mode {
            out.push(format!("mode {mode:04o} -> {:04o}", want.mode));
        }
        match self.ids(&want.owner, &want.group) {
            Some((uid, gid)) if meta.uid() != uid || meta.gid() != gid => {
                out.push(format!("owner -> {}:{}", want.owner, want.group))
            }
            Some(_) => {}
            None => out.push(format!(
                "owner -> {}:{} (created earlier in this run)",
                want.owner, want.group
            )),
        }
        out
    }

    /// Give `path` its owner and mode.
    pub fn set_attrs(&self, path: &Path, want: &Attrs) -> anyhow::Result<()> {
        let (uid, gid) = self.ids(&want.owner, &want.group).ok_or_else(|| {
            anyhow!(
                "user {:?} or group {:?} does not exist; the step creating it must come first",
                want.owner,
                want.group
            )
        })?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}:{} {}", want.owner, want.group, path.display()))?;
        // After chown: changing the owner clears set-id bits.
        fs::set_permissions(path, fs::Permissions::from_mode(want.mode))
            .with_context(|| format!("chmod {:o} {}", want.mode, path.display()))?;
        Ok(())
    }
}

pub fn read_opt(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

/// Write bytes atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgaas-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A unified diff from the disk to the wanted text.
pub fn diff(old: &str, new: &str, path: &Path) -> String {
    let from = if old.is_empty() {
        "/dev/null".to_string()
    } else {
        format!("{} (on disk)", path.display())
    };
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(&from, &format!("{} (new)", path.display()))
        .to_string()
}
