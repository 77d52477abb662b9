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
//!
//! On a cluster (`cluster.*`) every URL names every PostgreSQL node with
//! `target_session_attrs=read-write`: libpq (and the drivers built on it, and most others) tries
//! them in turn and keeps the one that takes writes, so a client reaches the new primary after a
//! failover without changing its URL.

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
        let hosts = hosts(s);
        let direct = url_hosts(
            &hosts,
            s.postgres.port,
            tenant.username.as_str(),
            password,
            tenant.database_name.as_str(),
        );
        let pooled = (s.pgbouncer.enabled && state.pooler_available).then(|| {
            url_hosts(
                &hosts,
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

/// The hosts tenants' URLs name: the public host, or on a cluster every PostgreSQL node (its
/// DNS name where the settings give one, else its address), this node first. Creates and
/// password changes are answered by the primary, and a new tenant's rule reaches the standby's
/// pg_hba.conf a moment later; libpq does not try the next host after a refused login, so a
/// URL listing the standby first could fail for that moment.
pub fn hosts(s: &crate::settings::Settings) -> Vec<String> {
    if s.cluster.enabled() {
        let me = s.cluster.node.as_deref();
        let (mut first, rest): (Vec<_>, Vec<_>) = s
            .cluster
            .data_nodes()
            .partition(|n| Some(n.name.as_str()) == me);
        first.extend(rest);
        first
            .into_iter()
            .map(|n| n.host.clone().unwrap_or_else(|| n.address.to_string()))
            .collect()
    } else {
        vec![s.public_host.clone()]
    }
}

pub fn url(host: &str, port: u16, user: &str, password: Option<&str>, db: &str) -> String {
    url_hosts(&[host.to_owned()], port, user, password, db)
}

/// [`url`] naming several hosts (libpq's multi-host form): the client keeps the one that takes
/// writes.
pub fn url_hosts(
    hosts: &[String],
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> String {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|host| {
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        })
        .collect();
    // `*` is a sub-delimiter, legal unencoded in userinfo, so the mask stays readable.
    let password = password.map_or_else(|| MASK.to_owned(), encode);
    let failover = if hosts.len() > 1 {
        "&target_session_attrs=read-write"
    } else {
        ""
    };
    format!(
        "postgresql://{}:{password}@{}/{}?sslmode=require{failover}",
        encode(user),
        hosts.join(","),
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
    fn a_cluster_url_names_every_node_and_asks_for_the_primary() {
        let two = ["db1.example.com".to_string(), "2001:db8::2".to_string()];
        assert_eq!(
            url_hosts(&two, 5432, "tenant_ab12", Some("Secr3t"), "tenant_ab12"),
            "postgresql://tenant_ab12:Secr3t@db1.example.com:5432,[2001:db8::2]:5432/tenant_ab12?sslmode=require&target_session_attrs=read-write"
        );
        let mut s = crate::settings::Settings::default();
        assert_eq!(hosts(&s), vec!["localhost".to_string()]);
        s.cluster.name = Some("main".into());
        s.cluster.nodes = vec![
            crate::settings::ClusterNode {
                name: "db1".into(),
                address: "10.0.0.1".parse().unwrap(),
                host: Some("db1.example.com".into()),
                witness: false,
            },
            crate::settings::ClusterNode {
                name: "db2".into(),
                address: "10.0.0.2".parse().unwrap(),
                host: None,
                witness: false,
            },
            crate::settings::ClusterNode {
                name: "w".into(),
                address: "10.0.0.3".parse().unwrap(),
                host: None,
                witness: true,
            },
        ];
        assert_eq!(
            hosts(&s),
            vec!["db1.example.com".to_string(), "10.0.0.2".into()]
        );
        // On db2, db2 first: the node answering a create is the primary.
        s.cluster.node = Some("db2".into());
        assert_eq!(
            hosts(&s),
            vec!["10.0.0.2".to_string(), "db1.example.com".into()]
        );
        s.cluster.node = Some("w".into());
        assert_eq!(
            hosts(&s),
            vec!["db1.example.com".to_string(), "10.0.0.2".into()]
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
