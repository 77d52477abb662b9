//! What the noisy-neighbour limits cost, measured in one run: `cargo bench --bench noisy`.
//!
//! Brings up its own platform and makes `BENCH_TENANTS` real tenants (default 1 000), then
//! measures, with and without the enforcement, in the same run:
//!
//! (a) a connect through PgBouncer (TLS + SCRAM + `SELECT 1`) of a tenant with its per-tenant
//!     pool entry (limits) against the same tenant without it (its line taken out of
//!     `pgbouncer_tenants.ini`, so the `*` entry serves it), interleaved in batches;
//! (b) provisioning through the tenant service with the pooler's files (budget check, auth file
//!     and per-tenant limits rewritten and PgBouncer reloaded) against a service without them
//!     (budget check only), interleaved;
//! (c) one stats-collector pass over every tenant (one query, sizes cached), one pass with sizes
//!     recomputed, one quota-enforcement pass and one guard-rail check.
//!
//! `BENCH_CONNECTS` (default 200) connects per side, `BENCH_CREATES` (default 40) creates per side.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use pgaas::{
    dev::{DevOptions, DevPlatform},
    model::{FriendlyName, OwnerEmail},
    settings::{LoadOptions, Settings},
    tenant::{AuditContext, NewTenant, Provisioned, StatsCollector, TenantService},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

async fn create(svc: &TenantService, i: usize) -> Provisioned {
    svc.create(
        NewTenant {
            friendly_name: FriendlyName::parse(&format!("bench {i}")).unwrap(),
            owner_email: OwnerEmail::parse(&format!("bench-{i}@noisy-bench.example.com")).unwrap(),
            max_connections: Some(5),
            max_size_mb: None,
        },
        &AuditContext::cli(),
    )
    .await
    .expect("create")
}

fn tls(platform: &DevPlatform) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(platform.settings.tls.ca_file.as_ref().unwrap()).unwrap()
    {
        roots.add(c.unwrap()).unwrap();
    }
    tokio_postgres_rustls::MakeRustlsConnect::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn pooled_connects(platform: &DevPlatform, t: &Provisioned, n: usize) -> Vec<Duration> {
    let tls = tls(platform);
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=require",
        platform.settings.pgbouncer.port,
        t.tenant.username.as_str(),
        t.password.expose(),
        t.tenant.database_name.as_str()
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (client, conn) = tokio_postgres::connect(&conninfo, tls.clone())
            .await
            .expect("pooled connect");
        let h = tokio::spawn(conn);
        client.simple_query("SELECT 1").await.expect("query");
        out.push(start.elapsed());
        drop(client);
        let _ = h.await;
    }
    out
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-noisy-")
        .tempdir()
        .unwrap();
    rt.block_on(run(dir.path().to_path_buf()));
}

