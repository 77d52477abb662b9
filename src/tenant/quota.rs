//! Storage quotas, enforced in a way a tenant cannot undo.
//!
//! PostgreSQL has no per-database size limit, and anything a session can set for itself
//! (`default_transaction_read_only`) it can unset. So enforcement has two steps, both driven
//! from the size the stats collector measures:
//!
//! - past the quota (`read_only`): the database's new sessions default to read-only
//!   (`ALTER DATABASE ... SET default_transaction_read_only = on`) and its open sessions are
//!   ended, so every session starts read-only. A tenant can still read, and can lift the default
//!   for one session (`SET default_transaction_read_only = off`) to `DELETE`, `TRUNCATE` or
//!   `DROP` its way back under: that is the intended way out.
//! - past the quota and its grace (`blocked`): the database stops taking connections
//!   (`ALLOW_CONNECTIONS false`) and its sessions are ended. A tenant can only change that from
//!   a session in its own database, so it cannot; the operator raises `maxSizeMb` (PATCH), after
//!   which the database opens again (read-only until the tenant is under its quota).
//!
//! Each pass re-asserts what the state requires (a tenant may `ALTER DATABASE own RESET` the
//! read-only default); every change of state writes an audit row.

use serde_json::json;
use sqlx::Executor;

use super::{AuditContext, Tenant, TenantError, TenantService, audit, row::ident};
use crate::model::{QuotaState, TenantId};

/// What enforcement needs to know of one tenant.
#[derive(sqlx::FromRow)]
struct QuotaRow {
    id: uuid::Uuid,
    database_name: String,
    max_size_mb: i64,
    size_bytes: Option<i64>,
    quota_state: String,
    allow_connections: bool,
    read_only_default: bool,
}

const SELECT_QUOTA: &str = "
    SELECT t.id, t.database_name, t.max_size_mb, t.size_bytes, t.quota_state,
           d.datallowconn AS allow_connections,
           EXISTS (SELECT 1 FROM pg_db_role_setting s
                   WHERE s.setdatabase = d.oid AND s.setrole = 0
                     AND 'default_transaction_read_only=on' = ANY (s.setconfig)) AS read_only_default
    FROM databases t JOIN pg_database d ON d.datname = t.database_name
    WHERE t.status = 'active'";

/// A change of quota state, for the caller's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaChange {
    pub tenant: TenantId,
    pub database: String,
    pub from: QuotaState,
    pub to: QuotaState,
}

impl TenantService {
    /// `(database, max_size_mb, state)` of every active tenant, for `/metrics`.
    pub async fn quotas(&self) -> Result<Vec<(String, i64, QuotaState)>, TenantError> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT database_name, max_size_mb, quota_state FROM databases
             WHERE status = 'active' ORDER BY database_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(d, m, s)| Ok((d, m, s.parse()?)))
            .collect()
    }

    fn quota_state_for(&self, size: Option<i64>, max_mb: i64) -> QuotaState {
        let t = &self.settings.tenants;
        QuotaState::for_size(
            size.unwrap_or(0),
            max_mb,
            t.quota_warn_percent,
            t.quota_grace_percent,
        )
    }

    /// Every active tenant: its state from its last measured size, enforced.
    pub async fn enforce_quotas(&self) -> Result<Vec<QuotaChange>, TenantError> {
        let rows: Vec<QuotaRow> = sqlx::query_as(&format!(
            "{SELECT_QUOTA} AND (t.max_size_mb > 0 OR t.quota_state <> 'ok'
                                OR NOT d.datallowconn)"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut changes = Vec::new();
        for row in rows {
            let name = row.database_name.clone();
            match self.enforce_row(row).await {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(database = %name, error = %crate::error_chain(&e), "quota enforcement failed; retried next pass")
                }
            }
        }
        Ok(changes)
    }

    /// One tenant, now (after a PATCH of its quota).
    pub async fn enforce_quota(&self, tenant: &Tenant) -> Result<Option<QuotaChange>, TenantError> {
        let row: Option<QuotaRow> = sqlx::query_as(&format!("{SELECT_QUOTA} AND t.id = $1"))
            .bind(tenant.id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => self.enforce_row(row).await,
            None => Ok(None),
        }
    }

    async fn enforce_row(&self, row: QuotaRow) -> Result<Option<QuotaChange>, TenantError> {
        let from: QuotaState = row.quota_state.parse()?;
        let to = self.quota_state_for(row.size_bytes, row.max_size_mb);
        // An active tenant's database is closed only by this enforcement (a session cannot close
        // its own database), so the state decides both settings.
        let want_read_only = matches!(to, QuotaState::ReadOnly | QuotaState::Blocked);
        let want_connections = to != QuotaState::Blocked;
        let catalog_ok =
            row.read_only_default == want_read_only && row.allow_connections == want_connections;
        if from == to && catalog_ok {
            return Ok(None);
        }
        let id = TenantId::from_uuid(row.id);
        // Not while a create, delete or allow-list change runs on it; the next pass retries.
        let Some(mut lock) = self.try_work_lock(id).await? else {
            return Ok(None);
        };
        let result = self.apply_quota(lock.conn(), &row, from, to).await;
        lock.release().await;
        result?;
        if from != to {
            tracing::info!(database = %row.database_name, %from, %to, "storage quota state changed");
        }
        Ok((from != to).then_some(QuotaChange {
            tenant: id,
            database: row.database_name,
            from,
            to,
        }))
    }

    async fn apply_quota(
        &self,
        conn: &mut sqlx::PgConnection,
        row: &QuotaRow,
        from: QuotaState,
        to: QuotaState,
    ) -> Result<(), TenantError> {
        let db = ident(&row.database_name)?;
        let restrict = matches!(to, QuotaState::ReadOnly | QuotaState::Blocked);
        if restrict && !row.read_only_default {
            conn.execute(
                format!("ALTER DATABASE {db} SET default_transaction_read_only = on").as_str(),
            )
            .await?;
        }
        if !restrict && row.read_only_default {
            conn.execute(
                format!("ALTER DATABASE {db} RESET default_transaction_read_only").as_str(),
            )
            .await?;
        }
        if to == QuotaState::Blocked && row.allow_connections {
            conn.execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false").as_str())
                .await?;
        }
        if to != QuotaState::Blocked && !row.allow_connections {
            conn.execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true").as_str())
                .await?;
        }
        // Sessions opened before the read-only default would stay writable: end them when the
        // database becomes stricter.
        let stricter = (restrict && !matches!(from, QuotaState::ReadOnly | QuotaState::Blocked))
            || (to == QuotaState::Blocked && from != QuotaState::Blocked);
        if stricter || (restrict && !row.read_only_default) {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&row.database_name)
            .execute(&mut *conn)
            .await?;
        }
        if from != to {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query("UPDATE databases SET quota_state = $2 WHERE id = $1")
                .bind(row.id)
                .bind(to.as_str())
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &AuditContext::cli(),
                &format!("database.quota_{}", to.as_str()),
                "database",
                Some(&row.id.to_string()),
                true,
                json!({
                    "database_name": row.database_name,
                    "from": from.as_str(),
                    "size_bytes": row.size_bytes,
                    "max_size_mb": row.max_size_mb,
                }),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}
