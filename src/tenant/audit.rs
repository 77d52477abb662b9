//! The audit trail (`audit_logs`): who (API key), from where (client address), did what, to
//! which resource, with what outcome. Rows are written in the same transaction as the change
//! they describe; details never carry a secret.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// Who is acting, for the audit row.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditContext {
    pub api_key_id: Option<Uuid>,
    pub client_ip: Option<IpAddr>,
}

impl AuditContext {
    /// Operations run from the CLI on the host itself.
    pub fn cli() -> Self {
        Self {
            api_key_id: None,
            client_ip: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub api_key_id: Option<Uuid>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub ip_address: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub database_id: Option<Uuid>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
}

/// Write one audit row on `conn` (normally inside the transaction of the change).
pub async fn record(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    action: &str,
    resource_type: &str,
    resource_id: Option<&str>,
    success: bool,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_logs (api_key_id, action, resource_type, resource_id, ip_address, outcome, details)
         VALUES ($1, $2, $3, $4, $5::inet, $6, $7)",
    )
    .bind(ctx.api_key_id)
    .bind(action)
    .bind(resource_type)
    .bind(resource_id)
    .bind(ctx.client_ip.map(|ip| ip.to_string()))
    .bind(if success { "success" } else { "failure" })
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Write a failure row on its own (the change it describes was rolled back), on the caller's
/// connection (outside any transaction).
pub async fn record_failure(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    action: &str,
    resource_type: &str,
    resource_id: Option<&str>,
    details: serde_json::Value,
) {
    let result = record(
        conn,
        ctx,
        action,
        resource_type,
        resource_id,
        false,
        details,
    )
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action, "could not write the failure audit row");
    }
}

fn push_filters<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a AuditFilter) {
    q.push(" WHERE true");
    if let Some(id) = f.database_id {
        q.push(" AND resource_id = ").push_bind(id.to_string());
    }
    if let Some(a) = &f.action {
        q.push(" AND action = ").push_bind(a);
    }
    if let Some(t) = f.since {
        q.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = f.until {
        q.push(" AND created_at < ").push_bind(t);
    }
}

/// A page of audit rows, newest first, and the total matching the filter.
pub async fn list(pool: &PgPool, f: &AuditFilter) -> Result<(Vec<AuditEntry>, i64), sqlx::Error> {
    let mut count = QueryBuilder::new("SELECT count(*) FROM audit_logs");
    push_filters(&mut count, f);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    let mut q = QueryBuilder::new(
        "SELECT id, api_key_id, action, resource_type, resource_id, host(ip_address) AS ip_address, outcome, details, created_at FROM audit_logs",
    );
    push_filters(&mut q, f);
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(f.limit.max(1)))
        .push(" OFFSET ")
        .push_bind(i64::try_from(f.offset).unwrap_or(i64::MAX));
    let rows = q.build_query_as::<AuditEntry>().fetch_all(pool).await?;
    Ok((rows, total))
}
