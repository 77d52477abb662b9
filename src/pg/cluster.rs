//! Driving a PostgreSQL cluster: create, start, stop, reload, wait until ready, and open a
//! superuser connection over the local socket (peer authentication; the superuser never logs in
//! over TCP).
//!
//! [`Cluster`] is the seam: [`LocalCluster`] runs `initdb`/`pg_ctl` on a data directory of its own
//! (`pgaas dev`, the tests); the installer drives Debian's systemd-managed cluster through the
//! same trait. Creation is crash-safe: `initdb` runs into a temporary directory that is renamed
//! into place only when complete, so a killed run leaves nothing that looks like a cluster.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use super::binaries::PgBinaries;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "port {port} is already in use by another program; stop it or choose another port (settings key postgres.port, or --pg-port)"
    )]
    PortTaken { port: u16 },
    #[error(
        "system user {0:?} does not exist; install PostgreSQL (apt-get install postgresql) which creates it"
    )]
    NoSuchUser(String),
    #[error(
        "{dir} holds a PostgreSQL {found} cluster but PostgreSQL {wanted} is installed; remove the directory or install PostgreSQL {found}"
    )]
    VersionMismatch {
        dir: PathBuf,
        found: String,
        wanted: u32,
    },
    #[error("cannot connect to PostgreSQL on socket {socket_dir}/.s.PGSQL.{port}: {source}")]
    Connect {
        socket_dir: PathBuf,
        port: u16,
        source: sqlx::Error,
    },
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An operating-system account that commands run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub fn lookup(name: &str) -> Result<Self, ClusterError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            _ => Err(ClusterError::NoSuchUser(name.to_string())),
        }
    }

    pub fn current() -> Result<Self, ClusterError> {
        let uid = nix::unistd::Uid::effective();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => Ok(Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            _ => Err(ClusterError::NoSuchUser(format!("uid {uid}"))),
        }
    }

    /// Who runs a cluster started by this process: ourselves, or `postgres` when we are root
    /// (PostgreSQL refuses to run as root).
    pub fn cluster_owner() -> Result<Self, ClusterError> {
        if nix::unistd::Uid::effective().is_root() {
            Self::lookup("postgres")
        } else {
            Self::current()
        }
    }

    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(io_err(path))
    }
}

/// What every cluster flavour offers.
pub trait Cluster {
    fn start(&self) -> Result<(), ClusterError>;
    fn stop(&self) -> Result<(), ClusterError>;
    fn is_running(&self) -> bool;
    /// Where the superuser's peer-authenticated socket is.
    fn admin_options(&self) -> PgConnectOptions;
}

/// A cluster in a directory of our own, run with `pg_ctl`.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    pub bin: PgBinaries,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log_file: PathBuf,
    /// The account that owns the data directory and runs the server.
    pub owner: OsUser,
    /// The superuser role; `initdb` names it after the owner.
    pub superuser: String,
}

