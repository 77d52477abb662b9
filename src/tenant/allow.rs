//! Per-database allow-lists (`ip_whitelist`). Every change runs in one control-DB transaction
//! with the hba apply: the row commits only if the compiled pg_hba.conf (and PgBouncer's) is on
//! disk, valid and reloaded, so the response comes after the rule is in force.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{AuditContext, TenantError, TenantService, audit};
use crate::{
    hba::apply::{ApplyError, HbaApplier},
    model::{AllowEntry, RoleName, TenantId, ValidationError},
};

/// One allow-list entry, in the original's shape.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AllowRow {
    pub id: Uuid,
    pub database_id: Uuid,
    pub ip_address: String,
    pub description: Option<String>,
    pub added_at: DateTime<Utc>,
}

const SELECT_ROW: &str = "SELECT id, database_id, ip_address::text AS ip_address, description, added_at FROM ip_whitelist";

/// A description: optional, at most 200 characters, no control characters.
pub fn parse_description(d: Option<&str>) -> Result<Option<String>, ValidationError> {
    let Some(d) = d.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    if d.chars().count() > 200 || d.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "description",
            "must be at most 200 characters, without control characters",
        ));
    }
    Ok(Some(d.to_string()))
}

impl From<ApplyError> for TenantError {
    fn from(e: ApplyError) -> Self {
        TenantError::Internal(format!("the access rules could not be applied: {e}"))
    }
}

impl TenantService {
    fn applier(&self) -> Result<&HbaApplier, TenantError> {
        self.hba.as_deref().ok_or_else(|| {
            TenantError::State("allow-lists are managed on the database host (this process has no pg_hba.conf to write)".into())
        })
    }

