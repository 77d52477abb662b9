//! Running pgBackRest: always as the cluster's OS user (a root-run backup leaves root-owned
//! files in the repository that break the next one), always with `--config-path` (so the
//! distribution's `/etc/pgbackrest.conf` is never read), on a blocking thread when called from
//! async code. Secrets never reach argv: they are in `conf.d/secrets.conf`.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{ArchiveError, info::Info};
use crate::{pg::cluster::OsUser, settings::Settings};

/// Which physical backup to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Everything; the weekly one.
    Full,
    /// What changed since the last full; the daily one.
    Diff,
    /// What changed since the last backup of any kind.
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

/// pgBackRest for this host's stanza.
#[derive(Clone, Debug)]
pub struct Engine {
    pub binary: PathBuf,
    pub config_dir: PathBuf,
    pub stanza: String,
    pub owner: OsUser,
    /// The repositories configured, by number ([`Settings::archive_repos`]).
    pub repos: Vec<u32>,
}

impl Engine {
    /// The engine of `settings`, or why there is none.
    pub fn new(settings: &Settings) -> Result<Engine, ArchiveError> {
        let a = &settings.archive;
        if !a.enabled {
            return Err(ArchiveError::Disabled);
        }
        if !a.binary.is_file() {
            return Err(ArchiveError::NotInstalled(a.binary.clone()));
        }
        let owner = OsUser::lookup(&settings.postgres.os_user)?;
        Ok(Engine {
            binary: a.binary.clone(),
            config_dir: a.config_dir.clone(),
            stanza: a.stanza.clone(),
            owner,
            repos: settings.archive_repos(),
        })
    }

    /// A command line as the cluster's OS user: `pgbackrest --config-path=.. --stanza=.. ARGS`.
    pub fn command(&self, args: &[&str]) -> Result<Command, ArchiveError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--config-path={}", self.config_dir.display()))
            .arg(format!("--stanza={}", self.stanza))
            .args(args);
        as_owner(&mut cmd, &self.owner)?;
        Ok(cmd)
    }

    /// Run to completion; stdout on success, else the last lines of what it printed.
    pub fn run(&self, args: &[&str]) -> Result<String, ArchiveError> {
        let mut cmd = self.command(args)?;
        run_command(
            &mut cmd,
            &format!("pgbackrest {}", args.first().unwrap_or(&"")),
        )
    }

    /// [`Engine::run`] on a blocking thread.
    pub async fn run_async(&self, args: Vec<String>) -> Result<String, ArchiveError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            this.run(&args)
        })
        .await
        .map_err(|e| ArchiveError::Command {
            what: "pgbackrest".into(),
            detail: format!("the task failed: {e}"),
        })?
    }

    /// Create the stanza in every repository (harmless when it exists).
    pub async fn stanza_create(&self) -> Result<(), ArchiveError> {
        self.run_async(vec!["stanza-create".into()]).await?;
        Ok(())
    }

    /// pgBackRest's own end-to-end check: the configuration, and a WAL segment archived to every
    /// repository within `timeout_secs`.
    pub async fn check(&self, timeout_secs: u32) -> Result<(), ArchiveError> {
        self.run_async(vec![
            "check".into(),
            format!("--archive-timeout={timeout_secs}"),
        ])
        .await?;
        Ok(())
    }

    /// Take a backup into `repo` (1 = local, 2 = S3). Expiry by retention runs at its end.
    pub async fn backup(&self, kind: BackupKind, repo: u32) -> Result<(), ArchiveError> {
        self.run_async(vec![
            "backup".into(),
            format!("--type={}", kind.as_str()),
            format!("--repo={repo}"),
        ])
        .await?;
        Ok(())
    }

    /// `info --output=json` for the stanza.
    pub async fn info(&self) -> Result<Info, ArchiveError> {
        let out = self
            .run_async(vec!["info".into(), "--output=json".into()])
            .await?;
        Info::parse(&out, &self.stanza)
    }

    /// When the newest WAL segment reached repository `repo`, from the repository listing (the
    /// upload time; the commits in the segment are older).
    pub async fn newest_wal_upload(
        &self,
        repo: u32,
        archive_id: &str,
        segment: &str,
    ) -> Result<Option<i64>, ArchiveError> {
        let Some(dir) = segment.get(..16) else {
            return Ok(None);
        };
        let path = format!("archive/{}/{archive_id}/{dir}", self.stanza);
        let out = self
            .run_async(vec![
                "repo-ls".into(),
                format!("--repo={repo}"),
                "--output=json".into(),
                path,
            ])
            .await?;
        let listing: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&out).map_err(|e| ArchiveError::Command {
                what: "pgbackrest repo-ls".into(),
                detail: format!("unreadable output: {e}"),
            })?;
        Ok(listing
            .iter()
            .filter(|(name, _)| name.starts_with(segment))
            .filter_map(|(_, v)| v.get("time").and_then(serde_json::Value::as_i64))
            .max())
    }

    /// `verify` of one repository: `Ok(text)` when pgBackRest reports it sound, else what it
    /// found. pgBackRest exits 0 either way (2.45), so the report is read.
    pub async fn verify(&self, repo: u32) -> Result<String, ArchiveError> {
        let out = self
            .run_async(vec![
                "verify".into(),
                format!("--repo={repo}"),
                "--output=text".into(),
                "--verbose".into(),
            ])
            .await?;
        let sound = out.lines().any(|l| l.trim() == "status: ok")
            && !out.lines().any(|l| l.trim() == "status: error");
        if sound {
            Ok(out)
        } else {
            Err(ArchiveError::Damaged {
                repo,
                detail: out
                    .lines()
                    .filter(|l| {
                        l.contains("status: error")
                            || l.contains("invalid")
                            || l.contains("missing: ") && !l.contains("missing: 0")
                    })
                    .take(12)
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
    }
}

/// Make `cmd` run as `owner`: as is when we are that user, by setuid when we are root, and
/// otherwise not at all (pgBackRest run by a third user would leave files nobody can use).
pub(crate) fn as_owner(cmd: &mut Command, owner: &OsUser) -> Result<(), ArchiveError> {
    let euid = nix::unistd::Uid::effective();
    if euid.as_raw() != owner.uid {
        if !euid.is_root() {
            return Err(ArchiveError::WrongUser {
                owner: owner.name.clone(),
            });
        }
        cmd.uid(owner.uid).gid(owner.gid);
        cmd.env("HOME", "/");
    }
    // The owner may not be able to enter our working directory.
    cmd.current_dir("/");
    cmd.stdin(Stdio::null());
    Ok(())
}

/// Run `cmd`; stdout on success, else an error with the last lines it printed.
pub(crate) fn run_command(cmd: &mut Command, what: &str) -> Result<String, ArchiveError> {
    let out = cmd.output().map_err(|e| ArchiveError::Command {
        what: what.to_string(),
        detail: format!("{:?} could not be run: {e}", cmd.get_program()),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}\n{stderr}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            l.contains("ERROR") || l.contains("HINT") || l.contains("FATAL") || !l.contains("INFO:")
        })
        .collect();
    Err(ArchiveError::Command {
        what: what.to_string(),
        detail: format!(
            "{} ({})",
            lines[lines.len().saturating_sub(6)..].join("\n"),
            out.status
        ),
    })
}

/// The installed pgBackRest: `archive.binary`, else the first on a standard path.
pub fn find_binary(configured: &Path) -> Option<PathBuf> {
    std::iter::once(configured.to_path_buf())
        .chain(["/usr/bin/pgbackrest", "/usr/local/bin/pgbackrest"].map(PathBuf::from))
        .find(|p| p.is_file())
}
