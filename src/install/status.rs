//! `pgaas status` (and the original's `pg-status`): services, server version, connections and
//! size per database, certificate days left, the last backup of each database, and whether the
//! pg_hba.conf in force carries the generation the control DB recorded, and whether the API role
//! holds only what it needs (the one finding that fails the command). Every part is gathered on
//! its own, so a stopped server still leaves the rest of the report.

use std::{path::Path, time::Duration};

use serde::Serialize;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::system::System;
use crate::{pg::tls::CertInfo, settings::Settings};

#[derive(Debug, Default, Serialize)]
pub struct Status {
    /// `(unit, state)`; empty without systemd.
    pub services: Vec<(String, String)>,
    pub timers: Vec<String>,
    pub server_version: Option<String>,
    pub database_error: Option<String>,
    pub databases: Vec<DatabaseStatus>,
    pub certificate: Option<String>,
    pub cert_days_left: Option<i64>,
    /// Generation in the header of pg_hba.conf, and in `hba_state`.
    pub hba_file_generation: Option<u64>,
    pub hba_db_generation: Option<i64>,
    /// Access files that are missing, unreadable by the server's user, or not what the rows say;
    /// `None` when they could not be checked.
    pub access_files: Option<Vec<crate::hba::check::FileProblem>>,
    /// The tenants' connection budget.
    pub budget: Option<crate::tenant::Budget>,
    /// Continuous archiving, as the control DB and the archiver report it.
    pub archive: Option<crate::archive::status::BackupStatus>,
    /// Patroni's members and etcd's health, on a cluster node.
    pub cluster: Option<super::cluster_status::ClusterStatus>,
    /// What the API role holds beyond what it needs (empty: nothing); `None` when not checked.
    pub api_role: Option<Vec<crate::control_db::api_role::ApiRoleProblem>>,
}

impl Status {
    /// Whether the report shows something that must fail the command: the API role holding
    /// more than it needs.
    pub fn failed(&self) -> bool {
        self.api_role.as_ref().is_some_and(|p| !p.is_empty())
    }
}

#[derive(Debug, Serialize)]
pub struct DatabaseStatus {
    pub name: String,
    pub connections: i64,
    pub size_bytes: i64,
    /// File name of the newest `<backup_dir>/<db>/*.dump`.
    pub last_backup: Option<String>,
}

/// The newest `*.dump` of a database (names start with a sortable timestamp).
pub fn last_backup(backup_dir: &Path, db: &str) -> Option<String> {
    let entries = std::fs::read_dir(backup_dir.join(db)).ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".dump"))
        .max()
}

/// The `# generation: N` header line of a managed hba file.
pub fn header_generation(text: &str) -> Option<u64> {
    text.lines()
        .take(5)
        .find_map(|l| l.strip_prefix("# generation: "))
        .and_then(|g| g.trim().parse().ok())
}

