//! A scratch cluster: a backup restored by pgBackRest into a directory of its own, recovered on
//! a free port with no TCP listener, then dumped or checked and removed. It must never touch the
//! live cluster: tablespaces are mapped into the scratch directory (never `--delta`, never
//! `--link-all`), its own configuration replaces whatever came with the backup, archiving is
//! off (its new timeline must not reach the stanza), and pgBackRest's lock and log paths are its
//! own, with synchronous archive-get, so it shares no queue with the live cluster's archiver.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use super::{
    ArchiveError,
    engine::{Engine, as_owner, run_command},
};
use crate::pg::{binaries::PgBinaries, cluster::OsUser};

/// Settings of the live cluster that a recovering server must not go below.
#[derive(Clone, Debug, Default)]
pub struct HotStandbyFloor(pub Vec<(String, String)>);

impl HotStandbyFloor {
    pub const NAMES: [&'static str; 5] = [
        "max_connections",
        "max_worker_processes",
        "max_wal_senders",
        "max_prepared_transactions",
        "max_locks_per_transaction",
    ];

    /// Read them from the live cluster.
    pub async fn read(conn: &mut PgConnection) -> Result<Self, sqlx::Error> {
        let mut out = Vec::new();
        for name in Self::NAMES {
            let v: String = sqlx::query_scalar("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
            out.push((name.to_string(), v));
        }
        Ok(Self(out))
    }
}

/// Where the backup is restored to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A point in time (PostgreSQL stops before the first commit after it).
    Time(DateTime<Utc>),
    /// The end of the archive.
    Latest,
    /// Just the newest backup, consistent (a drill).
    Immediate,
}

#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
    pub port: u16,
    owner: OsUser,
    bin: PgBinaries,
    superuser: String,
    started: bool,
}

