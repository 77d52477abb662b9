//! Usage numbers: live stats for one tenant, and a collector that records `database_stats` rows
//! for every active tenant from one query over `pg_stat_database` (not a connection per tenant),
//! with sizes refreshed on a slower interval because `pg_database_size` walks the files.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{TenantError, TenantService};
use crate::model::{QuotaState, TenantId};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TenantStats {
    pub database_id: TenantId,
    pub database_name: String,
    pub size_bytes: i64,
    pub size_pretty: String,
    pub active_connections: i64,
    pub max_connections: i32,
    /// Storage quota in MB; 0 = none.
    pub max_size_mb: i64,
    /// Share of the quota in use, in percent (absent without a quota).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_used_percent: Option<f64>,
    pub quota_state: QuotaState,
    /// What the tenant should know about its quota, when anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Human-readable size in binary units, e.g. `8 MB`, `1.5 kB`, `512 bytes`.
pub fn size_pretty(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let rounded = (value * 10.0).round() / 10.0;
    if rounded >= 1024.0 && unit + 1 < UNITS.len() {
        return format!("1 {}", UNITS[unit + 1]);
    }
    if rounded.fract() == 0.0 {
        format!("{} {}", rounded as i64, UNITS[unit])
    } else {
        format!("{rounded:.1} {}", UNITS[unit])
    }
}

/// The sizes of a tenant's other databases (shadow, restored), for `t` the tenant's row: they
/// count against its quota.
const EXTRA_SIZE: &str = "COALESCE((SELECT sum(pg_database_size(p.oid))::bigint
        FROM tenant_databases x JOIN pg_database p ON p.datname = x.name
        WHERE x.database_id = t.id), 0)";

impl TenantService {
    /// Live numbers for one tenant.
    pub async fn stats(&self, id: TenantId) -> Result<TenantStats, TenantError> {
        let tenant = self.get(id).await?;
        let (size, conns): (i64, i64) = sqlx::query_as(&format!(
            "SELECT pg_database_size(d.oid) + {EXTRA_SIZE},
                    COALESCE((SELECT numbackends FROM pg_stat_database s WHERE s.datid = d.oid), 0)::bigint
             FROM pg_database d JOIN databases t ON t.database_name = d.datname
             WHERE d.datname = $1"
        ))
        .bind(tenant.database_name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| TenantError::State(format!("database {} has no PostgreSQL database (run `pgaas doctor`)", id)))?;
        let quota = tenant.max_size_mb;
        let used = (quota > 0).then(|| {
            let percent = size as f64 * 100.0 / (quota as f64 * 1024.0 * 1024.0);
            (percent * 10.0).round() / 10.0
        });
        let warning = match tenant.quota_state {
            QuotaState::Ok => None,
            QuotaState::Warning => Some(format!(
                "the database uses {}% of its {quota} MB quota; past it, new sessions are read-only",
                used.unwrap_or(0.0)
            )),
            QuotaState::ReadOnly => Some(format!(
                "the database is over its {quota} MB quota: new sessions are read-only. Delete \
                 data (SET default_transaction_read_only = off for that session; TRUNCATE, DROP \
                 or VACUUM FULL give the space back) or ask for a larger quota; {}% more and it \
                 stops taking connections",
                self.settings.tenants.quota_grace_percent
            )),
            QuotaState::Blocked => Some(format!(
                "the database is over its {quota} MB quota and its grace: it refuses connections \
                 until the quota is raised (PATCH maxSizeMb)"
            )),
        };
        Ok(TenantStats {
            database_id: id,
            database_name: tenant.database_name.as_str().to_string(),
            size_bytes: size,
            size_pretty: size_pretty(size),
            active_connections: conns,
            max_connections: tenant.max_connections,
            max_size_mb: quota,
            quota_used_percent: used,
            quota_state: tenant.quota_state,
            warning,
        })
    }
}

/// The latest numbers per tenant, as the collector last saw them (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    pub per_tenant: HashMap<String, (i64, i64)>,
}

/// Records `database_stats` rows on an interval.
#[derive(Clone)]
pub struct StatsCollector {
    service: TenantService,
    pub interval: Duration,
    pub size_interval: Duration,
    snapshot: Arc<RwLock<StatsSnapshot>>,
}

