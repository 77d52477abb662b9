//! Continuous archiving with pgBackRest (`archive`): where the stanza's files live, how long
//! backups are kept, when they are taken, and the optional off-host S3-compatible repository.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Archive every WAL segment and take physical backups with pgBackRest. Off: the nightly
    /// logical dumps are the only backups, and a host loses up to a day.
    pub enabled: bool,
    /// The pgBackRest stanza (one per cluster).
    pub stanza: String,
    /// The pgBackRest program.
    pub binary: PathBuf,
    /// pgBackRest's configuration directory: `pgbackrest.conf` (rendered, no secrets) and
    /// `conf.d/secrets.conf` (the S3 credentials and the repository passphrase). Every
    /// pgBackRest command pgaas runs, `archive_command` included, names it, so the
    /// distribution's `/etc/pgbackrest.conf` is never read.
    pub config_dir: PathBuf,
    /// The local repository (repo1).
    pub repo_path: PathBuf,
    pub spool_path: PathBuf,
    pub log_path: PathBuf,
    pub lock_path: PathBuf,
    /// Where scratch clusters for restores and drills are made (a directory of the cluster's
    /// OS user with room for one backup plus the WAL replayed).
    pub scratch_dir: PathBuf,
    /// The longest a whole point-in-time restore job may run (window check, scratch restore,
    /// WAL replay, dump, load, swap); past it the job is stopped and undone, so one tenant's
    /// stuck restore does not hold up every other restore on the host.
    pub restore_job_timeout_secs: u64,
    /// Restore jobs the worker runs at once, each of a different tenant (a tenant has at most
    /// one queued or running): one tenant's long restore does not hold up the others'.
    pub restore_concurrency: u32,
    /// `archive_timeout`: an idle cluster still archives at least this often, which bounds
    /// what a dead host loses (the RPO) in seconds.
    pub archive_timeout_secs: u32,
    /// Full backups kept per repository (`repo1-retention-full`); the recoverable window starts at
    /// the oldest one kept.
    pub retention_full: u32,
    /// Differential backups kept (`repo1-retention-diff`).
    pub retention_diff: u32,
    /// Parallel processes for backups and restores.
    pub process_max: u32,
    /// systemd calendar expression for the weekly full backup.
    pub full_schedule: String,
    /// systemd calendar expression for the daily differential backup.
    pub diff_schedule: String,
    /// systemd calendar expression for the restore drill.
    pub drill_schedule: String,
    /// A newest backup older than this many hours is a warning in `pgaas status` and
    /// `/metrics` (a missed schedule).
    pub max_backup_age_hours: u32,
    /// The off-host repository (repo2), when set.
    pub s3: Option<S3Repository>,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            stanza: "pgaas".into(),
            binary: PathBuf::from("/usr/bin/pgbackrest"),
            config_dir: PathBuf::from("/etc/pgaas/pgbackrest"),
            repo_path: PathBuf::from("/var/lib/pgbackrest"),
            spool_path: PathBuf::from("/var/spool/pgbackrest"),
            log_path: PathBuf::from("/var/log/pgbackrest"),
            lock_path: PathBuf::from("/var/spool/pgbackrest/lock"),
            scratch_dir: PathBuf::from("/var/lib/pgaas/scratch"),
            restore_job_timeout_secs: 12 * 3600,
            restore_concurrency: 2,
            archive_timeout_secs: 60,
            retention_full: 2,
            retention_diff: 7,
            process_max: 2,
            full_schedule: "Sun *-*-* 01:30:00".into(),
            diff_schedule: "Mon..Sat *-*-* 01:30:00".into(),
            drill_schedule: "Sun *-*-* 05:00:00".into(),
            max_backup_age_hours: 26,
            s3: None,
        }
    }
}

impl ArchiveSettings {
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("pgbackrest.conf")
    }

    pub fn secrets_file(&self) -> PathBuf {
        self.config_dir.join("conf.d").join("secrets.conf")
    }
}

/// An S3-compatible object store as pgBackRest's second repository, encrypted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Repository {
    /// The endpoint's host name (no scheme, no port); pgBackRest 2.45 checks the certificate
    /// against a DNS name, not an IP address.
    pub endpoint: String,
    pub port: u16,
    pub bucket: String,
    pub region: String,
    /// The prefix inside the bucket.
    pub path: String,
    /// `path` (`https://endpoint/bucket/...`, what most self-hosted stores want) or `host`
    /// (`https://bucket.endpoint/...`).
    pub uri_style: String,
    /// A CA certificate for the endpoint, when it is not signed by a public CA.
    pub ca_file: Option<PathBuf>,
    /// Root-only file with `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines.
    pub credentials_file: PathBuf,
    /// Root-only file with the repository's encryption passphrase; generated when missing and
    /// shown once: without it the off-host copy cannot be read.
    pub cipher_pass_file: PathBuf,
    /// Full backups kept in this repository.
    pub retention_full: u32,
}

impl Default for S3Repository {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            port: 443,
            bucket: String::new(),
            region: "us-east-1".into(),
            path: "/pgaas".into(),
            uri_style: "path".into(),
            ca_file: None,
            credentials_file: PathBuf::from("/etc/pgaas/secrets/s3-credentials"),
            cipher_pass_file: PathBuf::from("/etc/pgaas/secrets/backup-passphrase"),
            retention_full: 2,
        }
    }
}
