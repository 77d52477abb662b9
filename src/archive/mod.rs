//! Continuous archiving and point-in-time recovery with pgBackRest.
//!
//! PostgreSQL hands every finished WAL segment to `pgbackrest archive-push` (asynchronous, so a
//! slow repository never stalls commits); systemd timers take a full backup weekly and a
//! differential one daily, into the local repository and, when configured, an encrypted
//! S3-compatible one off the host. Together they make every instant from the oldest backup kept
//! to the last archived segment recoverable; `archive.archive_timeout_secs` bounds what a dead
//! host loses.
//!
//! One tenant is restored to a point in time without touching the others ([`restore`]): its
//! database alone is restored (`--db-include`) into a scratch cluster ([`scratch`]), recovered to
//! the instant, dumped, and loaded into a new database of the tenant or swapped in place of its
//! own (the old one kept under a dated name). Each restore is a job row (`restore_jobs`), run by
//! the CLI directly or, for API requests, by the worker ([`jobs`]), which runs as root or as the
//! cluster's OS user: the API's own user can neither read the repository nor run a server. A
//! crash mid-restore leaves a `running` job that the next worker start undoes.
//!
//! Drills ([`drill`]) restore the newest backup into a scratch cluster weekly and check that
//! every database opens; [`status`] gathers what an operator needs to trust all of it.

mod carry;
pub mod cluster;
pub mod drill;
mod engine;
pub mod info;
pub mod jobs;
pub mod leftovers;
pub mod restore;
pub mod scratch;
pub mod status;

use std::path::PathBuf;

pub use engine::{BackupKind, Engine, find_binary};

use crate::{backup::BackupError, pg::cluster::ClusterError, tenant::TenantError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "continuous archiving is off (archive.enabled: false); turn it on in pgaas.yaml and run `pgaas install` (or restart `pgaas dev`)"
    )]
    Disabled,
    #[error("pgBackRest is not installed at {}: apt-get install pgbackrest", .0.display())]
    NotInstalled(PathBuf),
    #[error("pgBackRest runs as the cluster's OS user {owner}; run this as root or as {owner}")]
    WrongUser { owner: String },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("repository {repo} is damaged; pgBackRest's verify found:\n{detail}")]
    Damaged { repo: u32, detail: String },
    #[error("{0}")]
    OutsideWindow(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("recovery of the scratch cluster failed: {0}")]
    Recovery(String),
    #[error(
        "the job ran past archive.restore_job_timeout_secs ({secs} s) and was stopped; what it had made was removed and the database was not changed"
    )]
    JobTimedOut { secs: u64 },
    #[error("WAL archiving is not keeping up: {0}")]
    Archiving(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("control database: {0}")]
    Sql(#[from] sqlx::Error),
}

impl ArchiveError {
    /// Whether the request itself was wrong (the operator must change it), as opposed to the
    /// host failing.
    pub fn is_request_error(&self) -> bool {
        use crate::tenant::TenantError;
        matches!(
            self,
            ArchiveError::OutsideWindow(_)
                | ArchiveError::Invalid(_)
                | ArchiveError::NotFound(_)
                | ArchiveError::Backup(BackupError::UnknownDatabase(_) | BackupError::Invalid(_))
                | ArchiveError::Tenant(
                    TenantError::NotFound(_)
                        | TenantError::EntryNotFound(_)
                        | TenantError::Validation(_)
                )
        )
    }
}

/// Print a progress line on the terminal (stderr), and log it.
pub type Progress = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Progress to stderr, `==> ` first, as every long pgaas command does.
pub fn terminal_progress() -> Progress {
    std::sync::Arc::new(|msg: &str| eprintln!("==> {msg}"))
}

/// Progress to the log only (the worker).
pub fn log_progress() -> Progress {
    std::sync::Arc::new(|msg: &str| tracing::info!("{msg}"))
}

