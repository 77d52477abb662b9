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
//!
//! Every database the tenant's role owns (shadows, restore targets, kept copies) counts in its
//! size and is restricted and closed with the main one. The tenant cannot stall or undo
//! enforcement: its sessions (in any database) are ended before the catalog changes, so an open
//! transaction holding its database's settings row no longer makes every pass wait and give up;
//! a read-write default persisted for its role is reset while it is restricted; a database
//! reopened behind enforcement's back is closed again by the next pass, and the session it let
//! in is ended.

use serde_json::json;
use sqlx::Executor;

use super::{AuditContext, Tenant, TenantError, TenantService, audit, row::ident};
use crate::model::{QuotaState, TenantId};

/// What enforcement needs to know of one tenant.
#[derive(sqlx::FromRow)]
struct QuotaRow {
    id: uuid::Uuid,
    database_name: String,
    username: String,
    max_size_mb: i64,
    size_bytes: Option<i64>,
    quota_state: String,
    allow_connections: bool,
    read_only_default: bool,
    /// The other databases the tenant's role owns (shadows, restore targets, kept copies): they
    /// count in its size, so they are restricted with the main one.
    extra_names: Vec<String>,
    extra_open: Vec<bool>,
    extra_read_only: Vec<bool>,
    /// Where the tenant's role persisted a read-only default other than `on` (`None`: for every
    /// database), which would override the database's while it is restricted.
    role_overrides: Vec<Option<String>>,
}

