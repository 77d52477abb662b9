//! The control database (`postgres_control`): creating it and the API's least-privilege role,
//! running migrations, connecting, and the API keys table. The SQL of the other tables lives
//! with the module that owns what they mean: `tenant` (databases, ip_whitelist, audit_logs,
//! database_stats), `hba` (hba_state); each query beside the code that decides what it does.

pub mod api_keys;
pub mod api_role;
mod privileged;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};

use crate::{
    pg::{quote::quote_ident, scram},
    settings::{Secret, Settings},
};

use crate::model::TENANT_GROUP;

/// A group that earlier releases admitted from any address by membership; a tenant could lift a
/// neighbour's allow-list by granting it its own role, so it is dropped at bootstrap.
const RETIRED_OPEN_GROUP: &str = "pgaas_open_tenants";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum ControlDbError {
    #[error("control database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("control database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a name could not be quoted for SQL")]
    Quote(#[from] crate::pg::quote::QuoteError),
    #[error("computing the API role's SCRAM verifier")]
    Scram(#[from] crate::pg::scram::ScramError),
}

/// Connection options for the API role, from settings (socket directory or host, optional TLS).
pub fn connect_options(settings: &Settings, password: Option<&Secret>) -> PgConnectOptions {
    let db = &settings.control_db;
    // Every wait is bounded: a tenant holding a lock on its own database (or a slow server) costs
    // the request that needs it a retryable error, never a connection held for minutes.
    let mut opts = PgConnectOptions::new()
        .username(&db.user)
        .database(&db.name)
        .application_name("pgaas-api")
        .options([
            ("lock_timeout", "3s"),
            ("statement_timeout", "60s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ]);
    opts = if db.host.starts_with('/') {
        opts.socket(&db.host)
            .port(db.port.unwrap_or(settings.postgres.port))
    } else {
        let mode = if db.ssl {
            PgSslMode::VerifyFull
        } else {
            PgSslMode::Prefer
        };
        let mut o = opts
            .host(&db.host)
            .port(db.port.unwrap_or(settings.postgres.port))
            .ssl_mode(mode);
        if let Some(ca) = &settings.tls.ca_file {
            o = o.ssl_root_cert(ca);
        }
        o
    };
    if let Some(p) = password {
        opts = opts.password(p.expose());
    }
    // `DROP DATABASE` and `CREATE DATABASE` are slow by nature, and every request's latency is in
    // /metrics: sqlx's slow-statement report is a debug detail.
    opts.log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
}

/// A pool for the API. Connecting is lazy so the API can start (and report 503 on /health)
/// while the database is down.
pub fn pool(options: PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}

pub async fn migrate(pool: &PgPool) -> Result<(), ControlDbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the control DB answers.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await
        .is_ok()
}

async fn role_exists(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(conn)
        .await
}

async fn database_exists(conn: &mut PgConnection, db: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(db)
        .fetch_one(conn)
        .await
}

/// Create (or bring up to date) the API role, the tenant group and the control database, as the
/// superuser. Idempotent: each step checks before it acts. The API role gets exactly what it
/// needs: CREATEDB, reloading configuration, reading pg_hba_file_rules and stats, terminating
/// tenant backends, and the `pgaas_priv` functions that make, change and drop tenant roles (it
/// holds no CREATEROLE: see [`privileged`]). Its password is set as a SCRAM verifier computed
/// here, so the plaintext never reaches the server.
pub async fn bootstrap(
    admin_options: &PgConnectOptions,
    settings: &Settings,
    api_password: &Secret,
) -> Result<(), ControlDbError> {
    let mut admin = PgConnection::connect_with(&admin_options.clone().database("postgres")).await?;
    let admin = &mut admin;
    let api = &settings.control_db.user;
    let control = &settings.control_db.name;
    let api_q = quote_ident(api)?;
    let control_q = quote_ident(control)?;
    let group_q = quote_ident(TENANT_GROUP)?;
    let verifier = scram::scram_sha256_verifier(api_password.expose())?;
    // The verifier is not a secret in the sense the password is, but it still never goes to
    // the log: statement logging is off for this session.
    admin.execute("SET log_statement = 'none'").await?;

    if !role_exists(admin, TENANT_GROUP).await? {
        admin
            .execute(format!("CREATE ROLE {group_q} NOLOGIN").as_str())
            .await?;
    }
    if role_exists(admin, RETIRED_OPEN_GROUP).await? {
        let open_q = quote_ident(RETIRED_OPEN_GROUP)?;
        admin
            .execute(format!("DROP ROLE {open_q}").as_str())
            .await?;
    }
    let password_sql = format!("PASSWORD {}", crate::pg::quote::quote_literal(&verifier)?);
    if role_exists(admin, api).await? {
        admin
            .execute(
                format!("ALTER ROLE {api_q} LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS {password_sql}")
                    .as_str(),
            )
            .await?;
    } else {
        admin
            .execute(
                format!("CREATE ROLE {api_q} LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS {password_sql}")
                    .as_str(),
            )
            .await?;
    }
    for stmt in [
        format!("GRANT pg_read_all_stats, pg_signal_backend TO {api_q}"),
        // Nobody but the superuser and the owner connects to the maintenance databases.
        "REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC".to_string(),
        // template1 is copied into every new database: no tenant may even connect to it.
        "REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC".to_string(),
    ] {
        admin.execute(stmt.as_str()).await?;
    }
    // A cluster's rewind role (made by Patroni when it bootstrapped the cluster) reads the
    // new primary's `postgres` database when an old primary rejoins: the one role besides the
    // superuser that may connect there (from the nodes' addresses only, pg_hba.conf says).
    let rewind = &settings.cluster.rewind_user;
    if settings.cluster.enabled() && role_exists(admin, rewind).await? {
        admin
            .execute(
                format!(
                    "GRANT CONNECT ON DATABASE postgres TO {}",
                    quote_ident(rewind)?
                )
                .as_str(),
            )
            .await?;
    }
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut *admin)
        .await?;
    // An install made by an earlier release gave the API CREATEROLE and ADMIN on the group.
    privileged::retire_api_privileges(admin, api, version).await?;
    // PostgreSQL 16+: the API may take the reserved slots (`reserved_connections`), so tenants
    // at their limits never lock it out.
    if version >= 160000 {
        admin
            .execute(format!("GRANT pg_use_reserved_connections TO {api_q}").as_str())
            .await?;
    }
    if !database_exists(admin, control).await? {
        admin
            .execute(format!("CREATE DATABASE {control_q} OWNER {api_q} ENCODING 'UTF8'").as_str())
            .await?;
    }
    admin
        .execute(format!("REVOKE ALL ON DATABASE {control_q} FROM PUBLIC").as_str())
        .await?;
    admin
        .execute(format!("GRANT ALL ON DATABASE {control_q} TO {api_q}").as_str())
        .await?;
    // The API role creates its tables; lock PUBLIC out of the public schema of the control DB.
    let mut control_conn =
        PgConnection::connect_with(&admin_options.clone().database(control)).await?;
    control_conn.execute("SET log_statement = 'none'").await?;
    control_conn
        .execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        .await?;
    control_conn
        .execute(format!("GRANT ALL ON SCHEMA public TO {api_q}").as_str())
        .await?;
    control_conn
        .execute(format!("ALTER SCHEMA public OWNER TO {api_q}").as_str())
        .await?;
    // PgBouncer's auth_file needs the tenants' SCRAM verifiers, which only pg_authid holds. A
    // superuser-owned SECURITY DEFINER function in a schema the API role cannot change hands
    // exactly those to the API role alone: tenant-named login roles of the tenant group with
    // no privilege beyond a tenant's (never the API role, whatever it is a member of).
    let group_lit = crate::pg::quote::quote_literal(TENANT_GROUP)?;
    for stmt in [
        // Catalog objects are per database: the API reloads and validates from the control DB.
        format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO {api_q}"),
        format!("GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {api_q}"),
        format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {api_q}"),
        "CREATE SCHEMA IF NOT EXISTS pgaas_priv".to_string(),
        "REVOKE ALL ON SCHEMA pgaas_priv FROM PUBLIC".to_string(),
        format!("GRANT USAGE ON SCHEMA pgaas_priv TO {api_q}"),
        format!(
            "CREATE OR REPLACE FUNCTION pgaas_priv.tenant_secrets() RETURNS TABLE (rolname text, rolpassword text)
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $fn$
               SELECT a.rolname::text, a.rolpassword FROM pg_authid a
               JOIN pg_auth_members m ON m.member = a.oid
               WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = {group_lit})
                 AND a.rolname ~ '^(tenant|user)_[0-9a-f]{{8,32}}$'
                 AND a.rolcanlogin AND NOT (a.rolsuper OR a.rolcreaterole OR a.rolcreatedb
                                            OR a.rolreplication OR a.rolbypassrls)
                 AND a.rolpassword LIKE 'SCRAM-SHA-256$%'
               ORDER BY 1
             $fn$"
        ),
        "REVOKE ALL ON FUNCTION pgaas_priv.tenant_secrets() FROM PUBLIC".to_string(),
        format!("GRANT EXECUTE ON FUNCTION pgaas_priv.tenant_secrets() TO {api_q}"),
    ] {
        control_conn.execute(stmt.as_str()).await?;
    }
    for stmt in privileged::function_statements(api)? {
        control_conn.execute(stmt.as_str()).await?;
    }
    control_conn.close().await?;
    Ok(())
}

/// Parse a `postgresql://` URL or key=value string (for `--database-url` style flags).
pub fn parse_options(s: &str) -> Result<PgConnectOptions, ControlDbError> {
    PgConnectOptions::from_str(s).map_err(ControlDbError::Sql)
}

/// Write the API role's password file (0600) unless it exists; return the password.
pub fn ensure_password_file(path: &Path) -> std::io::Result<Secret> {
    if let Some(s) = crate::settings::read_secret_file(path)? {
        if !s.expose().is_empty() {
            return Ok(s);
        }
    }
    let password = crate::model::TenantPassword::generate();
    crate::files::write_if_changed(path, password.expose(), 0o600)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Secret::new(password.expose()))
}