/// The S3 repository's key and secret, from `archive.s3.credentials_file`
/// (`AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines).
fn read_credentials(
    path: &std::path::Path,
) -> Result<(String, crate::settings::Secret), ArchiveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut key = None;
    let mut secret = None;
    for line in text.lines() {
        let line = line.trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "AWS_ACCESS_KEY_ID" => key = Some(v),
            "AWS_SECRET_ACCESS_KEY" => secret = Some(crate::settings::Secret::new(v)),
            _ => {}
        }
    }
    match (key, secret) {
        (Some(k), Some(s)) if !k.is_empty() && !s.expose().is_empty() => Ok((k, s)),
        _ => Err(ArchiveError::Invalid(format!(
            "{} must hold AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines",
            path.display()
        ))),
    }
}

/// Write `conf.d/secrets.conf` (the S3 key, secret and repository passphrase) for pgBackRest,
/// readable by the cluster's OS user only (`group`: its group, when we are root). The
/// passphrase is generated into `archive.s3.cipher_pass_file` (0600) when missing; then it is
/// returned, to be shown once. Without an S3 repository the file is removed.
pub fn write_secrets(
    settings: &crate::settings::Settings,
    owner: (u32, u32),
) -> Result<Option<crate::settings::Secret>, ArchiveError> {
    let a = &settings.archive;
    let path = a.secrets_file();
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source| ArchiveError::Io { path: p, source }
    };
    let Some(s3) = &a.s3 else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => return Ok(None),
        }
    };
    let generated = ensure_passphrase(&s3.cipher_pass_file)?;
    let text = secrets_text(settings, |p| p.to_path_buf())?.unwrap_or_default();
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    crate::files::write_if_changed(&path, &text, 0o640)
        .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
    let (uid, gid) = owner;
    let file_uid = if nix::unistd::Uid::effective().is_root() {
        0
    } else {
        uid
    };
    for p in [dir, path.as_path()] {
        std::os::unix::fs::chown(p, Some(file_uid), Some(gid)).map_err(io(p))?;
    }
    Ok(generated)
}

/// The repository passphrase file (0600), generated when missing; the new passphrase is
/// returned to be shown once.
pub fn ensure_passphrase(
    file: &std::path::Path,
) -> Result<Option<crate::settings::Secret>, ArchiveError> {
    match crate::settings::read_secret_file(file).map_err(|source| ArchiveError::Io {
        path: file.to_path_buf(),
        source,
    })? {
        Some(p) if !p.expose().is_empty() => Ok(None),
        _ => {
            let p = crate::model::secret::Secret::generate();
            crate::files::write_if_changed(file, p.expose(), 0o600)
                .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            Ok(Some(p))
        }
    }
}

/// The directories pgBackRest and the scratch clusters use, owned by the cluster's OS user
/// (created when missing, their owner repaired when not).
pub fn prepare_dirs(
    settings: &crate::settings::Settings,
    owner: &crate::pg::cluster::OsUser,
) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    let a = &settings.archive;
    for dir in [
        &a.repo_path,
        &a.spool_path,
        &a.log_path,
        &a.lock_path,
        &a.scratch_dir,
    ] {
        let io = |source| ArchiveError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(io)?;
        owner.chown(dir)?;
    }
    Ok(())
}

/// Make the stanza usable: create it in every repository, check that WAL reaches them, and
/// take a first full backup into each repository that has none (nothing is recoverable before
/// one). Idempotent.
pub async fn bootstrap(
    host: &restore::ArchiveHost,
    progress: &Progress,
) -> Result<(), ArchiveError> {
    progress(&format!(
        "pgBackRest: stanza {} in {} repositor{}",
        host.engine.stanza,
        host.engine.repos.len(),
        if host.engine.repos.len() == 1 {
            "y"
        } else {
            "ies"
        }
    ));
    host.engine.stanza_create().await?;
    progress("pgBackRest: checking that WAL reaches the repositories");
    host.engine.check(60).await?;
    let info = host.engine.info().await?;
    for &repo in &host.engine.repos {
        if info.backups(repo).next().is_none() {
            progress(&format!(
                "pgBackRest: first full backup into repository {repo}"
            ));
            host.engine.backup(BackupKind::Full, repo).await?;
        }
    }
    status::refresh_cache(host).await?;
    Ok(())
}

