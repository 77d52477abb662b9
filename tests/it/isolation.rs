//! Tenants as their owners and their neighbours see them, on the shared real cluster: the
//! original README's testing flow end to end, isolation between tenants and from the system
//! databases, connection limits, passwords kept out of the server log, the reconciler after a
//! simulated crash, and the operator CLI (`pgaas db|key|doctor`). Every connection is a real
//! client over TLS verified against the platform's CA (`verify-full`).
//!
//! The cluster is shared with tests running at the same time: each test uses its own owner email
//! and looks only at the rows and objects it made.

use std::{path::Path, sync::Arc, time::Duration};

use pgaas::{
    model::{FriendlyName, OwnerEmail},
    tenant::{AuditContext, NewTenant, Provisioned, TenantPatch, TenantService},
};
use tokio_postgres::{Client, NoTls, error::SqlState};

use crate::harness::{TestPlatform, platform, psql};

pub(crate) mod cli;
pub(crate) mod crash;
mod readme;
mod shadow;

fn service() -> TenantService {
    let p = platform();
    let password = p.settings.control_db_password().unwrap();
    let opts = pgaas::control_db::connect_options(&p.settings, password.as_ref());
    TenantService::new(
        pgaas::control_db::pool(opts, 4),
        Arc::new(p.settings.clone()),
    )
}

fn unique_email(tag: &str) -> String {
    format!(
        "{tag}-{}@isolation.example.com",
        uuid::Uuid::new_v4().simple()
    )
}

async fn create(svc: &TenantService, tag: &str, max_connections: Option<u32>) -> Provisioned {
    svc.create(
        NewTenant {
            friendly_name: FriendlyName::parse(&format!("isolation {tag}")).unwrap(),
            owner_email: OwnerEmail::parse(&unique_email(tag)).unwrap(),
            max_connections,
            max_size_mb: None,
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap()
}

fn tls_config(p: &TestPlatform) -> rustls::ClientConfig {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&p.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A tenant-style connection: TCP to `localhost`, TLS with the certificate chain and host name
/// verified against the CA (what libpq calls verify-full), SCRAM.
async fn connect(user: &str, password: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
    let p = platform();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(p));
    let (client, conn) = tokio_postgres::Config::new()
        .host("localhost")
        .port(p.pg_port)
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10))
        .connect(tls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The superuser over the local socket (peer authentication), for setting up what a crash
/// leaves behind and for looking at the catalogs.
async fn superuser(db: &str) -> Client {
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

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

/// The server's code and message (`Display` of the error says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(
        || e.to_string(),
        |d| format!("{}: {}", d.code().code(), d.message()),
    )
}

async fn role_exists(role: &str) -> bool {
    let su = superuser("postgres").await;
    su.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
        &[&role],
    )
    .await
    .unwrap()
    .get(0)
}

