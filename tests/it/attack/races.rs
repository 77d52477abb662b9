//! Racing the API. A new database used to accept CONNECT from PUBLIC between `CREATE DATABASE`
//! and `REVOKE ... FROM PUBLIC`; a tenant polling `pg_database` got in (1 race in 20), kept its
//! session after the REVOKE, and later read the owner's data. A create cut short by a crash left
//! the database open the same way until the reconciler ran.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use pgaas::pg::cluster::Cluster;
use rand::Rng;

use super::*;
use crate::harness::{free_port, pgaas_bin, temp_state_dir, test_settings};

const CREATIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_polling_for_new_databases_never_gets_into_one() {
    let p = platform();
    let svc = p.tenants();
    let attacker = tenant(&svc, "racer").await;
    let stop = Arc::new(AtomicBool::new(false));
    let wins = Arc::new(AtomicU32::new(0));
    let tries = Arc::new(AtomicU32::new(0));
    let poller = {
        let (stop, wins, tries) = (stop.clone(), wins.clone(), tries.clone());
        let (user, pw, own) = (
            attacker.tenant.username.to_string(),
            attacker.password.expose().to_string(),
            attacker.tenant.database_name.to_string(),
        );
        let session = own_session(&attacker).await;
        tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::from([own]);
            // Sessions that got in are kept open, as an attacker would.
            let kept = Arc::new(tokio::sync::Mutex::new(Vec::new()));
            let mut attempts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let rows = session
                    .query(
                        "SELECT datname::text FROM pg_database WHERE datname LIKE 'tenant\\_%'",
                        &[],
                    )
                    .await
                    .unwrap();
                for row in rows {
                    let name: String = row.get(0);
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    for _ in 0..3 {
                        let (user, pw, name, wins, tries, kept) = (
                            user.clone(),
                            pw.clone(),
                            name.clone(),
                            wins.clone(),
                            tries.clone(),
                            kept.clone(),
                        );
                        attempts.push(tokio::spawn(async move {
                            let until = tokio::time::Instant::now() + Duration::from_millis(300);
                            while tokio::time::Instant::now() < until {
                                for (port, _) in ports() {
                                    tries.fetch_add(1, Ordering::Relaxed);
                                    if let Ok(c) = login(port, v4(1), &user, &pw, &name).await {
                                        wins.fetch_add(1, Ordering::Relaxed);
                                        kept.lock().await.push(c);
                                    }
                                }
                            }
                        }));
                    }
                }
            }
            for a in attempts {
                a.await.unwrap();
            }
            kept.lock().await.len()
        })
    };
    let mut made = Vec::new();
    for _ in 0..CREATIONS {
        made.push(tenant(&svc, "race-victim").await);
    }
    stop.store(true, Ordering::Relaxed);
    let kept = poller.await.unwrap();
    let (wins, tries) = (wins.load(Ordering::Relaxed), tries.load(Ordering::Relaxed));
    assert!(
        tries >= CREATIONS as u32,
        "the attacker tried only {tries} logins: the race was not run"
    );
    assert_eq!(
        wins, 0,
        "the attacker got into a new database {wins} times in {tries} tries"
    );
    assert_eq!(kept, 0);
    // Nobody but the owners has a session in any of them.
    let server = su("postgres").await;
    let names: Vec<String> = made
        .iter()
        .map(|t| t.tenant.database_name.to_string())
        .collect();
    let strangers: i64 = server
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = ANY($1) AND usename::text <> datname::text",
            &[&names],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strangers, 0);
    for t in &made {
        remove(&svc, t).await;
    }
    remove(&svc, &attacker).await;
}