    pub async fn list_allowed(&self, id: TenantId) -> Result<Vec<AllowRow>, TenantError> {
        self.get(id).await?;
        Ok(sqlx::query_as(&format!(
            "{SELECT_ROW} WHERE database_id = $1 ORDER BY added_at, id"
        ))
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether the tenant's role is in the open group (admitted from any address).
    async fn set_open(
        conn: &mut PgConnection,
        role: &RoleName,
        open: bool,
    ) -> Result<(), TenantError> {
        let role = super::lifecycle::ident(role.as_str())?;
        let group = super::lifecycle::ident(crate::control_db::OPEN_GROUP)?;
        let sql = if open {
            format!("GRANT {group} TO {role}")
        } else {
            format!("REVOKE {group} FROM {role}")
        };
        sqlx::query(&sql).execute(conn).await?;
        Ok(())
    }

    async fn has_entries(conn: &mut PgConnection, id: TenantId) -> Result<bool, TenantError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ip_whitelist WHERE database_id = $1)")
                .bind(id.as_uuid())
                .fetch_one(conn)
                .await?,
        )
    }

    /// Add an entry; returns it once it is in force.
    ///
    /// The first entry of a tenant restricts it: its role leaves the open group *before* the
    /// new file is in force (fail-closed: for a moment it may be refused everywhere, never let in
    /// from everywhere), and rejoins if the change fails. Runs under the tenant's work lock, so
    /// changes to one tenant's list never interleave.
    pub async fn allow(
        &self,
        id: TenantId,
        entry: AllowEntry,
        description: Option<String>,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        let role = self.get(id).await?.username;
        let mut lock = self.work_lock(id).await?;
        // Every statement on the lock's connection: no request holds one connection while
        // waiting for another.
        let conn = lock.conn();
        let first = !Self::has_entries(conn, id).await?;
        let result = async {
            if first {
                Self::set_open(conn, &role, false).await?;
            }
            self.allow_locked(conn, id, entry, description, ctx).await
        }
        .await;
        if result.is_err() && first && !Self::has_entries(conn, id).await.unwrap_or(true) {
            if let Err(e) = Self::set_open(conn, &role, true).await {
                tracing::error!(tenant = %id, error = %e, "could not reopen a tenant after a failed change; `pgaas render` repairs it");
            }
        }
        lock.release().await;
        result
    }

    async fn allow_locked(
        &self,
        conn: &mut PgConnection,
        id: TenantId,
        entry: AllowEntry,
        description: Option<String>,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let tenant = self.lock_active(&mut tx, id).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ip_whitelist WHERE database_id = $1 AND ip_address = $2::cidr)")
                .bind(id.as_uuid())
                .bind(entry.to_string())
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Err(TenantError::Conflict(format!(
                "{entry} is already on the allow-list of database {id}"
            )));
        }
        let row: AllowRow = sqlx::query_as(
            "INSERT INTO ip_whitelist (database_id, ip_address, description) VALUES ($1, $2::cidr, $3)
             RETURNING id, database_id, ip_address::text AS ip_address, description, added_at",
        )
        .bind(id.as_uuid())
        .bind(entry.to_string())
        .bind(&description)
        .fetch_one(&mut *tx)
        .await?;
        self.apply_audit_commit(tx, ctx, "whitelist.add", &tenant, &row)
            .await?;
        Ok(row)
    }

    /// Remove an entry; when it was the last one, the database is open to any address again
    /// (TLS only): the role rejoins the open group only after the file without its lines is in
    /// force and the row is gone.
    pub async fn disallow(
        &self,
        id: TenantId,
        entry_id: Uuid,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        let role = self.get(id).await?.username;
        let mut lock = self.work_lock(id).await?;
        let conn = lock.conn();
        let result = match self.disallow_locked(conn, id, entry_id, ctx).await {
            Ok(row) => match Self::has_entries(conn, id).await {
                Ok(false) => Self::set_open(conn, &role, true).await.map(|()| row),
                Ok(true) => Ok(row),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        lock.release().await;
        result
    }

    async fn disallow_locked(
        &self,
        conn: &mut PgConnection,
        id: TenantId,
        entry_id: Uuid,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let tenant = self.lock_active(&mut tx, id).await?;
        let row: Option<AllowRow> = sqlx::query_as(
            "DELETE FROM ip_whitelist WHERE id = $1 AND database_id = $2
             RETURNING id, database_id, ip_address::text AS ip_address, description, added_at",
        )
        .bind(entry_id)
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or_else(|| TenantError::EntryNotFound(entry_id))?;
        self.apply_audit_commit(tx, ctx, "whitelist.remove", &tenant, &row)
            .await?;
        Ok(row)
    }

    /// Apply the access rules inside `tx` (which holds the row change), write the audit row,
    /// commit; if the commit fails, put the previous files back.
    async fn apply_audit_commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        ctx: &AuditContext,
        action: &str,
        tenant: &super::Tenant,
        row: &AllowRow,
    ) -> Result<(), TenantError> {
        let applied = self.applier()?.apply(&mut tx).await?;
        audit::record(
            &mut tx,
            ctx,
            action,
            "database",
            Some(&tenant.id.to_string()),
            true,
            json!({ "database_name": tenant.database_name.as_str(), "ip_address": row.ip_address, "entry_id": row.id, "hba_generation": applied.generation }),
        )
        .await?;
        if let Err(e) = tx.commit().await {
            // Rare: a fresh connection, the locked one is still borrowed by the caller.
            let mut conn = self.pool.acquire().await?;
            applied.undo(&mut conn).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Find an entry by id or by its address (`pgaas deny DB 203.0.113.5/32`).
    pub async fn find_allowed(&self, id: TenantId, entry: &str) -> Result<AllowRow, TenantError> {
        let rows = self.list_allowed(id).await?;
        if let Ok(uuid) = entry.parse::<Uuid>() {
            if let Some(r) = rows.iter().find(|r| r.id == uuid) {
                return Ok(r.clone());
            }
            return Err(TenantError::EntryNotFound(uuid));
        }
        let wanted = AllowEntry::parse(entry)?.to_string();
        rows.into_iter()
            .find(|r| r.ip_address == wanted)
            .ok_or_else(|| {
                TenantError::Validation(ValidationError::new(
                    "entry",
                    format!("{wanted} is not on the allow-list of database {id}"),
                ))
            })
    }
}
