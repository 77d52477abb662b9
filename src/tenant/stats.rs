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
use crate::model::TenantId;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TenantStats {
    pub database_id: TenantId,
    pub database_name: String,
    pub size_bytes: i64,
    pub size_pretty: String,
    pub active_connections: i64,
    pub max_connections: i32,
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

impl TenantService {
    /// Live numbers for one tenant.
    pub async fn stats(&self, id: TenantId) -> Result<TenantStats, TenantError> {
        let tenant = self.get(id).await?;
        let (size, conns): (i64, i64) = sqlx::query_as(
            "SELECT pg_database_size(d.oid),
                    COALESCE((SELECT numbackends FROM pg_stat_database s WHERE s.datid = d.oid), 0)::bigint
             FROM pg_database d WHERE d.datname = $1",
        )
        .bind(tenant.database_name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| TenantError::State(format!("database {} has no PostgreSQL database (run `pgaas doctor`)", id)))?;
        Ok(TenantStats {
            database_id: id,
            database_name: tenant.database_name.as_str().to_string(),
            size_bytes: size,
            size_pretty: size_pretty(size),
            active_connections: conns,
            max_connections: tenant.max_connections,
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
        let rows: Vec<(uuid::Uuid, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT t.id, t.database_name,
                    COALESCE(s.numbackends, 0)::bigint,
                    COALESCE(s.xact_commit + s.xact_rollback, 0)::bigint,
                    CASE WHEN $1 OR NOT (t.database_name = ANY($2)) THEN pg_database_size(d.oid) END
             FROM databases t
             JOIN pg_database d ON d.datname = t.database_name
             LEFT JOIN pg_stat_database s ON s.datid = d.oid
             WHERE t.status = 'active'",
        )
        .bind(refresh_sizes)
        // Tenants new since the last size pass are measured now, not shown as 0 bytes until then.
        .bind(sizes.keys().cloned().collect::<Vec<String>>())
        .fetch_all(pool)
        .await?;
        let mut snap = StatsSnapshot::default();
        let mut ids = Vec::with_capacity(rows.len());
        let mut size_col = Vec::with_capacity(rows.len());
        let mut conn_col = Vec::with_capacity(rows.len());
        let mut query_col = Vec::with_capacity(rows.len());
        for (id, name, conns, queries, size) in rows {
            if let Some(size) = size {
                sizes.insert(name.clone(), size);
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
        // Forget deleted tenants.
        sizes.retain(|name, _| snap.per_tenant.contains_key(name));
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
        Ok(ids.len())
    }

    /// Run until the task is dropped.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut sizes = HashMap::new();
            let mut last_sizes: Option<Instant> = None;
            let mut tick = tokio::time::interval(self.interval);
            loop {
                tick.tick().await;
                let refresh = last_sizes.is_none_or(|t| t.elapsed() >= self.size_interval);
                match self.collect_once(&mut sizes, refresh).await {
                    Ok(_) if refresh => last_sizes = Some(Instant::now()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "stats collection failed"),
                }
            }
        })
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
