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
    model::{AllowEntry, TenantId, ValidationError},
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
        match e {
            ApplyError::Db(e) => e.into(),
            e => TenantError::Apply(e),
        }
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

    /// Add an entry; returns it once it is in force. Runs under the tenant's work lock, so
    /// changes to one tenant's list never interleave.
    pub async fn allow(
        &self,
        id: TenantId,
        entry: AllowEntry,
        description: Option<String>,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        self.check_breadth(entry)?;
        self.get(id).await?;
        let mut lock = self.work_lock(id).await?;
        // Every statement on the lock's connection: no request holds one connection while
        // waiting for another.
        let result = self
            .allow_locked(lock.conn(), id, entry, description, ctx)
            .await;
        lock.release().await;
        result
    }

    /// An allow-list narrows access; an entry wider than the configured minimum prefix is
    /// refused (several wide entries could otherwise add up to "everyone").
    fn check_breadth(&self, entry: AllowEntry) -> Result<(), TenantError> {
        let t = &self.settings.tenants;
        let net = entry.network();
        let (min, key) = if net.is_ipv4() {
            (t.allow_min_prefix_v4, "tenants.allow_min_prefix_v4")
        } else {
            (t.allow_min_prefix_v6, "tenants.allow_min_prefix_v6")
        };
        if net.prefix() < min {
            return Err(ValidationError::new(
                "ipAddress",
                format!(
                    "{entry} is wider than /{min}, the widest network an allow-list may name \
                     ({key}); list the networks your clients use, or remove every entry to \
                     allow any address (TLS only)"
                ),
            )
            .into());
        }
        Ok(())
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
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ip_whitelist WHERE database_id = $1")
                .bind(id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        let max = self.settings.tenants.allow_max_entries;
        if count >= i64::from(max) {
            return Err(ValidationError::new(
                "ipAddress",
                format!(
                    "database {id} already has {count} allow-list entries, the most allowed \
                     (tenants.allow_max_entries = {max}); remove one, or merge neighbours into \
                     one network"
                ),
            )
            .into());
        }
        let row: AllowRow = sqlx::query_as(
            "INSERT INTO ip_whitelist (database_id, ip_address, description) VALUES ($1, $2, $3)
             RETURNING id, database_id, ip_address::text AS ip_address, description, added_at",
        )
        .bind(id.as_uuid())
        .bind(entry.network())
        .bind(&description)
        .fetch_one(&mut *tx)
        .await
        .map_err(
            |e| match e.as_database_error().and_then(|d| d.constraint()) {
                Some("ip_whitelist_database_id_ip_address_key") => TenantError::Conflict(format!(
                    "{entry} is already on the allow-list of database {id}"
                )),
                _ => e.into(),
            },
        )?;
        self.apply_audit_commit(tx, ctx, "whitelist.add", &tenant, &row)
            .await?;
        Ok(row)
    }

    /// Remove an entry; when it was the last one, the database is open to any address again
    /// (TLS only).
    pub async fn disallow(
        &self,
        id: TenantId,
        entry_id: Uuid,
        ctx: &AuditContext,
    ) -> Result<AllowRow, TenantError> {
        self.applier()?;
        self.get(id).await?;
        let mut lock = self.work_lock(id).await?;
        let result = self.disallow_locked(lock.conn(), id, entry_id, ctx).await;
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