impl StatsCollector {
    pub fn new(service: TenantService, interval: Duration, size_interval: Duration) -> Self {
        Self {
            service,
            interval,
            size_interval,
            snapshot: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// One collection pass. `refresh_sizes` recomputes sizes; otherwise the cached ones are used.
    pub async fn collect_once(
        &self,
        sizes: &mut HashMap<String, i64>,
        refresh_sizes: bool,
    ) -> Result<usize, TenantError> {
        let pool = &self.service.pool;
        let rows: Vec<(uuid::Uuid, String, i64, i64, Option<i64>)> = sqlx::query_as(&format!(
            "SELECT t.id, t.database_name,
                    COALESCE(s.numbackends, 0)::bigint,
                    COALESCE(s.xact_commit + s.xact_rollback, 0)::bigint,
                    CASE WHEN $1 OR NOT (t.database_name = ANY($2)) THEN pg_database_size(d.oid) + {EXTRA_SIZE} END
             FROM databases t
             JOIN pg_database d ON d.datname = t.database_name
             LEFT JOIN pg_stat_database s ON s.datid = d.oid
             WHERE t.status = 'active'"
        ))
        .bind(refresh_sizes)
        // Tenants new since the last size pass are measured now, not shown as 0 bytes until then.
        .bind(sizes.keys().cloned().collect::<Vec<String>>())
        .fetch_all(pool)
        .await?;
        let mut snap = StatsSnapshot::default();
        let mut ids = Vec::with_capacity(rows.len());
        let mut size_col = Vec::with_capacity(rows.len());
        // The rows' sizes are written only for what this pass measured: the quota watcher
        // measures active tenants more often, and a cached size must not overwrite its.
        let mut measured_ids = Vec::new();
        let mut measured_sizes = Vec::new();
        let mut conn_col = Vec::with_capacity(rows.len());
        let mut query_col = Vec::with_capacity(rows.len());
        for (id, name, conns, queries, size) in rows {
            if let Some(size) = size {
                sizes.insert(name.clone(), size);
                measured_ids.push(id);
                measured_sizes.push(size);
            }
            let size = sizes.get(&name).copied().unwrap_or(0);
            snap.per_tenant.insert(name, (size, conns));
            ids.push(id);
            size_col.push(size);
            conn_col.push(i32::try_from(conns).unwrap_or(i32::MAX));
            query_col.push(queries);
        }
        sqlx::query(
            "INSERT INTO database_stats (database_id, size_bytes, active_connections, total_queries)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::bigint[])",
        )
        .bind(&ids)
        .bind(&size_col)
        .bind(&conn_col)
        .bind(&query_col)
        .execute(pool)
        .await?;
        // The row keeps the latest size: quotas are enforced from it.
        sqlx::query(
            "UPDATE databases t SET size_bytes = u.size
             FROM unnest($1::uuid[], $2::bigint[]) AS u(id, size)
             WHERE t.id = u.id AND t.size_bytes IS DISTINCT FROM u.size",
        )
        .bind(&measured_ids)
        .bind(&measured_sizes)
        .execute(pool)
        .await?;
        // Forget deleted tenants.
        sizes.retain(|name, _| snap.per_tenant.contains_key(name));
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
        Ok(ids.len())
    }

    /// Run until the task is dropped: usage rows every interval; sizes, and the storage quotas
    /// they decide, every size interval; the guard rails every `limits.check_interval_secs`;
    /// and, beside them, the quota watcher ([`TenantService::watch_quotas_once`]) every
    /// `tenants.quota_watch_interval_ms`.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let watcher = self.service.clone();
        let watch_every =
            Duration::from_millis(watcher.settings.tenants.quota_watch_interval_ms.max(100));
        let watch = tokio::spawn(async move {
            let mut tick = tokio::time::interval(watch_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_active = Vec::new();
            loop {
                tick.tick().await;
                if let Err(e) = watcher.watch_quotas_once(&mut was_active).await {
                    tracing::warn!(error = %crate::error_chain(&e), "quota watch pass failed");
                }
            }
        });
        tokio::spawn(async move {
            let _watch = AbortOnDrop(watch);
            let mut sizes = HashMap::new();
            let mut last_sizes: Option<Instant> = None;
            let mut last_guard: Option<Instant> = None;
            let guard_interval =
                Duration::from_secs(self.service.settings.limits.check_interval_secs.max(1));
            let mut tick = tokio::time::interval(self.interval);
            loop {
                tick.tick().await;
                // Due within half a tick counts as due: a pass on a size interval equal to the
                // tick's would otherwise run every other tick, twice as far apart as it says.
                let refresh = last_sizes
                    .is_none_or(|t| t.elapsed() + self.interval / 2 >= self.size_interval);
                match self.collect_once(&mut sizes, refresh).await {
                    Ok(_) if refresh => last_sizes = Some(Instant::now()),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "stats collection failed")
                    }
                }
                // Every tick, whatever was measured: what each quota state requires is put back
                // (a database reopened or a read-only default reset behind enforcement's back).
                if let Err(e) = self.service.enforce_quotas().await {
                    tracing::warn!(error = %crate::error_chain(&e), "storage quotas not enforced this pass");
                }
                if last_guard.is_none_or(|t| t.elapsed() >= guard_interval) {
                    last_guard = Some(Instant::now());
                    if let Err(e) = self.service.check_guard_rails().await {
                        tracing::warn!(error = %crate::error_chain(&e), "guard-rail check failed");
                    }
                }
            }
        })
    }
}