/// An instant as an operator or a client writes it: RFC 3339 (`2026-11-29T14:32:00Z`), or with
/// a blank instead of `T` and an hour-only offset (`2026-11-29 14:32:00+00`, PostgreSQL's own
/// form). The offset is required: a bare local time would mean different instants on the
/// server and at the client.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, ArchiveError> {
    let t = text.trim();
    let mut normal = t.replacen(' ', "T", 1);
    // +HH or -HH at the end: add the minutes. By characters, not a byte index: the text is the
    // client's, and a byte index can fall inside a multibyte character ("éé" panicked here).
    let mut tail = normal.chars().rev().take(3);
    let hour_only = normal.len() > 3
        && tail.next().is_some_and(|c| c.is_ascii_digit())
        && tail.next().is_some_and(|c| c.is_ascii_digit())
        && tail.next().is_some_and(|c| c == '+' || c == '-');
    if hour_only {
        normal.push_str(":00");
    }
    chrono::DateTime::parse_from_rfc3339(&normal)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            ArchiveError::Invalid(format!(
                "{text:?} is not a time with its offset: write it like 2026-11-29T14:32:00Z or '2026-11-29 14:32:00+00'"
            ))
        })
}

/// The text of `conf.d/secrets.conf` for the S3 repository, with the files it comes from read
/// through `path` (the installer reroots them); `None` without an S3 repository. Fails when the
/// passphrase file is missing: whoever calls this generates it first.
pub fn secrets_text(
    settings: &crate::settings::Settings,
    path: impl Fn(&std::path::Path) -> std::path::PathBuf,
) -> Result<Option<String>, ArchiveError> {
    let Some(s3) = &settings.archive.s3 else {
        return Ok(None);
    };
    let (key, secret) = read_credentials(&path(&s3.credentials_file))?;
    let pass_file = path(&s3.cipher_pass_file);
    let pass = crate::settings::read_secret_file(&pass_file)
        .map_err(|source| ArchiveError::Io {
            path: pass_file.clone(),
            source,
        })?
        .filter(|p| !p.expose().is_empty())
        .ok_or_else(|| ArchiveError::Invalid(format!("{} is missing", pass_file.display())))?;
    for v in [key.as_str(), secret.expose(), pass.expose()] {
        if v.contains(['\n', '\r']) {
            return Err(ArchiveError::Invalid(
                "S3 credentials and the passphrase must be single lines".into(),
            ));
        }
    }
    Ok(Some(format!(
        "# pgaas managed file: written by `pgaas install` from {} and {}\n[global]\nrepo2-s3-key={key}\nrepo2-s3-key-secret={}\nrepo2-cipher-pass={}\n",
        s3.credentials_file.display(),
        s3.cipher_pass_file.display(),
        secret.expose(),
        pass.expose()
    )))
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_need_an_offset_and_accept_postgres_form() {
        let want = parse_time("2026-11-29T14:32:00Z").unwrap();
        assert_eq!(parse_time("2026-11-29 14:32:00+00").unwrap(), want);
        assert_eq!(parse_time("2026-11-29 15:32:00+01:00").unwrap(), want);
        assert_eq!(
            parse_time("2026-11-29 14:32:00.5+00").unwrap(),
            want + chrono::Duration::milliseconds(500)
        );
        for bad in [
            "2026-11-29 14:32:00",
            "yesterday",
            "",
            "2026-11-29",
            "éé",
            "2026-11-29 14:32:00+é",
            "2026-11-29 14:32:00é0",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
