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
    admin_users: String,
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
        admin_users: admin_users(s)?,
    };
    render_template("pgbouncer/pgbouncer.ini.j2", &ctx)
}
