//! Backups and restores through the real binary against the shared platform: data survives a
//! dump and restore byte for byte (checksummed), a killed or failed dump leaves nothing that looks
//! complete, retention never takes a database's last good backup, a damaged dump is refused
//! before anything is touched, and the API routes. Each test gets its own backup directory
//! (`PGAAS_PATHS__BACKUP_DIR`), so `--all` and `prune` runs never see another test's files.

mod api;
mod restore;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use pgaas::{
    model::{FriendlyName, OwnerEmail},
    tenant::{AuditContext, NewTenant, Tenant},
};
use serde_json::Value;

use crate::harness::{pgaas_bin, platform, psql, temp_state_dir};

/// The binary with the platform's settings and a backup directory of this test's own.
pub(crate) fn pgaas(backup_dir: &Path, args: &[&str]) -> Output {
    let p = platform();
    pgaas_bin()
        .arg("--config")
        .arg(p.state_dir.join("pgaas.yaml"))
        .env("PGAAS_PATHS__BACKUP_DIR", backup_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SQL as the superuser over the socket; panics on failure.
pub(crate) fn su(db: &str, sql: &str) -> String {
    let p = platform();
    let conn = format!(
        "host={} port={} user={} dbname={db}",
        p.socket_dir.display(),
        p.pg_port,
        p.superuser
    );
    let (ok, out, err) = psql(&conn, sql, &[]);
    assert!(ok, "{sql}: {err}");
    out
}

pub(crate) async fn tenant(tag: &str) -> Tenant {
    let new = NewTenant {
        friendly_name: FriendlyName::parse(&format!("backup test {tag}")).unwrap(),
        owner_email: OwnerEmail::parse(&format!(
            "{tag}-{}@backup-test.example.com",
            std::process::id()
        ))
        .unwrap(),
        max_connections: None,
        max_size_mb: None,
    };
    platform()
        .tenants()
        .create(new, &AuditContext::cli())
        .await
        .unwrap()
        .tenant
}

pub(crate) async fn remove(t: &Tenant) {
    platform()
        .tenants()
        .delete(t.id, &AuditContext::cli())
        .await
        .unwrap();
}

/// Two tables owned by the tenant's role, with rows.
fn load(t: &Tenant) {
    su(
        t.database_name.as_str(),
        &format!(
            "SET ROLE {}; CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
             CREATE TABLE notes (id serial PRIMARY KEY, body text, at timestamptz DEFAULT '2025-01-01');
             INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 50) g;",
            t.username
        ),
    );
}

/// One checksum over every row of both tables.
fn checksum(db: &str) -> String {
    su(
        db,
        "SELECT md5((SELECT string_agg(i::text, ',' ORDER BY id) FROM items i) || '|' ||
                    (SELECT string_agg(n::text, ',' ORDER BY id) FROM notes n))",
    )
}

