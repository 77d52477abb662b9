//! The attack suite: the platform as an outsider, a hostile tenant and a tenant racing the API
//! would try it, on both ports (PostgreSQL and PgBouncer). Each test names a rule and tries every
//! way around it found in review and beside it; a hole that comes back fails here.
//!
//! - `api_role`: the API role's own session granting itself predefined roles, and the
//!   `pgaas_priv` functions called with hostile input;
//! - `pooler`: PgBouncer's admin console and auth file, empty and guessed passwords;
//! - `neighbours`: one tenant against another, whatever it grants, on both ports alike;
//! - `races`: a tenant polling for new databases while the API creates them, and creates cut
//!   short by killing the API;
//! - `undeletable`: a tenant making itself or a neighbour impossible to delete;
//! - `stall`: a tenant holding locks while the API serves everyone else;
//! - `inputs`: hostile query strings and allow-lists that add up to the whole internet;
//! - `operations`: a careless operator (root-owned access files, `doctor` mid-delete, several
//!   processes writing the pooler's auth file).

use std::net::IpAddr;

use pgaas::{
    model::{FriendlyName, OwnerEmail},
    tenant::{AuditContext, NewTenant, Provisioned, TenantError, TenantService},
};
use tokio_postgres::NoTls;

use crate::{
    allowlist::{Creds, connect_from, v4},
    harness::platform,
};

mod api_role;
mod inputs;
mod neighbours;
mod operations;
mod pooler;
mod races;
mod restore;
mod stall;
mod undeletable;

/// A tenant of the shared platform, made through the tenant service (as the API does).
pub async fn tenant(svc: &TenantService, tag: &str) -> Provisioned {
    svc.create(
        NewTenant {
            friendly_name: FriendlyName::parse(&format!("attack {tag}")).unwrap(),
            owner_email: OwnerEmail::parse(&format!(
                "{tag}-{}@attack.example.com",
                uuid::Uuid::new_v4().simple()
            ))
            .unwrap(),
            max_connections: Some(10),
            max_size_mb: None,
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap()
}

/// Delete as a well-behaved client does: a busy answer is tried again after a moment.
pub async fn remove(svc: &TenantService, t: &Provisioned) {
    for attempt in 1.. {
        match svc.delete(t.tenant.id, &AuditContext::cli()).await {
            Ok(()) => return,
            Err(TenantError::Busy(_) | TenantError::Unavailable(_)) if attempt < 5 => {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => panic!(
                "deleting {}: {}",
                t.tenant.database_name,
                pgaas::error_chain(&e)
            ),
        }
    }
}

/// Log in as anyone with any password (empty included: tokio-postgres sends it, libpq would not)
/// from `source` over TLS, to `port`.
pub async fn login(
    port: u16,
    source: IpAddr,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, String> {
    let creds = Creds {
        user: user.into(),
        password: password.into(),
        database: database.into(),
    };
    connect_from(source, port, &creds, true).await
}

/// Refused by the access rules, before any password was asked for: PostgreSQL's pg_hba.conf
/// rejection, PgBouncer's "login rejected", or its console's "not allowed" (a user that is no
/// console admin, checked even before the hba file). A password failure here would tell an
/// attacker whether its guess was right.
pub fn refused_before_password(r: &Result<tokio_postgres::Client, String>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: logged in"),
        Err(e) => assert!(
            e.contains("pg_hba.conf rejects")
                || e.contains("login rejected")
                || e.contains("not allowed"),
            "{what}: refused, but not before the password: {e}"
        ),
    }
}

/// A session of the tenant on its own database, directly.
pub async fn own_session(t: &Provisioned) -> tokio_postgres::Client {
    let p = platform();
    login(
        p.pg_port,
        v4(1),
        t.tenant.username.as_str(),
        t.password.expose(),
        t.tenant.database_name.as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("{} cannot reach its own database: {e}", t.tenant.username))
}

/// The superuser over the local socket.
pub async fn su(db: &str) -> tokio_postgres::Client {
    let p = platform();
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(&p.socket_dir)
        .port(p.pg_port)
        .user(&p.superuser)
        .dbname(db)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Both TCP ports of the shared platform, named for messages.
pub fn ports() -> [(u16, &'static str); 2] {
    let p = platform();
    [(p.pg_port, "postgres"), (p.pgbouncer_port, "pgbouncer")]
}
