//! `pgaas uninstall`: undo exactly what the install manifest lists, newest first. Units the
//! installer enabled are stopped and disabled; files it created are removed (with their
//! `.pgaas-prev` copies); files it replaced get their originals back; users it created are
//! deleted; directories it created are removed when empty. PostgreSQL and PgBouncer are then
//! restarted on the distribution's own configuration. The cluster, its data and the backups stay
//! unless `purge_data` is set (the CLI asks for the host name first). Packages stay installed
//! (they may serve other things); the report lists them.
//!
//! This is code rather than a playbook: it must reverse one particular install on one
//! particular host, which is what the manifest records.

use std::{io::Write, path::Path};

use anyhow::Result;

use super::{
    context::Cx,
    manifest::{Manifest, Record},
};

/// What an uninstall did.
#[derive(Debug, Default)]
pub struct Removal {
    pub done: Vec<String>,
    pub failed: Vec<String>,
    pub packages_kept: Vec<String>,
}

fn systemctl(cx: &Cx, args: &[&str]) -> Result<()> {
    let argv: Vec<String> = std::iter::once("systemctl")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let out = cx.system.run(&argv, &[])?;
    if !out.success {
        anyhow::bail!("`{}`: {}", argv.join(" "), out.detail());
    }
    Ok(())
}

/// Run a command; its failure carries its output.
fn run_ok(cx: &Cx, argv: &[String]) -> Result<()> {
    let out = cx.system.run(argv, &[])?;
    if out.success {
        Ok(())
    } else {
        Err(anyhow::anyhow!(out.detail()))
    }
}

fn remove_file(cx: &Cx, path: &Path) -> Result<bool> {
    let p = cx.path(path);
    let mut prev = p.file_name().unwrap_or_default().to_os_string();
    prev.push(".pgaas-prev");
    let _ = std::fs::remove_file(p.with_file_name(prev));
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::anyhow!("removing {}: {e}", path.display())),
    }
}

/// Undo the install recorded in `manifest`. With `purge_data`, also drop the cluster and delete
/// the backups and the state directory.
pub fn uninstall(cx: &Cx, manifest: &Manifest, purge_data: bool, out: &mut dyn Write) -> Removal {
    let mut r = Removal::default();
    let mut step = |what: String, res: Result<()>| match &res {
        Ok(()) => {
            let _ = writeln!(out, "  {what} ... done");
            r.done.push(what);
        }
        Err(e) => {
            let _ = writeln!(out, "  {what} ... FAILED: {e:#}");
            r.failed.push(format!("{what}: {e:#}"));
        }
    };
    let records: Vec<&Record> = manifest.records.iter().rev().collect();
    let systemd = cx.system.systemd_running();
    for rec in &records {
        // Only pgaas's own units: the distribution's (postgresql@, pgbouncer) keep running
        // with its own configuration, which is restored below.
        if let Record::Unit { name } = rec {
            if systemd && name.starts_with("pgaas-") {
                step(
                    format!("stop and disable {name}"),
                    systemctl(cx, &["disable", "--now", name]),
                );
            }
        }
    }
    for rec in &records {
        match rec {
            Record::File { path } => step(
                format!("remove {}", path.display()),
                remove_file(cx, path).map(|_| ()),
            ),
            Record::Replaced {
                path,
                backup,
                mode,
                owner,
            } => step(
                format!("restore {} from {}", path.display(), backup.display()),
                std::fs::read(cx.path(backup))
                    .map_err(anyhow::Error::from)
                    .and_then(|orig| {
                        let target = cx.path(path);
                        super::context::write_atomic(&target, &orig, mode.unwrap_or(0o644))?;
                        if let Some((uid, gid)) = owner {
                            std::os::unix::fs::chown(&target, Some(*uid), Some(*gid))?;
                        }
                        Ok(())
                    }),
            ),
            _ => {}
        }
    }
    if systemd {
        step(
            "systemctl daemon-reload".into(),
            systemctl(cx, &["daemon-reload"]),
        );
        // Back on Debian's own postgresql.conf and pgbouncer.ini: hba_file and the sockets are
        // read at start only.
        if let Some(v) = manifest.pg_version {
            let unit = format!("postgresql@{v}-main");
            if !purge_data {
                step(
                    format!("restart {unit}"),
                    systemctl(cx, &["try-restart", &unit]),
                );
            }
        }
        step(
            "restart pgbouncer".into(),
            systemctl(cx, &["try-restart", "pgbouncer"]),
        );
    }
    for rec in &records {
        if let Record::User { name } = rec {
            let argv = vec!["userdel".to_string(), name.clone()];
            step(format!("delete system user {name}"), run_ok(cx, &argv));
        }
    }
    let keep = |p: &Path| {
        !purge_data
            && (p.starts_with(&cx.settings.paths.backup_dir) || p == cx.settings.paths.state_dir)
    };
    for rec in &records {
        if let Record::Dir { path } = rec {
            if keep(path) {
                continue;
            }
            // Only when empty: anything else in it is not ours to delete.
            if std::fs::remove_dir(cx.path(path)).is_ok() {
                step(format!("remove {}", path.display()), Ok(()));
            } else if cx.path(path).exists() {
                step(format!("keep {} (not empty)", path.display()), Ok(()));
            }
        }
    }
    if purge_data {
        if let Some(v) = manifest.pg_version {
            let argv = ["pg_dropcluster", "--stop", &v.to_string(), "main"].map(String::from);
            step(
                format!("drop the PostgreSQL {v} cluster main (all databases)"),
                run_ok(cx, &argv),
            );
        }
        for dir in [&cx.settings.paths.backup_dir, &cx.settings.paths.state_dir] {
            step(
                format!("delete {}", dir.display()),
                match std::fs::remove_dir_all(cx.path(dir)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                },
            );
        }
    }
    r.packages_kept = manifest
        .records
        .iter()
        .filter_map(|x| match x {
            Record::Package { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    r
}
