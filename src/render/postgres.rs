//! The context for `conf.d/pgaas.conf`: the original installer's tuning with its defects fixed
//! (memory sized from RAM in MB, no `log_statement`, SCRAM only, TLS required), and only settings
//! the target major version accepts, since an unknown parameter stops the server from starting.

use std::path::Path;

use serde::Serialize;

use super::{
    HostFacts, RenderError, SUPPORTED_VERSIONS,
    check::{abs_path, listen_address, quoted},
    render_template, size_memory,
};
use crate::{pg::quote::conf_value, settings::Settings};

#[derive(Serialize, Debug)]
struct PgConf {
    generation: u64,
    version: u32,
    listen_addresses: String,
    port: u16,
    unix_socket_directories: String,
    max_connections: u32,
    superuser_reserved_connections: u32,
    /// PostgreSQL 16+ only.
    reserved_connections: Option<u32>,
    hba_file: String,
    ident_file: String,
    ssl_cert_file: String,
    ssl_key_file: String,
    shared_buffers: String,
    effective_cache_size: String,
    maintenance_work_mem: String,
    work_mem: String,
    statement_timeout: u64,
    idle_in_transaction_session_timeout: u64,
    idle_session_timeout: u64,
    /// In kB, as PostgreSQL's unit for it.
    temp_file_limit: String,
    /// PostgreSQL 16+: a larger VACUUM ring buffer (17's default) helps autovacuum keep up.
    vacuum_buffer_usage_limit: bool,
    /// PostgreSQL 17+: pgaas owns the configuration, so `ALTER SYSTEM` (which would silently
    /// override it from postgresql.auto.conf) is switched off.
    allow_alter_system: bool,
    /// `archive_command`, quoted, when continuous archiving is on.
    archive_command: Option<String>,
    archive_timeout: u32,
}

fn mb(v: u64) -> String {
    format!("{v}MB")
}

/// One element of `unix_socket_directories`, a comma-separated list inside a conf string where
/// PostgreSQL trims blanks and honours double quotes; commas and quotes cannot be carried.
fn socket_dir_element(path: &Path) -> Result<String, RenderError> {
    let s = abs_path("postgres.socket_dir", path)?;
    if s.contains([',', '"']) {
        return Err(RenderError::invalid(
            "postgres.socket_dir",
            s,
            "must not contain , or \"",
        ));
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
    {
        Ok(s.to_string())
    } else {
        Ok(format!("\"{s}\""))
    }
}

/// `conf.d/pgaas.conf` for this host.
pub fn render_conf(
    s: &Settings,
    facts: &HostFacts,
    config_dir: &Path,
    generation: u64,
) -> Result<String, RenderError> {
    let version = facts.pg_version;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(RenderError::invalid(
            "PostgreSQL version",
            version.to_string(),
            "is not supported; pgaas supports 15, 16 and 17",
        ));
    }
    let pg = &s.postgres;
    let reserved = pg.superuser_reserved_connections
        + if version >= 16 {
            pg.reserved_connections
        } else {
            0
        };
    if pg.max_connections == 0 || reserved >= pg.max_connections {
        return Err(RenderError::invalid(
            "postgres.max_connections",
            pg.max_connections.to_string(),
            "must be greater than the reserved connections (superuser_reserved_connections + reserved_connections)",
        ));
    }
    if pg.port == 0 {
        return Err(RenderError::invalid(
            "postgres.port",
            "0",
            "must be between 1 and 65535",
        ));
    }
    let addrs = pg
        .listen_addresses
        .iter()
        .map(|a| listen_address("postgres.listen_addresses", a))
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    let conf = |what: &str, v: &str| quoted(what, v, conf_value(v));
    let path = |what: &str, p: &Path| abs_path(what, p).and_then(|v| conf(what, v));
    let memory = size_memory(facts.memory_mb, pg.max_connections);
    // The hba family may live outside the cluster's directory (`postgres.hba_dir`), where the
    // API's own user can replace it.
    let hba_dir = pg
        .hba_dir
        .clone()
        .unwrap_or_else(|| config_dir.to_path_buf());
    let ctx = PgConf {
        generation,
        version,
        listen_addresses: conf("postgres.listen_addresses", &addrs)?,
        port: pg.port,
        unix_socket_directories: conf("postgres.socket_dir", &socket_dir_element(&pg.socket_dir)?)?,
        max_connections: pg.max_connections,
        superuser_reserved_connections: pg.superuser_reserved_connections,
        reserved_connections: (version >= 16).then_some(pg.reserved_connections),
        hba_file: path("postgres.hba_dir", &hba_dir.join("pg_hba.conf"))?,
        ident_file: path("postgres.hba_dir", &hba_dir.join("pg_ident.conf"))?,
        ssl_cert_file: path("tls.cert_file", &s.tls.cert_file)?,
        ssl_key_file: path("tls.key_file", &s.tls.key_file)?,
        shared_buffers: mb(memory.shared_buffers_mb),
        effective_cache_size: mb(memory.effective_cache_size_mb),
        maintenance_work_mem: mb(memory.maintenance_work_mem_mb),
        work_mem: mb(memory.work_mem_mb),
        statement_timeout: s.limits.statement_timeout_ms,
        idle_in_transaction_session_timeout: s.limits.idle_in_transaction_timeout_ms,
        idle_session_timeout: s.limits.idle_session_timeout_ms,
        temp_file_limit: mb(s.limits.temp_file_limit_mb),
        vacuum_buffer_usage_limit: version >= 16,
        allow_alter_system: version >= 17,
        archive_command: if s.archive.enabled {
            let cmd = super::pgbackrest::archive_command(s)?;
            Some(conf("archive.binary", &cmd)?)
        } else {
            None
        },
        archive_timeout: s.archive.archive_timeout_secs,
    };
    render_template("postgresql/pgaas.conf.j2", &ctx)
}
