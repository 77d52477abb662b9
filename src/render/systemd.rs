//! The contexts for pgaas's systemd units: the API service (hardened, as its own user, able to
//! write only the files it manages), the nightly backup and the certificate renewal, each a
//! oneshot service with a timer.
//!
//! Unit files expand `%` specifiers everywhere and `$VAR` in Exec lines, and split Exec lines on
//! blanks honouring C-style double quotes, so paths are escaped for exactly those rules.

use std::path::Path;

use serde::Serialize;

use super::{
    RenderError,
    check::{abs_path, system_user},
    render_template,
};
use crate::settings::Settings;

/// Whether a word needs double quotes in a unit file.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || !s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.' | '+' | ':' | '@' | ',')
        })
}

fn quote_word(s: &str) -> String {
    if needs_quotes(s) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// One argument of an `Exec*=` line: quoted when needed, `%` and `$` doubled.
pub fn exec_arg(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    Ok(quote_word(s).replace('%', "%%").replace('$', "$$"))
}

/// One entry of a path list such as `ReadWritePaths=` (specifiers expand there, variables don't).
pub fn path_list_item(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    Ok(quote_word(s).replace('%', "%%"))
}

/// A path-list entry that may be missing: systemd refuses to start a unit whose `ReadWritePaths=`
/// names a missing directory unless it carries the `-` prefix (inside the quotes, if any).
fn optional_path_list_item(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    Ok(quote_word(&format!("-{s}")).replace('%', "%%"))
}

/// The source path of a `LoadCredential=ID:PATH` line: specifiers expand there and a `:` would
/// end the id, blanks are fine (the rest of the line is the path).
fn credential_source(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    if s.contains(':') {
        return Err(RenderError::invalid(
            what,
            s,
            "must not contain ':' (systemd LoadCredential=)",
        ));
    }
    Ok(s.replace('%', "%%"))
}

/// Debian's pgbouncer.service, extended (never replaced) by this drop-in.
pub const PGBOUNCER_DROP_IN: &str = "pgbouncer.service.d/pgaas-limits.conf";

#[derive(Serialize, Debug)]
struct PgBouncerLimits {
    generation: u64,
    nofile: u64,
}

#[derive(Serialize, Debug)]
struct ApiUnit {
    generation: u64,
    /// The unit running PostgreSQL: Debian's, or Patroni on a cluster's node.
    postgres_unit: &'static str,
    user: String,
    binary: String,
    config_file: String,
    read_write_paths: Vec<String>,
    /// `LoadCredential=` source: the control-DB password file stays root-only (0600) and
    /// systemd hands the service a private copy.
    password_credential: Option<String>,
}

#[derive(Serialize, Debug)]
struct JobUnit {
    generation: u64,
    /// The unit running PostgreSQL: Debian's, or Patroni on a cluster's node.
    postgres_unit: &'static str,
    binary: String,
    config_file: String,
    user: String,
    read_write_paths: Vec<String>,
}

#[derive(Serialize, Debug)]
struct TimerUnit {
    generation: u64,
}

#[derive(Serialize, Debug)]
struct ArchiveJob {
    generation: u64,
    /// The unit running PostgreSQL: Debian's, or Patroni on a cluster's node.
    postgres_unit: &'static str,
    description: String,
    user: String,
    binary: String,
    command: String,
    config_file: String,
    read_write_paths: Vec<String>,
}

#[derive(Serialize, Debug)]
struct ArchiveTimer {
    generation: u64,
    description: String,
    schedule: String,
    unit: String,
}

#[derive(Serialize, Debug)]
struct WorkerUnit {
    generation: u64,
    /// The unit running PostgreSQL: Debian's, or Patroni on a cluster's node.
    postgres_unit: &'static str,
    pg_user: String,
    binary: String,
    config_file: String,
    read_write_paths: Vec<String>,
}

fn postgres_unit(s: &Settings) -> &'static str {
    if s.cluster.enabled() {
        "patroni.service"
    } else {
        "postgresql.service"
    }
}

/// A systemd calendar expression: one line, no control characters.
fn calendar(what: &str, v: &str) -> Result<String, RenderError> {
    if v.trim().is_empty() || v.chars().any(char::is_control) {
        return Err(RenderError::invalid(
            what,
            v,
            "must be a systemd calendar expression on one line",
        ));
    }
    Ok(v.trim().to_string())
}

