//! Read throughput of the API against a bare baseline: `cargo bench --bench reads`.
//!
//! One platform (`DevPlatform::up` in a temp dir) with `BENCH_TENANTS` tenants (default 100).
//! Two servers, each its own process on the same control DB with the same pool size:
//! - `pgaas serve`: `GET /api/databases/{id}` as shipped (API key checked, the row, the envelope);
//! - a bare axum handler: the key compared with a constant in memory (as the original did), then
//!   the same row fetched with one query and returned in the same envelope.
//!
//! - with `BENCH_RELEASE_BIN=/path/to/pgaas`, that binary's `serve` too (an earlier release, to
//!   see what a change bought), on the same control DB.
//!
//! The load generator (16 keep-alive clients, `BENCH_CLIENTS`) runs `BENCH_ROUNDS` (5) rounds of
//! `BENCH_SECS` (10 s) against each, interleaved, and reports the median requests/s, p50 and p99,
//! and the ratio pgaas / baseline. Generator and servers share the machine (2 cores here), which
//! the figures include.

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
    settings::{LoadOptions, Settings},
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Set in the child that serves the baseline: its listen address.
const BASELINE_ENV: &str = "BENCH_READS_BASELINE";
const BASELINE_CONFIG_ENV: &str = "BENCH_READS_CONFIG";
const BASELINE_KEY_ENV: &str = "BENCH_READS_KEY";

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

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn settings_from(file: &Path) -> Res<Settings> {
    let mut s = Settings::load(&LoadOptions {
        config_file: Some(file.to_path_buf()),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    s.resolve_secret_files().map_err(|e| e.to_string())?;
    Ok(s)
}

/// The baseline server: a constant key, one query, the envelope.
async fn baseline(listen: SocketAddr, config: PathBuf, key: String) -> Res<()> {
    use axum::{
        Json, Router,
        extract::{Path as UrlPath, State},
        http::{HeaderMap, StatusCode},
        routing::get,
    };
    let settings = settings_from(&config)?;
    let password = settings.control_db_password()?;
    let pool = control_db::pool(
        control_db::connect_options(&settings, password.as_ref()),
        settings.api.pool_size,
    );
    #[derive(Clone)]
    struct S {
        pool: sqlx::PgPool,
        key: Arc<String>,
    }
    async fn one(
        State(s): State<S>,
        headers: HeaderMap,
        UrlPath(id): UrlPath<uuid::Uuid>,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        if headers.get("x-api-key").map(|v| v.as_bytes()) != Some(s.key.as_bytes()) {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let row: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT to_jsonb(d) - 'password_hash' FROM databases d WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        match row {
            Some(data) => Ok(Json(serde_json::json!({ "success": true, "data": data }))),
            None => Err(StatusCode::NOT_FOUND),
        }
    }
    let app = Router::new()
        .route("/api/databases/{id}", get(one))
        .with_state(S {
            pool,
            key: Arc::new(key),
        });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Servers started by the bench, stopped however it ends; then the platform and its files.
struct Teardown {
    platform: Option<DevPlatform>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(listen) = std::env::var(BASELINE_ENV) {
        let config = PathBuf::from(std::env::var(BASELINE_CONFIG_ENV)?);
        let key = std::env::var(BASELINE_KEY_ENV)?;
        return rt.block_on(baseline(listen.parse()?, config, key));
    }
    let dir = tempfile::Builder::new()
        .prefix("pgaas-bench-reads-")
        .tempdir()?
        .keep();
    let mut teardown = Teardown {
        platform: None,
        dir: dir.clone(),
        children: Vec::new(),
    };
    rt.block_on(run(&dir, &mut teardown))
}

async fn wait_until_serving(url: &str, id: &str, key: &str) -> Res<()> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("{url}/api/databases/{id}"))
            .header("X-API-Key", key)
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{url} did not serve a read within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

async fn load(url: &str, ids: &Arc<Vec<String>>, key: &str, clients: usize, secs: u64) -> Round {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (ids, key, url) = (ids.clone(), key.to_string(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut times, mut errors, mut i) = (Vec::new(), 0u64, c);
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
                i += clients;
            }
            (times, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (times, e) = t.await.expect("a load task panicked");
        all.extend(times);
        errors += e;
    }
    all.sort();
    Round {
        rps: all.len() as f64 / secs as f64,
        p50: pct(&all, 50.0),
        p99: pct(&all, 99.0),
        errors,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(dir: &Path, teardown: &mut Teardown) -> Res<()> {
    let tenants = env_num("BENCH_TENANTS", 100) as usize;
    let secs = env_num("BENCH_SECS", 10);
    let rounds = env_num("BENCH_ROUNDS", 5) as usize;
    let clients = env_num("BENCH_CLIENTS", 16) as usize;
    let mut base = Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
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
    let mut state = AppState::new(pool.clone(), Arc::new(settings.clone()))
        .with_pooler_available(platform.pooler_available());
    state.tenants = platform.tenants();
    teardown.platform = Some(platform);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(api::serve(listener, state, std::future::pending()));

    eprintln!("bench: creating {tenants} tenants");
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(tenants);
    for i in 0..tenants {
        let res = http
            .post(format!("http://{listen}/api/databases"))
            .header("X-API-Key", &key)
            .json(&serde_json::json!({
                "friendlyName": format!("reads {i}"),
                "ownerEmail": format!("reads{i}@example.com"),
                "maxConnections": 2,
            }))
            .send()
            .await?;
        let v: serde_json::Value = res.json().await?;
        ids.push(v["data"]["id"].as_str().ok_or("no id")?.to_string());
    }
    let ids = Arc::new(ids);

    let config = dir.join("pgaas.yaml");
    let serve_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    teardown.children.push(
        Command::new(env!("CARGO_BIN_EXE_pgaas"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &serve_addr.to_string()])
            .env_remove("PGAAS_CONFIG")
            .env("PGAAS_LOG", "error")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let base_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    teardown.children.push(
        Command::new(std::env::current_exe()?)
            .env(BASELINE_ENV, base_addr.to_string())
            .env(BASELINE_CONFIG_ENV, &config)
            .env(BASELINE_KEY_ENV, &key)
            .stdin(Stdio::null())
            .spawn()?,
    );
    let release = std::env::var_os("BENCH_RELEASE_BIN").map(PathBuf::from);
    let release_url = match &release {
        Some(bin) => {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            teardown.children.push(
                Command::new(bin)
                    .arg("--config")
                    .arg(&config)
                    .args(["serve", "--listen", &addr.to_string()])
                    .env_remove("PGAAS_CONFIG")
                    .env("PGAAS_LOG", "error")
                    .stdin(Stdio::null())
                    .spawn()?,
            );
            Some(format!("http://{addr}"))
        }
        None => None,
    };
    let (serve_url, base_url) = (
        format!("http://{serve_addr}"),
        format!("http://{base_addr}"),
    );
    let mut urls = vec![serve_url.clone(), base_url.clone()];
    urls.extend(release_url.clone());
    for url in &urls {
        wait_until_serving(url, &ids[0], &key).await?;
        // Warm (pools filled, caches populated) before measuring.
        load(url, &ids, &key, clients, 2).await;
    }

    let (mut p, mut b, mut old) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("bench: round {} of {rounds}", r + 1);
        p.push(load(&serve_url, &ids, &key, clients, secs).await);
        b.push(load(&base_url, &ids, &key, clients, secs).await);
        if let Some(url) = &release_url {
            old.push(load(url, &ids, &key, clients, secs).await);
        }
    }
    let errors: u64 = p.iter().chain(&b).chain(&old).map(|r| r.errors).sum();
    let summary = |rs: &[Round]| {
        (
            median(rs.iter().map(|r| r.rps).collect()),
            median(rs.iter().map(|r| r.p50).collect()),
            median(rs.iter().map(|r| r.p99).collect()),
        )
    };
    let ((prps, p50, p99), (brps, b50, b99)) = (summary(&p), summary(&b));
    println!();
    println!(
        "pgaas reads bench: GET /api/databases/{{id}}, {clients} clients, {rounds} x {secs} s each, interleaved, medians; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<40} {:>10} {:>9} {:>9}", "", "req/s", "p50 ms", "p99 ms");
    println!("{:<40} {prps:>10.0} {p50:>9.2} {p99:>9.2}", "pgaas serve");
    println!(
        "{:<40} {brps:>10.0} {b50:>9.2} {b99:>9.2}",
        "bare axum + one query (baseline)"
    );
    println!(
        "{:<40} {:>10.2}",
        "ratio pgaas / baseline (req/s)",
        prps / brps
    );
    if let Some(bin) = &release {
        let (orps, o50, o99) = summary(&old);
        println!(
            "{:<40} {orps:>10.0} {o50:>9.2} {o99:>9.2}",
            format!("release ({})", bin.display())
        );
        println!(
            "{:<40} {:>10.2}",
            "ratio pgaas / release (req/s)",
            prps / orps
        );
    }
    println!("{:<40} {errors:>10}", "errors");
    Ok(())
}
