//! A Debian cluster managed by systemd (`postgresql@<ver>-<name>.service`, created by
//! `pg_createcluster`), behind the same [`Cluster`] trait as the local one: started and stopped
//! with systemctl, reached by the superuser over the local socket by peer. Commands go through
//! [`System`], so tests can record them instead of running them.

use std::{path::PathBuf, sync::Arc};

use sqlx::postgres::PgConnectOptions;

use super::cluster::{Cluster, ClusterError};
use crate::system::{RealSystem, System};

#[derive(Clone)]
pub struct SystemdCluster {
    pub version: u32,
    /// The cluster name (`main`).
    pub name: String,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub superuser: String,
    pub runner: Arc<dyn System>,
}

impl SystemdCluster {
    pub fn main(settings: &crate::settings::Settings, version: u32) -> Self {
        Self {
            version,
            name: "main".into(),
            socket_dir: settings.postgres.socket_dir.clone(),
            port: settings.postgres.port,
            superuser: settings.postgres.superuser.clone(),
            runner: Arc::new(RealSystem),
        }
    }

    /// `postgresql@15-main`.
    pub fn unit(&self) -> String {
        format!("postgresql@{}-{}", self.version, self.name)
    }

    /// Run a program: whether it exited 0, and what it said (for an error message).
    fn run(&self, argv: &[&str]) -> Result<(bool, String), ClusterError> {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let out = self
            .runner
            .run(&argv, &[])
            .map_err(|e| ClusterError::Command {
                command: argv.join(" "),
                detail: e.to_string(),
            })?;
        Ok((out.success, out.detail()))
    }

    fn systemctl(&self, verb: &str) -> Result<(), ClusterError> {
        let unit = self.unit();
        let (ok, detail) = self.run(&["systemctl", verb, &unit])?;
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
        let (ok, detail) = self.run(&["pg_dropcluster", "--stop", &v, &self.name])?;
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
        self.run(&["systemctl", "is-active", "--quiet", &unit])
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
    use super::*;
    use crate::system::fake::FakeSystem;

    #[test]
    fn drives_the_versioned_unit_and_reports_failures_with_the_journal_hint() {
        let host = Arc::new(FakeSystem::new(&[]));
        let c = SystemdCluster {
            version: 17,
            name: "main".into(),
            socket_dir: "/var/run/postgresql".into(),
            port: 5432,
            superuser: "postgres".into(),
            runner: host.clone(),
        };
        c.start().unwrap();
        assert!(c.is_running());
        host.state
            .lock()
            .unwrap()
            .failing
            .insert("pg_dropcluster".into());
        let err = c.drop_cluster().unwrap_err().to_string();
        assert!(err.contains("pg_dropcluster"), "{err}");
        c.stop().unwrap();
        assert!(!c.is_running());
        assert_eq!(
            host.calls(),
            vec![
                "systemctl start postgresql@17-main",
                "systemctl is-active --quiet postgresql@17-main",
                "pg_dropcluster --stop 17 main",
                "systemctl stop postgresql@17-main",
                "systemctl is-active --quiet postgresql@17-main",
            ]
        );
        host.state
            .lock()
            .unwrap()
            .failing
            .insert("systemctl".into());
        let err = c.start().unwrap_err().to_string();
        assert!(err.contains("journalctl -u postgresql@17-main"), "{err}");
    }
}
