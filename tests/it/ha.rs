//! High availability with the real engines (`ha_cluster`): a tenant writes continuously through
//! a libpq multi-host URL while the primary's machine dies (SIGKILL of pgaas, Patroni and
//! PostgreSQL); every acknowledged write is on the new primary, the old one rejoins as a
//! standby, and the access rules hold on both.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    allowlist::{Creds, connect_to, v4},
    attack::refused_before_password,
    ha_cluster::{Cluster, Node, insert, insert_retrying, psql_ok, wait_primary, wait_status},
    harness::temp_state_dir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_is_replaced_with_nothing_acknowledged_lost_and_the_rules_hold() {
    let mut cl = Cluster::start(temp_state_dir("ha"), 2).await;
    let mut primary = cl.primary().await;
    let mut standby = 1 - primary;
    t_log(&format!("primary {}", cl.nodes[primary].name));
    // Synchronous replication: the standby confirms commits before they are acknowledged.
    wait_status(
        &cl.http,
        &cl.nodes[standby],
        "/sync",
        Duration::from_secs(90),
    )
    .await;
    cl.start_api(primary, &[primary, standby]).await;
    let api = cl.apis();
    let Cluster {
        mut nodes,
        ports,
        ca,
        secrets,
        owner,
        http,
        ..
    } = cl;
    for (i, role) in [(primary, "primary"), (standby, "standby")] {
        let (code, health, _) = api(i).call("GET", "/health", None).await;
        assert_eq!(code, 200, "{health}");
        assert_eq!(health["cluster"]["role"], role, "{health}");
        assert_eq!(health["cluster"]["node"], nodes[i].name, "{health}");
    }

    // Tenants are made through the primary's API; the standby's refuses writes cleanly.
    let create = json!({ "friendlyName": "ha writer", "ownerEmail": "ha@example.com" });
    let (code, body, retry) = api(standby)
        .call("POST", "/api/databases", Some(create.clone()))
        .await;
    assert_eq!(code, 503, "a write on the standby's API: {body}");
    assert!(retry.is_some(), "503 without Retry-After: {body}");
    let (code, body, _) = api(primary)
        .call("POST", "/api/databases", Some(create))
        .await;
    assert_eq!(code, 201, "{body}");
    let writer_db = body["data"]["database_name"].as_str().unwrap().to_string();
    let writer_url = body["data"]["connection_string"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        // The primary, which answered, first.
        writer_url.contains(&format!(
            "@{}:{2},{}:{2}/",
            nodes[primary].addr, nodes[standby].addr, ports.pg
        )) && writer_url.contains("target_session_attrs=read-write"),
        "not a multi-host URL: {writer_url}"
    );
    let (code, body, _) = api(primary)
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "ha locked", "ownerEmail": "ha@example.com" })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let locked_id = body["data"]["id"].as_str().unwrap().to_string();
    let locked = Creds {
        user: body["data"]["username"].as_str().unwrap().into(),
        password: body["data"]["password"].as_str().unwrap().into(),
        database: body["data"]["database_name"].as_str().unwrap().into(),
    };
    // Read by the standby through replication: its API answers reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body, _) = api(standby)
            .call("GET", &format!("/api/databases/{locked_id}"), None)
            .await;
        if code == 200 {
            break;
        }
        assert!(
            code == 404 && Instant::now() < deadline,
            "a read on the standby's API: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An allow-list change through the primary: in force there when the API answers, and on
    // the standby (whose files only its own pgaas writes, from the replicated rows) soon after.
    let standby_addr = IpAddr::V4(nodes[standby].addr);
    // Synchronous commit waits for the standby's flush, not its replay: the new role may take
    // a moment to be visible there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = connect_to(&ca.cert_file, v4(8), standby_addr, ports.pg, &locked, true).await
    {
        assert!(
            Instant::now() < deadline,
            "the open tenant cannot reach the standby: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body, _) = api(primary)
        .call(
            "POST",
            &format!("/api/databases/{locked_id}/whitelist"),
            Some(json!({ "ipAddress": "127.0.0.7/32", "description": "the only client" })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let answered = Instant::now();
    let r = connect_to(
        &ca.cert_file,
        v4(8),
        IpAddr::V4(nodes[primary].addr),
        ports.pg,
        &locked,
        true,
    )
    .await;
    refused_before_password(
        &r,
        "an unlisted address on the primary, once the API answered",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = connect_to(&ca.cert_file, v4(8), standby_addr, ports.pg, &locked, true).await;
        if r.is_err() {
            refused_before_password(&r, "an unlisted address on the standby");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never enforced the new allow-list:\n{}",
            nodes[standby].serve_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t_log(&format!(
        "allow-list in force on the standby {:?} after the primary's API answered",
        answered.elapsed()
    ));
    connect_to(&ca.cert_file, v4(7), standby_addr, ports.pg, &locked, true)
        .await
        .unwrap_or_else(|e| panic!("the listed address is refused on the standby: {e}"));

    // The cluster's roles are for the nodes alone: refused from anywhere else before any
    // password, on both nodes; the superuser never over TCP.
    for node in &nodes[..2] {
        for (user, db) in [
            ("pgaas_rewind", "postgres"),
            ("pgaas_replicator", "postgres"),
            ("postgres", "postgres"),
        ] {
            let creds = Creds {
                user: user.into(),
                password: secrets.rewind.expose().into(),
                database: db.into(),
            };
            let r = connect_to(
                &ca.cert_file,
                v4(9),
                IpAddr::V4(node.addr),
                ports.pg,
                &creds,
                true,
            )
            .await;
            refused_before_password(&r, &format!("{user} from 127.0.0.9 to {}", node.name));
        }
    }

    // Continuous writes through the multi-host URL, each acknowledged one recorded.
    let url = writer_url.replace(
        "sslmode=require",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.cert_file.display()),
    ) + "&connect_timeout=2";
    let created = psql_ok(&url, "CREATE TABLE acked (id bigint PRIMARY KEY)");
    assert!(created, "the tenant cannot use its URL");
    assert!(insert(&url, 0), "the tenant cannot write through {url}");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
        std::thread::spawn(move || {
            let mut id = 1;
            while !stop.load(Ordering::Relaxed) {
                if insert(&url, id) {
                    acked.lock().unwrap().push((id, Instant::now()));
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
                id += 1;
            }
        })
    };
    let wait_acks = |n: usize, after: Instant, what: &'static str| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let count = acked
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, t)| *t > after)
                    .count();
                if count >= n {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: only {count} writes acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_acks(20, Instant::now(), "before the failover").await;

    // The primary's machine dies.
    let killed_at = Instant::now();
    nodes[primary].kill_hard();
    let new_primary = wait_primary(&http, &nodes[..2], Duration::from_secs(90)).await;
    assert_eq!(new_primary, standby, "the standby was not promoted");
    wait_acks(20, killed_at, "after the failover").await;
    // The longest pause between acknowledgements from the kill on: the outage a client saw.
    let times: Vec<Instant> = std::iter::once(killed_at)
        .chain(
            acked
                .lock()
                .unwrap()
                .iter()
                .map(|(_, t)| *t)
                .filter(|t| *t > killed_at),
        )
        .collect();
    let outage = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    t_log(&format!(
        "writes stopped for {outage:?} when the primary died"
    ));
    (primary, standby) = (standby, primary);
    // Its standby gone, the new primary acknowledges commits on its machine alone, and
    // `pgaas status` says so, and why.
    nodes[primary]
        .wait_status_says(&format!(
            "commits are acknowledged on {} only (one machine)",
            nodes[primary].name
        ))
        .await;

    // Every acknowledged write is on the new primary.
    let n = all_acknowledged_on(&nodes[primary], &writer_db, &acked).await;
    t_log(&format!("{n} acknowledged writes, none lost"));

    // The new primary enforces exactly the rules the old one did.
    let target = IpAddr::V4(nodes[primary].addr);
    connect_to(&ca.cert_file, v4(7), target, ports.pg, &locked, true)
        .await
        .unwrap_or_else(|e| panic!("the listed address is refused on the new primary: {e}"));
    let r = connect_to(&ca.cert_file, v4(8), target, ports.pg, &locked, true).await;
    refused_before_password(&r, "an unlisted address on the new primary");
    let plain = connect_to(&ca.cert_file, v4(7), target, ports.pg, &locked, false).await;
    assert!(plain.is_err(), "plaintext accepted on the new primary");

    // The old primary comes back and rejoins as a standby of the new one (pg_rewind if it
    // had diverged), and catches up with the writes made without it.
    nodes[standby].start_patroni(&owner);
    wait_status(&http, &nodes[standby], "/replica", Duration::from_secs(120)).await;
    wait_status(&http, &nodes[standby], "/sync", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = acked.lock().unwrap().len();
        let c = nodes[standby].su(&writer_db).await.unwrap();
        let have: i64 = c
            .query_one("SELECT count(*) FROM acked", &[])
            .await
            .unwrap()
            .get(0);
        if have as usize >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined node has {have} of {total} rows"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all_acknowledged_on(&nodes[standby], &writer_db, &acked).await;
    nodes[standby].start_serve();
    nodes[standby].wait_health(&http).await;
    let (_, health, _) = api(standby).call("GET", "/health", None).await;
    assert_eq!(health["cluster"]["role"], "standby", "{health}");
    let (_, health, _) = api(primary).call("GET", "/health", None).await;
    assert_eq!(health["cluster"]["role"], "primary", "{health}");
    let (code, body, _) = api(primary)
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "after failover", "ownerEmail": "ha@example.com" })),
        )
        .await;
    assert_eq!(code, 201, "the new primary's API: {body}");
    let (code, body, retry) = api(standby)
        .call("DELETE", &format!("/api/databases/{locked_id}"), None)
        .await;
    assert_eq!(code, 503, "a write on the rejoined standby's API: {body}");
    assert!(retry.is_some());
    // It is read-only: the URL's read-write attribute never lands a client on it.
    let c = nodes[standby].su(&writer_db).await.unwrap();
    let ro: String = c
        .query_one("SHOW transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");

    // etcd answers only TLS clients holding a certificate from the cluster's CA: neither plain
    // HTTP nor TLS without a client certificate reaches it (whoever writes to it controls what
    // Patroni applies to PostgreSQL).
    let etcd = format!(
        "{}:{}",
        nodes[2].addr, nodes[2].settings.cluster.etcd_client_port
    );
    let plain = http.get(format!("http://{etcd}/v3/kv/range")).send().await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "etcd answered plain HTTP: {plain:?}"
    );
    let ca_pem = std::fs::read(&ca.cert_file).unwrap();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let r = anonymous
        .post(format!("https://{etcd}/v3/kv/range"))
        .body(r#"{"key":"Lw=="}"#)
        .send()
        .await;
    assert!(
        r.is_err(),
        "etcd answered a client without a certificate: {r:?}"
    );

    // A planned switchover with `pgaas cluster switchover`, while a client writes and retries
    // each write until it is acknowledged: every write goes through, none is lost. Without the
    // password Patroni's REST API refuses it.
    let refused = http
        .post(nodes[primary].rest("/switchover"))
        .json(&json!({ "leader": nodes[primary].name }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        401,
        "an unauthenticated switchover"
    );
    let writer = {
        let (stop, url) = (Arc::new(AtomicBool::new(false)), url.clone());
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut id = 2_000_000;
            while !flag.load(Ordering::Relaxed) {
                let took = insert_retrying(&url, id, Duration::from_secs(60));
                assert!(took.is_some(), "write {id} not acknowledged within 60 s");
                done.push((id, took.unwrap()));
                id += 1;
            }
            done
        });
        (stop, handle)
    };
    std::thread::sleep(Duration::from_secs(1));
    let out = nodes[primary].cli(&["cluster", "switchover"]);
    assert!(
        out.contains(&format!("{} is the primary", nodes[standby].name)),
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(2));
    writer.0.store(true, Ordering::Relaxed);
    let done = writer.1.join().unwrap();
    let longest = done.iter().map(|(_, d)| *d).max().unwrap_or_default();
    t_log(&format!(
        "switchover: {} writes, the longest took {longest:?} with its retries",
        done.len()
    ));
    (primary, standby) = (standby, primary);
    let c = nodes[primary].su(&writer_db).await.unwrap();
    for (id, _) in &done {
        let n: i64 = c
            .query_one("SELECT count(*) FROM acked WHERE id = $1", &[&(*id as i64)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "write {id} acknowledged but not on the new primary");
    }
    wait_status(&http, &nodes[standby], "/sync", Duration::from_secs(60)).await;

    // `pgaas status` shows the cluster as Patroni and etcd see it, and the standby as the
    // primary's PostgreSQL streams to it (synchronously, a moment after Patroni's key says so).
    nodes[standby]
        .wait_status_says(&format!(
            "streams to: {} (streaming, sync)",
            nodes[standby].name
        ))
        .await;
    let text = nodes[standby].status();
    for needle in [
        "Cluster pgaas_it (this node: ",
        " leader ",
        " sync_standby ",
        "etcd: n1 healthy, n2 healthy, w healthy",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} not in `pgaas status`:\n{text}"
        );
    }
    assert!(!text.contains("WARNING"), "{text}");

    // pgaas.yaml changed after Patroni made the cluster: Patroni keeps its cluster-wide
    // settings in etcd and never reads config.yml's again, so install sends the differences
    // through its REST API (from either node), and every member gets them; max_connections
    // then waits for a restart, which `pgaas status` reports.
    let mut changed = nodes[standby].settings.clone();
    changed.cluster.maximum_lag_on_failover_bytes += 1;
    changed.postgres.max_connections += 10;
    let standby_ip: IpAddr = nodes[standby].addr.into();
    let sync = |password: Option<&str>| {
        let (http, changed, password) =
            (http.clone(), changed.clone(), password.map(str::to_string));
        async move {
            pgaas::install::cluster_status::sync_patroni_config(
                &http,
                &changed,
                standby_ip,
                password.as_deref(),
            )
            .await
            .unwrap()
        }
    };
    let mut lines = sync(None).await;
    lines.sort();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("maximum_lag_on_failover: ")
            && lines[1].starts_with("postgresql.parameters.max_connections: "),
        "{lines:?}"
    );
    let refused = pgaas::install::cluster_status::sync_patroni_config(
        &http,
        &changed,
        standby_ip,
        Some("not-the-password"),
    )
    .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("401")),
        "a change without Patroni's password: {refused:?}"
    );
    assert_eq!(sync(Some(secrets.patroni.expose())).await.len(), 2);
    let config = format!("http://{}:{}/config", nodes[primary].addr, ports.patroni);
    // The change went to the standby's Patroni; the primary's learns it from etcd within a
    // loop or two.
    let mut live = serde_json::Value::Null;
    for _ in 0..50 {
        live = http
            .get(&config)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if live["maximum_lag_on_failover"] == json!(changed.cluster.maximum_lag_on_failover_bytes) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        live["maximum_lag_on_failover"],
        json!(changed.cluster.maximum_lag_on_failover_bytes),
        "the primary's Patroni: {live}"
    );
    assert!(
        sync(None).await.is_empty(),
        "a second install has nothing to send"
    );
    nodes[primary]
        .wait_status_says(&format!(
            "{} has settings waiting for a restart",
            nodes[primary].name
        ))
        .await;

    // etcd loses a member: nothing changes but a warning. It loses a second, and with it the
    // majority: no failover could happen now, but the primary keeps taking writes well past
    // the leader key's lifetime (Patroni's failsafe mode: every member still answers).
    nodes[2].kill_etcd();
    assert!(insert(&url, 1_000_000), "a write with one etcd member down");
    // (If the lost member led etcd's raft, the others elect a new leader first.)
    nodes[standby]
        .wait_status_says("one more loss stops failover")
        .await;
    nodes[standby].kill_etcd();
    let ttl = Duration::from_secs(u64::from(nodes[0].settings.cluster.ttl_secs));
    let until = Instant::now() + ttl * 2;
    let mut id = 1_000_001;
    while Instant::now() < until {
        assert!(
            insert(&url, id),
            "a write failed with etcd's majority lost:\n{}",
            nodes[primary].log_tail()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    nodes[primary].wait_status_says("no majority").await;
}

/// Every acknowledged id is in the node's table; how many there are.
async fn all_acknowledged_on(node: &Node, db: &str, acked: &Mutex<Vec<(u64, Instant)>>) -> usize {
    let acked: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let c = node.su(db).await.unwrap();
    let rows = c.query("SELECT id FROM acked", &[]).await.unwrap();
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !have.contains(&(*id as i64)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing on {}: {:?}",
        lost.len(),
        node.name,
        &lost[..lost.len().min(20)]
    );
    acked.len()
}

fn t_log(msg: &str) {
    eprintln!("ha: {msg}");
}
