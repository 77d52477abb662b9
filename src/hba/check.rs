//! Whether the access files on disk are what the rows say, and readable by the programs that
//! read them. A file PostgreSQL or PgBouncer cannot read locks every tenant out (PostgreSQL
//! keeps its old rules until a restart, PgBouncer rejects everyone), so `pgaas status` and
//! `pgaas doctor` report it rather than "in sync".

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;
use sqlx::PgPool;

use super::{
    apply::{ApplyError, HbaApplier, current_generation, tenant_secrets},
    compile, compile_pgbouncer,
};
use crate::render::hba::{render_pg_hba, render_pgbouncer_hba};

/// One thing wrong with one access file, and what fixes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    pub path: PathBuf,
    pub problem: String,
}

/// An OS user as the kernel checks file access: uid, primary and supplementary groups.
#[derive(Clone, Debug)]
pub struct Reader {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Reader {
    pub fn lookup(name: &str) -> Option<Reader> {
        let user = nix::unistd::User::from_name(name).ok()??;
        let cname = std::ffi::CString::new(name).ok()?;
        let gids = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Some(Reader {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gids,
        })
    }

    /// Why this user cannot read `path` (each directory on the way must be searchable, the file
    /// readable), or `None` when it can. Root reads everything.
    pub fn cannot_read(&self, path: &Path) -> Option<String> {
        if self.uid == 0 {
            return None;
        }
        let allowed = |meta: &std::fs::Metadata, bit: u32| {
            let mode = meta.mode();
            if meta.uid() == self.uid {
                mode & (bit << 6) != 0
            } else if self.gids.contains(&meta.gid()) {
                mode & (bit << 3) != 0
            } else {
                mode & bit != 0
            }
        };
        for dir in path.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            match std::fs::metadata(dir) {
                Ok(m) if allowed(&m, 0o1) => {}
                Ok(m) => {
                    return Some(format!(
                        "{} cannot enter {} (owner {}:{}, mode {:o})",
                        self.name,
                        dir.display(),
                        m.uid(),
                        m.gid(),
                        m.mode() & 0o7777
                    ));
                }
                Err(e) => return Some(format!("{}: {e}", dir.display())),
            }
        }
        match std::fs::metadata(path) {
            Ok(m) if allowed(&m, 0o4) => None,
            Ok(m) => Some(format!(
                "{} cannot read it (owner {}:{}, mode {:o})",
                self.name,
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )),
            Err(e) => Some(e.to_string()),
        }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl HbaApplier {
    /// Every problem with the access files: missing, unreadable by the server's user, or not
    /// what the control-DB rows render to.
    pub async fn check_files(&self, pool: &PgPool) -> Result<Vec<FileProblem>, ApplyError> {
        let mut conn = pool.acquire().await?;
        let policy = self.policy(&mut conn).await?;
        let generation = u64::try_from(current_generation(&mut conn).await?).unwrap_or(0);
        let mut want = vec![(
            self.pg_hba_file.clone(),
            render_pg_hba(&compile(&policy)?, generation)?,
        )];
        if let Some(files) = &self.pgbouncer {
            want.push((
                files.hba_file.clone(),
                render_pgbouncer_hba(&compile_pgbouncer(&policy)?, generation)?,
            ));
            let secrets = tenant_secrets(&mut conn).await?;
            let existing = read(&files.userlist_file);
            want.push((
                files.userlist_file.clone(),
                self.userlist(files, &secrets, existing.as_deref()),
            ));
            let tenants = self.pooler_tenants(&mut conn, &secrets).await?;
            want.push((
                files.tenants_file.clone(),
                crate::render::render_tenants(&tenants, &files.limits),
            ));
        }
        let reader = self.reader.as_deref().and_then(Reader::lookup);
        let mut problems = Vec::new();
        for (path, text) in want {
            let problem = |p: String| FileProblem {
                path: path.clone(),
                problem: p,
            };
            if !path.exists() {
                problems.push(problem("missing".into()));
                continue;
            }
            if let Some(why) = reader.as_ref().and_then(|r| r.cannot_read(&path)) {
                problems.push(problem(why));
            }
            if read(&path).as_deref() != Some(text.as_str()) {
                problems.push(problem(
                    "differs from what the control-DB rows render to".into(),
                ));
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn readability_follows_owner_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pg_hba.conf");
        std::fs::write(&f, "x").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let someone = Reader {
            name: "someone".into(),
            uid: meta.uid() + 4242,
            gids: vec![meta.gid() + 4242],
        };
        let in_group = Reader {
            name: "grouped".into(),
            uid: meta.uid() + 4242,
            gids: vec![meta.gid()],
        };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(someone.cannot_read(&f).is_some());
        assert!(in_group.cannot_read(&f).is_none());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let why = in_group.cannot_read(&f).unwrap();
        assert!(why.contains("mode 600"), "{why}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(someone.cannot_read(&f).is_none());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let why = someone.cannot_read(&f).unwrap();
        assert!(why.contains("cannot enter"), "{why}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
