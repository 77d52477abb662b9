//! `pgaas install`: bootstrap a Debian/Ubuntu host from a playbook (`playbooks/install.yaml`,
//! embedded), idempotently. A playbook is an ordered list of typed steps ([`playbook`]); each
//! step kind has a check and an apply ([`steps`]); the [`runner`] applies only what differs,
//! runs reload/restart handlers once, and records what it made in a [`manifest`] that
//! [`uninstall`] reverses. Every external effect goes through [`system::System`] and every path
//! through a root prefix, so the whole play runs in tests against a temp directory.
//!
//! Layout on a host (see README "Installing on a server"): settings in /etc/pgaas (0755, no
//! secrets), the API role's password root-only in /etc/pgaas/secrets, TLS in /etc/pgaas/tls (key
//! owned by postgres, 0600), and the files the API rewrites (pg_hba.conf, pg_ident.conf,
//! PgBouncer's hba and auth file) in /etc/pgaas/postgresql and /etc/pgaas/pgbouncer, owned by
//! the API's user with the cluster's group (setgid directories, files 0640), so the API can
//! replace them atomically without write access to anything PostgreSQL owns.

pub mod cluster_status;
pub mod context;
pub mod host;
pub mod manifest;
pub mod playbook;
pub mod runner;
pub mod status;
mod steps;

pub mod uninstall;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

pub use context::{Cx, TlsMode};
pub use playbook::{Step, Vars};
pub use runner::{Report, run};
pub use steps::{Plan, implicit_needs};

use crate::settings::Settings;

/// The settings an installed host runs with: the existing settings (file and flags) plus the
/// layout the installer relies on. Values already set in the file are kept.
pub fn install_settings(mut s: Settings, pg_version: u32, tls: &TlsMode) -> Settings {
    let config_dir = s.paths.config_dir.clone();
    s.postgres.version = Some(pg_version);
    s.postgres
        .hba_dir
        .get_or_insert_with(|| config_dir.join("postgresql"));
    s.pgbouncer
        .auth_dir
        .get_or_insert_with(|| config_dir.join("pgbouncer"));
    if s.cluster.enabled() {
        // Patroni runs PostgreSQL in a data directory of its own (not Debian's `main`) and
        // includes pgaas.conf from beside its configuration.
        let conf = s.cluster.patroni_config_dir.clone();
        s.postgres.config_dir.get_or_insert(conf);
        let name = s.cluster.name.clone().unwrap_or_default();
        s.postgres.data_dir.get_or_insert_with(|| {
            PathBuf::from(format!("/var/lib/postgresql/{pg_version}/{name}"))
        });
    }
    // The API reaches the control DB over the socket; never a password in the file.
    s.control_db.password = None;
    s.control_db
        .password_file
        .get_or_insert_with(|| config_dir.join("secrets/control-db-password"));
    match tls {
        TlsMode::SelfSigned => {
            let dir = s
                .tls
                .cert_file
                .parent()
                .unwrap_or(&config_dir)
                .to_path_buf();
            s.tls.ca_file = Some(dir.join("ca.crt"));
        }
        TlsMode::Acme { domain, .. } => {
            s.public_host = domain.clone();
            s.tls.ca_file = None;
        }
    }
    s
}

fn text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The playbook variables for these settings.
pub fn vars(s: &Settings, pg_version: u32) -> Vars {
    let config_dir = &s.paths.config_dir;
    Vars {
        pg_version,
        pg_config_dir: text(&s.postgres.config_dir_for(pg_version)),
        pg_data_dir: text(&s.postgres.data_dir_for(pg_version)),
        hba_dir: text(&s.postgres.hba_dir_for(pg_version)),
        pgbouncer_dir: text(&s.pgbouncer.config_dir),
        pgbouncer_auth_dir: text(&s.pgbouncer.auth_dir()),
        postgres_unit: if s.cluster.enabled() {
            "patroni.service".to_string()
        } else {
            format!("postgresql@{pg_version}-main")
        },
        config_dir: text(config_dir),
        secrets_dir: text(
            s.control_db
                .password_file
                .as_deref()
                .and_then(Path::parent)
                .unwrap_or(&config_dir.join("secrets")),
        ),
        tls_dir: text(s.tls.cert_file.parent().unwrap_or(config_dir)),
        state_dir: text(&s.paths.state_dir),
        backup_dir: text(&s.paths.backup_dir),
        systemd_dir: text(&s.paths.systemd_dir),
        binary: text(&s.paths.binary),
        bin_dir: text(
            s.paths
                .binary
                .parent()
                .unwrap_or(Path::new("/usr/local/bin")),
        ),
        api_user: s.api.system_user.clone(),
        pg_user: s.postgres.os_user.clone(),
        control_db: s.control_db.name.clone(),
        control_db_password_file: s
            .control_db
            .password_file
            .as_deref()
            .map(text)
            .unwrap_or_default(),
        archive_config_dir: text(&s.archive.config_dir),
        archive_repo_path: text(&s.archive.repo_path),
        archive_spool_path: text(&s.archive.spool_path),
        archive_log_path: text(&s.archive.log_path),
        archive_lock_path: text(&s.archive.lock_path),
        archive_scratch_dir: text(&s.archive.scratch_dir),
        etcd_data_dir: text(&s.cluster.etcd_data_dir),
        settings_yaml: format!(
            "# pgaas settings, written by `pgaas install` (values you change here are kept by the\n\
             # next install; run `pgaas install` again to apply them).\n{}",
            s.to_yaml_without_secrets()
        ),
    }
}