async fn database_exists(db: &str) -> bool {
    let su = superuser("postgres").await;
    su.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

/// psql against a tenant database with `sslmode=verify-full`; the password goes in the
/// environment, not on the command line.
fn tenant_psql(user: &str, password: &str, db: &str, sql: &str) -> (bool, String, String) {
    let p = platform();
    let conninfo = format!(
        "host=localhost port={} user={user} dbname={db} sslmode=verify-full sslrootcert={}",
        p.pg_port,
        p.ca_file.display()
    );
    psql(&conninfo, sql, &[("PGPASSWORD", Path::new(password))])
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_reach_only_their_own_database() {
    let svc = service();
    let a = create(&svc, "pair-a", Some(5)).await;
    let b = create(&svc, "pair-b", Some(5)).await;
    let control = platform().settings.control_db.name.clone();
    for (me, other) in [(&a, &b), (&b, &a)] {
        let (user, pw) = (me.tenant.username.as_str(), me.password.expose());
        let own = me.tenant.database_name.as_str();
        let theirs = other.tenant.database_name.as_str();
        // Refused by pg_hba.conf before any password is asked for: a role reaches only the
        // database of its own name, whatever privileges it holds.
        for db in [theirs, "postgres", control.as_str()] {
            let e = connect(user, pw, db).await.err();
            let e = e.unwrap_or_else(|| panic!("{user} connected to {db}"));
            assert_eq!(
                code(&e),
                Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                "{user} -> {db}: {}",
                describe(&e)
            );
        }
        // The real client says the same.
        let (ok, _, err) = tenant_psql(user, pw, theirs, "SELECT 1");
        assert!(!ok && err.contains("pg_hba.conf rejects"), "{err}");

        let client = connect(user, pw, own).await.unwrap();
        for (sql, what) in [
            (
                "CREATE DATABASE isolation_escape".to_string(),
                "create database",
            ),
            (
                "CREATE ROLE isolation_escape LOGIN".to_string(),
                "create role",
            ),
            (format!("SET ROLE {}", other.tenant.username), "set role"),
            (
                format!("GRANT {} TO {user}", other.tenant.username),
                "grant",
            ),
        ] {
            let e = client.batch_execute(&sql).await.err();
            let e = e.unwrap_or_else(|| panic!("{user} could {what}: {sql}"));
            assert_eq!(
                code(&e),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{sql}: {}",
                describe(&e)
            );
        }
        // The control DB's tables are out of reach from inside a tenant database too.
        let e = client
            .batch_execute(&format!("SELECT * FROM {control}.public.databases"))
            .await
            .unwrap_err();
        assert_eq!(
            code(&e),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{}",
            describe(&e)
        );
        let visible: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'databases'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(visible, 0);
    }
    for t in [&a, &b] {
        svc.delete(t.tenant.id, &AuditContext::cli()).await.unwrap();
    }
}

/// template1 is copied into every new tenant database; a tenant that could write there would
/// plant objects in every future neighbour.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_connect_to_the_template_databases() {
    let svc = service();
    let t = create(&svc, "template", Some(2)).await;
    for db in ["template1", "template0"] {
        let r = connect(t.tenant.username.as_str(), t.password.expose(), db).await;
        let e = r
            .err()
            .unwrap_or_else(|| panic!("a tenant connected to {db}"));
        assert!(
            matches!(
                code(&e),
                Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                    | Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                    | Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
            ),
            "{db}: {}",
            describe(&e)
        );
    }
    svc.delete(t.tenant.id, &AuditContext::cli()).await.unwrap();
}

fn is_too_many(e: &tokio_postgres::Error) -> bool {
    code(e) == Some(&SqlState::TOO_MANY_CONNECTIONS)
        && e.as_db_error()
            .is_some_and(|d| d.message().contains("too many connections for"))
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_is_enforced_and_follows_updates() {
    let svc = service();
    let created = create(&svc, "limit", Some(2)).await;
    let t = &created.tenant;
    let (user, db, pw) = (
        t.username.as_str(),
        t.database_name.as_str(),
        created.password.expose(),
    );
    let mut open = Vec::new();
    for i in 0..2 {
        open.push(
            connect(user, pw, db)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    let e = connect(user, pw, db)
        .await
        .expect_err("a 3rd connection with limit 2");
    assert!(is_too_many(&e), "{}", describe(&e));

    let patch = TenantPatch {
        max_connections: Some(3),
        ..TenantPatch::default()
    };
    let updated = svc.update(t.id, patch, &AuditContext::cli()).await.unwrap();
    assert_eq!(updated.max_connections, 3);
    open.push(
        connect(user, pw, db)
            .await
            .expect("3rd connection after raising the limit to 3"),
    );
    let e = connect(user, pw, db)
        .await
        .expect_err("a 4th connection with limit 3");
    assert!(is_too_many(&e), "{}", describe(&e));
    assert_eq!(svc.stats(t.id).await.unwrap().active_connections, 3);

    drop(open);
    svc.delete(t.id, &AuditContext::cli()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_tenant_password_reaches_the_server_log() {
    let p = platform();
    let svc = service();
    let created = create(&svc, "log", Some(2)).await;
    let t = &created.tenant;
    let (user, db) = (t.username.as_str(), t.database_name.as_str());
    let first = created.password.expose().to_string();
    let (_, second) = svc
        .rotate_password(t.id, &AuditContext::cli())
        .await
        .unwrap();
    let second = second.expose().to_string();
    assert_ne!(first, second);

    connect(user, &second, db)
        .await
        .expect("the rotated password works");
    let e = connect(user, &first, db)
        .await
        .expect_err("the old password still works");
    assert_eq!(
        code(&e),
        Some(&SqlState::INVALID_PASSWORD),
        "{}",
        describe(&e)
    );

    // The log is written by another process: wait until it shows the password change (the
    // call and, on a line of its own, its parameters), which proves statement logging was on for
    // exactly the statements that carry the verifier.
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(&p.log_file).unwrap();
        if log.contains("pgaas_priv.set_tenant_password")
            && log
                .lines()
                .any(|l| l.contains("parameters:") && l.contains(user))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains("pgaas_priv.create_tenant_role") && log.contains(user),
        "log_statement = 'all' not in force?"
    );
    assert!(
        log.contains("SCRAM-SHA-256$"),
        "the role's password should be logged only as a verifier"
    );
    assert!(
        !log.contains(&first),
        "the first password is in the server log"
    );
    assert!(
        !log.contains(&second),
        "the rotated password is in the server log"
    );
    svc.delete(t.id, &AuditContext::cli()).await.unwrap();
}

/// Prisma's `migrate dev` needs a database it may wipe: the tenant's shadow database. Only its
/// tenant reaches it (over TLS, with its own password, from its allow-list), its size counts in
/// the tenant's, a second create returns the same one, dropping it ends its sessions, and the
/// tenant's delete takes it along.
#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_database_is_its_tenants_alone_counts_in_its_size_and_goes_with_it() {
    let svc = platform().tenants();
    let ctx = AuditContext::cli();
    let a = create(&svc, "shadow-a", Some(3)).await;
    let b = create(&svc, "shadow-b", Some(3)).await;
    let (user, pw) = (a.tenant.username.as_str(), a.password.expose());
    let (_, name, made) = svc.create_shadow(a.tenant.id, &ctx).await.unwrap();
    assert!(made);
    assert_eq!(name, format!("{}_shadow", a.tenant.database_name.as_str()));
    let (_, again, made) = svc.create_shadow(a.tenant.id, &ctx).await.unwrap();
    assert_eq!((again.as_str(), made), (name.as_str(), false));

    // What a migration tool does there: create, fill, wipe, create again.
    let c = connect(user, pw, &name).await.unwrap();
    c.batch_execute(
        "CREATE TABLE m AS SELECT g, md5(g::text) AS v FROM generate_series(1, 100000) g;
         DROP SCHEMA public CASCADE; CREATE SCHEMA public;
         CREATE TABLE m AS SELECT g, md5(g::text) AS v FROM generate_series(1, 100000) g;",
    )
    .await
    .unwrap();
    // Another tenant is refused before any password is asked for.
    let Err(e) = connect(b.tenant.username.as_str(), b.password.expose(), &name).await else {
        panic!("tenant b connected to a's shadow database");
    };
    assert_eq!(
        code(&e),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{}",
        describe(&e)
    );
    let (ok, _, err) = tenant_psql(
        b.tenant.username.as_str(),
        b.password.expose(),
        &name,
        "SELECT 1",
    );
    assert!(!ok && err.contains("pg_hba.conf rejects"), "{err}");
    // Its own tenant, with the real client too.
    let (ok, out, err) = tenant_psql(user, pw, &name, "SELECT count(*) FROM m");
    assert!(ok && out == "100000", "{out} {err}");
    // And through PgBouncer: the pooler carries it for its tenant alone.
    let p = platform();
    let pooled = |u: &str, w: &str| {
        let conninfo = format!(
            "host=localhost port={} user={u} dbname={name} sslmode=verify-full sslrootcert={}",
            p.pgbouncer_port,
            p.ca_file.display()
        );
        psql(
            &conninfo,
            "SELECT count(*) FROM m",
            &[("PGPASSWORD", Path::new(w))],
        )
    };
    let (ok, out, err) = pooled(user, pw);
    assert!(ok && out == "100000", "pooled: {out} {err}");
    let (ok, _, err) = pooled(b.tenant.username.as_str(), b.password.expose());
    assert!(
        !ok,
        "tenant b reached a's shadow database through PgBouncer: {err}"
    );

    // The tenant's size is both databases'.
    let su = superuser("postgres").await;
    let size = |db: String| {
        let su = &su;
        async move {
            let row = su
                .query_one("SELECT pg_database_size($1::text)", &[&db])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    let main = size(a.tenant.database_name.as_str().to_string()).await;
    let shadow = size(name.clone()).await;
    let stats = svc.stats(a.tenant.id).await.unwrap();
    assert!(
        stats.size_bytes >= main + shadow - 1024 * 1024,
        "stats {} for main {main} + shadow {shadow}",
        stats.size_bytes
    );

    // Dropped: its session ends, it is gone, a second drop is a no-op.
    assert!(svc.drop_shadow(a.tenant.id, &ctx).await.unwrap());
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "its session survived"
    );
    let exists = |db: String| {
        let su = &su;
        async move {
            su.query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    assert_eq!(exists(name.clone()).await, 0);
    assert!(connect(user, pw, &name).await.is_err());
    assert!(!svc.drop_shadow(a.tenant.id, &ctx).await.unwrap());

    // Made again, then the tenant goes and takes it along.
    svc.create_shadow(a.tenant.id, &ctx).await.unwrap();
    connect(user, pw, &name).await.unwrap();
    svc.delete(a.tenant.id, &ctx).await.unwrap();
    assert_eq!(exists(name).await, 0);
    svc.delete(b.tenant.id, &ctx).await.unwrap();
}
