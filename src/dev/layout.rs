//! Where `pgaas dev` keeps things under its state directory, and the settings that follow from it.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

use super::DevOptions;
use crate::{
    pg::cluster::OsUser,
    settings::{Secret, Settings},
};

#[derive(Clone, Debug)]
pub struct DevLayout {
    pub root: PathBuf,
}

impl DevLayout {
    pub fn new(state_dir: &Path) -> Self {
        let root = if state_dir.is_absolute() {
            state_dir.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(state_dir)
        };
        Self { root }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("pgdata")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.join("log").join("postgresql.log")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn control_password_file(&self) -> PathBuf {
        self.secrets_dir().join("control-db-password")
    }
    pub fn pgpass_file(&self) -> PathBuf {
        self.secrets_dir().join("pgpass")
    }
    /// The effective settings of this platform, for other commands' `--config`.
    pub fn settings_file(&self) -> PathBuf {
        self.root.join("pgaas.yaml")
    }
    fn lock_file(&self) -> PathBuf {
        self.root.join("dev.lock")
    }

    /// Create the state directory, prove it is writable, and take its lock so two `pgaas dev`
    /// runs never share one cluster.
    pub fn prepare_state_dir(&self) -> anyhow::Result<Flock<File>> {
        std::fs::create_dir_all(&self.root).with_context(|| {
            format!(
                "cannot create the state directory {}; choose another with --state-dir",
                self.root.display()
            )
        })?;
        let lock_path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "the state directory {} is not writable; fix its permissions or choose another with --state-dir",
                    self.root.display()
                )
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, errno)) => bail!(
                "another `pgaas dev` is using {} ({errno}); stop it first or use another --state-dir",
                self.root.display()
            ),
        };
        lock.set_len(0).ok();
        let _ = writeln!(lock, "{}", std::process::id());
        for dir in [self.secrets_dir(), self.tls_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::set_permissions(self.secrets_dir(), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", self.secrets_dir().display()))?;
        if nix::unistd::Uid::effective().is_root() {
            // The cluster runs as `postgres`, which must reach its files under the state dir.
            self.check_traversable()?;
        }
        Ok(lock)
    }

    fn check_traversable(&self) -> anyhow::Result<()> {
        let mut dir = Some(self.root.as_path());
        while let Some(d) = dir {
            let mode = std::fs::metadata(d)
                .with_context(|| format!("reading {}", d.display()))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                if d == self.root {
                    std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711))
                        .with_context(|| format!("chmod {}", d.display()))?;
                } else {
                    bail!(
                        "the postgres user cannot reach {} because {} is not searchable by others (mode {:o}); \
                         use a --state-dir outside it (e.g. /var/tmp/pgaas-dev) or `chmod o+x {}`",
                        self.root.display(),
                        d.display(),
                        mode & 0o7777,
                        d.display()
                    );
                }
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Dev settings: the loaded settings with everything that must live under the state dir.
    pub fn settings(
        &self,
        mut s: Settings,
        opts: &DevOptions,
        owner: &OsUser,
        version: u32,
    ) -> Settings {
        s.environment = "development".into();
        s.postgres.version = Some(version);
        s.postgres.port = opts.pg_port;
        // A laptop-sized cluster unless told otherwise; written into the settings file so
        // `pgaas render` with it renders exactly what dev did.
        s.postgres.memory_mb = Some(s.postgres.memory_mb.unwrap_or(1024));
        s.postgres.listen_addresses = vec!["127.0.0.1".into(), "::1".into()];
        s.postgres.config_dir = Some(self.data_dir());
        s.postgres.data_dir = Some(self.data_dir());
        s.postgres.socket_dir = self.socket_dir();
        s.postgres.superuser = owner.name.clone();
        s.postgres.os_user = owner.name.clone();
        s.pgbouncer.port = opts.pgbouncer_port;
        s.pgbouncer.listen_addr = "127.0.0.1".into();
        s.pgbouncer.config_dir = self.root.join("pgbouncer");
        s.pgbouncer.pidfile = self.socket_dir().join("pgbouncer.pid");
        s.pgbouncer.logfile = self.root.join("log").join("pgbouncer.log");
        s.api.listen = opts.listen;
        s.control_db.host = self.socket_dir().to_string_lossy().into_owned();
        s.control_db.port = Some(opts.pg_port);
        s.control_db.password = None;
        s.control_db.password_file = Some(self.control_password_file());
        s.control_db.ssl = false;
        s.tls.cert_file = self.tls_dir().join("server.crt");
        s.tls.key_file = self.tls_dir().join("server.key");
        s.tls.ca_file = Some(self.tls_dir().join("ca.crt"));
        s.paths.state_dir = self.root.clone();
        s.paths.backup_dir = self.root.join("backups");
        s.paths.config_dir = self.root.clone();
        s.paths.systemd_dir = self.root.join("systemd");
        let archive = self.root.join("archive");
        s.archive.config_dir = archive.join("conf");
        s.archive.repo_path = archive.join("repo");
        s.archive.spool_path = archive.join("spool");
        s.archive.log_path = archive.join("log");
        s.archive.lock_path = archive.join("lock");
        s.archive.scratch_dir = self.root.join("scratch");
        match crate::archive::find_binary(&s.archive.binary) {
            Some(b) => s.archive.binary = b,
            // Without pgBackRest, dev runs with the nightly dumps only (and says so).
            None => s.archive.enabled = false,
        }
        if let Ok(exe) = std::env::current_exe() {
            s.paths.binary = exe;
        }
        s
    }

    /// A libpq password file so the printed psql line carries no password.
    pub fn write_pgpass(&self, s: &Settings, password: &Secret) -> anyhow::Result<()> {
        let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
        let mut text = String::new();
        for host in ["localhost", "127.0.0.1", "::1"] {
            text.push_str(&format!(
                "{}:{}:{}:{}:{}\n",
                escape(host),
                s.postgres.port,
                escape(&s.control_db.name),
                escape(&s.control_db.user),
                escape(password.expose())
            ));
        }
        crate::files::write_if_changed(&self.pgpass_file(), &text, 0o600)?;
        Ok(())
    }
}
