//! `pgaas doctor`: what needs the operator, and what to do about it. Checks that the control DB
//! answers and its migrations match this binary, then runs the reconciler (leaving anything
//! younger than five minutes to a live API, which may still be working on it) and reports what it
//! finished or undid, what it could not, and the tenant-named objects without a row, which it
//! never drops. It also checks that the API role holds nothing beyond what it needs
//! (`control_db::api_role`). Exit 0 when nothing needs attention, 1 otherwise.

use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    control_db,
    model::TenantStatus,
    settings::Settings,
    tenant::{ListQuery, ReconcileReport},
};

/// Rows untouched for this long are stuck, not in flight: a create or delete takes seconds.
const STUCK_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One finding: what is wrong (or was fixed) and what to do.
#[derive(Debug, Serialize)]
struct Finding {
    needs_operator: bool,
    what: String,
    todo: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    control_db: String,
    migrations: String,
    reconcile: Option<ReconcileReport>,
    findings: Vec<Finding>,
}

impl Report {
    fn fixed(&mut self, what: String) {
        self.findings.push(Finding {
            needs_operator: false,
            what,
            todo: None,
        });
    }
    fn problem(&mut self, what: String, todo: impl Into<String>) {
        self.findings.push(Finding {
            needs_operator: true,
            what,
            todo: Some(todo.into()),
        });
    }
    fn needs_operator(&self) -> bool {
        self.findings.iter().any(|f| f.needs_operator)
    }
}

pub fn run(config: super::Sources, args: Args) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.with_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = super::tokio_runtime()?;
    let report = rt.block_on(diagnose(settings))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.needs_operator() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn diagnose(settings: Settings) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let pool = super::control_pool(&settings)?;
    let target = format!(
        "{} on {}:{}",
        settings.control_db.name,
        settings.control_db.host,
        settings.control_db.port.unwrap_or(settings.postgres.port)
    );
    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
        report.control_db = format!("unreachable ({target}): {e}");
        report.problem(
            format!("the control database {target} does not answer: {e}"),
            "start PostgreSQL (systemctl start postgresql, or `pgaas dev`) and check control_db.* \
             and the password file in the settings (`pgaas config check`)",
        );
        return Ok(report);
    }
    report.control_db = format!("reachable ({target})");
    check_migrations(&pool, &mut report).await;
    check_api_role(&pool, &settings.control_db.user, &mut report).await;

    // With the host's hba applier, so a deletion the reconciler finishes also takes the
    // tenant's lines out of the access files.
    let service = super::host_tenants(pool.clone(), Arc::new(settings.clone()));
    match service.reconcile(STUCK_AFTER).await {
        Ok(r) => {
            explain_reconcile(&r, &mut report);
            report.reconcile = Some(r);
        }
        Err(e) => report.problem(
            format!("the reconciler could not run: {e}"),
            "fix the cause above, then run `pgaas doctor` again",
        ),
    }
    for status in [
        TenantStatus::Provisioning,
        TenantStatus::Deleting,
        TenantStatus::Failed,
    ] {
        let q = ListQuery {
            status: Some(status),
            limit: 1,
            ..ListQuery::default()
        };
        match service.list(&q).await {
            Ok(page) if page.total == 0 => {}
            Ok(page) if status == TenantStatus::Failed => report.problem(
                format!("{} database(s) in status failed", page.total),
                "see `pgaas db list --status failed` and the audit log; delete them with \
                 `pgaas db delete ID` once their owners are told",
            ),
            Ok(page) => report.fixed(format!(
                "{} database(s) {status} for less than {} minutes: left to the API, which may \
                 still be working on them; run `pgaas doctor` again later if they stay",
                page.total,
                STUCK_AFTER.as_secs() / 60
            )),
            Err(e) => report.problem(
                format!("listing {status} databases failed: {e}"),
                "see the error",
            ),
        }
    }
    match service.check_guard_rails().await {
        Ok(r) => {
            for repair in r.repairs {
                report.fixed(format!("guard rail restored: {repair}"));
            }
            for e in r.errors {
                report.problem(
                    format!("a guard rail could not be restored: {e}"),
                    "see the error; the API retries every limits.check_interval_secs",
                );
            }
        }
        Err(e) => report.problem(
            format!("the guard rails could not be checked: {e}"),
            "see the error",
        ),
    }
    match service.hba() {
        Some(applier) => match applier.check_files(&pool).await {
            Ok(problems) => {
                for p in problems {
                    report.problem(
                        format!("{}: {}", p.path.display(), p.problem),
                        "run `pgaas render` as root: it rewrites the access files from the \
                         control DB with the owner and mode PostgreSQL and PgBouncer need",
                    );
                }
            }
            Err(e) => report.problem(
                format!("the access files could not be checked: {e}"),
                "see the error",
            ),
        },
        None => report.problem(
            "the access files could not be checked: no PostgreSQL version is known".into(),
            "set postgres.version in the settings",
        ),
    }
    if settings.archive.enabled {
        check_scratch(&pool, &settings, &mut report).await;
    }
    pool.close().await;
    Ok(report)
}

