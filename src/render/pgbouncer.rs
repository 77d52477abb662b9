//! The context for `pgbouncer.ini`. PgBouncer's ini parser takes each value verbatim to the end of
//! the line (no quoting, no escapes), so values are checked instead of escaped: no control
//! characters, no surrounding blanks, and the characters each setting gives meaning to refused.

use std::path::Path;

use serde::Serialize;

use super::{
    RenderError,
    check::{abs_path, listen_address, plain_role},
    render_template,
};
use crate::settings::Settings;

#[derive(Serialize, Debug)]
struct PgBouncerIni {
    generation: u64,
    /// The `[databases]` wildcard's connection string: PostgreSQL over its local socket.
    server: String,
    listen_addr: String,
    listen_port: u16,
    unix_socket_dir: String,
    auth_hba_file: String,
    auth_file: String,
    pidfile: String,
    logfile: String,
    tls_cert_file: String,
    tls_key_file: String,
    pool_mode: &'static str,
    default_pool_size: u32,
    max_client_conn: u32,
    client_login_timeout: u32,
    query_wait_timeout: u32,
    server_idle_timeout: u32,
    admin_users: String,
    /// The per-tenant limits (see [`render_tenants`]), included last.
    tenants_file: String,
}

/// A path as a whole ini value. A leading `~` would be expanded, but paths are absolute.
fn ini_path(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    if s.ends_with(char::is_whitespace) {
        return Err(RenderError::invalid(
            what,
            s,
            "must not end with a blank (PgBouncer trims it)",
        ));
    }
    Ok(s.to_string())
}

/// A path inside a libpq-style `key=value` connection string, where a blank ends the value unless
/// it is single-quoted; `'` and `\` cannot be carried reliably, so they are refused.
fn connstr_path(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = ini_path(what, path)?;
    if s.contains(['\'', '\\']) {
        return Err(RenderError::invalid(
            what,
            &s,
            "must not contain ' or \\ (PgBouncer connection strings)",
        ));
    }
    if s.contains(char::is_whitespace) {
        Ok(format!("'{s}'"))
    } else {
        Ok(s)
    }
}

/// The console's admins: the superuser, and the API's system user, which reloads PgBouncer
/// through the console after rewriting its auth files (it may not signal a process of another
/// user). Both log in by peer only (see `hba::compile_pgbouncer`).
fn admin_users(s: &Settings) -> Result<String, RenderError> {
    let mut users = vec![plain_role("postgres.superuser", &s.postgres.superuser)?];
    let api = plain_role("api.system_user", &s.api.system_user)?;
    if !users.contains(&api) {
        users.push(api);
    }
    Ok(users.join(","))
}

/// The per-tenant limits file, in `pgbouncer.auth_dir` beside the auth file.
pub const TENANTS_FILE: &str = "pgbouncer_tenants.ini";

/// What a tenant's pooler entries are made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolerTenant {
    pub database: String,
    pub role: String,
    pub max_connections: u32,
}

/// The host-wide part of the tenants' entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolerLimits {
    /// `host=<socket dir> port=<port>`, as the `*` entry has it.
    pub server: String,
    /// No tenant's pool is larger than this (nor than its `maxConnections`).
    pub default_pool_size: u32,
    /// PgBouncer 1.24+ limits clients per database and per user; earlier versions cannot.
    pub client_limits: bool,
    /// Client connections per server connection a tenant may hold (1.24+).
    pub clients_per_connection: u32,
}

impl PoolerLimits {
    pub fn from_settings(s: &Settings, client_limits: bool) -> Result<Self, RenderError> {
        let socket = connstr_path("postgres.socket_dir", &s.postgres.socket_dir)?;
        Ok(Self {
            server: format!("host={socket} port={}", s.postgres.port),
            default_pool_size: s.pgbouncer.default_pool_size.max(1),
            client_limits,
            clients_per_connection: s.pgbouncer.clients_per_connection.max(1),
        })
    }
}

