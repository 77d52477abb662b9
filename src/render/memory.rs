//! Host facts the PostgreSQL configuration depends on, and memory sizing from RAM.
//!
//! Sizing works in MB, not whole GB: the original floored RAM to whole GB and clamped
//! shared_buffers to at least 1 GB, so a 1 GB VM gave PostgreSQL 100% of its RAM as buffers.

/// PostgreSQL major versions pgaas renders configuration for.
pub const SUPPORTED_VERSIONS: [u32; 3] = [15, 16, 17];

/// Facts about the host, detected by the caller (pg_config, /proc/meminfo) or set in settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// PostgreSQL major version (15, 16 or 17).
    pub pg_version: u32,
    /// RAM available to the server, in MB.
    pub memory_mb: u64,
}

/// Memory settings, all in MB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySizing {
    pub shared_buffers_mb: u64,
    pub effective_cache_size_mb: u64,
    pub maintenance_work_mem_mb: u64,
    pub work_mem_mb: u64,
}

const MIN_SHARED_BUFFERS_MB: u64 = 128;
const MAX_SHARED_BUFFERS_MB: u64 = 8 * 1024;
const MIN_MAINTENANCE_MB: u64 = 64;
const MAX_MAINTENANCE_MB: u64 = 2 * 1024;
const MIN_WORK_MEM_MB: u64 = 4;

/// Size memory settings for `memory_mb` of RAM and `max_connections` backends.
///
/// shared_buffers is a quarter of RAM within [128 MB, 8 GB] but never more than half of RAM
/// (so even a tiny host keeps room for the OS and backends); the planner is told three quarters
/// of RAM is cache; maintenance_work_mem is RAM/16 within [64 MB, 2 GB]; work_mem splits a
/// quarter of RAM across all connections, at least 4 MB.
pub fn size_memory(memory_mb: u64, max_connections: u32) -> MemorySizing {
    let shared = (memory_mb / 4)
        .clamp(MIN_SHARED_BUFFERS_MB, MAX_SHARED_BUFFERS_MB)
        .min((memory_mb / 2).max(1));
    MemorySizing {
        shared_buffers_mb: shared,
        effective_cache_size_mb: (memory_mb * 3 / 4).max(shared),
        maintenance_work_mem_mb: (memory_mb / 16).clamp(MIN_MAINTENANCE_MB, MAX_MAINTENANCE_MB),
        work_mem_mb: (memory_mb / 4 / u64::from(max_connections.max(1))).max(MIN_WORK_MEM_MB),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_gigabyte_host_gets_the_floor() {
        let m = size_memory(512, 500);
        assert_eq!(m.shared_buffers_mb, 128);
        assert_eq!(m.effective_cache_size_mb, 384);
        assert_eq!(m.maintenance_work_mem_mb, 64);
        assert_eq!(m.work_mem_mb, 4);
    }

    #[test]
    fn one_gigabyte_host_is_not_all_buffers() {
        // The original gave a 1 GB VM shared_buffers = 1 GB (100% of RAM).
        let m = size_memory(1024, 500);
        assert_eq!(m.shared_buffers_mb, 256);
        assert!(m.shared_buffers_mb * 4 <= 1024);
        assert_eq!(m.effective_cache_size_mb, 768);
        assert_eq!(m.maintenance_work_mem_mb, 64);
    }

    #[test]
    fn four_gigabyte_host_is_a_quarter() {
        let m = size_memory(4096, 500);
        assert_eq!(m.shared_buffers_mb, 1024);
        assert_eq!(m.effective_cache_size_mb, 3072);
        assert_eq!(m.maintenance_work_mem_mb, 256);
        assert_eq!(m.work_mem_mb, 4);
    }

    #[test]
    fn large_host_hits_the_ceilings() {
        let m = size_memory(64 * 1024, 500);
        assert_eq!(m.shared_buffers_mb, 8 * 1024);
        assert_eq!(m.effective_cache_size_mb, 48 * 1024);
        assert_eq!(m.maintenance_work_mem_mb, 2048);
        assert_eq!(m.work_mem_mb, 64 * 1024 / 4 / 500);
    }

    #[test]
    fn tiny_host_never_gives_more_than_half_to_buffers() {
        let m = size_memory(200, 100);
        assert_eq!(m.shared_buffers_mb, 100);
        let m = size_memory(0, 0);
        assert!(m.shared_buffers_mb >= 1 && m.work_mem_mb >= 4);
    }

    #[test]
    fn work_mem_follows_connection_count() {
        assert_eq!(size_memory(16 * 1024, 100).work_mem_mb, 40);
        assert_eq!(size_memory(16 * 1024, 1000).work_mem_mb, 4);
    }
}