impl Scratch {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A fresh directory `<base>/<name>` owned by the cluster's OS user, 0700. A directory of
    /// the same name left by a killed run is removed first (it is ours: nothing else writes
    /// under `archive.scratch_dir`).
    pub fn create(
        base: &Path,
        name: &str,
        owner: &OsUser,
        bin: &PgBinaries,
        superuser: &str,
    ) -> Result<Scratch, ArchiveError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ArchiveError::Io { path: p, source }
        };
        std::fs::create_dir_all(base).map_err(io(base))?;
        let dir = base.join(name);
        if std::fs::symlink_metadata(&dir).is_ok() {
            remove_tree(&dir)?;
        }
        let scratch = Scratch {
            dir: dir.clone(),
            port: free_port(),
            owner: owner.clone(),
            bin: bin.clone(),
            superuser: superuser.to_string(),
            started: false,
        };
        // Made fresh (a name planted since the removal is an error, never followed), its tree
        // built while root still owns it, and handed over last: the cluster's OS user, which
        // owns `base`, never gets a moment to swap a path for a symlink that root then chmods
        // or chowns.
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder.create(&dir).map_err(io(&dir))?;
        for d in [
            scratch.socket_dir(),
            dir.join("ts"),
            dir.join("log"),
            dir.join("lock"),
            dir.clone(),
        ] {
            if d != dir {
                builder.create(&d).map_err(io(&d))?;
            }
            std::os::unix::fs::lchown(&d, Some(owner.uid), Some(owner.gid)).map_err(io(&d))?;
        }
        Ok(scratch)
    }

    /// `pgbackrest restore` of `databases` (all when empty) to `target`.
    pub fn restore(
        &self,
        engine: &Engine,
        databases: &[&str],
        target: &Target,
        repo: Option<u32>,
    ) -> Result<String, ArchiveError> {
        let mut args = vec![
            "restore".to_string(),
            format!("--pg1-path={}", self.data_dir().display()),
            format!("--tablespace-map-all={}", self.dir.join("ts").display()),
            format!("--lock-path={}", self.dir.join("lock").display()),
            format!("--log-path={}", self.dir.join("log").display()),
            "--archive-mode=off".to_string(),
        ];
        if let Some(r) = repo {
            args.push(format!("--repo={r}"));
        }
        for db in databases {
            args.push(format!("--db-include={db}"));
        }
        match target {
            Target::Time(t) => {
                args.push("--type=time".into());
                args.push(format!("--target={}", t.format("%Y-%m-%d %H:%M:%S%.6f+00")));
                args.push("--target-action=promote".into());
            }
            Target::Latest => args.push("--type=default".into()),
            Target::Immediate => {
                args.push("--type=immediate".into());
                args.push("--target-action=promote".into());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = engine.run(&args)?;
        self.write_config()?;
        Ok(out)
    }

    /// Its own postgresql.conf, pg_hba.conf and pg_ident.conf: whatever came with the backup
    /// names the live cluster's port, sockets, certificates and access files.
    fn write_config(&self) -> Result<(), ArchiveError> {
        let conf = format!(
            "# scratch cluster of a pgaas restore or drill; removed when it is done\n\
             listen_addresses = ''\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             ssl = off\n\
             archive_mode = off\n\
             hot_standby = on\n\
             shared_buffers = 128MB\n\
             shared_preload_libraries = ''\n\
             logging_collector = off\n\
             log_min_messages = warning\n",
            port = self.port,
            sock = self.socket_dir().display(),
        );
        let hba = "local all all peer map=scratch\n";
        let ident = format!(
            "scratch {owner} {su}\nscratch root {su}\n",
            owner = self.owner.name,
            su = self.superuser
        );
        for (name, text) in [
            ("postgresql.conf", conf),
            ("pg_hba.conf", hba.to_string()),
            ("pg_ident.conf", ident),
        ] {
            write_fresh(&self.dir, &["data"], name, &text, &self.owner)?;
        }
        Ok(())
    }

    /// Start it with the live cluster's hot-standby floor, and wait until recovery has ended
    /// and the server is promoted (pg_ctl's own wait returns as soon as read-only connections
    /// are accepted, and even when recovery fails right after).
    pub async fn start_and_recover(
        &mut self,
        floor: &HotStandbyFloor,
        timeout: Duration,
    ) -> Result<(), ArchiveError> {
        let mut opts = format!(
            "-c port={} -c listen_addresses='' -c unix_socket_directories={}",
            self.port,
            self.socket_dir().display()
        );
        for (name, value) in &floor.0 {
            opts.push_str(&format!(" -c {name}={value}"));
        }
        let mut cmd = Command::new(self.bin.tool("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-W", "-o", &opts, "start"])
            .env("PGBACKREST_ARCHIVE_ASYNC", "n")
            .env("PGBACKREST_LOCK_PATH", self.dir.join("lock"))
            .env("PGBACKREST_LOG_PATH", self.dir.join("log"));
        as_owner(&mut cmd, &self.owner)?;
        write_fresh(&self.dir, &[], "server.log", "", &self.owner)?;
        run_command(&mut cmd, "pg_ctl start (scratch cluster)")?;
        self.started = true;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.recovered().await {
                return done;
            }
            if !self.postmaster_alive() {
                return Err(self.recovery_failed("the scratch server stopped during recovery"));
            }
            if Instant::now() > deadline {
                return Err(self.recovery_failed(&format!(
                    "recovery did not finish within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `Some(Ok)` once promoted; `None` while it recovers or does not accept connections yet.
    async fn recovered(&self) -> Option<Result<(), ArchiveError>> {
        let mut conn = self.connect("postgres").await.ok()?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .ok()?;
        (!in_recovery).then_some(Ok(()))
    }

    fn postmaster_alive(&self) -> bool {
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        match pid {
            Some(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
            // Not written yet right after the start.
            None => true,
        }
    }

    fn recovery_failed(&self, what: &str) -> ArchiveError {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("FATAL")
                    || l.contains("PANIC")
                    || l.contains("ERROR")
                    || l.contains("recovery")
                    || l.contains("unable to find")
            })
            .collect();
        ArchiveError::Recovery(format!(
            "{what}; from the scratch server's log:\n{}",
            lines[lines.len().saturating_sub(8)..].join("\n")
        ))
    }

    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(self.socket_dir())
            .port(self.port)
            .username(&self.superuser)
            .database(database)
            .application_name("pgaas-scratch")
    }

    pub async fn connect(&self, database: &str) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.connect_options(database)).await
    }

    /// `pg_dump -Fc` of `database` into `file`.
    pub fn dump(&self, database: &str, file: &Path) -> Result<(), ArchiveError> {
        let mut cmd = Command::new(self.bin.tool("pg_dump"));
        cmd.arg("-Fc")
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.superuser)
            .arg("-d")
            .arg(database)
            .arg("-f")
            .arg(file)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        as_owner(&mut cmd, &self.owner)?;
        run_command(
            &mut cmd,
            &format!("pg_dump of {database} (scratch cluster)"),
        )?;
        Ok(())
    }

    /// Run a program from the server's bin directory against the scratch server (a check such
    /// as pg_amcheck); its output, or why it failed.
    pub fn run_tool(&self, tool: &str, args: &[&str]) -> Result<String, ArchiveError> {
        let mut cmd = Command::new(self.bin.tool(tool));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.superuser)
            .args(args);
        as_owner(&mut cmd, &self.owner)?;
        run_command(&mut cmd, tool)
    }

    pub fn has_tool(&self, tool: &str) -> bool {
        self.bin.tool(tool).is_file()
    }

    /// Stop the server (immediately: nothing in it is kept) and remove the directory.
    pub fn discard(mut self) -> Result<(), ArchiveError> {
        self.stop();
        remove_tree(&self.dir)
    }

    fn stop(&mut self) {
        if !self.started {
            return;
        }
        let mut cmd = Command::new(self.bin.tool("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if as_owner(&mut cmd, &self.owner).is_ok() {
            let _ = cmd.output();
        }
        self.started = false;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // An error path: never leave a server running on the host.
        self.stop();
        if std::fs::symlink_metadata(&self.dir).is_ok() {
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Remove a scratch tree; its files belong to the cluster's OS user, which root may remove. A
/// symlink (at the top or anywhere below) is removed itself, never followed: `remove_dir_all`
/// does not descend through symlinks (CVE-2022-21658 fixed), and a top-level symlink is removed
/// with `remove_file`.
pub(super) fn remove_tree(dir: &Path) -> Result<(), ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir).map_err(io),
        Ok(_) => std::fs::remove_file(dir).map_err(io),
    }
}

/// Write `text` into a new file `<dir>/<sub...>/<name>` owned by `owner`, 0600, whatever the
/// cluster's OS user (who owns the tree) put there: every directory on the way is opened
/// without following a symlink, a file or symlink already at `name` is unlinked (never
/// written through), and the file is created exclusively.
fn write_fresh(
    dir: &Path,
    sub: &[&str],
    name: &str,
    text: &str,
    owner: &OsUser,
) -> Result<(), ArchiveError> {
    use std::io::Write;

    use nix::{
        errno::Errno,
        fcntl::{OFlag, open, openat},
        sys::stat::Mode,
        unistd::{UnlinkatFlags, unlinkat},
    };
    let path = sub
        .iter()
        .fold(dir.to_path_buf(), |p, s| p.join(s))
        .join(name);
    let io = |e: Errno| ArchiveError::Io {
        path: path.clone(),
        source: std::io::Error::from(e),
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = open(dir, dir_flags, Mode::empty()).map_err(io)?;
    for s in sub {
        fd = openat(&fd, *s, dir_flags, Mode::empty()).map_err(io)?;
    }
    match unlinkat(&fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io(e)),
    }
    let file = openat(
        &fd,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(io)?;
    let mut file = std::fs::File::from(file);
    let ioe = |source| ArchiveError::Io {
        path: path.clone(),
        source,
    };
    file.write_all(text.as_bytes()).map_err(ioe)?;
    std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid)).map_err(ioe)?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

/// Stop the scratch server in `dir`, if one runs, and remove the directory; whether it is gone.
/// The server is stopped by `pg_ctl` as the cluster's OS user (its pid file is that user's to
/// write, so root never signals a pid read from it); a symlink at `dir` is removed, not followed.
pub fn clean_leftovers_at(dir: &Path, bin: &PgBinaries, owner: &OsUser) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return true;
    };
    let data = dir.join("data");
    if meta.is_dir() && std::fs::symlink_metadata(data.join("postmaster.pid")).is_ok() {
        let mut cmd = Command::new(bin.tool("pg_ctl"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if as_owner(&mut cmd, owner).is_ok() {
            let _ = cmd.output();
        }
    }
    remove_tree(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> OsUser {
        OsUser {
            name: "me".into(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// The cluster's OS user owns the scratch tree: a symlink it plants where root writes the
    /// scratch server's configuration must not redirect root's write outside the tree.
    #[test]
    fn writes_into_the_scratch_tree_never_follow_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, outside) = (tmp.path().join("restore-x"), tmp.path().join("outside"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let precious = outside.join("pg_hba.conf");
        std::fs::write(&precious, "keep me").unwrap();
        // The file itself a symlink: replaced by a new file, the target untouched.
        std::os::unix::fs::symlink(&precious, dir.join("data/pg_hba.conf")).unwrap();
        write_fresh(
            &dir,
            &["data"],
            "pg_hba.conf",
            "local all all peer\n",
            &me(),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        let written = dir.join("data/pg_hba.conf");
        assert!(!std::fs::symlink_metadata(&written).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&written).unwrap(),
            "local all all peer\n"
        );
        // A directory on the way a symlink: refused, nothing written through it.
        std::fs::remove_dir_all(dir.join("data")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("data")).unwrap();
        assert!(write_fresh(&dir, &["data"], "pg_hba.conf", "x", &me()).is_err());
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        // Removing the tree removes the links, not what they point at.
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    }
}