const SELECT_QUOTA: &str = "
    SELECT t.id, t.database_name, t.username, t.max_size_mb, t.size_bytes, t.quota_state,
           d.datallowconn AS allow_connections,
           EXISTS (SELECT 1 FROM pg_db_role_setting s
                   WHERE s.setdatabase = d.oid AND s.setrole = 0
                     AND 'default_transaction_read_only=on' = ANY (s.setconfig)) AS read_only_default,
           COALESCE(x.names, '{}') AS extra_names,
           COALESCE(x.open, '{}') AS extra_open,
           COALESCE(x.ro, '{}') AS extra_read_only,
           COALESCE((SELECT array_agg(rd.datname::text) FROM pg_db_role_setting s
                     LEFT JOIN pg_database rd ON rd.oid = s.setdatabase
                     WHERE s.setrole = d.datdba AND EXISTS (
                       SELECT 1 FROM unnest(s.setconfig) c
                       WHERE c ~* '^(default_)?transaction_read_only='
                         AND lower(c) NOT IN ('default_transaction_read_only=on',
                                              'transaction_read_only=on'))), '{}') AS role_overrides
    FROM databases t JOIN pg_database d ON d.datname = t.database_name
    LEFT JOIN LATERAL (
        SELECT array_agg(o.datname::text ORDER BY o.datname) AS names,
               array_agg(o.datallowconn ORDER BY o.datname) AS open,
               array_agg(EXISTS (SELECT 1 FROM pg_db_role_setting s
                                 WHERE s.setdatabase = o.oid AND s.setrole = 0
                                   AND 'default_transaction_read_only=on' = ANY (s.setconfig))
                         ORDER BY o.datname) AS ro
        FROM pg_database o WHERE o.datdba = d.datdba AND o.oid <> d.oid AND NOT o.datistemplate
    ) x ON true
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
        self.enforce_quota_id(tenant.id).await
    }

    /// One tenant by id, now.
    pub async fn enforce_quota_id(&self, id: TenantId) -> Result<Option<QuotaChange>, TenantError> {
        let row: Option<QuotaRow> = sqlx::query_as(&format!("{SELECT_QUOTA} AND t.id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => self.enforce_row(row).await,
            None => Ok(None),
        }
    }

    /// What `row` needs: `None` when its state and catalog are as they should be.
    fn plan(&self, row: &QuotaRow) -> Result<Option<(QuotaState, QuotaState)>, TenantError> {
        let from: QuotaState = row.quota_state.parse()?;
        let to = self.quota_state_for(row.size_bytes, row.max_size_mb);
        // An active tenant's database is closed only by this enforcement (a session cannot close
        // its own database), so the state decides both settings.
        let want_read_only = matches!(to, QuotaState::ReadOnly | QuotaState::Blocked);
        let want_connections = to != QuotaState::Blocked;
        let extras_ok = if want_read_only {
            row.extra_read_only.iter().all(|r| *r)
                && (want_connections || row.extra_open.iter().all(|o| !o))
                && row.role_overrides.is_empty()
        } else {
            // Out of restriction, the extras are opened as the state changes (below), not
            // every pass: a tenant may close or restrict its own shadow.
            true
        };
        let catalog_ok = row.read_only_default == want_read_only
            && row.allow_connections == want_connections
            && extras_ok;
        Ok((from != to || !catalog_ok).then_some((from, to)))
    }

    async fn enforce_row(&self, row: QuotaRow) -> Result<Option<QuotaChange>, TenantError> {
        if self.plan(&row)?.is_none() {
            return Ok(None);
        }
        let id = TenantId::from_uuid(row.id);
        // Not while a create, delete or allow-list change runs on it; the next pass retries.
        let Some(mut lock) = self.try_work_lock(id).await? else {
            return Ok(None);
        };
        // Read again under the lock: the watcher and the pass may both have seen the change,
        // and only the first to get here makes it (one audit row per change).
        let result = async {
            let fresh: Option<QuotaRow> = sqlx::query_as(&format!("{SELECT_QUOTA} AND t.id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(&mut *lock.conn())
                .await?;
            let Some(row) = fresh else {
                return Ok(None);
            };
            let Some((from, to)) = self.plan(&row)? else {
                return Ok(None);
            };
            self.apply_quota(lock.conn(), &row, from, to).await?;
            Ok::<_, TenantError>(Some((row, from, to)))
        }
        .await;
        lock.release().await;
        let Some((row, from, to)) = result? else {
            return Ok(None);
        };
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
        let restrict = matches!(to, QuotaState::ReadOnly | QuotaState::Blocked);
        // The tenant's own sessions could hold the catalog rows enforcement changes (an open
        // transaction that altered its database's settings) and stall it past its lock
        // timeout: when restricting, they are ended first (they would be ended anyway), and a
        // change that still meets a lock is retried after ending them again.
        for attempt in 1..=3 {
            if restrict {
                terminate_role(conn, &row.username).await?;
            }
            match self.apply_catalog(conn, row, restrict, from, to).await {
                Err(TenantError::Db(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") && attempt < 3 && restrict =>
                {
                    tracing::warn!(database = %row.database_name, "quota enforcement met the tenant's lock; ending its sessions again");
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        // Sessions opened while the catalog changed would stay writable: end them again, in
        // every database of the tenant.
        if restrict {
            terminate_role(conn, &row.username).await?;
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

/// End every session of `role`, in any database, waiting (up to 2 s each) until they are gone.
async fn terminate_role(conn: &mut sqlx::PgConnection, role: &str) -> Result<(), TenantError> {
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity
         WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(role)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl TenantService {
    /// The catalog side of a quota state, on every database the tenant owns and its role.
    async fn apply_catalog(
        &self,
        conn: &mut sqlx::PgConnection,
        row: &QuotaRow,
        restrict: bool,
        from: QuotaState,
        to: QuotaState,
    ) -> Result<(), TenantError> {
        let main = ident(&row.database_name)?;
        if restrict && !row.read_only_default {
            conn.execute(
                format!("ALTER DATABASE {main} SET default_transaction_read_only = on").as_str(),
            )
            .await?;
        }
        if !restrict && row.read_only_default {
            conn.execute(
                format!("ALTER DATABASE {main} RESET default_transaction_read_only").as_str(),
            )
            .await?;
        }
        if to == QuotaState::Blocked && row.allow_connections {
            conn.execute(format!("ALTER DATABASE {main} ALLOW_CONNECTIONS false").as_str())
                .await?;
        }
        if to != QuotaState::Blocked && !row.allow_connections {
            conn.execute(format!("ALTER DATABASE {main} ALLOW_CONNECTIONS true").as_str())
                .await?;
        }
        // The extras change back only as the state does: a tenant may close or restrict its
        // own shadow, which a pass must not undo.
        let leaving = matches!(from, QuotaState::ReadOnly | QuotaState::Blocked) && !restrict;
        let unblocking = from == QuotaState::Blocked && to != QuotaState::Blocked;
        for ((name, open), read_only) in row
            .extra_names
            .iter()
            .zip(&row.extra_open)
            .zip(&row.extra_read_only)
        {
            let db = ident(name)?;
            if restrict && !read_only {
                conn.execute(
                    format!("ALTER DATABASE {db} SET default_transaction_read_only = on").as_str(),
                )
                .await?;
            }
            if leaving && *read_only {
                conn.execute(
                    format!("ALTER DATABASE {db} RESET default_transaction_read_only").as_str(),
                )
                .await?;
            }
            if to == QuotaState::Blocked && *open {
                conn.execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false").as_str())
                    .await?;
            }
            if unblocking && !open {
                conn.execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true").as_str())
                    .await?;
            }
        }
        if restrict {
            for database in &row.role_overrides {
                for setting in ["default_transaction_read_only", "transaction_read_only"] {
                    super::roles::reset_setting(
                        &mut *conn,
                        &row.username,
                        database.as_deref(),
                        setting,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}