/// The units of continuous archiving: base backups (a template unit, one timer per kind), the
/// drill, and the worker.
fn archive_units(
    s: &Settings,
    pg_config_dir: &Path,
    generation: u64,
    binary: &str,
    config_file: &str,
) -> Result<Vec<(&'static str, String)>, RenderError> {
    let a = &s.archive;
    let pg_user = system_user("postgres.os_user", &s.postgres.os_user)?.to_string();
    let pgbackrest_paths = vec![
        path_list_item("archive.repo_path", &a.repo_path)?,
        path_list_item("archive.spool_path", &a.spool_path)?,
        path_list_item("archive.log_path", &a.log_path)?,
        path_list_item("archive.lock_path", &a.lock_path)?,
    ];
    let job = |description: &str, command: &str, extra: Vec<String>| ArchiveJob {
        generation,
        postgres_unit: postgres_unit(s),
        description: description.into(),
        user: pg_user.clone(),
        binary: binary.into(),
        command: command.into(),
        config_file: config_file.into(),
        read_write_paths: pgbackrest_paths.iter().cloned().chain(extra).collect(),
    };
    let base = job(
        "pgaas physical backup (%i) with pgBackRest",
        "backup base --type %i",
        vec![],
    );
    let drill = job(
        "pgaas restore drill: the newest backup restored into a scratch cluster and checked",
        "backup drill",
        vec![path_list_item("archive.scratch_dir", &a.scratch_dir)?],
    );
    let timer = |description: &str, schedule: &str, key: &str, unit: &str| {
        Ok::<_, RenderError>(ArchiveTimer {
            generation,
            description: description.into(),
            schedule: calendar(key, schedule)?,
            unit: unit.into(),
        })
    };
    let mut worker_paths = pgbackrest_paths.clone();
    worker_paths.extend([
        path_list_item("archive.scratch_dir", &a.scratch_dir)?,
        path_list_item(
            "postgres.hba_dir",
            &s.postgres
                .hba_dir
                .clone()
                .unwrap_or_else(|| pg_config_dir.to_path_buf()),
        )?,
        optional_path_list_item("pgbouncer.auth_dir", &s.pgbouncer.auth_dir())?,
        optional_path_list_item("pgbouncer.config_dir", &s.pgbouncer.config_dir)?,
    ]);
    let mut seen = std::collections::HashSet::new();
    worker_paths.retain(|p| seen.insert(p.trim_start_matches('-').to_string()));
    let worker = WorkerUnit {
        generation,
        postgres_unit: postgres_unit(s),
        pg_user: pg_user.clone(),
        binary: binary.into(),
        config_file: config_file.into(),
        read_write_paths: worker_paths,
    };
    Ok(vec![
        (
            "pgaas-base-backup@.service",
            render_template("systemd/pgaas-archive-job.service.j2", &base)?,
        ),
        (
            "pgaas-base-backup-full.timer",
            render_template(
                "systemd/pgaas-archive.timer.j2",
                &timer(
                    "Weekly full backup with pgBackRest",
                    &a.full_schedule,
                    "archive.full_schedule",
                    "pgaas-base-backup@full.service",
                )?,
            )?,
        ),
        (
            "pgaas-base-backup-diff.timer",
            render_template(
                "systemd/pgaas-archive.timer.j2",
                &timer(
                    "Daily differential backup with pgBackRest",
                    &a.diff_schedule,
                    "archive.diff_schedule",
                    "pgaas-base-backup@diff.service",
                )?,
            )?,
        ),
        (
            "pgaas-drill.service",
            render_template("systemd/pgaas-archive-job.service.j2", &drill)?,
        ),
        (
            "pgaas-drill.timer",
            render_template(
                "systemd/pgaas-archive.timer.j2",
                &timer(
                    "Weekly restore drill",
                    &a.drill_schedule,
                    "archive.drill_schedule",
                    "pgaas-drill.service",
                )?,
            )?,
        ),
        (
            "pgaas-worker.service",
            render_template("systemd/pgaas-worker.service.j2", &worker)?,
        ),
    ])
}

