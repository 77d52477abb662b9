//! Reading tenants: by id, by name, and in pages (offset or keyset cursor).

use sqlx::PgConnection;

use super::row::{SELECT_TENANT, TenantRow};
use super::{ListQuery, Tenant, TenantError, TenantPage, TenantService, types::MAX_PAGE};
use crate::model::{DbName, TenantId, TenantStatus, ValidationError};

impl TenantService {
    pub async fn get(&self, id: TenantId) -> Result<Tenant, TenantError> {
        let row: Option<TenantRow> = sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(TenantError::NotFound(id))?.try_into()
    }

    /// A tenant by id or by its database name (`tenant_...`), as operators type them.
    pub async fn find(&self, id_or_name: &str) -> Result<Tenant, TenantError> {
        if let Ok(id) = id_or_name.parse::<TenantId>() {
            return self.get(id).await;
        }
        let name = DbName::try_from(id_or_name)?;
        let row: Option<TenantRow> =
            sqlx::query_as(&format!("{SELECT_TENANT} WHERE database_name = $1"))
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or_else(|| {
            TenantError::Validation(ValidationError::new(
                "database",
                format!("no database named {}", name.as_str()),
            ))
        })?
        .try_into()
    }

    pub async fn list(&self, q: &ListQuery) -> Result<TenantPage, TenantError> {
        let limit = if q.limit == 0 {
            super::types::DEFAULT_PAGE
        } else {
            q.limit
        };
        if limit > MAX_PAGE {
            return Err(
                ValidationError::new("limit", format!("must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
        let status = q.status.map(|s| s.as_str().to_string());
        let filter =
            "($1::text IS NULL OR status::text = $1) AND ($2::text IS NULL OR owner_email = $2)";
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM databases WHERE {filter}"))
                .bind(&status)
                .bind(&q.owner_email)
                .fetch_one(&self.pool)
                .await?;
        let (ts, cid) = cursor.unzip();
        let rows: Vec<TenantRow> = sqlx::query_as(&format!(
            "{SELECT_TENANT} WHERE {filter}
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6"
        ))
        .bind(&status)
        .bind(&q.owner_email)
        .bind(ts)
        .bind(cid)
        .bind(i64::from(limit) + 1)
        .bind(if cursor.is_some() {
            0
        } else {
            i64::try_from(q.offset).unwrap_or(i64::MAX)
        })
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let mut items = rows
            .into_iter()
            .take(limit as usize)
            .map(Tenant::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        items.shrink_to_fit();
        let next_cursor = if more {
            items.last().map(make_cursor)
        } else {
            None
        };
        Ok(TenantPage {
            items,
            total,
            next_cursor,
        })
    }

    /// Lock a tenant's row for the rest of `tx`, refusing tenants mid-provisioning or deleting.
    /// Lock a tenant's row for the rest of `tx`, whatever its state.
    pub(super) async fn lock_row(
        tx: &mut PgConnection,
        id: TenantId,
    ) -> Result<Tenant, TenantError> {
        let row: Option<TenantRow> =
            sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1 FOR UPDATE"))
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        row.ok_or(TenantError::NotFound(id))?.try_into()
    }

    pub(super) async fn lock_active(
        &self,
        tx: &mut PgConnection,
        id: TenantId,
    ) -> Result<Tenant, TenantError> {
        let tenant = Self::lock_row(tx, id).await?;
        match tenant.status {
            TenantStatus::Active | TenantStatus::Suspended => Ok(tenant),
            s => Err(TenantError::State(format!(
                "database {id} is {s}; try again when it is active"
            ))),
        }
    }
}

fn make_cursor(t: &Tenant) -> String {
    format!("{}_{}", t.created_at.timestamp_micros(), t.id)
}

fn parse_cursor(s: &str) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), TenantError> {
    let bad = || ValidationError::new("cursor", "not a cursor from a previous page's next_cursor");
    let (micros, id) = s.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    // Rows are created now or later: a time before 1970 or after 9999 is no cursor of ours
    // (and outside what PostgreSQL's timestamptz can compare against).
    if !(0..=253_402_300_799_999_999).contains(&micros) {
        return Err(bad().into());
    }
    let ts = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = id.parse().map_err(|_| bad())?;
    Ok((ts, id))
}
