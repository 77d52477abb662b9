//! Guard rails a tenant cannot lift for good.
//!
//! A tenant owns its database and may persist settings for itself (`ALTER ROLE own SET ...`,
//! `ALTER DATABASE own SET ...`) and change its database's `CONNECTION LIMIT`. A session may
//! still change most settings for itself (PostgreSQL has no way to forbid that), but what is
//! persisted applies to every new session, and some of it costs the neighbours: `work_mem =
//! '10GB'` on every connection, no `statement_timeout`, an idle-in-transaction timeout of a day.
//! This check, run at API start, periodically and by `pgaas doctor`, resets every persisted
//! setting of a tenant role or database that is not on the list below or over its ceiling, puts
//! the connection limits back to what the control DB says, and records each repair in the audit
//! trail.

use serde::Serialize;
use serde_json::json;
use sqlx::Executor;

use super::{AuditContext, TenantError, TenantService, audit, row::ident};
use crate::settings::LimitsSettings;

/// What one check found and repaired.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardReport {
    /// `database: what was reset`, one per repair.
    pub repairs: Vec<String>,
    /// Repairs that failed (retried next time).
    pub errors: Vec<String>,
}

/// Settings a tenant may persist whatever their value: how its own sessions read and write,
/// nothing that takes from the host.
const ALWAYS: &[&str] = &[
    "application_name",
    "array_nulls",
    "bytea_output",
    "check_function_bodies",
    "client_encoding",
    "client_min_messages",
    "constraint_exclusion",
    "cursor_tuple_fraction",
    "datestyle",
    "default_statistics_target",
    "default_table_access_method",
    "default_text_search_config",
    "default_toast_compression",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "extra_float_digits",
    "from_collapse_limit",
    "geqo",
    "intervalstyle",
    "jit",
    "join_collapse_limit",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "plan_cache_mode",
    "quote_all_identifiers",
    "random_page_cost",
    "row_security",
    "search_path",
    "seq_page_cost",
    "standard_conforming_strings",
    "timezone",
    "xmlbinary",
    "xmloption",
];

/// Why a persisted `name=value` may not stay, or `None` when it may.
pub fn refused(name: &str, value: &str, limits: &LimitsSettings) -> Option<String> {
    let name = name.to_ascii_lowercase();
    if ALWAYS.contains(&name.as_str()) || name.starts_with("enable_") {
        return None;
    }
    let over = |what: &str| Some(format!("{name} = {value}: {what}"));
    match name.as_str() {
        "work_mem" => match memory_kb(value) {
            Some(kb) if kb <= limits.max_work_mem_mb * 1024 => None,
            _ => over(&format!("more than {} MB", limits.max_work_mem_mb)),
        },
        "maintenance_work_mem" => match memory_kb(value) {
            Some(kb) if kb <= limits.max_maintenance_work_mem_mb * 1024 => None,
            _ => over(&format!(
                "more than {} MB",
                limits.max_maintenance_work_mem_mb
            )),
        },
        "hash_mem_multiplier" => match value.trim().parse::<f64>() {
            Ok(m) if (1.0..=limits.max_hash_mem_multiplier).contains(&m) => None,
            _ => over(&format!("more than {}", limits.max_hash_mem_multiplier)),
        },
        "statement_timeout" => timeout(value, limits.statement_timeout_ms, &name),
        "idle_in_transaction_session_timeout" => {
            timeout(value, limits.idle_in_transaction_timeout_ms, &name)
        }
        // Durability is the host's promise: a persisted value may be as strong as the host's
        // (`on`) or stronger, never weaker (`off` and `local` lose acknowledged commits on a
        // crash or a failover, `remote_write` on a crash of both machines). A session may still
        // `SET` it for itself, knowingly.
        // Read-only may be persisted, never read-write: a persisted `off` has no use but to
        // override the read-only default a storage quota sets.
        "default_transaction_read_only" | "transaction_read_only" => {
            match value.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => None,
                _ => over("only `on` may be persisted (a storage quota sets it)"),
            }
        }
        "synchronous_commit" => match value.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" | "remote_apply" => None,
            _ => over("weaker than the host's synchronous_commit = on"),
        },
        "lock_timeout" | "idle_session_timeout" => match duration_ms(value) {
            Some(_) => None,
            None => over("not a duration"),
        },
        _ => Some(format!("{name}: not a setting tenants may persist")),
    }
}

