//! Noisy neighbours: what one tenant can take from the others, on the real cluster and PgBouncer.
//! Its `maxConnections` holds through the pooler as well as directly, and pooled connections are
//! given back soon enough for direct use; a flood of clients cannot refuse everyone else; what a
//! tenant persists for itself is reset to the rules; the connection budget refuses limits the
//! host cannot keep; storage quotas warn, then make new sessions read-only, then close the
//! database, and a tenant cannot lift that itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use pgaas::{
    model::{FriendlyName, OwnerEmail, QuotaState},
    tenant::{AuditContext, NewTenant, Provisioned, TenantError, TenantPatch, TenantService},
};

use crate::{
    allowlist::{Creds, connect_from, v4},
    attack::{login, own_session, remove, su},
    harness::{pgaas_bin, platform},
};

async fn tenant_with(
    svc: &TenantService,
    tag: &str,
    max: u32,
    size_mb: Option<u64>,
) -> Provisioned {
    svc.create(
        NewTenant {
            friendly_name: FriendlyName::parse(&format!("noisy {tag}")).unwrap(),
            owner_email: OwnerEmail::parse(&format!(
                "{tag}-{}@noisy.example.com",
                uuid::Uuid::new_v4().simple()
            ))
            .unwrap(),
            max_connections: Some(max),
            max_size_mb: size_mb,
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap()
}

fn creds(t: &Provisioned) -> Creds {
    Creds {
        user: t.tenant.username.to_string(),
        password: t.password.expose().to_string(),
        database: t.tenant.database_name.to_string(),
    }
}

/// Server sessions of `role`, as the superuser sees them.
async fn sessions_of(server: &tokio_postgres::Client, role: &str) -> i64 {
    server
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pooled_flood_never_takes_more_server_connections_than_the_limit() {
    let p = platform();
    let svc = p.tenants();
    let flooder = tenant_with(&svc, "flooder", 3, None).await;
    let neighbour = tenant_with(&svc, "pool-neighbour", 3, None).await;
    let server = su("postgres").await;
    let role = flooder.tenant.username.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, most, role) = (stop.clone(), most.clone(), role.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sessions_of(&server, &role).await;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let c = creds(&flooder);
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let c = Creds { ..clone_creds(&c) };
            tokio::spawn(async move {
                match connect_from(v4(1), platform().pgbouncer_port, &c, true).await {
                    Ok(client) => client.simple_query("SELECT pg_sleep(0.3)").await.is_ok(),
                    Err(_) => false,
                }
            })
        })
        .collect();
    // Meanwhile the neighbour is served, directly and through the pooler.
    for port in [p.pg_port, p.pgbouncer_port] {
        connect_from(v4(1), port, &creds(&neighbour), true)
            .await
            .unwrap_or_else(|e| {
                panic!("the neighbour was refused on {port} during the flood: {e}")
            });
    }
    let mut served = 0;
    for c in clients {
        served += usize::from(c.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(most >= 1, "the sampler saw no session at all");
    assert!(
        most <= 3,
        "the pooler held {most} server connections for a tenant limited to 3"
    );
    assert!(
        served >= 3,
        "only {served} of the queued clients were served"
    );
    remove(&svc, &flooder).await;
    remove(&svc, &neighbour).await;
}

fn clone_creds(c: &Creds) -> Creds {
    Creds {
        user: c.user.clone(),
        password: c.password.clone(),
        database: c.database.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_connections_work_again_soon_after_pooled_use() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant_with(&svc, "pooled-then-direct", 2, None).await;
    let c = creds(&t);
    // Two pooled clients at once: the pool opens the tenant's two server connections.
    let a = connect_from(v4(1), p.pgbouncer_port, &c, true)
        .await
        .unwrap();
    let b = connect_from(v4(1), p.pgbouncer_port, &c, true)
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        a.simple_query("SELECT pg_sleep(0.3)"),
        b.simple_query("SELECT pg_sleep(0.3)")
    );
    ra.unwrap();
    rb.unwrap();
    drop((a, b));
    // The pooler gives idle server connections back after pgbouncer.server_idle_timeout_secs.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(p.settings.pgbouncer.server_idle_timeout_secs) + 20);
    loop {
        let last = match connect_from(v4(1), p.pg_port, &c, true).await {
            Ok(_) => break,
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "direct connections stayed refused after pooled use: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_clients_that_never_log_in_refuses_no_other_tenant() {
    use std::io::Write;
    let p = platform();
    let svc = p.tenants();
    let t = tenant_with(&svc, "flood-victim", 5, None).await;
    // This process needs a descriptor per socket.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        hard.min(8192),
        hard,
    );
    let mut held = Vec::new();
    for _ in 0..1000 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", p.pgbouncer_port)) else {
            break;
        };
        // One byte, so PgBouncer accepts the socket and counts it as a client logging in.
        let _ = s.write_all(&[0]);
        held.push(s);
    }
    assert!(held.len() >= 900, "only {} sockets opened", held.len());
    for port in [p.pgbouncer_port, p.pg_port] {
        connect_from(v4(2), port, &creds(&t), true)
            .await
            .unwrap_or_else(|e| panic!("a tenant was refused on {port} during the flood: {e}"));
    }
    drop(held);
    remove(&svc, &t).await;
}

/// A guard pass resets every tenant's settings: one test's pass must not reset another test's
/// tenant while that tenant is still setting them (PostgreSQL answers "tuple concurrently
/// updated" to the loser).
static GUARD_PASSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn what_a_tenant_persists_beyond_the_rules_is_reset_and_reported() {
    let _one_pass_at_a_time = GUARD_PASSES.lock().await;
    let p = platform();
    let svc = p.tenants();
    let t = tenant_with(&svc, "persister", 4, None).await;
    let (db, role) = (t.tenant.database_name.as_str(), t.tenant.username.as_str());
    let session = own_session(&t).await;
    for sql in [
        format!("ALTER ROLE \"{role}\" SET work_mem = '10GB'"),
        format!("ALTER ROLE \"{role}\" SET hash_mem_multiplier = 1000"),
        format!("ALTER ROLE \"{role}\" SET search_path = app, public"),
        format!("ALTER DATABASE \"{db}\" SET maintenance_work_mem = '2GB'"),
        format!("ALTER DATABASE \"{db}\" SET statement_timeout = 0"),
        format!("ALTER DATABASE \"{db}\" SET idle_in_transaction_session_timeout = 0"),
        format!("ALTER ROLE \"{role}\" IN DATABASE \"{db}\" SET work_mem = '4GB'"),
        format!("ALTER DATABASE \"{db}\" SET timezone = 'Europe/Paris'"),
        format!("ALTER DATABASE \"{db}\" CONNECTION LIMIT -1"),
    ] {
        session
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // temp_file_limit is superuser-only: a tenant cannot even set it for its session.
    assert!(
        session
            .batch_execute("SET temp_file_limit = -1")
            .await
            .is_err()
    );
    drop(session);

    let report = svc.check_guard_rails().await.unwrap();
    let mine: Vec<&String> = report
        .repairs
        .iter()
        .filter(|r| r.contains(role) || r.contains(db))
        .collect();
    for what in [
        "work_mem",
        "hash_mem_multiplier",
        "maintenance_work_mem",
        "statement_timeout",
        "idle_in_transaction_session_timeout",
        "connection limit",
    ] {
        assert!(
            mine.iter().any(|r| r.contains(what)),
            "{what} was not reset: {mine:?}"
        );
    }
    assert!(
        !mine
            .iter()
            .any(|r| r.contains("search_path") || r.contains("timezone"))
    );
    let server = su("postgres").await;
    let left: Vec<String> = server
        .query(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s
             WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
                OR s.setdatabase = (SELECT oid FROM pg_database WHERE datname = $2)
             ORDER BY 1",
            &[&role, &db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left,
        ["TimeZone=Europe/Paris", "search_path=app, public"],
        "{left:?}"
    );
    let limit: i32 = server
        .query_one(
            "SELECT datconnlimit FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(limit, 4);
    // A new session runs with the host's settings.
    let session = own_session(&t).await;
    let work_mem: String = session
        .query_one("SHOW work_mem", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(work_mem, "10GB");
    let timeout: String = session
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(timeout, "0");
    drop(session);
    // Each repair is in the audit trail.
    let control = su(&p.settings.control_db.name).await;
    let audited: i64 = control
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE action = 'database.guard_reset' AND resource_id = $1",
            &[&t.tenant.id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audited >= 6, "{audited} audit rows");
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_moves_every_place_the_limit_is_enforced() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant_with(&svc, "patch-limit", 4, None).await;
    let file = p
        .settings
        .pgbouncer
        .config_dir
        .join("pgbouncer_tenants.ini");
    let db = t.tenant.database_name.to_string();
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{db} = ")))
            .map(String::from)
    };
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        line(&text).is_some_and(|l| l.contains("max_db_connections=4")),
        "{text}"
    );
    svc.update(
        t.tenant.id,
        TenantPatch {
            max_connections: Some(6),
            ..TenantPatch::default()
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        line(&text)
            .is_some_and(|l| l.contains("max_db_connections=6") && l.contains("pool_size=6")),
        "{text}"
    );
    let server = su("postgres").await;
    let (d, r): (i32, i32) = {
        let row = server
            .query_one(
                "SELECT (SELECT datconnlimit FROM pg_database WHERE datname = $1),
                        (SELECT rolconnlimit FROM pg_roles WHERE rolname = $1)",
                &[&db],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((d, r), (6, 6));
    remove(&svc, &t).await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        line(&text).is_none(),
        "a deleted tenant keeps its pool entry:\n{text}"
    );
}

/// `GET .../stats` as the API answers it.
async fn api_stats(t: &Provisioned) -> serde_json::Value {
    let p = platform();
    reqwest::Client::new()
        .get(format!(
            "{}/api/databases/{}/stats",
            p.base_url, t.tenant.id
        ))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"]
        .clone()
}

/// Wait until the collector (every second on the test platform) puts the tenant in `state`.
async fn wait_for_state(svc: &TenantService, t: &Provisioned, state: QuotaState) {
    for _ in 0..120 {
        if svc.get(t.tenant.id).await.unwrap().quota_state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now = svc.get(t.tenant.id).await.unwrap();
    panic!(
        "{} never reached {state}: {} at {:?} bytes",
        t.tenant.database_name, now.quota_state, now.size_bytes
    );
}

/// Rows of incompressible text, about `kb` kB of them.
async fn write_kb(client: &tokio_postgres::Client, kb: u32) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS filler (v text);
             ALTER TABLE filler ALTER COLUMN v SET STORAGE EXTERNAL;
             INSERT INTO filler SELECT string_agg(md5(random()::text || g::text || i::text), '')
             FROM generate_series(1, {kb}) g, generate_series(1, 32) i GROUP BY g;"
        ))
        .await
}

/// Write until the database holds at least `mb` MB (in 256 kB steps, so a threshold is crossed
/// by little).
async fn fill_to(client: &tokio_postgres::Client, mb: f64) -> Result<(), tokio_postgres::Error> {
    loop {
        let size: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?
            .get(0);
        if size as f64 >= mb * 1024.0 * 1024.0 {
            return Ok(());
        }
        write_kb(client, 256).await?;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_quota_warns_then_makes_sessions_read_only_then_closes_the_database() {
    let p = platform();
    let svc = p.tenants();
    // A fresh database is about 7.5 MB: a 16 MB quota warns past 12.8 MB, makes new sessions
    // read-only past 16 MB and closes the database past 17.6 MB (grace 10%).
    let t = tenant_with(&svc, "quota", 5, Some(16)).await;
    let session = own_session(&t).await;
    fill_to(&session, 13.5).await.unwrap();
    wait_for_state(&svc, &t, QuotaState::Warning).await;
    let stats = api_stats(&t).await;
    assert_eq!(stats["quota_state"], "warning", "{stats}");
    assert_eq!(stats["max_size_mb"], 16);
    assert!(
        stats["warning"].as_str().unwrap().contains("quota"),
        "{stats}"
    );
    assert!(stats["quota_used_percent"].as_f64().unwrap() >= 80.0);

    // Past the quota: new sessions are read-only, the ones open are ended.
    fill_to(&session, 16.4).await.unwrap();
    wait_for_state(&svc, &t, QuotaState::ReadOnly).await;
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "a session opened before the quota was hit is still open"
    );
    let reader = own_session(&t).await;
    reader
        .simple_query("SELECT count(*) FROM filler")
        .await
        .unwrap();
    let e = write_kb(&reader, 64).await.unwrap_err();
    assert!(
        e.to_string().contains("read-only") || format!("{e:?}").contains("read-only"),
        "{e:?}"
    );

    // The tenant lifts the default for its session (the documented way to delete its way back)
    // and for its database (undone at the next pass), and writes past the grace instead: then
    // the database closes.
    reader
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    // Past the grace the watcher blocks the database and ends this session mid-fill.
    let _ = fill_to(&reader, 18.5).await;
    // Resetting the database's default too ends its sessions at the next pass (they would
    // have been read-only had they started then): this one may already be gone.
    let _ = reader
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" RESET default_transaction_read_only",
            t.tenant.database_name
        ))
        .await;
    wait_for_state(&svc, &t, QuotaState::Blocked).await;
    for (port, name) in crate::attack::ports() {
        assert!(
            login(
                port,
                v4(1),
                t.tenant.username.as_str(),
                t.password.expose(),
                t.tenant.database_name.as_str()
            )
            .await
            .is_err(),
            "{name}: the blocked database took a connection"
        );
    }
    // The operator raises the quota: it opens again, writable.
    svc.update(
        t.tenant.id,
        TenantPatch {
            max_size_mb: Some(200),
            ..TenantPatch::default()
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        svc.get(t.tenant.id).await.unwrap().quota_state,
        QuotaState::Ok
    );
    let session = own_session(&t).await;
    write_kb(&session, 256).await.unwrap();
    let control = su(&p.settings.control_db.name).await;
    let actions: Vec<String> = control
        .query(
            "SELECT action FROM audit_logs WHERE resource_id = $1 AND action LIKE 'database.quota_%' ORDER BY id",
            &[&t.tenant.id.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "database.quota_warning",
            "database.quota_read_only",
            "database.quota_blocked",
            "database.quota_ok"
        ]
    );
    drop(session);
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_inputs_are_checked() {
    let svc = platform().tenants();
    let e = svc
        .create(
            NewTenant {
                friendly_name: FriendlyName::parse("noisy bad quota").unwrap(),
                owner_email: OwnerEmail::parse("bad-quota@noisy.example.com").unwrap(),
                max_connections: Some(2),
                max_size_mb: Some(u64::MAX),
            },
            &AuditContext::cli(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, TenantError::Validation(ref v) if v.field == "maxSizeMb"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_budget_refuses_limits_the_host_cannot_keep() {
    use crate::harness::{free_port, temp_state_dir, test_settings};
    // A small host: 60 sessions, 3 + 3 reserved, 4 for the API's pool: 50 for tenants, no
    // overcommit.
    let mut settings = test_settings();
    settings.postgres.max_connections = 60;
    settings.postgres.superuser_reserved_connections = 3;
    settings.postgres.reserved_connections = 3;
    settings.api.pool_size = 4;
    settings.tenants.connection_overcommit = 1.0;
    settings.tenants.max_connections_cap = 40;
    settings.tenants.default_max_connections = 10;
    let opts = pgaas::dev::DevOptions {
        state_dir: temp_state_dir("budget"),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    let platform = pgaas::dev::DevPlatform::up(settings, &opts).await.unwrap();
    let svc = platform.tenants();
    let first = tenant_with(&svc, "budget-a", 30, None).await;
    let e = svc
        .create(
            NewTenant {
                friendly_name: FriendlyName::parse("noisy budget b").unwrap(),
                owner_email: OwnerEmail::parse("budget-b@noisy.example.com").unwrap(),
                max_connections: Some(30),
                max_size_mb: None,
            },
            &AuditContext::cli(),
        )
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, TenantError::Conflict(_)), "{message}");
    assert!(message.contains("20 are left"), "{message}");
    assert_eq!(
        pgaas::api::ApiError::from(e).status(),
        reqwest::StatusCode::CONFLICT
    );
    // Nothing was made for the refused request.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM databases")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let second = tenant_with(&svc, "budget-c", 20, None).await;
    let patch = |n| TenantPatch {
        max_connections: Some(n),
        ..TenantPatch::default()
    };
    let e = svc
        .update(first.tenant.id, patch(31), &AuditContext::cli())
        .await
        .unwrap_err();
    assert!(matches!(e, TenantError::Conflict(_)), "{e}");
    assert_eq!(svc.get(first.tenant.id).await.unwrap().max_connections, 30);
    svc.update(first.tenant.id, patch(25), &AuditContext::cli())
        .await
        .unwrap();
    // A host over its budget (as after an operator lowered postgres.max_connections): raising
    // a limit is refused, lowering one is the way back and goes through.
    sqlx::query("UPDATE databases SET max_connections = 40 WHERE id = $1")
        .bind(second.tenant.id.as_uuid())
        .execute(&platform.pool)
        .await
        .unwrap();
    let e = svc
        .update(first.tenant.id, patch(26), &AuditContext::cli())
        .await
        .unwrap_err();
    assert!(matches!(e, TenantError::Conflict(_)), "{e}");
    svc.update(first.tenant.id, patch(15), &AuditContext::cli())
        .await
        .expect("lowering a limit on a host over its budget");
    sqlx::query("UPDATE databases SET max_connections = 20 WHERE id = $1")
        .bind(second.tenant.id.as_uuid())
        .execute(&platform.pool)
        .await
        .unwrap();
    svc.update(first.tenant.id, patch(25), &AuditContext::cli())
        .await
        .unwrap();
    let out = pgaas_bin()
        .arg("--config")
        .arg(platform.layout.settings_file())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Connection budget: 45 of 50"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop((first, second));
    platform.down().unwrap();
}

/// Durability is the host's: a tenant that persists `synchronous_commit = off` (or `local`, or
/// `remote_write`) for its role or database would lose acknowledged commits on a crash or a
/// failover, without its clients knowing. The guard pass resets it; a stronger value stays, and
/// a session may still `SET` it for itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_persist_commits_weaker_than_the_hosts() {
    let _one_pass_at_a_time = GUARD_PASSES.lock().await;
    let p = platform();
    let svc = p.tenants();
    let t = tenant_with(&svc, "durable", 4, None).await;
    let (db, role) = (t.tenant.database_name.as_str(), t.tenant.username.as_str());
    let session = own_session(&t).await;
    for sql in [
        format!("ALTER ROLE \"{role}\" SET synchronous_commit = off"),
        format!("ALTER DATABASE \"{db}\" SET synchronous_commit = local"),
        format!("ALTER ROLE \"{role}\" IN DATABASE \"{db}\" SET synchronous_commit = remote_apply"),
    ] {
        session
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(session);
    let report = svc.check_guard_rails().await.unwrap();
    let mine: Vec<&String> = report
        .repairs
        .iter()
        .filter(|r| r.contains("synchronous_commit") && (r.contains(role) || r.contains(db)))
        .collect();
    assert_eq!(mine.len(), 2, "{:?}", report.repairs);
    let server = su("postgres").await;
    let left: Vec<String> = server
        .query(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s
             WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
                OR s.setdatabase = (SELECT oid FROM pg_database WHERE datname = $2)
             ORDER BY 1",
            &[&role, &db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["synchronous_commit=remote_apply"], "{left:?}");
    let session = own_session(&t).await;
    session
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    let now: String = session
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, "off", "a session may still choose for itself");
    drop(session);
    remove(&svc, &t).await;
}

/// A tenant's own session in `db` (one of its databases), over TLS like any client.
async fn session_in(t: &Provisioned, db: &str) -> Result<tokio_postgres::Client, String> {
    login(
        platform().pg_port,
        v4(1),
        t.tenant.username.as_str(),
        t.password.expose(),
        db,
    )
    .await
    .map_err(|e| format!("{e:?}"))
}

/// What a tenant over its quota tries so as to keep writing: a read-write default persisted for
/// its role, an open transaction holding its database's settings row (enforcement used to wait
/// on it and give up), a second database of its own (a shadow) outside the restriction, and,
/// once blocked, reopening its database from elsewhere. None of it holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_quota_holds_on_every_database_against_the_tenants_own_tricks() {
    let p = platform();
    let svc = p.tenants();
    // The shadow counts in the size (a fresh database is about 7.5 MB): a 24 MB quota.
    let t = tenant_with(&svc, "tricks", 6, Some(24)).await;
    let (db, role) = (t.tenant.database_name.as_str(), t.tenant.username.as_str());
    let (_, shadow, _) = svc
        .create_shadow(t.tenant.id, &AuditContext::cli())
        .await
        .unwrap();
    let server = su("postgres").await;
    let shadow_mb = server
        .query_one("SELECT pg_database_size($1::text)", &[&shadow])
        .await
        .unwrap()
        .get::<_, i64>(0) as f64
        / (1024.0 * 1024.0);
    let writer = own_session(&t).await;
    writer
        .batch_execute(&format!(
            "ALTER ROLE \"{role}\" SET default_transaction_read_only = off"
        ))
        .await
        .unwrap();
    let holder = own_session(&t).await;
    holder
        .batch_execute(&format!(
            "BEGIN; ALTER DATABASE \"{db}\" SET work_mem = '8MB'"
        ))
        .await
        .unwrap();
    fill_to(&writer, 24.4 - shadow_mb).await.unwrap();
    wait_for_state(&svc, &t, QuotaState::ReadOnly).await;
    assert!(
        holder.simple_query("SELECT 1").await.is_err(),
        "the session holding the settings row outlived enforcement"
    );
    for name in [db, shadow.as_str()] {
        let s = session_in(&t, name).await.unwrap();
        let ro: String = s
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ro, "on", "{name}: a new session is not read-only");
        let e = write_kb(&s, 64).await.unwrap_err();
        assert!(format!("{e:?}").contains("read-only"), "{name}: {e:?}");
    }
    let overrides: i64 = server
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c
              WHERE s.setrole = $1::text::regrole AND c LIKE 'default_transaction_read_only=%'",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overrides, 0, "the role-level read-write default survived");

    // Past the grace, every database of the tenant closes, the shadow with the main one.
    let w = session_in(&t, db).await.unwrap();
    w.batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    let _ = fill_to(&w, 27.0 - shadow_mb).await;
    wait_for_state(&svc, &t, QuotaState::Blocked).await;
    for name in [db, shadow.as_str()] {
        assert!(
            session_in(&t, name).await.is_err(),
            "{name} took a connection while its tenant is blocked"
        );
    }
    // Reopened behind enforcement's back (a tenant could, from any database it still reached),
    // it is closed again by the next pass, and the session it let in is ended.
    // The next pass may close it before the session is in: reopen until one gets in.
    let mut sneaked = None;
    for _ in 0..40 {
        server
            .batch_execute(&format!(
                "SET ROLE \"{role}\"; ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true; RESET ROLE"
            ))
            .await
            .unwrap();
        if let Ok(s) = session_in(&t, db).await {
            sneaked = Some(s);
            break;
        }
    }
    let sneaked = sneaked.expect("no session got into the reopened database");
    let mut closed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let open: bool = server
            .query_one(
                "SELECT datallowconn FROM pg_database WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if !open && sneaked.simple_query("SELECT 1").await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the reopened database stayed open, or its session did"
    );
    remove(&svc, &t).await;
}