async fn run(dir: PathBuf) {
    let tenants = env_num("BENCH_TENANTS", 1000);
    let connects = env_num("BENCH_CONNECTS", 200);
    let creates = env_num("BENCH_CREATES", 40);
    let mut base = Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .unwrap();
    // Room for every bench tenant in the budget.
    base.tenants.connection_overcommit = 100.0;
    base.archive.enabled = false;
    let opts = DevOptions {
        state_dir: dir.clone(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    let platform = DevPlatform::up(base, &opts).await.expect("platform");
    let full = platform.tenants();
    let bare = TenantService::new(
        platform.pool.clone(),
        std::sync::Arc::new(platform.settings.clone()),
    );

    eprintln!("bench: making {tenants} tenants");
    let start = Instant::now();
    let mut made = Vec::with_capacity(tenants);
    for i in 0..tenants {
        made.push(create(&full, i).await);
        if (i + 1) % 100 == 0 {
            eprintln!("  {} in {:.0} s", i + 1, start.elapsed().as_secs_f64());
        }
    }

    // (a) pooled connects with and without the tenant's entry.
    let t = &made[0];
    let file = platform
        .settings
        .pgbouncer
        .config_dir
        .join(pgaas::render::TENANTS_FILE);
    let with_entry = std::fs::read_to_string(&file).unwrap();
    let without_entry: String = with_entry
        .lines()
        .filter(|l| !l.starts_with(&format!("{} ", t.tenant.database_name)))
        .map(|l| format!("{l}\n"))
        .collect();
    let bouncer = platform.pgbouncer.as_ref().expect("PgBouncer runs");
    let (mut limited, mut wildcard) = (Vec::new(), Vec::new());
    let batch = (connects / 10).max(1);
    for _ in 0..10 {
        std::fs::write(&file, &with_entry).unwrap();
        bouncer.signal_reload().unwrap();
        limited.extend(pooled_connects(&platform, t, batch).await);
        std::fs::write(&file, &without_entry).unwrap();
        bouncer.signal_reload().unwrap();
        wildcard.extend(pooled_connects(&platform, t, batch).await);
    }
    std::fs::write(&file, &with_entry).unwrap();
    bouncer.signal_reload().unwrap();

    // (b) creates with and without the pooler's files, interleaved.
    let (mut with_pooler, mut without_pooler) = (Vec::new(), Vec::new());
    for i in 0..creates {
        let s = Instant::now();
        made.push(create(&full, tenants + 2 * i).await);
        with_pooler.push(s.elapsed());
        let s = Instant::now();
        made.push(create(&bare, tenants + 2 * i + 1).await);
        without_pooler.push(s.elapsed());
    }

    // (c) the collector's passes over every tenant.
    let collector = StatsCollector::new(
        full.clone(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let mut sizes = HashMap::new();
    collector.collect_once(&mut sizes, true).await.unwrap();
    let mut usage = Vec::new();
    let mut with_sizes = Vec::new();
    let mut quotas = Vec::new();
    let mut guard = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        collector.collect_once(&mut sizes, false).await.unwrap();
        usage.push(s.elapsed());
        let s = Instant::now();
        collector.collect_once(&mut sizes, true).await.unwrap();
        with_sizes.push(s.elapsed());
        let s = Instant::now();
        full.enforce_quotas().await.unwrap();
        quotas.push(s.elapsed());
        let s = Instant::now();
        full.check_guard_rails().await.unwrap();
        guard.push(s.elapsed());
    }

    println!(
        "noisy-neighbour limits, {} tenants (release build, same run)",
        made.len()
    );
    println!();
    println!(
        "| pooled connect (TLS + SCRAM + SELECT 1), n = {} each | p50 ms | p95 ms |",
        limited.len()
    );
    println!("|---|---:|---:|");
    println!(
        "| tenant with its pool entry (limits) | {:.2} | {:.2} |",
        pct(&limited, 0.5),
        pct(&limited, 0.95)
    );
    println!(
        "| same tenant on the `*` entry | {:.2} | {:.2} |",
        pct(&wildcard, 0.5),
        pct(&wildcard, 0.95)
    );
    println!(
        "| ratio | {:.2} | |",
        pct(&limited, 0.5) / pct(&wildcard, 0.5)
    );
    println!();
    println!("| create, n = {creates} each | p50 ms | p95 ms |");
    println!("|---|---:|---:|");
    println!(
        "| with the pooler's files (auth file + limits, reload) | {:.1} | {:.1} |",
        pct(&with_pooler, 0.5),
        pct(&with_pooler, 0.95)
    );
    println!(
        "| without (budget check only) | {:.1} | {:.1} |",
        pct(&without_pooler, 0.5),
        pct(&without_pooler, 0.95)
    );
    println!(
        "| ratio | {:.2} | |",
        pct(&with_pooler, 0.5) / pct(&without_pooler, 0.5)
    );
    println!();
    println!("| pass over every tenant, 5 runs | median ms | max ms |");
    println!("|---|---:|---:|");
    for (what, v) in [
        ("stats collection (one query, cached sizes)", &usage),
        ("stats collection with sizes recomputed", &with_sizes),
        ("quota enforcement", &quotas),
        ("guard-rail check", &guard),
    ] {
        println!("| {what} | {:.1} | {:.1} |", pct(v, 0.5), pct(v, 1.0));
    }
    platform.down().unwrap();
}
