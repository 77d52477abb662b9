//! Connection URLs handed to tenants: `postgresql://USER:PASS@HOST:PORT/DB?sslmode=require`, as the
//! original README shows, with the configured public host. User and password are percent-encoded
//! (generated ones never need it, but a URL builder that breaks on the day a name changes shape
//! is a trap), and an IPv6 host is bracketed. `DATABASE_URL` goes through PgBouncer and is offered
//! only when the pooler is enabled in settings and actually running.
//!
//! `PRISMA_DATABASE_URL` is the pooled URL with what Prisma needs behind PgBouncer in transaction
//! or statement mode (`pgbouncer=true`: no named prepared statements, which PgBouncer before 1.21
//! cannot carry across server connections). It is a field of its own, not `DATABASE_URL`, because
//! libpq refuses URLs with parameters it does not know (`psql "...&pgbouncer=true"` fails): the
//! original put it in `DATABASE_URL`, which broke every libpq client of that URL.

use serde::Serialize;

use super::AppState;
use crate::tenant::Tenant;

/// What replaces the password in URLs shown after creation.
pub const MASK: &str = "********";

/// The URLs for one tenant, with the real password (create, rotate) or, given `None`, [`MASK`].
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionUrls {
    pub connection_string: String,
    #[serde(rename = "DIRECT_URL")]
    pub direct_url: String,
    #[serde(rename = "DATABASE_URL", skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(
        rename = "PRISMA_DATABASE_URL",
        skip_serializing_if = "Option::is_none"
    )]
    pub prisma_url: Option<String>,
}

impl ConnectionUrls {
    pub fn new(state: &AppState, tenant: &Tenant, password: Option<&str>) -> Self {
        let s = &state.settings;
        let direct = url(
            &s.public_host,
            s.postgres.port,
            tenant.username.as_str(),
            password,
            tenant.database_name.as_str(),
        );
        let pooled = (s.pgbouncer.enabled && state.pooler_available).then(|| {
            url(
                &s.public_host,
                s.pgbouncer.port,
                tenant.username.as_str(),
                password,
                tenant.database_name.as_str(),
            )
        });
        let prisma_url = pooled.as_deref().map(|p| prisma(p, s.pgbouncer.pool_mode));
        Self {
            connection_string: direct.clone(),
            direct_url: direct,
            database_url: pooled,
            prisma_url,
        }
    }
}

/// The pooled URL as Prisma needs it for this pool mode.
pub fn prisma(pooled: &str, mode: crate::settings::PoolMode) -> String {
    match mode {
        crate::settings::PoolMode::Session => pooled.to_owned(),
        _ => format!("{pooled}&pgbouncer=true"),
    }
}

pub fn url(host: &str, port: u16, user: &str, password: Option<&str>, db: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    // `*` is a sub-delimiter, legal unencoded in userinfo, so the mask stays readable.
    let password = password.map_or_else(|| MASK.to_owned(), encode);
    format!(
        "postgresql://{}:{password}@{host}:{port}/{}?sslmode=require",
        encode(user),
        encode(db)
    )
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_shape() {
        assert_eq!(
            url(
                "db.example.com",
                5432,
                "user_ab12",
                Some("Secr3t"),
                "tenant_ab12"
            ),
            "postgresql://user_ab12:Secr3t@db.example.com:5432/tenant_ab12?sslmode=require"
        );
        assert_eq!(
            url("db.example.com", 5432, "user_ab12", None, "tenant_ab12"),
            "postgresql://user_ab12:********@db.example.com:5432/tenant_ab12?sslmode=require"
        );
    }

    #[test]
    fn prisma_gets_pgbouncer_true_behind_transaction_pooling_only() {
        use crate::settings::PoolMode;
        let pooled = "postgresql://u:p@h:6432/d?sslmode=require";
        assert_eq!(
            prisma(pooled, PoolMode::Transaction),
            "postgresql://u:p@h:6432/d?sslmode=require&pgbouncer=true"
        );
        assert_eq!(
            prisma(pooled, PoolMode::Statement),
            format!("{pooled}&pgbouncer=true")
        );
        assert_eq!(prisma(pooled, PoolMode::Session), pooled);
    }

    #[test]
    fn ipv6_hosts_are_bracketed_once() {
        assert_eq!(
            url("::1", 5432, "u", Some("p"), "d"),
            "postgresql://u:p@[::1]:5432/d?sslmode=require"
        );
        assert_eq!(
            url("[2001:db8::1]", 6432, "u", Some("p"), "d"),
            "postgresql://u:p@[2001:db8::1]:6432/d?sslmode=require"
        );
    }

    #[test]
    fn reserved_characters_are_encoded() {
        assert_eq!(
            url("h", 1, "a@b", Some("p:w/d?#%é"), "d b"),
            "postgresql://a%40b:p%3Aw%2Fd%3F%23%25%C3%A9@h:1/d%20b?sslmode=require"
        );
    }
}