/// A persisted timeout must be set (not 0) and no longer than the host's default, when the host
/// has one.
fn timeout(value: &str, ceiling_ms: u64, name: &str) -> Option<String> {
    match duration_ms(value) {
        Some(0) => Some(format!("{name} = {value}: 0 switches it off")),
        Some(ms) if ceiling_ms == 0 || ms <= ceiling_ms => None,
        Some(_) => Some(format!("{name} = {value}: longer than {ceiling_ms} ms")),
        None => Some(format!("{name} = {value}: not a duration")),
    }
}

/// A memory setting in kB, as PostgreSQL reads it (no unit: kB).
pub fn memory_kb(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'');
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "kB" => 1,
        "MB" => 1024,
        "GB" => 1024 * 1024,
        "TB" => 1024 * 1024 * 1024,
        "B" => return Some(n.div_ceil(1024)),
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A time setting in ms, as PostgreSQL reads it (no unit: ms).
pub fn duration_ms(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'');
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "us" => return Some(n / 1000),
        _ => return None,
    };
    n.checked_mul(factor)
}

#[derive(sqlx::FromRow)]
struct Persisted {
    database: Option<String>,
    role: Option<String>,
    config: Vec<String>,
    /// The database is read-only by quota enforcement (its own setting, not the tenant's).
    quota_read_only: bool,
}