pub async fn gather(settings: &Settings, system: &dyn System, admin: PgConnectOptions) -> Status {
    let mut st = Status::default();
    let version = settings.postgres.version.unwrap_or(15);
    if system.systemd_running() {
        let server_units: Vec<String> = if settings.cluster.enabled() {
            vec!["etcd.service".into(), "patroni.service".into()]
        } else {
            vec![format!("postgresql@{version}-main")]
        };
        for unit in server_units
            .into_iter()
            .chain([
                "pgbouncer".into(),
                "pgaas-api.service".into(),
                "pgaas-backup.timer".into(),
                "pgaas-cert-renew.timer".into(),
            ])
            .chain(
                [
                    "pgaas-worker.service",
                    "pgaas-base-backup-full.timer",
                    "pgaas-base-backup-diff.timer",
                    "pgaas-drill.timer",
                ]
                .into_iter()
                .filter(|_| settings.archive.enabled)
                .map(String::from),
            )
        {
            let out = system.run(&["systemctl".into(), "is-active".into(), unit.clone()], &[]);
            let state = out
                .map(|o| o.stdout.trim().to_string())
                .unwrap_or_else(|e| e.to_string());
            st.services.push((unit, state));
        }
        if let Ok(o) = system.run(
            &[
                "systemctl",
                "list-timers",
                "--all",
                "--no-legend",
                "pgaas-*",
            ]
            .map(String::from),
            &[],
        ) {
            st.timers = o
                .stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
        }
    }
    if let Some(cert) = std::fs::read_to_string(&settings.tls.cert_file)
        .ok()
        .and_then(|p| CertInfo::from_pem(&p))
    {
        st.cert_days_left = Some(cert.days_left());
        st.certificate = Some(cert.sans.join(", "));
    }
    let hba = settings.postgres.hba_dir_for(version).join("pg_hba.conf");
    st.hba_file_generation = std::fs::read_to_string(&hba)
        .ok()
        .and_then(|t| header_generation(&t));
    match database(settings, admin, &mut st).await {
        Ok(()) => {}
        Err(e) => st.database_error = Some(e.to_string()),
    }
    st.cluster = super::cluster_status::gather(settings).await;
    st
}

async fn database(
    settings: &Settings,
    admin: PgConnectOptions,
    st: &mut Status,
) -> Result<(), sqlx::Error> {
    let opts = admin.clone().database("postgres");
    let connect = PgConnection::connect_with(&opts);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    st.server_version = Some(
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?,
    );
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.datname::text, COALESCE(s.numbackends, 0)::int8, pg_database_size(d.oid)
         FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid
         WHERE d.datallowconn ORDER BY d.datname",
    )
    .fetch_all(&mut conn)
    .await?;
    st.api_role =
        Some(crate::control_db::api_role::check(&mut conn, &settings.control_db.user).await?);
    for (name, connections, size_bytes) in rows {
        let last_backup = last_backup(&settings.paths.backup_dir, &name);
        st.databases.push(DatabaseStatus {
            name,
            connections,
            size_bytes,
            last_backup,
        });
    }
    if admin_db(&mut conn, &settings.control_db.name).await? {
        let opts = admin.database(&settings.control_db.name);
        if let Ok(mut c) = PgConnection::connect_with(&opts).await {
            st.hba_db_generation = crate::hba::apply::current_generation(&mut c).await.ok();
        }
        if let Ok(mut c) = PgConnection::connect_with(&opts).await {
            st.archive = crate::archive::status::read(&mut c, settings).await.ok();
        }
        if let Ok(mut c) = PgConnection::connect_with(&opts).await {
            let committed: Option<i64> = sqlx::query_scalar(
                "SELECT COALESCE(sum(max_connections), 0)::bigint FROM databases WHERE status <> 'deleting'",
            )
            .fetch_one(&mut c)
            .await
            .ok();
            st.budget = committed.map(|c| crate::tenant::Budget::of(settings, c));
        }
        let version = settings.postgres.version.unwrap_or(15);
        let applier = crate::hba::apply::HbaApplier::for_host(settings, version);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(opts);
        st.access_files = applier.check_files(&pool).await.ok();
        pool.close().await;
    }
    Ok(())
}

