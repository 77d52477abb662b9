//! Allow-list benchmark: with 10, 1 000 and 10 000 tenants (a third with 3 entries each), how
//! long one allow-list change takes to be in force, and TLS connect + SCRAM latency against that
//! pg_hba.conf versus the minimal one, measured in the same run.
//!
//! `cargo bench --bench hba` (BENCH_SIZES=10,1000 to choose sizes, BENCH_CONNECTS=N samples).
//! Synthetic tenants are control-DB rows only (pg_hba lines do not need the databases to exist);
//! the measured tenant is real and has no allow-list, so its rule is the last one PostgreSQL
//! reaches: the worst case for first-match evaluation.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use pgaas::{
    dev::{DevOptions, DevPlatform},
    model::{AllowEntry, FriendlyName, OwnerEmail},
    settings::{LoadOptions, Settings},
    tenant::{AuditContext, NewTenant, Provisioned, TenantService},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn connect_latency(platform: &DevPlatform, t: &Provisioned, n: usize) -> Vec<Duration> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(platform.settings.tls.ca_file.as_ref().unwrap()).unwrap()
    {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=require",
        platform.cluster.port,
        t.tenant.username.as_str(),
        t.password.expose(),
        t.tenant.database_name.as_str()
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (client, conn) = tokio_postgres::connect(&conninfo, tls.clone())
            .await
            .expect("tenant connects");
        let h = tokio::spawn(conn);
        out.push(start.elapsed());
        drop(client);
        let _ = h.await;
    }
    out
}

/// Add `count` synthetic tenants, a third of them with 3 allow-list entries.
async fn add_synthetic(svc: &TenantService, start: usize, count: usize) {
    let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::new_v4()).collect();
    let names: Vec<String> = (start..start + count)
        .map(|i| format!("{i:016x}"))
        .collect();
    let dbs: Vec<String> = names.iter().map(|n| format!("tenant_{n}")).collect();
    let roles: Vec<String> = names.iter().map(|n| format!("user_{n}")).collect();
    sqlx::query(
        "INSERT INTO databases (id, database_name, username, owner_email, friendly_name, status)
         SELECT id, d, u, 'bench@example.com', 'bench', 'active' FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(id, d, u)",
    )
    .bind(&ids)
    .bind(&dbs)
    .bind(&roles)
    .execute(svc.pool())
    .await
    .unwrap();
    let mut wl_ids = Vec::new();
    let mut nets = Vec::new();
    for (k, id) in ids.iter().enumerate().filter(|(k, _)| (start + k) % 3 == 0) {
        for j in 0..3 {
            wl_ids.push(*id);
            let n = start + k;
            nets.push(format!(
                "10.{}.{}.{}/32",
                (n >> 16) & 255,
                (n >> 8) & 255,
                (n & 255) ^ j
            ));
        }
        let _ = k;
    }
    sqlx::query("INSERT INTO ip_whitelist (database_id, ip_address) SELECT * FROM unnest($1::uuid[], $2::cidr[])")
        .bind(&wl_ids)
        .bind(&nets)
        .execute(svc.pool())
        .await
        .unwrap();
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10,1000,10000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("BENCH_SIZES: comma-separated numbers")
        })
        .collect();
    let connects: usize = std::env::var("BENCH_CONNECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-hba-")
        .tempdir()
        .unwrap();
    let state: PathBuf = dir.path().to_path_buf();
    rt.block_on(async {
        let mut settings = Settings::load(&LoadOptions {
            config_file: Some("/dev/null".into()),
            ..Default::default()
        })
        .unwrap();
        // Thousands of tenants: past the connection budget's default overcommit; no archiving.
        settings.tenants.connection_overcommit = 100.0;
        settings.archive.enabled = false;
        let opts = DevOptions {
            state_dir: state.clone(),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            pg_port: free_port(),
            pgbouncer_port: free_port(),
        };
        let platform = DevPlatform::up(settings, &opts).await.expect("platform");
        let svc = platform.tenants();
        let ctx = AuditContext::cli();
        let t = svc
            .create(
                NewTenant {
                    friendly_name: FriendlyName::parse("bench").unwrap(),
                    owner_email: OwnerEmail::parse("measured@example.com").unwrap(),
                    max_connections: Some(50),
                    max_size_mb: None,
                },
                &ctx,
            )
            .await
            .unwrap();
        let other = svc
            .create(
                NewTenant {
                    friendly_name: FriendlyName::parse("bench").unwrap(),
                    owner_email: OwnerEmail::parse("changed@example.com").unwrap(),
                    max_connections: Some(5),
                    max_size_mb: None,
                },
                &ctx,
            )
            .await
            .unwrap();

        // Baseline: the minimal pg_hba.conf (no tenant has a list).
        let _ = connect_latency(&platform, &t, 20).await; // warm-up
        let baseline = pct(connect_latency(&platform, &t, connects).await, 0.5);
        println!(
            "baseline (minimal pg_hba.conf): TLS connect+auth p50 {} ms over {connects} connects\n",
            ms(baseline)
        );
        println!(
            "| tenants | hba lines | change in force p50 | p95 | connect p50 | ratio vs minimal |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");

        let mut have = 0;
        for &n in &sizes {
            add_synthetic(&svc, have, n - have).await;
            have = n;
            platform.hba.sync(svc.pool()).await.unwrap();
            let lines = std::fs::read_to_string(&platform.hba.pg_hba_file)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .count();
            let mut changes = Vec::new();
            for i in 0..20u8 {
                let entry = AllowEntry::parse(&format!("192.0.2.{i}")).unwrap();
                let start = Instant::now();
                let row = svc.allow(other.tenant.id, entry, None, &ctx).await.unwrap();
                changes.push(start.elapsed());
                let start = Instant::now();
                svc.disallow(other.tenant.id, row.id, &ctx).await.unwrap();
                changes.push(start.elapsed());
            }
            let _ = connect_latency(&platform, &t, 20).await;
            let c = pct(connect_latency(&platform, &t, connects).await, 0.5);
            println!(
                "| {n} | {lines} | {} ms | {} ms | {} ms | {:.3} |",
                ms(pct(changes.clone(), 0.5)),
                ms(pct(changes, 0.95)),
                ms(c),
                c.as_secs_f64() / baseline.as_secs_f64()
            );
        }
        svc.pool().close().await;
        platform.pool.close().await;
        platform.down().unwrap();
    });
}
