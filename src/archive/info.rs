//! What the repositories hold (`pgbackrest info --output=json`) and the recoverable window it
//! gives: from just after the oldest backup's end to the newest archived WAL. A tenant's window
//! starts later when its database is younger than the oldest backup: pgBackRest restores one
//! database only from a backup that contains it.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::ArchiveError;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Status {
    pub code: i64,
    pub message: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RepoStatus {
    pub key: u32,
    pub status: Status,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DbRef {
    #[serde(rename = "repo-key")]
    pub repo_key: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ArchiveRange {
    pub id: String,
    pub database: DbRef,
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Timestamps {
    pub start: i64,
    pub stop: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct BackupSet {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: Timestamps,
    pub database: DbRef,
    #[serde(default)]
    pub error: Option<bool>,
}

/// One stanza as `info` reports it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Info {
    pub name: String,
    pub status: Status,
    #[serde(default)]
    pub repo: Vec<RepoStatus>,
    #[serde(default)]
    pub archive: Vec<ArchiveRange>,
    #[serde(default)]
    pub backup: Vec<BackupSet>,
}

/// One repository's window and newest backups.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct RepoWindow {
    pub repo: u32,
    /// pgBackRest's word for the repository (`ok`, `no valid backups`, an error).
    pub status: String,
    pub ok: bool,
    pub backups: usize,
    pub last_full: Option<DateTime<Utc>>,
    pub last_diff: Option<DateTime<Utc>>,
    /// The newest backup of any kind (its end).
    pub last_backup: Option<DateTime<Utc>>,
    /// The earliest instant a restore from this repository can reach.
    pub earliest: Option<DateTime<Utc>>,
    /// The newest WAL segment in the repository.
    pub newest_wal: Option<String>,
    /// When that segment reached the repository (filled in by the caller, which lists it).
    pub latest: Option<DateTime<Utc>>,
}

fn at(epoch: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(epoch, 0).single()
}

impl Info {
    /// The stanza `stanza` from `info --output=json`'s array.
    pub fn parse(json: &str, stanza: &str) -> Result<Info, ArchiveError> {
        let all: Vec<Info> = serde_json::from_str(json).map_err(|e| ArchiveError::Command {
            what: "pgbackrest info".into(),
            detail: format!("unreadable output: {e}"),
        })?;
        all.into_iter()
            .find(|i| i.name == stanza)
            .ok_or_else(|| ArchiveError::Command {
                what: "pgbackrest info".into(),
                detail: format!("stanza {stanza} is not in the repository; run `pgaas install` (or `pgaas dev`) to create it"),
            })
    }

    /// Backups of `repo`, oldest first.
    pub fn backups(&self, repo: u32) -> impl Iterator<Item = &BackupSet> {
        self.backup
            .iter()
            .filter(move |b| b.database.repo_key == repo)
    }

    /// Each repository's window, in key order.
    pub fn windows(&self, repos: &[u32]) -> Vec<RepoWindow> {
        repos
            .iter()
            .copied()
            .map(|repo| {
                let status = self
                    .repo
                    .iter()
                    .find(|r| r.key == repo)
                    .map(|r| r.status.clone())
                    .unwrap_or(Status {
                        code: 99,
                        message: "not reported".into(),
                    });
                let backups: Vec<&BackupSet> = self.backups(repo).collect();
                let last_of = |kind: &str| {
                    backups
                        .iter()
                        .filter(|b| b.kind == kind)
                        .map(|b| b.timestamp.stop)
                        .max()
                        .and_then(at)
                };
                let newest_wal = self
                    .archive
                    .iter()
                    .filter(|a| a.database.repo_key == repo)
                    .filter_map(|a| a.max.clone())
                    .max();
                RepoWindow {
                    repo,
                    ok: status.code == 0,
                    status: status.message,
                    backups: backups.len(),
                    last_full: last_of("full"),
                    last_diff: last_of("diff"),
                    last_backup: backups.iter().map(|b| b.timestamp.stop).max().and_then(at),
                    earliest: backups
                        .iter()
                        .map(|b| b.timestamp.stop)
                        .min()
                        .and_then(|s| at(s + 1)),
                    newest_wal,
                    latest: None,
                }
            })
            .collect()
    }

    /// The archive id of the newest WAL in `repo` (`15-1`), for listing it.
    pub fn archive_id(&self, repo: u32) -> Option<&str> {
        self.archive
            .iter()
            .filter(|a| a.database.repo_key == repo)
            .max_by(|a, b| a.max.cmp(&b.max))
            .map(|a| a.id.as_str())
    }

    /// The earliest instant one database can be restored to from `repo`: just after the end of
    /// the oldest backup that started after the database was made.
    pub fn earliest_for(&self, repo: u32, created: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.backups(repo)
            .filter(|b| b.timestamp.start >= created.timestamp())
            .map(|b| b.timestamp.stop)
            .min()
            .and_then(|s| at(s + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"[{"name":"pgaas","cipher":"none","status":{"code":0,"message":"ok"},
      "repo":[{"key":1,"cipher":"none","status":{"code":0,"message":"ok"}},
              {"key":2,"cipher":"aes-256-cbc","status":{"code":99,"message":"TLS error"}}],
      "db":[{"id":1,"repo-key":1,"system-id":1,"version":"15"}],
      "archive":[{"id":"15-1","database":{"id":1,"repo-key":1},"min":"000000010000000000000003","max":"000000010000000000000026"}],
      "backup":[
        {"label":"20261130-023925F","type":"full","timestamp":{"start":1000,"stop":1010},"database":{"id":1,"repo-key":1},"error":false},
        {"label":"20261130-023925F_20261130-023931D","type":"diff","timestamp":{"start":2000,"stop":2005},"database":{"id":1,"repo-key":1}},
        {"label":"20261130-023925F_20261130-023933I","type":"incr","timestamp":{"start":3000,"stop":3002},"database":{"id":1,"repo-key":1}}
      ]}]"#;

    #[test]
    fn windows_come_from_the_backups_of_each_repository() {
        let info = Info::parse(JSON, "pgaas").unwrap();
        let w = info.windows(&[1, 2]);
        assert_eq!(w[0].earliest, at(1011));
        assert_eq!(w[0].last_full, at(1010));
        assert_eq!(w[0].last_diff, at(2005));
        assert_eq!(w[0].last_backup, at(3002));
        assert_eq!(w[0].newest_wal.as_deref(), Some("000000010000000000000026"));
        assert!(w[0].ok);
        assert!(!w[1].ok);
        assert_eq!(w[1].status, "TLS error");
        assert_eq!(w[1].earliest, None);
        assert_eq!(info.archive_id(1), Some("15-1"));
    }

    #[test]
    fn a_young_database_starts_at_the_first_backup_that_holds_it() {
        let info = Info::parse(JSON, "pgaas").unwrap();
        assert_eq!(info.earliest_for(1, at(1500).unwrap()), at(2006));
        assert_eq!(info.earliest_for(1, at(10).unwrap()), at(1011));
        assert_eq!(info.earliest_for(1, at(5000).unwrap()), None);
    }

    #[test]
    fn an_unknown_stanza_says_how_to_make_it() {
        let e = Info::parse(JSON, "other").unwrap_err().to_string();
        assert!(e.contains("stanza other"), "{e}");
    }
}
