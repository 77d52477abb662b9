//! A Debian cluster managed by systemd (`postgresql@<ver>-<name>.service`, created by
//! `pg_createcluster`), behind the same [`Cluster`] trait as the local one: started and stopped
//! with systemctl, reached by the superuser over the local socket by peer. Commands go through a
//! [`CommandRunner`] so the installer's tests can record them instead of running them.

use std::{io, path::PathBuf, sync::Arc};

use sqlx::postgres::PgConnectOptions;

use super::cluster::{Cluster, ClusterError};

/// Runs a program; `Ok(true)` when it exited 0.
pub trait CommandRunner: Send + Sync {
    fn run(&self, argv: &[&str]) -> io::Result<(bool, String)>;
}

/// The real machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostRunner;

impl CommandRunner for HostRunner {
    fn run(&self, argv: &[&str]) -> io::Result<(bool, String)> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let out = std::process::Command::new(program).args(args).output()?;
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        Ok((out.status.success(), text))
    }
}

#[derive(Clone)]
pub struct SystemdCluster {
    pub version: u32,
    /// The cluster name (`main`).
    pub name: String,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub superuser: String,
    pub runner: Arc<dyn CommandRunner>,
}

impl SystemdCluster {
    pub fn main(settings: &crate::settings::Settings, version: u32) -> Self {
        Self {
            version,
            name: "main".into(),
            socket_dir: settings.postgres.socket_dir.clone(),
            port: settings.postgres.port,
            superuser: settings.postgres.superuser.clone(),
            runner: Arc::new(HostRunner),
        }
    }

    /// `postgresql@15-main`.
    pub fn unit(&self) -> String {
        format!("postgresql@{}-{}", self.version, self.name)
    }

    fn systemctl(&self, verb: &str) -> Result<(), ClusterError> {
        let unit = self.unit();
        let (ok, detail) =
            self.runner
                .run(&["systemctl", verb, &unit])
                .map_err(|e| ClusterError::Command {
                    command: format!("systemctl {verb} {unit}"),
                    detail: e.to_string(),
                })?;
        if ok {
            Ok(())
        } else {
            Err(ClusterError::Command {
                command: format!("systemctl {verb} {unit}"),
                detail: format!("{}; see `journalctl -u {unit} -n 50`", detail.trim()),
            })
        }
    }

    /// `pg_dropcluster --stop`: removes the cluster's data and configuration (uninstall
    /// `--purge-data` only).
    pub fn drop_cluster(&self) -> Result<(), ClusterError> {
        let v = self.version.to_string();
        let (ok, detail) = self
            .runner
            .run(&["pg_dropcluster", "--stop", &v, &self.name])
            .map_err(|e| ClusterError::Command {
                command: "pg_dropcluster".into(),
                detail: e.to_string(),
            })?;
        if ok {
            Ok(())
        } else {
            Err(ClusterError::Command {
                command: "pg_dropcluster".into(),
                detail,
            })
        }
    }
}

impl Cluster for SystemdCluster {
    fn start(&self) -> Result<(), ClusterError> {
        self.systemctl("start")
    }

    fn stop(&self) -> Result<(), ClusterError> {
        self.systemctl("stop")
    }

    fn is_running(&self) -> bool {
        let unit = self.unit();
        self.runner
            .run(&["systemctl", "is-active", "--quiet", &unit])
            .is_ok_and(|(ok, _)| ok)
    }

    fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(&self.superuser)
            .application_name("pgaas")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl CommandRunner for Recorder {
        fn run(&self, argv: &[&str]) -> io::Result<(bool, String)> {
            self.0.lock().unwrap().push(argv.join(" "));
            Ok((argv.get(1) != Some(&"stop"), "simulated".into()))
        }
    }

    #[test]
    fn drives_the_versioned_unit_and_reports_failures_with_the_journal_hint() {
        let rec = Arc::new(Recorder::default());
        let c = SystemdCluster {
            version: 17,
            name: "main".into(),
            socket_dir: "/var/run/postgresql".into(),
            port: 5432,
            superuser: "postgres".into(),
            runner: rec.clone(),
        };
        c.start().unwrap();
        assert!(c.is_running());
        let err = c.stop().unwrap_err().to_string();
        assert!(err.contains("journalctl -u postgresql@17-main"), "{err}");
        c.drop_cluster().unwrap();
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "systemctl start postgresql@17-main",
                "systemctl is-active --quiet postgresql@17-main",
                "systemctl stop postgresql@17-main",
                "pg_dropcluster --stop 17 main",
            ]
        );
    }
}
