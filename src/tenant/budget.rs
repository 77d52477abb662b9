//! The connection budget: what the tenants' `maxConnections` may add up to on this host.
//!
//! The server holds `postgres.max_connections` sessions. Some are never a tenant's: the
//! superuser's reserved slots, the API role's reserved slots (PostgreSQL 16+), and the API's own
//! pool. What is left, times `tenants.connection_overcommit`, is the budget; a create or a PATCH
//! that would take the sum of the limits past it is refused with 409 and what is left. Pooled
//! server connections are tenant sessions too (they log in as the tenant's role), so they are
//! inside each tenant's limit rather than on top of it.

use serde::Serialize;
use sqlx::PgConnection;

use super::{TenantError, TenantService};
use crate::{model::TenantId, settings::Settings};

/// The advisory lock that makes check-and-reserve atomic across requests and processes
/// ("pgaasbdg").
const LOCK_KEY: i64 = 0x7067_6161_7362_6467;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// Sessions the server can give tenants at once.
    pub capacity: i64,
    /// What the limits may add up to: capacity times the overcommit.
    pub total: i64,
    /// What they add up to now.
    pub committed: i64,
}

impl Budget {
    pub fn available(&self) -> i64 {
        (self.total - self.committed).max(0)
    }

    pub fn of(settings: &Settings, committed: i64) -> Budget {
        let pg = &settings.postgres;
        let capacity = i64::from(pg.max_connections)
            - i64::from(pg.superuser_reserved_connections)
            - i64::from(pg.reserved_connections)
            - i64::from(settings.api.pool_size);
        let capacity = capacity.max(0);
        let total = (capacity as f64 * settings.tenants.connection_overcommit).floor() as i64;
        Budget {
            capacity,
            total,
            committed,
        }
    }
}

/// Sum of the limits of every tenant that holds or will hold connections.
async fn committed(conn: &mut PgConnection, except: Option<TenantId>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(max_connections), 0)::bigint FROM databases
         WHERE status <> 'deleting' AND ($1::uuid IS NULL OR id <> $1)",
    )
    .bind(except.map(|i| *i.as_uuid()))
    .fetch_one(conn)
    .await
}

impl TenantService {
    /// Inside `tx`: take the budget lock (held to the end of `tx`, so the row written next is
    /// counted before anyone else checks) and refuse `wanted` connections for tenant `id` (a new
    /// one: `None`) if they do not fit.
    pub(super) async fn reserve_connections(
        &self,
        tx: &mut PgConnection,
        id: Option<TenantId>,
        wanted: i32,
    ) -> Result<(), TenantError> {
        // Holders keep it for a check and a commit, nothing that waits on a tenant; under load
        // a queue of them can still outlast the session's 3 s default.
        sqlx::query("SET LOCAL lock_timeout = '15s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                    TenantError::Busy(
                        "many creates and limit changes are queued on this host; try again in a moment"
                            .into(),
                    )
                }
                _ => TenantError::from(e),
            })?;
        let budget = Budget::of(&self.settings, committed(&mut *tx, id).await?);
        if i64::from(wanted) > budget.available() {
            return Err(TenantError::Conflict(format!(
                "maxConnections {wanted} does not fit this host's connection budget: {} of {} \
                 are promised to other databases, {} are left. Ask for at most {}, or raise \
                 postgres.max_connections or tenants.connection_overcommit",
                budget.committed,
                budget.total,
                budget.available(),
                budget.available()
            )));
        }
        Ok(())
    }

    /// The budget as it stands.
    pub async fn budget(&self) -> Result<Budget, TenantError> {
        let mut conn = self.pool.acquire().await?;
        Ok(Budget::of(
            &self.settings,
            committed(&mut conn, None).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_what_tenants_can_hold_times_the_overcommit() {
        let mut s = Settings::default();
        s.postgres.max_connections = 500;
        s.postgres.superuser_reserved_connections = 10;
        s.postgres.reserved_connections = 10;
        s.api.pool_size = 16;
        s.tenants.connection_overcommit = 2.0;
        let b = Budget::of(&s, 900);
        assert_eq!(b.capacity, 464);
        assert_eq!(b.total, 928);
        assert_eq!(b.available(), 28);
        assert_eq!(Budget::of(&s, 1000).available(), 0);
    }
}