/// Scratch clusters of restores and drills that are no longer running: a copy of a tenant's
/// data on disk, and perhaps a server, that nothing will remove until the worker restarts.
async fn check_scratch(pool: &sqlx::PgPool, settings: &Settings, report: &mut Report) {
    let found = match pool.acquire().await {
        Ok(mut conn) => crate::archive::leftovers::find(&mut conn, &settings.archive.scratch_dir)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    let pg_ctl = crate::pg::binaries::PgBinaries::find(settings.postgres.version)
        .map(|b| b.tool("pg_ctl").display().to_string())
        .unwrap_or_else(|_| "pg_ctl".into());
    let owner = &settings.postgres.os_user;
    match found {
        Ok(dirs) => {
            for dir in dirs {
                let d = dir.display();
                report.problem(
                    format!(
                        "scratch directory {d} was left by a restore or drill that no longer runs; it may hold a copy of a tenant's data and a running scratch server"
                    ),
                    format!(
                        "restart the worker (systemctl restart pgaas-worker), which removes it at its start; or as root: runuser -u {owner} -- {pg_ctl} -D {d}/data -m immediate stop; rm -rf -- {d}"
                    ),
                );
            }
        }
        Err(e) => report.problem(
            format!(
                "the scratch directory {} could not be checked: {e:#}",
                settings.archive.scratch_dir.display()
            ),
            "see the error",
        ),
    }
}

/// Run as the API role itself: what it holds is what anything reaching its session holds.
async fn check_api_role(pool: &sqlx::PgPool, api: &str, report: &mut Report) {
    let checked = match pool.acquire().await {
        Ok(mut conn) => control_db::api_role::check(&mut conn, api).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(problems) => {
            for p in problems {
                report.problem(format!("SECURITY: {}", p.what), p.todo);
            }
        }
        Err(e) => report.problem(
            format!("what the API role {api} holds could not be checked: {e}"),
            "see the error",
        ),
    }
}

async fn check_migrations(pool: &sqlx::PgPool, report: &mut Report) {
    let applied: Result<Vec<(i64, Vec<u8>, bool)>, _> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await;
    let applied: BTreeMap<i64, (Vec<u8>, bool)> = match applied {
        Ok(rows) => rows.into_iter().map(|(v, c, s)| (v, (c, s))).collect(),
        // No table yet: nothing has been applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => BTreeMap::new(),
        Err(e) => {
            report.migrations = format!("unknown: {e}");
            report.problem(
                format!("cannot read the migration history: {e}"),
                "see the error",
            );
            return;
        }
    };
    let known: BTreeMap<i64, &[u8]> = control_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    let mut pending = Vec::new();
    for (version, checksum) in &known {
        match applied.get(version) {
            None => pending.push(*version),
            Some((_, false)) => report.problem(
                format!("migration {version} failed part-way"),
                "read the server log for the error, repair by hand, then restart `pgaas serve`",
            ),
            Some((c, true)) if c.as_slice() != *checksum => report.problem(
                format!("migration {version} differs from the one this binary carries"),
                "run the pgaas version that applied it, or restore the control DB from a backup",
            ),
            Some(_) => {}
        }
    }
    let unknown: Vec<i64> = applied
        .keys()
        .filter(|v| !known.contains_key(v))
        .copied()
        .collect();
    if !unknown.is_empty() {
        report.problem(
            format!("migration(s) {unknown:?} were applied by a newer pgaas"),
            "upgrade this binary to the version that runs the API",
        );
    }
    if !pending.is_empty() {
        report.problem(
            format!("migration(s) {pending:?} not applied"),
            "start (or restart) `pgaas serve`: it applies migrations at start",
        );
    }
    report.migrations = format!(
        "{} of {} applied{}",
        known.len() - pending.len(),
        known.len(),
        if report.needs_operator() {
            " (see below)"
        } else {
            ""
        }
    );
}

fn explain_reconcile(r: &ReconcileReport, report: &mut Report) {
    for name in &r.finished_deletions {
        report.fixed(format!("finished the interrupted deletion of {name}"));
    }
    for name in &r.undone_provisions {
        report.fixed(format!(
            "undid the interrupted creation of {name} (its password was never shown; the client \
             must create it again)"
        ));
    }
    for name in &r.orphan_databases {
        report.problem(
            format!("database {name} has the tenant prefix but no row in the control DB; not dropped"),
            format!(
                "if it holds nothing anyone needs: as the superuser, DROP DATABASE \"{name}\" WITH (FORCE); \
                 otherwise keep or dump it (pg_dump -Fc) first"
            ),
        );
    }
    for name in &r.orphan_roles {
        report.problem(
            format!("role {name} has the tenant prefix but no row in the control DB; not dropped"),
            format!("if nothing uses it: as the superuser, DROP ROLE \"{name}\""),
        );
    }
    for e in &r.errors {
        report.problem(
            format!("the reconciler could not finish: {e}"),
            "fix the cause, then run `pgaas doctor` again",
        );
    }
}

fn print_report(r: &Report) {
    println!("control DB:  {}", r.control_db);
    if !r.migrations.is_empty() {
        println!("migrations:  {}", r.migrations);
    }
    if r.reconcile.as_ref().is_some_and(ReconcileReport::is_clean) {
        println!("reconciler:  nothing to do");
    }
    for f in &r.findings {
        let tag = if f.needs_operator { "NEEDS YOU" } else { "ok" };
        println!("[{tag}] {}", f.what);
        if let Some(todo) = &f.todo {
            println!("          -> {todo}");
        }
    }
    if r.needs_operator() {
        println!(
            "\n{} item(s) need the operator.",
            r.findings.iter().filter(|f| f.needs_operator).count()
        );
    } else {
        println!("\nall good.");
    }
}
