//! The `archive` step: continuous archiving made live once PostgreSQL runs with `archive_mode`
//! on. The S3 repository's secrets for pgBackRest (`conf.d/secrets.conf`, root:postgres 0640,
//! from the root-only credentials file and a passphrase generated once and shown once), the
//! stanza in every repository, pgBackRest's own check that WAL reaches them, a first full backup
//! into each (nothing is recoverable before one), then the worker and the backup and drill
//! timers. pgBackRest always runs as the cluster's OS user (`runuser`), never as root.
//!
//! On a cluster's node the repository is the shared S3 one and its passphrase comes from the
//! cluster's secrets (the `cluster_secrets` step writes it): the primary's install makes the
//! stanza and the first backup; a standby's only installs the units, which wait there until
//! its node is promoted.

use anyhow::{Context, Result, bail};

use super::{Effects, Plan, install_file};
use crate::{
    archive::{self, info::Info},
    install::{
        context::{Attrs, Cx, read_opt},
        manifest::{Manifest, Record},
    },
};

/// The units continuous archiving runs, enabled and started.
pub const UNITS: &[&str] = &[
    "pgaas-worker.service",
    "pgaas-base-backup-full.timer",
    "pgaas-base-backup-diff.timer",
    "pgaas-drill.timer",
];

fn pgbackrest(cx: &Cx, args: &[&str]) -> Result<crate::system::CmdOutput> {
    let a = &cx.settings.archive;
    let mut argv: Vec<String> = vec![
        "runuser".into(),
        "-u".into(),
        cx.vars.pg_user.clone(),
        "--".into(),
        a.binary.display().to_string(),
        format!("--config-path={}", a.config_dir.display()),
        format!("--stanza={}", a.stanza),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    Ok(cx.system.run(&argv, &[])?)
}

/// On a cluster's node, archiving turned on for a PostgreSQL already running: `archive_mode`
/// takes effect at its next start, which is Patroni's to make (an install never restarts a
/// primary). A primary cannot make the stanza until then; a standby would be promoted into a
/// primary that archives nothing.
fn pending_archive_mode(cx: &mut Cx, standby: bool) -> Result<()> {
    if !cx.settings.cluster.enabled()
        || super::cluster::admin_scalar::<String>(cx, "SELECT current_setting('archive_mode')")?
            != "off"
    {
        return Ok(());
    }
    let cl = &cx.settings.cluster;
    let text = format!(
        "archive_mode is off in this node's running PostgreSQL: it takes effect at the next start, \
         which Patroni makes. Restart it when convenient, the standby first: \
         `patronictl -c {} restart {} {}` (on the primary this stops its tenants for a few \
         seconds; `pgaas cluster switchover` first avoids that), then run `pgaas install` again",
        cl.patroni_config_dir.join("config.yml").display(),
        cl.name.as_deref().unwrap_or("?"),
        cl.node.as_deref().unwrap_or("?"),
    );
    if standby {
        eprintln!("WARNING: {text}");
        Ok(())
    } else {
        bail!(text)
    }
}

/// Repositories that hold no backup yet (all of them when the stanza is missing).
fn repos_without_backup(cx: &Cx) -> Vec<u32> {
    let info = pgbackrest(cx, &["info", "--output=json"])
        .ok()
        .filter(|o| o.success)
        .and_then(|o| Info::parse(&o.stdout, &cx.settings.archive.stanza).ok());
    cx.settings
        .archive_repos()
        .into_iter()
        .filter(|r| info.as_ref().is_none_or(|i| i.backups(*r).next().is_none()))
        .collect()
}

fn secrets_attrs(cx: &Cx) -> Attrs {
    Attrs::new("root", &cx.vars.pg_user, 0o640)
}

pub fn check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let a = cx.settings.archive.clone();
    if !a.enabled {
        return Ok(plan);
    }
    if let Some(s3) = &a.s3 {
        let pass = cx.path(&s3.cipher_pass_file);
        if read_opt(&pass)?.is_none_or(|b| b.is_empty()) {
            plan.change(if cx.settings.cluster.enabled() {
                // A dry run before the secrets step wrote it.
                format!(
                    "write pgBackRest's S3 secrets into {}, with the passphrase from the cluster's secrets",
                    a.secrets_file().display()
                )
            } else {
                format!(
                    "generate the off-host repository's passphrase into {} (root-only, shown once)",
                    s3.cipher_pass_file.display()
                )
            });
        } else {
            let want = archive::secrets_text(&cx.settings, |p| cx.path(p))?;
            let have = read_opt(&cx.path(&a.secrets_file()))?;
            if want.map(String::into_bytes) != have {
                plan.change(format!(
                    "write pgBackRest's S3 secrets into {}",
                    a.secrets_file().display()
                ));
            }
        }
    }
    let missing = repos_without_backup(cx);
    // A standby's install leaves the stanza to the primary's (a dry run before PostgreSQL runs
    // cannot ask: it shows the work).
    if !missing.is_empty() && !super::cluster::is_standby(cx).unwrap_or(false) {
        plan.change(format!(
            "pgBackRest stanza {}: create it, check that WAL reaches the repositories, first full backup into repositor{} {}",
            a.stanza,
            if missing.len() == 1 { "y" } else { "ies" },
            missing.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    if cx.system.systemd_running() {
        for unit in UNITS {
            let enabled = cx
                .system
                .run(
                    &["systemctl".into(), "is-enabled".into(), unit.to_string()],
                    &[],
                )
                .is_ok_and(|o| o.success);
            let active = cx
                .system
                .run(
                    &["systemctl".into(), "is-active".into(), unit.to_string()],
                    &[],
                )
                .is_ok_and(|o| o.success);
            if !enabled || !active {
                plan.change(format!("enable and start {unit}"));
            }
        }
    }
    Ok(plan)
}

pub fn apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let mut effects = Effects::default();
    let a = cx.settings.archive.clone();
    if !a.enabled {
        return Ok(effects);
    }
    if let Some(s3) = &a.s3 {
        let pass = cx.path(&s3.cipher_pass_file);
        if cx.settings.cluster.enabled() && read_opt(&pass)?.is_none_or(|b| b.is_empty()) {
            bail!(
                "{} is missing: on a cluster's node it comes from the cluster's secrets (the `cluster_secrets` step writes it)",
                s3.cipher_pass_file.display()
            );
        }
        if let Some(p) = archive::ensure_passphrase(&pass)? {
            eprintln!(
                "\n  Off-host backups are encrypted with this passphrase (shown once; kept in {}).\n  Store a copy away from this host: without it the S3 copy cannot be read.\n\n    {}\n",
                s3.cipher_pass_file.display(),
                p.expose()
            );
        }
        let text = archive::secrets_text(&cx.settings, |p| cx.path(p))?
            .context("S3 repository without secrets")?;
        let (_, records) = install_file(
            cx,
            manifest,
            &a.secrets_file(),
            text.as_bytes(),
            &secrets_attrs(cx),
        )?;
        effects.records.extend(records);
    }
    let standby = super::cluster::is_standby(cx)?;
    pending_archive_mode(cx, standby)?;
    let missing = repos_without_backup(cx);
    if !missing.is_empty() && standby {
        eprintln!(
            "==> this node is a standby: the primary's install makes pgBackRest's stanza and first backup"
        );
    } else if !missing.is_empty() {
        for (what, args) in [
            ("stanza-create", vec!["stanza-create"]),
            ("check", vec!["check", "--archive-timeout=120"]),
        ] {
            eprintln!("==> pgBackRest {what}");
            let out = pgbackrest(cx, &args)?;
            if !out.success {
                bail!("pgbackrest {what} failed: {}", out.detail());
            }
        }
        for repo in missing {
            eprintln!("==> pgBackRest: first full backup into repository {repo}");
            let out = pgbackrest(cx, &["backup", "--type=full", &format!("--repo={repo}")])?;
            if !out.success {
                bail!(
                    "the first full backup into repository {repo} failed: {}",
                    out.detail()
                );
            }
        }
    }
    if cx.system.systemd_running() {
        let run = |argv: &[&str]| -> Result<()> {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            let out = cx.system.run(&argv, &[])?;
            if !out.success {
                bail!("{} failed: {}", argv.join(" "), out.detail());
            }
            Ok(())
        };
        run(&["systemctl", "daemon-reload"])?;
        for unit in UNITS {
            run(&["systemctl", "enable", unit])?;
            run(&["systemctl", "start", unit])?;
            // Uninstall stops and disables what the installer enabled.
            effects.records.push(Record::Unit {
                name: unit.to_string(),
            });
        }
    }
    Ok(effects)
}