/// Files in a database's backup directory, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn complete_looking(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn listed(backup_dir: &Path, db: &str) -> Vec<Value> {
    let out = pgaas(
        backup_dir,
        &["backup", "list", "--database", db, "--json", "--verify"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = v["data"].as_array().unwrap().clone();
    // --verify fails the command when a backup is damaged, and only then.
    let damaged = data.iter().any(|f| f["checksum"] == "mismatch");
    assert_eq!(
        out.status.code(),
        Some(if damaged { 1 } else { 0 }),
        "{}",
        text(&out)
    );
    data
}

pub(crate) fn run_one(backups: &Path, db: &str) -> PathBuf {
    let out = pgaas(backups, &["backup", "run", "--database", db]);
    assert!(out.status.success(), "{}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn a_dump_killed_halfway_leaves_no_complete_looking_file() {
    let t = tenant("killed").await;
    let db = t.database_name.as_str();
    // Big enough that the dump takes seconds: ~300 MB of poorly compressible text.
    su(
        db,
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) AS filler
         FROM generate_series(1, 2500000) g",
    );
    let backups = temp_state_dir("bk-killed");
    let dir = backups.join(db);
    let p = platform();
    let mut child = pgaas_bin()
        .arg("--config")
        .arg(p.state_dir.join("pgaas.yaml"))
        .env("PGAAS_PATHS__BACKUP_DIR", &backups)
        .args(["backup", "run", "--database", db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let partial = loop {
        let found = files(&dir).into_iter().find(|n| n.ends_with(".partial"));
        if let Some(name) = found {
            let path = dir.join(name);
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 1 << 20 {
                break path;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no partial file appeared: {:?}",
            files(&dir)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the dump finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // pg_dump, orphaned, stops at its next write into the closed pipe.
    std::thread::sleep(Duration::from_millis(500));
    assert!(complete_looking(&dir).is_empty(), "{:?}", files(&dir));
    assert!(partial.exists());
    assert!(listed(&backups, db).is_empty());

    // A fresh partial may belong to a live run: prune leaves it. A day-old one is a leftover.
    let out = pgaas(&backups, &["backup", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(partial.exists());
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&partial)
        .status()
        .unwrap();
    assert!(touched.success());
    let out = pgaas(&backups, &["backup", "prune", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("would delete"),
        "{}",
        text(&out)
    );
    assert!(partial.exists());
    let out = pgaas(&backups, &["backup", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!partial.exists(), "{}", text(&out));
    remove(&t).await;
}

#[tokio::test]
async fn a_failing_dump_exits_non_zero_and_leaves_nothing_complete_looking() {
    let backups = temp_state_dir("bk-fail");
    let out = pgaas(
        &backups,
        &["backup", "run", "--database", "no_such_database"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(files(&backups).is_empty());

    // The row says the database exists; PostgreSQL says it does not (dropped behind pgaas's back).
    let t = tenant("failing").await;
    let db = t.database_name.as_str();
    su("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    let out = pgaas(&backups, &["backup", "run", "--database", db]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(db) && stderr.contains("does not exist"),
        "pg_dump's reason is shown: {stderr}"
    );
    assert!(
        files(&backups.join(db)).is_empty(),
        "{:?}",
        files(&backups.join(db))
    );

    // --all carries on past the failure, and still says it failed.
    let out = pgaas(&backups, &["backup", "run", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{db}: FAILED")), "{stderr}");
    let control = &platform().settings.control_db.name;
    assert_eq!(
        complete_looking(&backups.join(control)).len(),
        2,
        "the control DB was still backed up"
    );
    assert!(files(&backups.join(db)).is_empty());
    remove(&t).await;
}

/// Give a dump (and its sidecar) the name it would have had `days` ago.
fn backdate(path: &Path, days: i64) -> PathBuf {
    let at = chrono::Utc::now() - chrono::Duration::days(days);
    let name = format!("{}.dump", at.format("%Y%m%dT%H%M%S%.3fZ"));
    let new = path.with_file_name(&name);
    std::fs::rename(path, &new).unwrap();
    let side = |p: &Path| PathBuf::from(format!("{}.sha256", p.display()));
    let hash = std::fs::read_to_string(side(path)).unwrap();
    std::fs::write(
        side(&new),
        format!("{}  {name}\n", hash.split_whitespace().next().unwrap()),
    )
    .unwrap();
    std::fs::remove_file(side(path)).unwrap();
    new
}

#[tokio::test]
async fn prune_keeps_the_newest_verified_backup_even_when_all_are_past_retention() {
    let t = tenant("prune").await;
    let db = t.database_name.as_str();
    let backups = temp_state_dir("bk-prune");
    let mut old: Vec<PathBuf> = (0..3).map(|_| run_one(&backups, db)).collect();
    for (i, p) in old.iter_mut().enumerate() {
        *p = backdate(p, 10 + i as i64);
    }
    // The newest is damaged, so the newest *verified* one is the next.
    let mut bytes = std::fs::read(&old[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&old[0], bytes).unwrap();

    let out = pgaas(&backups, &["backup", "prune", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        complete_looking(&backups.join(db)).len(),
        6,
        "a dry run deletes nothing"
    );
    let out = pgaas(&backups, &["backup", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = complete_looking(&backups.join(db));
    let kept = old[1].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        left,
        vec![kept.clone(), format!("{kept}.sha256")],
        "{}",
        text(&out)
    );

    // Once a newer verified backup exists, the old one goes too.
    let fresh = run_one(&backups, db);
    let out = pgaas(&backups, &["backup", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    let name = fresh.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        complete_looking(&backups.join(db)),
        vec![name.clone(), format!("{name}.sha256")]
    );
    remove(&t).await;
}

/// The nightly timer runs as the cluster's user; an operator runs `sudo pgaas backup run`. A dump
/// made as root must not leave a directory or file that the timer can no longer write into,
/// prune or verify: everything takes the owner of the backup directory.
#[tokio::test]
async fn dumps_made_by_root_belong_to_the_owner_of_the_backup_directory() {
    use std::os::unix::fs::MetadataExt;
    let t = tenant("owner").await;
    let db = t.database_name.as_str();
    let backups = temp_state_dir("bk-owner");
    // As root (CI): the directory belongs to the cluster's user, as `pgaas install` makes it.
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        std::os::unix::fs::chown(&backups, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
    }
    let want = std::fs::metadata(&backups).unwrap();
    let dump = run_one(&backups, db);
    let sidecar = PathBuf::from(format!("{}.sha256", dump.display()));
    for path in [backups.join(db), dump.clone(), sidecar] {
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (want.uid(), want.gid()),
            "{} is not owned like the backup directory",
            path.display()
        );
    }
    remove(&t).await;
}
