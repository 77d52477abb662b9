//! The role a restore loads a tenant's data as. A dump is the tenant's own code: a CHECK
//! constraint, an index expression or a default calls the tenant's functions while pg_restore
//! loads it, and such a function may `RESET ROLE` or `RESET SESSION AUTHORIZATION` to whatever
//! the session logged in as. So no restore of a tenant's database logs in as the superuser (or
//! the API role): pg_restore logs in over the local socket as a throwaway role made for this one
//! load, `pgaas_load_<12 hex>`, that holds nothing but membership in the tenant's role (NOINHERIT,
//! so after a `RESET ROLE` it holds less than the tenant) and in [`LOAD_GROUP`], the group
//! pg_hba.conf admits over the socket. pg_restore `--role` makes the tenant's role the one that
//! owns what it creates.
//!
//! The role's password exists only in pgaas's memory and in the private, short-lived
//! `PGPASSFILE` pg_restore reads; the server sees its SCRAM verifier. The role expires
//! ([`LOAD_ROLE_LIFETIME_HOURS`]) even if pgaas dies before dropping it, and [`sweep`] drops
//! expired ones. Dropping it hands anything it owns (a tenant function that reset its role may
//! have created objects) to the tenant's role: `REASSIGN OWNED` and `DROP OWNED` change only
//! catalogs, and run no tenant code (event triggers, the one hook they could fire, are for
//! superusers only).

use sqlx::{Executor, PgConnection};

use super::{BackupError, Backups};
use crate::{
    model::Secret,
    pg::{quote::quote_ident, quote::quote_literal, scram},
};

/// The NOLOGIN group of load roles; pg_hba.conf admits its members over the socket with SCRAM.
/// Tenant databases grant CONNECT to no one but their owner, so a load role reaches only the
/// databases of the tenant it is a member of.
pub use crate::model::LOAD_GROUP;

/// The prefix of every load role's name.
pub const LOAD_ROLE_PREFIX: &str = "pgaas_load_";

/// How long a load role can log in: past it, a role a crash left behind is useless and [`sweep`]
/// drops it. A load that runs longer keeps its session (VALID UNTIL is checked at login).
pub const LOAD_ROLE_LIFETIME_HOURS: u32 = 48;

/// A throwaway login role that is a member of one tenant role and of [`LOAD_GROUP`], and of
/// nothing else.
pub struct LoadRole {
    pub name: String,
    pub password: Secret,
    tenant: String,
}

fn sql_err(e: impl std::fmt::Display) -> BackupError {
    BackupError::Invalid(e.to_string())
}

