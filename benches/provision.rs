//! The README's performance figures: `cargo bench --bench provision`.
//!
//! Brings up its own platform (`DevPlatform::up` in a temp dir, free ports) and measures
//! (a) provisioning N tenants (`BENCH_N`, default 200) through the HTTP API, interleaved with the
//! same SQL sequence issued directly as the API role, so both see the same cluster state (the
//! catalogs grow as the run goes); the direct side gets its SCRAM verifier precomputed, so the
//! ratio is the whole cost the API adds over bare DDL; and (b) `GET /api/databases/{id}` from 16
//! concurrent keep-alive clients for 10 s (`BENCH_SECS`) against `pgaas serve` running as its own
//! process, so its RSS (read from /proc) is the API's alone. Load generator and server share the
//! machine, which the figures include. `BENCH_WITHOUT_POOLER=1` serves (a) without the hba
//! applier, so creates skip PgBouncer's auth-file refresh: the difference is that step's cost.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use pgaas::{
    api::{self, AppState},
    control_db,
    dev::{DevOptions, DevPlatform},
    model::{TenantId, generate_tenant_names},
    pg::scram,
    settings::{LoadOptions, Settings},
    tenant::ProvisionDdl,
};
use sqlx::Executor;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Percentile by nearest rank, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn vm_rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Stops the cluster and removes the state dir however the run ends.
struct Teardown {
    platform: Option<DevPlatform>,
    dir: PathBuf,
    serve: Option<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        if let Some(p) = self.platform.take() {
            let _ = p.down();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_num("BENCH_N", 200) as usize;
    let secs = env_num("BENCH_SECS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-")
        .tempdir()?
        .keep();
    let mut teardown = Teardown {
        platform: None,
        dir: dir.clone(),
        serve: None,
    };
    rt.block_on(run(n, secs, &dir, &mut teardown))
}

async fn run(n: usize, secs: u64, dir: &Path, teardown: &mut Teardown) -> Res<()> {
    let mut base = Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    // Thousands of tenants on one small cluster: the bench measures provisioning, not the
    // connection budget (which refuses them past its overcommit), nor archiving.
    base.tenants.connection_overcommit = 100.0;
    base.archive.enabled = false;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let opts = DevOptions {
        state_dir: dir.to_path_buf(),
        listen,
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    eprintln!("bench: bringing up a platform in {}", dir.display());
    let platform = DevPlatform::up(base, &opts)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let settings = platform.settings.clone();
    let pool = platform.pool.clone();
    let key = match &platform.first_api_key {
        Some(k) => k.expose().to_string(),
        None => control_db::api_keys::create_admin_key(&pool, "bench")
            .await?
            .expose()
            .to_string(),
    };
    // Exactly what `pgaas dev` serves: the platform's tenant service (with its hba applier).
    let mut state = AppState::new(pool.clone(), Arc::new(settings.clone()))
        .with_pooler_available(platform.pooler_available());
    // Diagnostic knob: without the hba applier, create skips refreshing PgBouncer's auth file.
    if std::env::var_os("BENCH_WITHOUT_POOLER").is_none() {
        state.tenants = platform.tenants();
    }
    teardown.platform = Some(platform);

    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    let base_url = format!("http://{listen}");
    let http = reqwest::Client::new();

    // (a) provisioning, API and direct SQL interleaved.
    eprintln!("bench: provisioning {n} tenants through the API and {n} directly");
    let mut api_times = Vec::with_capacity(n);
    let mut sql_times = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut conn = pool.acquire().await?;
    for i in 0..n {
        let body = serde_json::json!({
            "friendlyName": format!("bench {i}"),
            "ownerEmail": format!("bench{i}@example.com"),
            "maxConnections": 5,
        });
        let t = Instant::now();
        let res = http
            .post(format!("{base_url}/api/databases"))
            .header("X-API-Key", &key)
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let v: serde_json::Value = res.json().await?;
        api_times.push(t.elapsed());
        if status.as_u16() != 201 {
            return Err(format!("POST /api/databases answered {status}: {v}").into());
        }
        ids.push(
            v["data"]["id"]
                .as_str()
                .ok_or("no id in the answer")?
                .to_string(),
        );

        let (db, role) = generate_tenant_names();
        let password = pgaas::model::TenantPassword::generate();
        let verifier = scram::scram_sha256_verifier(password.expose())?;
        let ddl = ProvisionDdl::new(TenantId::new_random(), &db, &role, 5, &verifier)?;
        let t = Instant::now();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for stmt in &ddl.role {
            tx.execute(stmt.as_str()).await?;
        }
        tx.commit().await?;
        for stmt in &ddl.database {
            conn.execute(stmt.as_str()).await?;
        }
        sql_times.push(t.elapsed());
        if (i + 1) % 50 == 0 {
            eprintln!("bench: {} of {n}", i + 1);
        }
    }
    drop(conn);
    api_times.sort();
    sql_times.sort();

    // (b) reads against `pgaas serve` as its own process.
    let serve_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let child = Command::new(env!("CARGO_BIN_EXE_pgaas"))
        .arg("--config")
        .arg(dir.join("pgaas.yaml"))
        .args(["serve", "--listen", &serve_addr.to_string()])
        .env_remove("PGAAS_CONFIG")
        // The directly provisioned tenants have no rows: its reconciler would warn about each.
        .env("PGAAS_LOG", "error")
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    teardown.serve = Some(child);
    let serve_url = format!("http://{serve_addr}");
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{serve_url}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("pgaas serve did not answer /health within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = vm_rss_kib(pid, "VmRSS:");

    eprintln!("bench: GET /api/databases/{{id}}, 16 clients, {secs} s");
    let ids = Arc::new(ids);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..16 {
        let (ids, key, url) = (ids.clone(), key.clone(), serve_url.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut times = Vec::new();
            let mut errors = 0u64;
            let mut i = c;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match client
                    .get(format!("{url}/api/databases/{}", ids[i % ids.len()]))
                    .header("X-API-Key", &key)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    times.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += 16;
            }
            (times, errors)
        }));
    }
    let mut rss_load = 0;
    while Instant::now() < deadline {
        rss_load = rss_load.max(vm_rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reads = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (times, e) = t.await?;
        reads.extend(times);
        errors += e;
    }
    reads.sort();
    let rss_hwm = vm_rss_kib(pid, "VmHWM:");

    let (api50, api95) = (pct(&api_times, 50.0), pct(&api_times, 95.0));
    let (sql50, sql95) = (pct(&sql_times, 50.0), pct(&sql_times, 95.0));
    println!();
    println!(
        "pgaas provision bench: N={n}, PostgreSQL {}, {} cores",
        settings.postgres.version.unwrap_or(0),
        num_cpus()
    );
    println!(
        "{:<44} {:>10} {:>10}",
        "provisioning (sequential)", "p50 ms", "p95 ms"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "POST /api/databases", api50, api95
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "same SQL sequence, directly", sql50, sql95
    );
    println!(
        "{:<44} {:>10.2} {:>10.2}",
        "ratio API / direct (target p50 <= 1.25)",
        api50 / sql50,
        api95 / sql95
    );
    println!();
    println!(
        "{:<44} {:>10}",
        format!("GET /api/databases/{{id}}, 16 clients, {secs} s"),
        ""
    );
    println!(
        "{:<44} {:>10.0}",
        "requests/s",
        reads.len() as f64 / secs as f64
    );
    println!("{:<44} {:>10.2}", "p50 ms", pct(&reads, 50.0));
    println!("{:<44} {:>10.2}", "p99 ms", pct(&reads, 99.0));
    println!("{:<44} {:>10}", "errors", errors);
    println!(
        "{:<44} {:>10.1}",
        "API RSS idle (MiB)",
        rss_idle as f64 / 1024.0
    );
    println!(
        "{:<44} {:>10.1}",
        "API RSS under load, max sampled (MiB)",
        rss_load as f64 / 1024.0
    );
    println!(
        "{:<44} {:>10.1}",
        "API RSS high-water mark (MiB)",
        rss_hwm as f64 / 1024.0
    );
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