/// `(file name, contents)` for every unit, in a stable order.
pub fn render_units(
    s: &Settings,
    pg_config_dir: &Path,
    generation: u64,
) -> Result<Vec<(&'static str, String)>, RenderError> {
    let binary = exec_arg("paths.binary", &s.paths.binary)?;
    let config_file = exec_arg("paths.config_dir", &s.paths.config_dir.join("pgaas.yaml"))?;
    let postgres_unit = postgres_unit(s);
    let api = ApiUnit {
        generation,
        postgres_unit,
        user: system_user("api.system_user", &s.api.system_user)?.to_string(),
        binary: binary.clone(),
        config_file: config_file.clone(),
        read_write_paths: vec![
            path_list_item(
                "postgres.hba_dir",
                &s.postgres
                    .hba_dir
                    .clone()
                    .unwrap_or_else(|| pg_config_dir.to_path_buf()),
            )?,
            path_list_item("paths.state_dir", &s.paths.state_dir)?,
            optional_path_list_item("pgbouncer.auth_dir", &s.pgbouncer.auth_dir())?,
        ],
        password_credential: match (&s.control_db.password_file, &s.control_db.password) {
            (Some(file), None) => Some(credential_source("control_db.password_file", file)?),
            _ => None,
        },
    };
    // Backups run as the cluster's OS user: pg_dump reaches every database by peer over the socket.
    let backup = JobUnit {
        generation,
        postgres_unit,
        binary: binary.clone(),
        config_file: config_file.clone(),
        user: system_user("postgres.os_user", &s.postgres.os_user)?.to_string(),
        read_write_paths: vec![
            path_list_item("paths.backup_dir", &s.paths.backup_dir)?,
            path_list_item("paths.state_dir", &s.paths.state_dir)?,
        ],
    };
    let archive = if s.archive.enabled {
        archive_units(s, pg_config_dir, generation, &binary, &config_file)?
    } else {
        Vec::new()
    };
    // Renewal runs as root: it binds the challenge port, swaps key files readable by two services
    // and reloads them.
    let cert = JobUnit {
        generation,
        postgres_unit,
        binary,
        config_file,
        user: "root".into(),
        read_write_paths: vec![
            path_list_item("paths.config_dir", &s.paths.config_dir)?,
            path_list_item("paths.state_dir", &s.paths.state_dir)?,
        ],
    };
    let timer = TimerUnit { generation };
    let bouncer = PgBouncerLimits {
        generation,
        nofile: u64::from(s.pgbouncer.max_client_conn)
            + u64::from(s.postgres.max_connections)
            + 1024,
    };
    let mut units = vec![
        (
            PGBOUNCER_DROP_IN,
            render_template("systemd/pgbouncer-limits.conf.j2", &bouncer)?,
        ),
        (
            "pgaas-api.service",
            render_template("systemd/pgaas-api.service.j2", &api)?,
        ),
        (
            "pgaas-backup.service",
            render_template("systemd/pgaas-backup.service.j2", &backup)?,
        ),
        (
            "pgaas-backup.timer",
            render_template("systemd/pgaas-backup.timer.j2", &timer)?,
        ),
        (
            "pgaas-cert-renew.service",
            render_template("systemd/pgaas-cert-renew.service.j2", &cert)?,
        ),
        (
            "pgaas-cert-renew.timer",
            render_template("systemd/pgaas-cert-renew.timer.j2", &timer)?,
        ),
    ];
    units.extend(archive);
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_stay_bare() {
        assert_eq!(
            exec_arg("x", Path::new("/usr/local/bin/pgaas")).unwrap(),
            "/usr/local/bin/pgaas"
        );
    }

    #[test]
    fn blanks_quotes_backslashes_specifiers_and_variables_are_escaped() {
        assert_eq!(
            exec_arg("x", Path::new("/opt/my app/pgaas")).unwrap(),
            "\"/opt/my app/pgaas\""
        );
        assert_eq!(
            exec_arg("x", Path::new("/opt/a\"b")).unwrap(),
            "\"/opt/a\\\"b\""
        );
        assert_eq!(
            exec_arg("x", Path::new("/opt/a\\b")).unwrap(),
            "\"/opt/a\\\\b\""
        );
        assert_eq!(
            exec_arg("x", Path::new("/opt/100%/bin")).unwrap(),
            "\"/opt/100%%/bin\""
        );
        assert_eq!(
            exec_arg("x", Path::new("/opt/$HOME/bin")).unwrap(),
            "\"/opt/$$HOME/bin\""
        );
        assert_eq!(
            path_list_item("x", Path::new("/srv/$x %i")).unwrap(),
            "\"/srv/$x %%i\""
        );
    }

    #[test]
    fn newlines_and_relative_paths_are_refused() {
        let err = exec_arg(
            "paths.binary",
            Path::new("/usr/bin/pgaas\nExecStartPre=/bin/rm"),
        )
        .unwrap_err();
        assert!(
            matches!(err, RenderError::Invalid { ref what, .. } if what == "paths.binary"),
            "{err}"
        );
        assert!(exec_arg("paths.binary", Path::new("pgaas")).is_err());
        assert!(path_list_item("x", Path::new("/a\rb")).is_err());
    }
}
