//! What one tenant may take from the host: connections, disk, and the server settings that
//! bound a session (`tenants`), and the guard rails every tenant session runs under (`limits`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// `maxConnections` when a request gives none (the original's 20).
    pub default_max_connections: u32,
    /// The largest `maxConnections` a request may ask for; must stay below the server's
    /// `max_connections` minus the reserved ones.
    pub max_connections_cap: u32,
    /// How far the tenants' `maxConnections` may add up beyond what the server can hold at
    /// once (`postgres.max_connections` minus the reserved slots and the API's pool): 2.0 lets
    /// the limits add up to twice that, betting that not every tenant is at its limit at once.
    /// PostgreSQL 16+ keeps the API's reserved slots whatever the bet; on 15 only 1.0 guarantees
    /// them.
    pub connection_overcommit: f64,
    /// `maxSizeMb` when a request gives none; 0 means no quota.
    pub default_max_size_mb: u64,
    /// The largest `maxSizeMb` a request may ask for.
    pub max_size_mb_cap: u64,
    /// Past this share of its quota a tenant is warned (stats, `/metrics`, audit).
    pub quota_warn_percent: u32,
    /// Past its quota a tenant's new sessions are read-only; this much further (a share of the
    /// quota) its database refuses connections until the quota is raised.
    pub quota_grace_percent: u32,
    /// How often the sizes of tenants with a quota and an open session are measured, and their
    /// quota enforced, in milliseconds: a database without sessions does not grow, so only the
    /// active ones are measured this often (every tenant's size is still refreshed every
    /// `api.stats_size_interval_secs`).
    pub quota_watch_interval_ms: u64,
    /// The widest IPv4 network an allow-list entry may name (`/8` by default): an allow-list
    /// restricts access, and "everyone" is an empty list, not `0.0.0.0/1` + `128.0.0.0/1`.
    pub allow_min_prefix_v4: u8,
    /// The same for IPv6 (`/16` by default).
    pub allow_min_prefix_v6: u8,
    /// Entries per database at most (100 by default). With the minimum prefixes this also
    /// bounds how much of the address space one list can cover, and keeps pg_hba.conf small.
    pub allow_max_entries: u32,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            default_max_connections: 20,
            max_connections_cap: 100,
            connection_overcommit: 2.0,
            default_max_size_mb: 1024,
            max_size_mb_cap: 1024 * 1024,
            quota_warn_percent: 80,
            quota_grace_percent: 10,
            quota_watch_interval_ms: 1000,
            allow_min_prefix_v4: 8,
            allow_min_prefix_v6: 16,
            allow_max_entries: 100,
        }
    }
}

/// Server settings rendered into `conf.d/pgaas.conf`, and the ceilings on what a tenant may
/// persist for itself (`ALTER ROLE/DATABASE ... SET`), which the guard-rail check resets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// The default `statement_timeout` of every session, in milliseconds (0: none). A tenant may
    /// change it for a session; persisted, it may not exceed this nor be 0.
    pub statement_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout`, in milliseconds: a session idle in a transaction
    /// holds locks and old row versions for everyone.
    pub idle_in_transaction_timeout_ms: u64,
    /// `idle_session_timeout`, in milliseconds (0: off; LISTEN sessions are idle by design).
    pub idle_session_timeout_ms: u64,
    /// `temp_file_limit` per session, in MB; only a superuser can raise it.
    pub temp_file_limit_mb: u64,
    /// The largest `work_mem` a tenant may persist, in MB.
    pub max_work_mem_mb: u64,
    /// The largest `maintenance_work_mem` a tenant may persist, in MB.
    pub max_maintenance_work_mem_mb: u64,
    /// The largest `hash_mem_multiplier` a tenant may persist.
    pub max_hash_mem_multiplier: f64,
    /// How often the API checks what tenants persisted (and their connection limits), seconds.
    pub check_interval_secs: u64,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            statement_timeout_ms: 30 * 60 * 1000,
            idle_in_transaction_timeout_ms: 10 * 60 * 1000,
            idle_session_timeout_ms: 0,
            temp_file_limit_mb: 5 * 1024,
            max_work_mem_mb: 256,
            max_maintenance_work_mem_mb: 1024,
            max_hash_mem_multiplier: 4.0,
            check_interval_secs: 300,
        }
    }
}