async fn admin_db(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

fn pretty(bytes: i64) -> String {
    crate::tenant::size_pretty(bytes)
}

/// The report as text.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    if let Some(c) = &st.cluster {
        out.push_str(&c.render());
    }
    if !st.services.is_empty() {
        out.push_str("Services\n");
        for (u, s) in &st.services {
            out.push_str(&format!("  {u:<28} {s}\n"));
        }
        for t in &st.timers {
            out.push_str(&format!("  timer: {t}\n"));
        }
    }
    match (&st.server_version, &st.database_error) {
        (Some(v), _) => out.push_str(&format!("PostgreSQL {v}\n")),
        (None, Some(e)) => out.push_str(&format!(
            "PostgreSQL: not reachable ({e}); check `systemctl status postgresql@*` and run `pgaas doctor`\n"
        )),
        _ => {}
    }
    if !st.databases.is_empty() {
        out.push_str(&format!(
            "  {:<32} {:>5} {:>10}  last backup\n",
            "database", "conns", "size"
        ));
        for d in &st.databases {
            out.push_str(&format!(
                "  {:<32} {:>5} {:>10}  {}\n",
                d.name,
                d.connections,
                pretty(d.size_bytes),
                d.last_backup.as_deref().unwrap_or("none")
            ));
        }
    }
    match (&st.certificate, st.cert_days_left) {
        (Some(names), Some(days)) => {
            out.push_str(&format!("Certificate: {names}, {days} days left\n"))
        }
        _ => out.push_str("Certificate: none found (run `pgaas install` or `pgaas cert issue`)\n"),
    }
    let g = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    let in_sync = match (st.hba_file_generation, st.hba_db_generation) {
        (Some(f), Some(d)) if i64::try_from(f).ok() == Some(d) => "in sync",
        (None, Some(0)) => "in sync",
        (_, None) => "control DB not readable",
        _ => "OUT OF SYNC: run `pgaas render` (or restart pgaas-api, which syncs at start)",
    };
    out.push_str(&format!(
        "pg_hba.conf generation: file {}, control DB {} ({in_sync})\n",
        g(st.hba_file_generation.map(|v| v.to_string())),
        g(st.hba_db_generation.map(|v| v.to_string()))
    ));
    if let Some(b) = &st.budget {
        out.push_str(&format!(
            "Connection budget: {} of {} promised to tenants ({} sessions for tenants, overcommitted), {} left\n",
            b.committed,
            b.total,
            b.capacity,
            b.available()
        ));
    }
    if let Some(a) = &st.archive {
        if !a.enabled {
            out.push_str(
                "Continuous archiving: off (archive.enabled); a host loses up to a day of data\n",
            );
        } else {
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "Continuous archiving: recoverable from {} (newest backup {}, last WAL archived {})\n",
                when(a.earliest()),
                when(a.last_backup()),
                a.archiver
                    .as_ref()
                    .and_then(|x| x.lag_seconds)
                    .map(|l| format!("{l:.0}s ago"))
                    .unwrap_or_else(|| "never".into())
            ));
            for p in &a.problems {
                out.push_str(&format!("  WARNING: {p}\n"));
            }
        }
    }
    match &st.api_role {
        None => out.push_str("API role: not checked (PostgreSQL not reachable)\n"),
        Some(p) if p.is_empty() => out.push_str("API role: holds only what it needs\n"),
        Some(problems) => {
            out.push_str("API role: FAILED, it holds more than it needs (anything reaching its session has it):\n");
            for p in problems {
                out.push_str(&format!("  {}\n    -> {}\n", p.what, p.todo));
            }
        }
    }
    match &st.access_files {
        None => out.push_str("Access files: not checked (control DB not readable)\n"),
        Some(p) if p.is_empty() => {
            out.push_str("Access files: match the control DB and are readable by the server\n")
        }
        Some(problems) => {
            out.push_str("Access files: PROBLEMS (run `pgaas render` as root to repair)\n");
            for p in problems {
                out.push_str(&format!("  {}: {}\n", p.path.display(), p.problem));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_dump_and_header_generation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db1")).unwrap();
        for n in [
            "20240101T020000Z.dump",
            "20240102T020000Z.dump",
            "20240103T020000Z.dump.tmp",
        ] {
            std::fs::write(dir.path().join("db1").join(n), "").unwrap();
        }
        assert_eq!(
            last_backup(dir.path(), "db1").as_deref(),
            Some("20240102T020000Z.dump")
        );
        assert_eq!(last_backup(dir.path(), "db2"), None);
        assert_eq!(
            header_generation("# pgaas managed file\n# generation: 12\n#\n"),
            Some(12)
        );
        assert_eq!(header_generation("# pgaas managed file\n"), None);
    }
}
