//! Failover time and the cost of synchronous replication: `cargo bench --bench failover`.
//!
//! One Patroni cluster on this machine (`tests/it/ha_cluster.rs`: three etcd members, two
//! PostgreSQL nodes on loopback addresses of their own, configured by what pgaas renders, Patroni
//! ttl 10 s, loop_wait 1 s, retry_timeout 4 s), `pgaas serve` on the primary. In one run:
//!
//! 1. the primary alone (no standby): `BENCH_PROVISIONS` (10, after 2 untimed) tenants made
//!    through the API and `BENCH_WRITES` (300) single-row commits of a tenant, each timed;
//! 2. the same with the standby running as the synchronous standby (`synchronous_mode`), and the
//!    ratios synchronous / alone of the medians;
//! 3. `BENCH_FAILOVERS` (10) failovers: the primary's Patroni, PostgreSQL and API killed with
//!    SIGKILL, then the time until a tenant's write through its multi-host URL (psql, a new
//!    connection per attempt) succeeds again; the killed node is started again and waited for as
//!    the synchronous standby before the next round. p50 and max.
//!
//! Everything shares the machine (2 cores here), which the figures include.

#[path = "../tests/it/ha_cluster.rs"]
#[allow(dead_code)]
mod ha_cluster;
#[path = "../tests/it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use ha_cluster::{Api, Cluster, insert, psql_retrying, wait_status};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Sample {
    provision_p50: Duration,
    write_p50: Duration,
    write_p99: Duration,
}

/// Tenants made through the API, then single-row commits of one of them, timed.
async fn measure(cl: &Cluster, api: &Api, primary: usize, tag: &str) -> Res<Sample> {
    let mut provision = Vec::new();
    let mut db = String::new();
    // Two untimed first, so neither side pays for warming up the API and the server.
    let warm = 2;
    for i in 0..env_num("BENCH_PROVISIONS", 10) + warm {
        let t = Instant::now();
        let (code, body, _) = api
            .call(
                "POST",
                "/api/databases",
                Some(json!({ "friendlyName": format!("{tag} {i}"), "ownerEmail": "bench@example.com" })),
            )
            .await;
        if i >= warm {
            provision.push(t.elapsed());
        }
        if code != 201 {
            return Err(format!("provisioning: {code} {body}").into());
        }
        db = body["data"]["database_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let c = cl.nodes[primary].su(&db).await?;
    c.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    let mut writes = Vec::new();
    for i in 0..env_num("BENCH_WRITES", 300) as i64 {
        let t = Instant::now();
        c.execute("INSERT INTO w (id) VALUES ($1)", &[&i]).await?;
        writes.push(t.elapsed());
    }
    provision.sort();
    writes.sort();
    Ok(Sample {
        provision_p50: percentile(&provision, 0.5),
        write_p50: percentile(&writes, 0.5),
        write_p99: percentile(&writes, 0.99),
    })
}

async fn run() -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-failover-")
        .tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut cl = Cluster::start(dir.path().to_path_buf(), 1).await;
    let primary = cl.primary().await;
    cl.start_api(primary, &[primary]).await;
    let api = Api {
        http: cl.http.clone(),
        base: format!("http://{}:{}", cl.nodes[primary].addr, cl.api_port),
        key: cl.api_key.clone(),
    };

    eprintln!("1/3 the primary alone");
    let alone = measure(&cl, &api, primary, "alone").await?;
    let other = 1 - primary;
    let owner = cl.owner.clone();
    cl.nodes[other].start_patroni(&owner);
    wait_status(
        &cl.http,
        &cl.nodes[other],
        "/sync",
        Duration::from_secs(120),
    )
    .await;
    eprintln!("2/3 with a synchronous standby");
    let sync = measure(&cl, &api, primary, "sync").await?;

    // A tenant for the writes across failovers, and its multi-host URL.
    let (code, body, _) = api
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "failover", "ownerEmail": "bench@example.com" })),
        )
        .await;
    if code != 201 {
        return Err(format!("provisioning: {code} {body}").into());
    }
    let url = body["data"]["connection_string"]
        .as_str()
        .unwrap_or_default()
        .replace(
            "sslmode=require",
            &format!(
                "sslmode=verify-ca&sslrootcert={}",
                cl.ca.cert_file.display()
            ),
        )
        + "&connect_timeout=2";
    let created = psql_retrying(
        &url,
        "CREATE TABLE acked (id bigint PRIMARY KEY)",
        Duration::from_secs(10),
    );
    if !created {
        return Err("the tenant cannot use its URL".into());
    }

    let rounds = env_num("BENCH_FAILOVERS", 10);
    let mut failovers = Vec::new();
    let mut id = 1u64;
    for round in 1..=rounds {
        let p = cl.primary().await;
        let s = 1 - p;
        wait_status(&cl.http, &cl.nodes[s], "/sync", Duration::from_secs(120)).await;
        while !insert(&url, id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        id += 1;
        let killed = Instant::now();
        cl.nodes[p].kill_hard();
        loop {
            let ok = insert(&url, id);
            id += 1;
            if ok {
                break;
            }
            if killed.elapsed() > Duration::from_secs(180) {
                return Err(format!("round {round}: no write within 180 s").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed.elapsed();
        eprintln!(
            "3/3 failover {round}/{rounds}: {} -> {}, writes again after {:.1} s",
            cl.nodes[p].name,
            cl.nodes[s].name,
            took.as_secs_f64()
        );
        failovers.push(took);
        cl.nodes[p].start_patroni(&owner);
    }
    failovers.sort();

    println!(
        "failover bench (Patroni ttl 10 s, loop_wait 1 s; 2 cores, everything on this machine)"
    );
    println!(
        "  provisioning p50: alone {:.0} ms, with a synchronous standby {:.0} ms (ratio {:.2})",
        ms(alone.provision_p50),
        ms(sync.provision_p50),
        ms(sync.provision_p50) / ms(alone.provision_p50)
    );
    println!(
        "  single-row commit p50: alone {:.2} ms, synchronous {:.2} ms (ratio {:.2}); p99 {:.2} / {:.2} ms",
        ms(alone.write_p50),
        ms(sync.write_p50),
        ms(sync.write_p50) / ms(alone.write_p50),
        ms(alone.write_p99),
        ms(sync.write_p99)
    );
    println!(
        "  failover, SIGKILL of the primary to the first write through the multi-host URL, {} rounds: p50 {:.1} s, max {:.1} s",
        failovers.len(),
        percentile(&failovers, 0.5).as_secs_f64(),
        failovers.last().map_or(0.0, Duration::as_secs_f64)
    );
    drop(cl);
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("failover bench failed: {e}");
        std::process::exit(1);
    }
}
