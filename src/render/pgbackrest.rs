//! pgBackRest's configuration (`archive.config_dir/pgbackrest.conf`, no secrets) and the
//! `archive_command` PostgreSQL runs. pgBackRest's file format has no quoting: a value runs to
//! the end of its line, so every value is checked for what would end or change it.

use std::path::Path;

use serde::Serialize;

use super::{RenderError, check::abs_path, render_template};
use crate::settings::Settings;

#[derive(Serialize)]
struct S3Ctx {
    endpoint: String,
    port: u16,
    bucket: String,
    region: String,
    uri_style: String,
    path: String,
    ca_file: Option<String>,
    credentials_file: String,
    cipher_pass_file: String,
    retention_full: u32,
}

#[derive(Serialize)]
struct Ctx {
    generation: u64,
    config_dir: String,
    binary: String,
    os_user: String,
    stanza: String,
    /// Repository 1, this host's directory: not on a cluster's nodes.
    local_repo: bool,
    repo_path: String,
    retention_full: u32,
    retention_diff: u32,
    s3: Option<S3Ctx>,
    spool_path: String,
    lock_path: String,
    log_path: String,
    process_max: u32,
    data_dir: String,
    port: u16,
    socket_dir: String,
    superuser: String,
}

/// A path as a pgBackRest value: absolute, on one line (a value runs to the end of its line).
fn conf_path(what: &str, path: &Path) -> Result<String, RenderError> {
    Ok(abs_path(what, path)?.to_string())
}

/// A path as a word of archive_command (run by `sh -c`): absolute, and nothing a shell would
/// read differently.
fn plain_path(what: &str, path: &Path) -> Result<String, RenderError> {
    let s = abs_path(what, path)?;
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.' | '+' | ':' | '@'))
    {
        Ok(s.to_string())
    } else {
        Err(RenderError::invalid(
            what,
            s,
            "use only letters, digits and / _ - . + : @ (it is written into archive_command and pgbackrest.conf)",
        ))
    }
}

fn word(what: &str, v: &str) -> Result<String, RenderError> {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
    {
        Ok(v.to_string())
    } else {
        Err(RenderError::invalid(
            what,
            v,
            "use only letters, digits and / _ - .",
        ))
    }
}

/// `pgbackrest.conf` for this host.
pub fn render_conf(s: &Settings, data_dir: &Path, generation: u64) -> Result<String, RenderError> {
    let a = &s.archive;
    let pg = &s.postgres;
    let s3 = match &a.s3 {
        Some(r) => Some(S3Ctx {
            endpoint: word("archive.s3.endpoint", &r.endpoint)?,
            port: r.port,
            bucket: word("archive.s3.bucket", &r.bucket)?,
            region: word("archive.s3.region", &r.region)?,
            uri_style: word("archive.s3.uri_style", &r.uri_style)?,
            path: word("archive.s3.path", &r.path)?,
            ca_file: r
                .ca_file
                .as_deref()
                .map(|p| conf_path("archive.s3.ca_file", p))
                .transpose()?,
            credentials_file: conf_path("archive.s3.credentials_file", &r.credentials_file)?,
            cipher_pass_file: conf_path("archive.s3.cipher_pass_file", &r.cipher_pass_file)?,
            retention_full: r.retention_full,
        }),
        None => None,
    };
    let ctx = Ctx {
        generation,
        config_dir: plain_path("archive.config_dir", &a.config_dir)?,
        binary: plain_path("archive.binary", &a.binary)?,
        os_user: word("postgres.os_user", &pg.os_user)?,
        stanza: word("archive.stanza", &a.stanza)?,
        local_repo: s.archive_repos().contains(&1),
        repo_path: conf_path("archive.repo_path", &a.repo_path)?,
        retention_full: a.retention_full,
        retention_diff: a.retention_diff,
        s3,
        spool_path: conf_path("archive.spool_path", &a.spool_path)?,
        lock_path: conf_path("archive.lock_path", &a.lock_path)?,
        log_path: conf_path("archive.log_path", &a.log_path)?,
        process_max: a.process_max,
        data_dir: conf_path("postgres.data_dir", data_dir)?,
        port: pg.port,
        socket_dir: conf_path("postgres.socket_dir", &pg.socket_dir)?,
        superuser: word("postgres.superuser", &pg.superuser)?,
    };
    render_template("pgbackrest/pgbackrest.conf.j2", &ctx)
}

/// The shell command PostgreSQL runs for each finished WAL segment (before conf quoting).
pub fn archive_command(s: &Settings) -> Result<String, RenderError> {
    let a = &s.archive;
    Ok(format!(
        "{} --config-path={} --stanza={} archive-push %p",
        plain_path("archive.binary", &a.binary)?,
        plain_path("archive.config_dir", &a.config_dir)?,
        word("archive.stanza", &a.stanza)?
    ))
}
