//! The `render` step: the managed file set from `render::managed_files` (conf.d/pgaas.conf, the
//! hba family, pgbouncer.ini, the systemd units), each with the owner and mode its readers and
//! writers need, and the handlers its change calls for: a reload when every changed setting can
//! be reloaded, a restart when one of them is read only at server start (postmaster context).
//!
//! The hba files are rendered from the control DB's rows when they can be read (so a re-run never
//! drops an allow-list); on a fresh host there are no rows and the base policy is written; when
//! the rows cannot be read but the files on disk are already pgaas's, they are left alone.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{Effects, Plan, files::file_plan, install_file};
use crate::{
    hba::{HbaPolicy, TenantAccess},
    install::{
        context::{Attrs, Cx, read_opt},
        manifest::Manifest,
        playbook::{Handler, HandlerAction},
    },
    render::{self, HostFacts, ManagedFile, RenderInputs},
};

/// pgaas.conf settings PostgreSQL reads only at server start (context `postmaster` in
/// pg_settings, the same in 15, 16 and 17): changing one needs a restart, anything else a reload.
pub const POSTMASTER_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "max_connections",
    "superuser_reserved_connections",
    "hba_file",
    "ident_file",
    "shared_buffers",
    "wal_buffers",
    "shared_preload_libraries",
    "autovacuum_max_workers",
    "wal_level",
    "archive_mode",
];

/// pgbouncer.ini settings a SIGHUP does not apply (sockets and the pid file are set up at start).
pub const PGBOUNCER_RESTART_SETTINGS: &[&str] =
    &["listen_addr", "listen_port", "unix_socket_dir", "pidfile"];

pub const PGBOUNCER_UNIT: &str = "pgbouncer";
pub const API_UNIT: &str = "pgaas-api.service";