impl TenantService {
    /// Reset what tenants persisted beyond the rules, and repair connection-limit drift.
    pub async fn check_guard_rails(&self) -> Result<GuardReport, TenantError> {
        let mut report = GuardReport::default();
        let rows: Vec<Persisted> = sqlx::query_as(
            "SELECT d.datname::text AS database, r.rolname::text AS role, s.setconfig AS config,
                    COALESCE(t.quota_state IN ('read_only', 'blocked'), false) AS quota_read_only
             FROM pg_db_role_setting s
             LEFT JOIN pg_database d ON d.oid = s.setdatabase
             LEFT JOIN pg_roles r ON r.oid = s.setrole
             LEFT JOIN databases t ON t.database_name = d.datname AND s.setrole = 0
             WHERE r.rolname IN (SELECT username FROM databases WHERE status = 'active')
                OR (s.setrole = 0 AND d.datname IN
                        (SELECT database_name FROM databases WHERE status = 'active'))",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            for item in &row.config {
                let (name, value) = item.split_once('=').unwrap_or((item, ""));
                if row.quota_read_only
                    && row.role.is_none()
                    && name.eq_ignore_ascii_case("default_transaction_read_only")
                {
                    continue;
                }
                if let Some(why) = refused(name, value, &self.settings.limits) {
                    let what = format!(
                        "{}{}: reset {why}",
                        row.role
                            .as_deref()
                            .map(|r| format!("role {r}"))
                            .unwrap_or_default(),
                        row.database
                            .as_deref()
                            .map(|d| format!(
                                "{}database {d}",
                                if row.role.is_some() { " in " } else { "" }
                            ))
                            .unwrap_or_default()
                    );
                    match self.reset_setting(&row, name, &what).await {
                        Ok(()) => report.repairs.push(what),
                        Err(e) => report
                            .errors
                            .push(format!("{what}: {}", crate::error_chain(&e))),
                    }
                }
            }
        }
        self.repair_connection_limits(&mut report).await?;
        // A tenant may have changed its own password: the pooler follows.
        self.refresh_pooler().await;
        for r in &report.repairs {
            tracing::warn!(repair = %r, "guard rail restored");
        }
        Ok(report)
    }

    async fn reset_setting(
        &self,
        row: &Persisted,
        name: &str,
        what: &str,
    ) -> Result<(), TenantError> {
        // The name comes from the catalog; it is a GUC name (letters, digits, _ and .).
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(TenantError::internal(format!(
                "unexpected setting name {name:?}"
            )));
        }
        let mut tx = self.pool.begin().await?;
        match (&row.role, &row.database) {
            (Some(r), d) => super::roles::reset_setting(&mut tx, r, d.as_deref(), name).await?,
            (None, Some(d)) => {
                tx.execute(format!("ALTER DATABASE {} RESET {name}", ident(d)?).as_str())
                    .await?;
            }
            (None, None) => return Ok(()),
        }
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM databases WHERE database_name = $1 OR username = $2 LIMIT 1",
        )
        .bind(&row.database)
        .bind(&row.role)
        .fetch_optional(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            &AuditContext::cli(),
            "database.guard_reset",
            "database",
            id.map(|i| i.to_string()).as_deref(),
            true,
            json!({ "repair": what }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `ALTER DATABASE own CONNECTION LIMIT -1` is open to an owner; the control DB decides.
    async fn repair_connection_limits(&self, report: &mut GuardReport) -> Result<(), TenantError> {
        let drift: Vec<(String, String, i32, i32, i32)> = sqlx::query_as(
            "SELECT t.database_name, t.username, t.max_connections, d.datconnlimit, r.rolconnlimit
             FROM databases t
             JOIN pg_database d ON d.datname = t.database_name
             JOIN pg_roles r ON r.rolname = t.username
             WHERE t.status = 'active'
               AND (d.datconnlimit <> t.max_connections OR r.rolconnlimit <> t.max_connections)",
        )
        .fetch_all(&self.pool)
        .await?;
        for (db, role, want, db_limit, role_limit) in drift {
            let what = format!(
                "database {db}: connection limit back to {want} (database had {db_limit}, role {role_limit})"
            );
            let result = async {
                let mut conn = self.pool.acquire().await?;
                if db_limit != want {
                    conn.execute(
                        format!("ALTER DATABASE {} CONNECTION LIMIT {want}", ident(&db)?).as_str(),
                    )
                    .await?;
                }
                if role_limit != want {
                    super::roles::set_connection_limit(&mut conn, &role, want).await?;
                }
                Ok::<_, TenantError>(())
            }
            .await;
            match result {
                Ok(()) => report.repairs.push(what),
                Err(e) => report
                    .errors
                    .push(format!("{what}: {}", crate::error_chain(&e))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_postgresql_reads_them() {
        assert_eq!(memory_kb("4096"), Some(4096));
        assert_eq!(memory_kb("64MB"), Some(64 * 1024));
        assert_eq!(memory_kb("10GB"), Some(10 * 1024 * 1024));
        assert_eq!(memory_kb("'2GB'"), Some(2 * 1024 * 1024));
        assert_eq!(memory_kb("lots"), None);
        assert_eq!(duration_ms("0"), Some(0));
        assert_eq!(duration_ms("1500"), Some(1500));
        assert_eq!(duration_ms("30s"), Some(30_000));
        assert_eq!(duration_ms("5min"), Some(300_000));
        assert_eq!(duration_ms("2h"), Some(7_200_000));
        assert_eq!(duration_ms("1d"), Some(86_400_000));
        assert_eq!(duration_ms("soon"), None);
    }

    #[test]
    fn what_takes_from_the_host_is_refused_and_the_rest_stays() {
        let l = LimitsSettings::default();
        for (name, value) in [
            ("work_mem", "10GB"),
            ("hash_mem_multiplier", "1000"),
            ("maintenance_work_mem", "2GB"),
            ("statement_timeout", "0"),
            ("statement_timeout", "2d"),
            ("idle_in_transaction_session_timeout", "0"),
            ("temp_buffers", "1GB"),
            ("max_parallel_workers_per_gather", "64"),
            ("vacuum_cost_delay", "0"),
            ("synchronous_commit", "off"),
            ("synchronous_commit", "local"),
            ("synchronous_commit", "remote_write"),
            ("synchronous_commit", "0"),
            ("default_transaction_read_only", "off"),
            ("transaction_read_only", "false"),
        ] {
            assert!(refused(name, value, &l).is_some(), "{name}={value} kept");
        }
        for (name, value) in [
            ("work_mem", "64MB"),
            ("hash_mem_multiplier", "2"),
            ("statement_timeout", "30s"),
            ("search_path", "\"$user\", public"),
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
            ("enable_seqscan", "off"),
            ("lock_timeout", "5s"),
            ("synchronous_commit", "on"),
            ("synchronous_commit", "remote_apply"),
            ("default_transaction_read_only", "on"),
        ] {
            assert_eq!(refused(name, value, &l), None, "{name}={value} reset");
        }
    }
}