/// Ends the watcher with the collector.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TenantService {
    /// One pass of the quota watcher: every tenant with a quota and a session open (in any of
    /// its databases), or one open at the last pass (`was_active`, updated here: a tenant that
    /// wrote and disconnected between two passes is measured once more), is measured now, and
    /// a tenant whose state that changes is enforced at once. A database nobody is connected
    /// to does not grow, so an idle host costs one cheap query. Returns the tenants whose state
    /// changed.
    pub async fn watch_quotas_once(
        &self,
        was_active: &mut Vec<String>,
    ) -> Result<Vec<TenantId>, TenantError> {
        let active: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE usename IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut watched = active.clone();
        watched.append(was_active);
        *was_active = active;
        let rows: Vec<(uuid::Uuid, i64, i64, String)> = sqlx::query_as(&format!(
            "WITH measured AS (
                SELECT t.id, pg_database_size(d.oid) + {EXTRA_SIZE} AS size
                  FROM databases t JOIN pg_database d ON d.datname = t.database_name
                 WHERE t.status = 'active' AND t.max_size_mb > 0
                   AND t.username = ANY($1))
             UPDATE databases t SET size_bytes = m.size
               FROM measured m WHERE t.id = m.id
             RETURNING t.id, m.size, t.max_size_mb, t.quota_state"
        ))
        .bind(&watched)
        .fetch_all(&self.pool)
        .await?;
        let mut changed = Vec::new();
        for (id, size, max_mb, state) in rows {
            let t = &self.settings.tenants;
            let want =
                QuotaState::for_size(size, max_mb, t.quota_warn_percent, t.quota_grace_percent);
            if want.as_str() == state {
                continue;
            }
            let id = TenantId::from_uuid(id);
            match self.enforce_quota_id(id).await {
                Ok(Some(_)) => changed.push(id),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(tenant = %id, error = %crate::error_chain(&e), "quota enforcement failed; retried next pass")
                }
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::size_pretty;

    #[test]
    fn sizes_read_right_at_every_unit() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(1023), "1023 bytes");
        assert_eq!(size_pretty(1024), "1 kB");
        assert_eq!(size_pretty(1536), "1.5 kB");
        assert_eq!(size_pretty(8 * 1024 * 1024), "8 MB");
        assert_eq!(size_pretty(7_540_000), "7.2 MB");
        assert_eq!(size_pretty(1024 * 1024 - 1), "1 MB");
        assert_eq!(size_pretty(3 * 1024_i64.pow(3)), "3 GB");
        assert_eq!(
            size_pretty(5 * 1024_i64.pow(4) + 1024_i64.pow(4) / 2),
            "5.5 TB"
        );
        assert_eq!(size_pretty(2 * 1024_i64.pow(5)), "2 PB");
    }
}