impl LocalCluster {
    pub fn exists(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Create the cluster unless it already exists. Returns whether it was created.
    pub fn init(&self) -> Result<bool, ClusterError> {
        if self.exists() {
            let found = std::fs::read_to_string(self.data_dir.join("PG_VERSION"))
                .map_err(io_err(&self.data_dir))?;
            if found.trim() != self.bin.version.to_string() {
                return Err(ClusterError::VersionMismatch {
                    dir: self.data_dir.clone(),
                    found: found.trim().to_string(),
                    wanted: self.bin.version,
                });
            }
            return Ok(false);
        }
        let parent = self.data_dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = self.data_dir.with_extension("initdb-tmp");
        if tmp.exists() {
            // A killed earlier run: its half-made cluster was never renamed into place.
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        if self.data_dir.exists() {
            // An empty or partial directory without PG_VERSION: nothing in it is a cluster.
            std::fs::remove_dir_all(&self.data_dir).map_err(io_err(&self.data_dir))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        self.owner.chown(&tmp)?;
        let out = self.run(
            Command::new(self.bin.tool("initdb"))
                .arg("-D")
                .arg(&tmp)
                .args([
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                ])
                .args(["--encoding=UTF8", "--locale=C", "--no-instructions"])
                .arg(format!("--username={}", self.superuser)),
        )?;
        check(out, "initdb")?;
        // initdb wrote postgresql.conf; pgaas only adds its include and keeps its settings in
        // conf.d/pgaas.conf, which `render` owns.
        let conf = tmp.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(io_err(&conf))?;
        text.push_str("\n# pgaas: settings live in conf.d/pgaas.conf (managed by `pgaas render`)\ninclude_dir = 'conf.d'\n");
        std::fs::write(&conf, text).map_err(io_err(&conf))?;
        let confd = tmp.join("conf.d");
        std::fs::create_dir_all(&confd).map_err(io_err(&confd))?;
        self.owner.chown(&confd)?;
        std::fs::rename(&tmp, &self.data_dir).map_err(io_err(&self.data_dir))?;
        Ok(true)
    }

    /// The directory holding postgresql.conf, pg_hba.conf and conf.d/ (the data directory).
    pub fn config_dir(&self) -> &Path {
        &self.data_dir
    }

    fn run(&self, cmd: &mut Command) -> Result<Output, ClusterError> {
        if nix::unistd::Uid::effective().as_raw() != self.owner.uid {
            cmd.uid(self.owner.uid).gid(self.owner.gid);
        }
        // The server must not inherit our working directory if the owner can't enter it.
        cmd.current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        let program = format!("{:?}", cmd.get_program());
        cmd.output().map_err(|e| ClusterError::Command {
            command: program,
            detail: e.to_string(),
        })
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, ClusterError> {
        self.run(
            Command::new(self.bin.tool("pg_ctl"))
                .arg("-D")
                .arg(&self.data_dir)
                .args(args),
        )
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn port_is_free(&self) -> bool {
        // postgres binds both families; a listener on either means someone else has the port.
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port))).is_ok()
    }

    /// Wait until the server accepts connections on its socket.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = self.run(
                Command::new(self.bin.tool("pg_isready"))
                    .arg("-h")
                    .arg(&self.socket_dir)
                    .arg("-p")
                    .arg(self.port.to_string())
                    .arg("-q"),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(ClusterError::Command {
                    command: "pg_isready".into(),
                    detail: format!(
                        "server not ready after {timeout:?}; log:\n{}",
                        self.log_tail(20)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Open a superuser connection over the local socket.
    pub async fn admin_connect(&self, database: &str) -> Result<PgConnection, ClusterError> {
        PgConnection::connect_with(&self.admin_options().database(database))
            .await
            .map_err(|source| ClusterError::Connect {
                socket_dir: self.socket_dir.clone(),
                port: self.port,
                source,
            })
    }
}

fn check(out: Output, what: &str) -> Result<Output, ClusterError> {
    if out.status.success() {
        return Ok(out);
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(ClusterError::Command {
        command: what.into(),
        detail,
    })
}

impl Cluster for LocalCluster {
    fn start(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        if !self.port_is_free() {
            return Err(ClusterError::PortTaken { port: self.port });
        }
        std::fs::create_dir_all(&self.socket_dir).map_err(io_err(&self.socket_dir))?;
        self.owner.chown(&self.socket_dir)?;
        if let Some(dir) = self.log_file.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            // The server's companions (PgBouncer) log beside it, as the same user.
            self.owner.chown(dir)?;
        }
        if !self.log_file.exists() {
            std::fs::write(&self.log_file, "").map_err(io_err(&self.log_file))?;
        }
        self.owner.chown(&self.log_file)?;
        let log = self.log_file.to_string_lossy().into_owned();
        let out = self.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"])?;
        check(out, "pg_ctl start").map_err(|e| match e {
            ClusterError::Command { command, detail } => ClusterError::Command {
                command,
                detail: format!(
                    "{detail}\nserver log ({}):\n{}",
                    self.log_file.display(),
                    self.log_tail(20)
                ),
            },
            e => e,
        })?;
        self.wait_ready(Duration::from_secs(30))
    }

    fn stop(&self) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        check(
            self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"])?,
            "pg_ctl stop",
        )?;
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.exists() && self.pg_ctl(&["status"]).is_ok_and(|o| o.status.success())
    }

    fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(&self.superuser)
            .application_name("pgaas")
    }
}

/// `SELECT pg_reload_conf()`, confirmed: returns once `pg_conf_load_time()` has moved.
pub async fn reload(conn: &mut PgConnection) -> Result<(), ClusterError> {
    let before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT pg_conf_load_time()")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut *conn)
        .await?;
    // Polled briefly: the reload is on the path of every allow-list change.
    for _ in 0..1000 {
        let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT pg_conf_load_time()")
            .fetch_one(&mut *conn)
            .await?;
        if now > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(ClusterError::Command {
        command: "pg_reload_conf()".into(),
        detail: "the server did not report a configuration reload within 2 s".into(),
    })
}