/// `key = value` lines of an ini/conf file.
fn settings_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with(['#', ';', '[']) && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Keys whose value differs between two versions of a file.
pub fn changed_keys(old: &str, new: &str) -> Vec<String> {
    let (a, b) = (settings_map(old), settings_map(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The handler a changed file calls for.
pub fn handler_for(file: &Path, old: &str, new: &str, postgres_unit: &str) -> Vec<Handler> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    // Under Patroni, PostgreSQL is reloaded through it; a setting read only at start is
    // flagged by Patroni as pending a restart (`pgaas status`), which the operator schedules
    // (`patronictl restart`), rather than restarting a primary from an install.
    if postgres_unit == PATRONI_UNIT
        && matches!(
            name,
            "pgaas.conf" | "pg_hba.conf" | "pg_ident.conf" | "config.yml"
        )
    {
        return vec![Handler::new(HandlerAction::Reload, PATRONI_UNIT)];
    }
    if file == Path::new(ETCD_ENV_FILE) {
        return vec![Handler::new(HandlerAction::Restart, ETCD_UNIT)];
    }
    let needs = |keys: &[&str]| {
        changed_keys(old, new)
            .iter()
            .any(|k| keys.contains(&k.as_str()))
    };
    match name {
        "pgaas.conf" if needs(POSTMASTER_SETTINGS) => {
            vec![Handler::new(HandlerAction::Restart, postgres_unit)]
        }
        "pgaas.conf" | "pg_hba.conf" | "pg_ident.conf" => {
            vec![Handler::new(HandlerAction::Reload, postgres_unit)]
        }
        "pgbouncer.ini" if needs(PGBOUNCER_RESTART_SETTINGS) => {
            vec![Handler::new(HandlerAction::Restart, PGBOUNCER_UNIT)]
        }
        "pgbouncer.ini" | "pgbouncer_hba.conf" => {
            vec![Handler::new(HandlerAction::Reload, PGBOUNCER_UNIT)]
        }
        // LimitNOFILE is read when the process starts.
        "pgaas-limits.conf" => vec![
            Handler::daemon_reload(),
            Handler::new(HandlerAction::Restart, PGBOUNCER_UNIT),
        ],
        n if n.ends_with(".service") || n.ends_with(".timer") => {
            let mut h = vec![Handler::daemon_reload()];
            // Oneshot jobs pick up their new unit at the next run; long-running units and
            // timers must be restarted to use it.
            if n == API_UNIT || n.ends_with(".timer") {
                h.push(Handler::new(HandlerAction::Restart, n));
            }
            h
        }
        _ => Vec::new(),
    }
}

/// Who owns each managed file: the hba family belongs to the API's user (it rewrites them) with
/// the cluster's group (the servers read them); PgBouncer's ini is readable by its user only.
fn attrs_for(cx: &Cx, f: &ManagedFile) -> Attrs {
    let v = &cx.vars;
    let in_dir = |d: &str| f.path.parent() == Some(Path::new(d));
    if in_dir(&v.hba_dir) || in_dir(&v.pgbouncer_auth_dir) {
        Attrs::new(&v.api_user, &v.pg_user, 0o640)
    } else if f.path.extension().is_some_and(|e| e == "ini") {
        Attrs::new("root", &v.pg_user, 0o640)
    } else {
        Attrs::new("root", "root", f.mode)
    }
}

/// Tenants with allow-lists and the generation in force, read as the superuser; `None` when
/// there is no server or no control DB yet.
fn rows(cx: &mut Cx) -> Option<(Vec<TenantAccess>, i64)> {
    let opts = cx.admin.clone()?.database(&cx.settings.control_db.name);
    cx.block_on(async move {
        let connect = sqlx::Connection::connect_with(&opts);
        let mut conn: sqlx::PgConnection =
            tokio::time::timeout(std::time::Duration::from_secs(5), connect)
                .await
                .ok()?
                .ok()?;
        let tenants = crate::hba::apply::load_tenants(&mut conn).await.ok()?;
        let generation = crate::hba::apply::current_generation(&mut conn)
            .await
            .ok()?;
        Some((tenants, generation))
    })
    .ok()
    .flatten()
}

fn is_hba(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == "pg_hba.conf" || n == "pgbouncer_hba.conf")
}

/// Where Debian's etcd unit reads its environment.
pub const ETCD_ENV_FILE: &str = "/etc/default/etcd";
pub const PATRONI_UNIT: &str = "patroni.service";
pub const ETCD_UNIT: &str = "etcd.service";

/// A cluster's files: etcd's environment on every node; on a PostgreSQL node, Patroni's
/// configuration (it carries the replication and rewind passwords: the cluster's OS user
/// alone reads it).
fn cluster_files(cx: &Cx) -> Result<Vec<(ManagedFile, Attrs)>> {
    use crate::install::playbook::Role;
    let s = &cx.settings;
    let mut out = vec![(
        ManagedFile {
            path: PathBuf::from(ETCD_ENV_FILE),
            contents: render::patroni::render_etcd_env(s)?,
            mode: 0o644,
        },
        Attrs::new("root", "root", 0o644),
    )];
    if Role::of(s) == Role::Node {
        let secrets = super::cluster::read_secrets(cx)?;
        let bin = crate::pg::binaries::PgBinaries::find(Some(cx.vars.pg_version))
            .map(|b| b.bindir)
            .unwrap_or_else(|_| {
                PathBuf::from(format!("/usr/lib/postgresql/{}/bin", cx.vars.pg_version))
            });
        // Patroni (the cluster's OS user) writes it: beside the data directories, in that
        // user's home.
        let data = Path::new(&cx.vars.pg_data_dir);
        let pgpass = data
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/var/lib/postgresql"))
            .join(".pgpass.patroni");
        let contents = render::patroni::render_patroni(&render::patroni::PatroniInputs {
            settings: s,
            secrets: &secrets,
            data_dir: Path::new(&cx.vars.pg_data_dir),
            bin_dir: &bin,
            custom_conf: &Path::new(&cx.vars.pg_config_dir).join("conf.d/pgaas.conf"),
            pgpass: &pgpass,
        })?;
        out.push((
            ManagedFile {
                path: s.cluster.patroni_config_dir.join("config.yml"),
                contents,
                mode: 0o600,
            },
            Attrs::new(&cx.vars.pg_user, &cx.vars.pg_user, 0o600),
        ));
    }
    Ok(out)
}

/// The files to write, with their attributes.
fn files(cx: &mut Cx) -> Result<Vec<(ManagedFile, Attrs)>> {
    use crate::install::playbook::Role;
    let role = Role::of(&cx.settings);
    if role == Role::Witness {
        return cluster_files(cx);
    }
    let mut policy = HbaPolicy::base(&cx.settings);
    let rows = rows(cx);
    let generation = match &rows {
        Some((tenants, g)) => {
            policy.tenants = tenants.clone();
            u64::try_from(*g).unwrap_or(0)
        }
        None => 0,
    };
    let rules = crate::hba::compile_all(&policy)?;
    let files = render::managed_files(&RenderInputs {
        settings: &cx.settings,
        facts: HostFacts {
            pg_version: cx.vars.pg_version,
            memory_mb: cx.memory_mb,
        },
        hba: &policy,
        rules: &rules,
        generation,
        pg_config_dir: PathBuf::from(&cx.vars.pg_config_dir),
        data_dir: PathBuf::from(&cx.vars.pg_data_dir),
        include_systemd: true,
        include_pgbouncer: cx.settings.pgbouncer.enabled,
    })?;
    let mut out = Vec::new();
    for f in files {
        if rows.is_none() && is_hba(&f.path) {
            let on_disk = read_opt(&cx.path(&f.path))?.unwrap_or_default();
            if on_disk.starts_with(b"# pgaas managed") {
                // Without the rows this would drop every allow-list; the control_db step
                // brings the file in line with them.
                continue;
            }
        }
        let attrs = attrs_for(cx, &f);
        out.push((f, attrs));
    }
    if role == Role::Node {
        out.extend(cluster_files(cx)?);
    }
    Ok(out)
}

pub fn check(cx: &mut Cx) -> Result<Plan> {
    // Before any file that starts a service: the release the packages installed.
    super::release::check(cx)?;
    let mut plan = Plan::default();
    for (f, attrs) in files(cx)? {
        let p = file_plan(cx, &f.path, f.contents.as_bytes(), &attrs, true)?;
        plan.changes.extend(p.changes);
        plan.diffs.extend(p.diffs);
    }
    Ok(plan)
}

pub fn apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let mut effects = Effects::default();
    for (f, attrs) in files(cx)? {
        let old = read_opt(&cx.path(&f.path))?.unwrap_or_default();
        let (changed, records) =
            install_file(cx, manifest, &f.path, f.contents.as_bytes(), &attrs)?;
        effects.records.extend(records);
        if changed {
            let old = String::from_utf8_lossy(&old);
            effects.notify.extend(handler_for(
                &f.path,
                &old,
                &f.contents,
                &cx.vars.postgres_unit,
            ));
        }
    }
    Ok(effects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_settings_restart_and_the_rest_reload() {
        let p = Path::new("/etc/postgresql/15/main/conf.d/pgaas.conf");
        let unit = "postgresql@15-main";
        let restart = handler_for(
            p,
            "port = 5432\nwork_mem = 4MB\n",
            "port = 5433\nwork_mem = 4MB\n",
            unit,
        );
        assert_eq!(restart, vec![Handler::new(HandlerAction::Restart, unit)]);
        let reload = handler_for(
            p,
            "port = 5432\nwork_mem = 4MB\n",
            "port = 5432\nwork_mem = 8MB\n",
            unit,
        );
        assert_eq!(reload, vec![Handler::new(HandlerAction::Reload, unit)]);
        let mc = handler_for(
            p,
            "max_connections = 500\n",
            "max_connections = 600\n",
            unit,
        );
        assert_eq!(mc[0].action, HandlerAction::Restart);
    }

    #[test]
    fn pgbouncer_sockets_restart_pools_reload_units_daemon_reload() {
        let ini = Path::new("/etc/pgbouncer/pgbouncer.ini");
        assert_eq!(
            handler_for(ini, "listen_port = 6432\n", "listen_port = 6433\n", "x")[0].action,
            HandlerAction::Restart
        );
        assert_eq!(
            handler_for(
                ini,
                "default_pool_size = 25\n",
                "default_pool_size = 30\n",
                "x"
            )[0]
            .action,
            HandlerAction::Reload
        );
        let api = handler_for(
            Path::new("/etc/systemd/system/pgaas-api.service"),
            "a",
            "b",
            "x",
        );
        assert_eq!(
            api,
            vec![
                Handler::daemon_reload(),
                Handler::new(HandlerAction::Restart, API_UNIT)
            ]
        );
        let backup = handler_for(
            Path::new("/etc/systemd/system/pgaas-backup.service"),
            "a",
            "b",
            "x",
        );
        assert_eq!(backup, vec![Handler::daemon_reload()]);
    }

    #[test]
    fn changed_keys_ignore_comments_and_order() {
        assert_eq!(
            changed_keys("# x\na = 1\nb = 2\n", "b = 2\na = 3\n; y\n"),
            vec!["a".to_string()]
        );
    }
}