/// `pgbouncer_tenants.ini`: one `[databases]` entry and one `[users]` entry per tenant, so its
/// `maxConnections` holds through the pooler too: the pool never opens more server connections
/// than the limit (`max_db_connections`, `max_user_connections`) nor keeps more than
/// `default_pool_size`, and on PgBouncer 1.24+ the tenant's clients are capped too
/// (`max_db_client_connections`, `max_user_client_connections`). A database leaving this file
/// is dropped by PgBouncer at its next reload, its sessions with it. Names are written only when
/// they need no quoting: one bad line would stop PgBouncer's reload there.
pub fn render_tenants(tenants: &[PoolerTenant], limits: &PoolerLimits) -> String {
    let plain = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut dbs = String::from(
        "; pgaas managed file: per-tenant pool limits, written from the control DB\n[databases]\n",
    );
    let mut users = String::from("[users]\n");
    let mut tenants: Vec<&PoolerTenant> = tenants.iter().collect();
    tenants.sort_by(|a, b| a.database.cmp(&b.database));
    for t in tenants {
        if !plain(&t.database) || !plain(&t.role) || t.max_connections == 0 {
            tracing::warn!(database = %t.database, "left out of PgBouncer's tenant limits: not a plain name");
            continue;
        }
        let n = t.max_connections;
        let pool = n.min(limits.default_pool_size);
        let clients = n.saturating_mul(limits.clients_per_connection);
        dbs.push_str(&format!(
            "{db} = {server} dbname={db} pool_size={pool} max_db_connections={n}",
            db = t.database,
            server = limits.server
        ));
        users.push_str(&format!("{} = max_user_connections={n}", t.role));
        if limits.client_limits {
            dbs.push_str(&format!(" max_db_client_connections={clients}"));
            users.push_str(&format!(" max_user_client_connections={clients}"));
        }
        dbs.push('\n');
        users.push('\n');
    }
    dbs + &users
}

/// `pgbouncer.ini`; auth files live in `pgbouncer.auth_dir` (default: beside it).
pub fn render_ini(s: &Settings, generation: u64) -> Result<String, RenderError> {
    let pgb = &s.pgbouncer;
    let dir = &pgb.auth_dir();
    if pgb.port == 0 || s.postgres.port == 0 {
        return Err(RenderError::invalid(
            "pgbouncer.port",
            pgb.port.to_string(),
            "ports must be 1-65535",
        ));
    }
    if pgb.default_pool_size == 0 || pgb.max_client_conn == 0 {
        return Err(RenderError::invalid(
            "pgbouncer.default_pool_size",
            pgb.default_pool_size.to_string(),
            "pool sizes must be at least 1",
        ));
    }
    let socket = connstr_path("postgres.socket_dir", &s.postgres.socket_dir)?;
    let ctx = PgBouncerIni {
        generation,
        server: format!("host={socket} port={}", s.postgres.port),
        listen_addr: listen_address("pgbouncer.listen_addr", &pgb.listen_addr)?.to_string(),
        listen_port: pgb.port,
        // PgBouncer's own socket beside the server's: their names differ by port.
        unix_socket_dir: ini_path("postgres.socket_dir", &s.postgres.socket_dir)?,
        auth_hba_file: ini_path("pgbouncer.auth_dir", &dir.join("pgbouncer_hba.conf"))?,
        auth_file: ini_path("pgbouncer.auth_dir", &dir.join("userlist.txt"))?,
        pidfile: ini_path("pgbouncer.pidfile", &pgb.pidfile)?,
        logfile: ini_path("pgbouncer.logfile", &pgb.logfile)?,
        tls_cert_file: ini_path("tls.cert_file", &s.tls.cert_file)?,
        tls_key_file: ini_path("tls.key_file", &s.tls.key_file)?,
        pool_mode: pgb.pool_mode.as_str(),
        default_pool_size: pgb.default_pool_size,
        max_client_conn: pgb.max_client_conn,
        client_login_timeout: pgb.client_login_timeout_secs,
        query_wait_timeout: pgb.query_wait_timeout_secs,
        server_idle_timeout: pgb.server_idle_timeout_secs,
        admin_users: admin_users(s)?,
        tenants_file: ini_path("pgbouncer.auth_dir", &dir.join(TENANTS_FILE))?,
    };
    render_template("pgbouncer/pgbouncer.ini.j2", &ctx)
}