/// `pgaas serve` as its own process, killed with SIGKILL while creates are in flight, again and
/// again. At no instant may a database not yet handed out take a connection from anyone; the
/// next start's reconciler undoes what the crashes left.
#[tokio::test(flavor = "multi_thread")]
async fn creates_cut_short_by_a_crash_leave_nothing_open() {
    let dir = temp_state_dir("crash-create");
    let opts = pgaas::dev::DevOptions {
        state_dir: dir.clone(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    let platform = pgaas::dev::DevPlatform::up(test_settings(), &opts)
        .await
        .unwrap();
    let key = platform
        .first_api_key
        .as_ref()
        .unwrap()
        .expose()
        .to_string();
    let cfg = platform.layout.settings_file();
    let svc = platform.tenants();
    let attacker = tenant(&svc, "crash-attacker").await;
    let admin = platform.cluster.admin_options();
    let http = reqwest::Client::new();
    let serve = |port: u16| {
        pgaas_bin()
            .arg("--config")
            .arg(&cfg)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_healthy = |port: u16| {
        let http = http.clone();
        async move {
            for _ in 0..200 {
                if let Ok(r) = http
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .send()
                    .await
                {
                    if r.status() == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("pgaas serve did not come up");
        }
    };
    let (mut kills, mut cut_short) = (0, 0);
    for round in 0..8 {
        let port = free_port();
        let mut child = serve(port);
        wait_healthy(port).await;
        let mut requests = Vec::new();
        for i in 0..3 {
            let (http, key) = (http.clone(), key.clone());
            requests.push(tokio::spawn(async move {
                http.post(format!("http://127.0.0.1:{port}/api/databases"))
                    .header("X-API-Key", key)
                    .json(&serde_json::json!({
                        "friendlyName": format!("crash {round}.{i}"),
                        "ownerEmail": format!("crash-{round}-{i}@attack.example.com"),
                    }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        let delay = rand::rng().random_range(5..250);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        for r in requests {
            if !matches!(r.await.unwrap(), Ok(201)) {
                cut_short += 1;
            }
        }
        check_nothing_open(&admin, &platform.settings, &attacker, &platform).await;
    }
    assert!(
        kills == 8 && cut_short > 0,
        "no create was cut short: the crashes missed"
    );

    // The next start finishes the job: no half-made tenant, no database without its row.
    let port = free_port();
    let mut child = serve(port);
    wait_healthy(port).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut control: sqlx::PgConnection =
        sqlx::Connection::connect_with(&admin.clone().database(&platform.settings.control_db.name))
            .await
            .unwrap();
    let stuck: i64 =
        sqlx::query_scalar("SELECT count(*) FROM databases WHERE status = 'provisioning'")
            .fetch_one(&mut control)
            .await
            .unwrap();
    assert_eq!(stuck, 0, "the reconciler left half-made tenants");
    let rows: Vec<String> = sqlx::query_scalar("SELECT database_name FROM databases")
        .fetch_all(&mut control)
        .await
        .unwrap();
    let mut server: sqlx::PgConnection =
        sqlx::Connection::connect_with(&admin.clone().database("postgres"))
            .await
            .unwrap();
    let dbs: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'tenant\\_%'")
            .fetch_all(&mut server)
            .await
            .unwrap();
    for db in dbs {
        assert!(
            rows.contains(&db),
            "{db} has no row after the reconciler ran"
        );
    }
    platform.down().unwrap();
}

/// Every tenant database that is not handed out yet (its row is not `active`, or there is no
/// row) is closed to connections or to PUBLIC, and the attacker cannot get in on either port.
async fn check_nothing_open(
    admin: &sqlx::postgres::PgConnectOptions,
    settings: &pgaas::settings::Settings,
    attacker: &Provisioned,
    platform: &pgaas::dev::DevPlatform,
) {
    let mut control: sqlx::PgConnection =
        sqlx::Connection::connect_with(&admin.clone().database(&settings.control_db.name))
            .await
            .unwrap();
    let active: Vec<String> =
        sqlx::query_scalar("SELECT database_name FROM databases WHERE status = 'active'")
            .fetch_all(&mut control)
            .await
            .unwrap();
    let mut server: sqlx::PgConnection =
        sqlx::Connection::connect_with(&admin.clone().database("postgres"))
            .await
            .unwrap();
    let dbs: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT datname::text, datallowconn, has_database_privilege('public', oid, 'CONNECT')
         FROM pg_database WHERE datname LIKE 'tenant\\_%'",
    )
    .fetch_all(&mut server)
    .await
    .unwrap();
    let ca = platform.settings.tls.ca_file.clone().unwrap();
    let ports = [
        platform.settings.postgres.port,
        platform.settings.pgbouncer.port,
    ];
    let creds = |db: &str| crate::allowlist::Creds {
        user: attacker.tenant.username.to_string(),
        password: attacker.password.expose().to_string(),
        database: db.to_string(),
    };
    // The attacker's logins work where they should, so a refusal below means something.
    for port in ports {
        let own = creds(attacker.tenant.database_name.as_str());
        crate::allowlist::connect_with_ca(&ca, v4(1), port, &own, true)
            .await
            .unwrap_or_else(|e| panic!("the attacker cannot reach its own database: {e}"));
    }
    for (db, allow_conn, public_connect) in dbs {
        assert!(!public_connect || !allow_conn, "{db} is open to PUBLIC");
        if active.contains(&db) {
            continue;
        }
        for port in ports {
            let r = crate::allowlist::connect_with_ca(&ca, v4(1), port, &creds(&db), true).await;
            assert!(r.is_err(), "the attacker got into {db} on port {port}");
        }
    }
}
