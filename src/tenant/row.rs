//! What every tenant operation shares: the row as the control DB stores it, quoting of the
//! generated names, the ownership mark on pgaas-made objects, and the at-rest password hash cost.

use super::{Tenant, TenantError};
use crate::{
    model::{DbName, RoleName, TenantId},
    pg::quote::quote_ident,
};

/// bcrypt cost for the at-rest password hash (the original's column, which nothing in pgaas
/// reads back). A slow hash protects guessable secrets; this one is 190 random bits, beyond any
/// search at any cost, so the cost only decides how much CPU each create spends: cost 10 took
/// ~50 ms of a core here, competing with PostgreSQL on a small host. Cost 6 takes ~3 ms.
pub(super) const BCRYPT_COST: u32 = 6;

pub(super) const SELECT_TENANT: &str =
    "SELECT id, database_name, username, owner_email, friendly_name, max_connections,
        max_size_mb, quota_state, size_bytes,
        status::text AS status, created_at, updated_at FROM databases";

#[derive(sqlx::FromRow)]
pub(super) struct TenantRow {
    id: uuid::Uuid,
    database_name: String,
    username: String,
    owner_email: String,
    friendly_name: String,
    max_connections: i32,
    max_size_mb: i64,
    quota_state: String,
    size_bytes: Option<i64>,
    status: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = TenantError;
    fn try_from(r: TenantRow) -> Result<Self, TenantError> {
        Ok(Tenant {
            id: TenantId::from_uuid(r.id),
            database_name: DbName::try_from(r.database_name).map_err(TenantError::Row)?,
            username: RoleName::try_from(r.username).map_err(TenantError::Row)?,
            owner_email: r.owner_email,
            friendly_name: r.friendly_name,
            max_connections: r.max_connections,
            max_size_mb: r.max_size_mb,
            quota_state: r.quota_state.parse().map_err(TenantError::Row)?,
            size_bytes: r.size_bytes,
            status: r.status.parse().map_err(TenantError::Row)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

pub(super) fn ident(name: &str) -> Result<String, TenantError> {
    Ok(quote_ident(name)?)
}

/// The comment that marks a role or database as made by pgaas for this tenant; nothing without
/// it is ever dropped.
pub(super) fn ownership_comment(id: TenantId) -> String {
    format!("pgaas tenant {id}")
}