impl LoadRole {
    /// Make the role, as the superuser (`conn`). Nothing of the tenant's runs here.
    /// It may connect to `database` alone (NOINHERIT keeps it from the owner's CONNECT).
    pub async fn create(
        conn: &mut PgConnection,
        tenant_role: &str,
        database: &str,
    ) -> Result<Self, BackupError> {
        ensure_group(conn).await?;
        let name = format!(
            "{LOAD_ROLE_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let password = Secret::generate();
        let verifier = scram::scram_sha256_verifier(password.expose()).map_err(sql_err)?;
        let (name_q, tenant_q, group_q) = (
            quote_ident(&name).map_err(sql_err)?,
            quote_ident(tenant_role).map_err(sql_err)?,
            quote_ident(LOAD_GROUP).map_err(sql_err)?,
        );
        let verifier_q = quote_literal(&verifier).map_err(sql_err)?;
        conn.execute("SET log_statement = 'none'").await?;
        let until: String = sqlx::query_scalar(&format!(
            "SELECT to_char((now() + interval '{LOAD_ROLE_LIFETIME_HOURS} hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'"
        ))
        .fetch_one(&mut *conn)
        .await?;
        conn.execute(
            format!(
                "CREATE ROLE {name_q} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS PASSWORD {verifier_q} VALID UNTIL {} \
                 IN ROLE {group_q}, {tenant_q}",
                quote_literal(&until).map_err(sql_err)?
            )
            .as_str(),
        )
        .await?;
        conn.execute("RESET log_statement").await?;
        let db_q = quote_ident(database).map_err(sql_err)?;
        conn.execute(format!("GRANT CONNECT ON DATABASE {db_q} TO {name_q}").as_str())
            .await?;
        Ok(Self {
            name,
            password,
            tenant: tenant_role.to_string(),
        })
    }

    /// End the role's sessions, hand what it owns in `database` (if that still exists) to the
    /// tenant's role, revoke what was granted to it (its CONNECT among them), and drop it. `admin` is a superuser connection to any database;
    /// `in_database` one to `database` when it exists.
    pub async fn drop(
        self,
        admin: &mut PgConnection,
        in_database: Option<&mut PgConnection>,
    ) -> Result<(), BackupError> {
        terminate(admin, &self.name).await?;
        let name_q = quote_ident(&self.name).map_err(sql_err)?;
        if let Some(db) = in_database {
            release(db, &self.name, &self.tenant).await?;
        }
        admin
            .execute(format!("DROP ROLE IF EXISTS {name_q}").as_str())
            .await?;
        Ok(())
    }
}

/// In the database `conn` is in: what `role` owns goes to `tenant`, what was granted to it is
/// revoked.
async fn release(conn: &mut PgConnection, role: &str, tenant: &str) -> Result<(), BackupError> {
    let (role_q, tenant_q) = (
        quote_ident(role).map_err(sql_err)?,
        quote_ident(tenant).map_err(sql_err)?,
    );
    conn.execute(format!("REASSIGN OWNED BY {role_q} TO {tenant_q}").as_str())
        .await?;
    conn.execute(format!("DROP OWNED BY {role_q}").as_str())
        .await?;
    Ok(())
}

/// End every session of `role` and wait (up to 10 s) until none is left.
pub async fn terminate(conn: &mut PgConnection, role: &str) -> Result<(), BackupError> {
    for _ in 0..100 {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1) t",
        )
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(BackupError::State(format!(
        "the sessions of {role} did not end within 10 s"
    )))
}

async fn ensure_group(conn: &mut PgConnection) -> Result<(), BackupError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(LOAD_GROUP)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        let q = quote_ident(LOAD_GROUP).map_err(sql_err)?;
        // Two loads may race to make it: the loser's error is harmless.
        if let Err(e) = conn
            .execute(format!("CREATE ROLE {q} NOLOGIN").as_str())
            .await
        {
            tracing::debug!(error = %e, "the load group was made meanwhile");
        }
    }
    Ok(())
}

/// Drop the load roles that can no longer log in (a crash left them): their sessions are
/// ended, what each owns in its tenant's databases goes to the tenant's role, and the role is
/// dropped. Returns the names dropped. `admin` is a superuser connection.
pub async fn sweep(
    backups: &Backups,
    admin: &mut PgConnection,
) -> Result<Vec<String>, BackupError> {
    let stale: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT r.rolname::text,
                (SELECT t.rolname::text FROM pg_auth_members m JOIN pg_roles t ON t.oid = m.roleid
                  WHERE m.member = r.oid AND t.rolname <> $2 LIMIT 1)
           FROM pg_roles r
          WHERE starts_with(r.rolname, $1) AND r.rolvaliduntil < now()",
    )
    .bind(LOAD_ROLE_PREFIX)
    .bind(LOAD_GROUP)
    .fetch_all(&mut *admin)
    .await?;
    let mut dropped = Vec::new();
    for (name, tenant) in stale {
        terminate(admin, &name).await?;
        let name_q = quote_ident(&name).map_err(sql_err)?;
        if let Some(tenant) = &tenant {
            let dbs: Vec<String> = sqlx::query_scalar(
                "SELECT d.datname::text FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba
                  WHERE o.rolname = $1 AND d.datallowconn",
            )
            .bind(tenant)
            .fetch_all(&mut *admin)
            .await?;
            for db in dbs {
                let mut c = backups.superuser(&db).await?;
                release(&mut c, &name, tenant).await?;
                let _ = sqlx::Connection::close(c).await;
            }
        }
        admin
            .execute(format!("DROP ROLE IF EXISTS {name_q}").as_str())
            .await?;
        tracing::info!(role = %name, "dropped a load role a stopped restore left behind");
        dropped.push(name);
    }
    Ok(dropped)
}