/// The playbook to run: `--playbook FILE`, else the embedded `install.yaml`; only the steps
/// for `role` (a single host, a cluster's PostgreSQL node, its witness).
pub fn load_playbook(file: Option<&Path>, vars: &Vars, role: playbook::Role) -> Result<Vec<Step>> {
    let (source, text) = match file {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the playbook {}", p.display()))?,
        ),
        None => (
            "playbooks/install.yaml (embedded)".to_string(),
            playbook::embedded("install.yaml")
                .context("install.yaml is not embedded in this binary")?
                .to_string(),
        ),
    };
    let mut steps = playbook::parse(&source, &text, vars).map_err(anyhow::Error::msg)?;
    steps.retain(|s| s.roles.contains(&role));
    Ok(steps)
}

/// The operator's summary after a successful install.
pub fn summary(cx: &Cx) -> String {
    let s = &cx.settings;
    let mut out = String::from("\npgaas is installed\n\n");
    let host = &s.public_host;
    out.push_str(&format!(
        "  PostgreSQL {}:  {host}:{} (listening on {}; TLS required)\n",
        cx.vars.pg_version,
        s.postgres.port,
        s.postgres.listen_addresses.join(", ")
    ));
    if s.pgbouncer.enabled {
        out.push_str(&format!(
            "  PgBouncer:      {host}:{} (TLS required, {} pooling)\n",
            s.pgbouncer.port,
            s.pgbouncer.pool_mode.as_str()
        ));
    }
    out.push_str(&format!(
        "  API:            http://{} (pgaas-api.service; put a TLS proxy in front to expose it)\n",
        s.api.listen
    ));
    match &cx.tls {
        TlsMode::SelfSigned => out.push_str(&format!(
            "  TLS:            local CA {} (give it to clients for sslmode=verify-full)\n",
            s.tls.ca_file.as_deref().map(text).unwrap_or_default()
        )),
        TlsMode::Acme { domain, .. } => out.push_str(&format!(
            "  TLS:            certificate for {domain}, renewed by pgaas-cert-renew.timer\n"
        )),
    }
    out.push_str(&format!(
        "  Secrets:        {} (root-only; the API gets it through systemd credentials)\n",
        cx.vars.control_db_password_file
    ));
    out.push_str(&format!(
        "  Settings:       {}/pgaas.yaml\n",
        cx.vars.config_dir
    ));
    out.push_str(&format!(
        "  Backups:        {} (daily at 02:00)\n",
        s.paths.backup_dir.display()
    ));
    out.push_str(
        "  Commands:       pgaas status, pg-status, pg-list-databases, pg-backup-control\n",
    );
    match &cx.first_api_key {
        Some(key) => out.push_str(&format!(
            "\n  First admin API key (shown once; only its hash is stored):\n    {}\n\n  Try: curl -H 'X-API-Key: {}' http://{}/api/databases\n",
            key.expose(),
            key.expose(),
            s.api.listen
        )),
        None => out.push_str("\n  API keys: an admin key exists already; make more with `pgaas key create`.\n"),
    }
    out
}

/// Where a path under `root` lives on the host (for messages).
pub fn host_path(root: Option<&Path>, p: &Path) -> PathBuf {
    match root {
        Some(r) => p
            .strip_prefix(r)
            .map(|rel| Path::new("/").join(rel))
            .unwrap_or_else(|_| p.to_path_buf()),
        None => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
