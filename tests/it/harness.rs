//! The shared test platform: one real PostgreSQL cluster (initdb in a temp dir, free ports, TLS
//! from a local CA), the control DB and the API on a real socket, brought up through the same
//! code as `pgaas dev` and shared by every test in this binary.
//!
//! It is removed when the test process ends, however it ends: a watchdog process waits for this
//! process to exit, then stops the cluster (SIGQUIT to the postmaster) and deletes the directory.
//! There is no skipping: without PostgreSQL the harness panics with the install command.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, OnceLock},
};

use pgaas::{
    api::{self, AppState},
    dev::{DevOptions, DevPlatform},
    settings::{LoadOptions, Settings},
};

pub struct TestPlatform {
    pub state_dir: PathBuf,
    pub settings: Settings,
    pub base_url: String,
    pub api_key: String,
    pub pg_port: u16,
    pub pgbouncer_port: u16,
    hba: pgaas::hba::apply::HbaApplier,
    pub socket_dir: PathBuf,
    pub superuser: String,
    pub ca_file: PathBuf,
    pub log_file: PathBuf,
    pub pgpass_file: PathBuf,
    /// Runs the API server; lives as long as the process.
    pub _runtime: tokio::runtime::Runtime,
}

static PLATFORM: OnceLock<TestPlatform> = OnceLock::new();

/// The shared platform, started on first use.
pub fn platform() -> &'static TestPlatform {
    // Started on a thread of its own: tests may call this from inside their own runtime, where
    // blocking on another one is not allowed.
    PLATFORM.get_or_init(|| {
        std::thread::spawn(start)
            .join()
            .expect("the test platform failed to start")
    })
}

/// A port free now, and never handed out before in this process: two servers started at
/// once by parallel tests cannot be given the same one.
///
/// Drawn below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), never from it:
/// there, any outgoing connection of any test may take the port as its local end between this
/// call and the server's bind, and the server then fails with "address in use". Free means
/// free for TCP and UDP (DNS servers use both) on every loopback address the tests use.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, end) = if ephemeral > 12_000 {
        (ephemeral.saturating_sub(12_000).max(10_000), ephemeral)
    } else {
        // A host whose ephemeral range starts low: the ports above it, as well as we can.
        (ephemeral.max(61_000), 65_000)
    };
    let span = end - first;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each process starts at its own offset, so test binaries run one after another (or a
    // leftover server of an earlier run) do not meet at the same ports.
    let mut offset = next.unwrap_or(std::process::id() % span);
    for _ in 0..span {
        let port = (first + offset) as u16;
        offset = (offset + 1) % span;
        let free = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "0.0.0.0"]
            .iter()
            .all(|ip| {
                TcpListener::bind((*ip, port)).is_ok()
                    && std::net::UdpSocket::bind((*ip, port)).is_ok()
            });
        if free {
            *next = Some(offset);
            return port;
        }
    }
    panic!(
        "no port in {first}..{end} is free for TCP and UDP on 127.0.0.1 to 127.0.0.3 \
         (can this machine bind 127.0.0.2 and 127.0.0.3? Linux routes all of 127/8 to lo)"
    );
}

/// A fresh temp dir that the watchdog removes when this process exits.
pub fn temp_state_dir(tag: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgaas-it-{tag}-"))
        .tempdir()
        .unwrap()
        .keep();
    watch_and_clean(&dir);
    dir
}

impl TestPlatform {
    /// A tenant service with this platform's hba applier (so allow-lists work) and a pool of its
    /// own: connections belong to the runtime of the test that opens them.
    pub fn tenants(&self) -> pgaas::tenant::TenantService {
        let password = self.settings.control_db_password().unwrap();
        let pool = pgaas::control_db::pool(
            pgaas::control_db::connect_options(&self.settings, password.as_ref()),
            4,
        );
        pgaas::tenant::TenantService::new(pool, Arc::new(self.settings.clone()))
            .with_hba(self.hba.clone())
    }
}

/// Settings that ignore this machine's /etc/pgaas and environment. The shared platform holds the
/// tenants of every test at once, so its connection budget is generous; the budget itself is
/// tested on platforms of its own.
pub fn test_settings() -> Settings {
    let mut s = Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .expect("default settings load");
    s.tenants.connection_overcommit = 20.0;
    // Archiving is tested on platforms of its own (`archive`), where a first backup is taken.
    s.archive.enabled = false;
    s
}

fn start() -> TestPlatform {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state_dir = temp_state_dir("shared");
    let pg_port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let opts = DevOptions {
        state_dir: state_dir.clone(),
        listen,
        pg_port,
        pgbouncer_port: free_port(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let platform = runtime.block_on(async {
        let p = DevPlatform::up(test_settings(), &opts).await.unwrap_or_else(|e| {
            panic!("the test platform did not start (is PostgreSQL installed? apt-get install postgresql): {e:#}")
        });
        // Log every statement, so tests can prove no secret reaches the server log.
        let extra = p.cluster.data_dir.join("conf.d").join("zz-test.conf");
        std::fs::write(&extra, "log_statement = 'all'\nlog_min_messages = info\n").unwrap();
        p.cluster.owner.chown(&extra).unwrap();
        let mut conn = p.cluster.admin_connect("postgres").await.unwrap();
        pgaas::pg::cluster::reload(&mut conn).await.unwrap();
        p
    });
    let api_key = platform
        .first_api_key
        .as_ref()
        .expect("a fresh platform creates a key")
        .expose()
        .to_string();
    let settings = platform.settings.clone();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .unwrap();
    let mut state = AppState::new(platform.pool.clone(), Arc::new(settings.clone()))
        .with_pooler_available(platform.pooler_available());
    state.tenants = platform.tenants();
    // Usage stats every second, so tests see the collector's rows and /metrics without waiting.
    // Sizes of every tenant only every 10 minutes, as on a real host: a quota is enforced in
    // the tests by the watcher (every `tenants.quota_watch_interval_ms`), as it must be there.
    let collector = pgaas::tenant::StatsCollector::new(
        state.tenants.clone(),
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    {
        let _in_runtime = runtime.enter();
        drop(collector.clone().spawn());
    }
    let state = state.with_stats(collector);
    assert!(
        platform.pooler_available(),
        "PgBouncer must run for the tests (apt-get install pgbouncer)"
    );
    runtime.spawn(api::serve(listener, state, std::future::pending()));
    let tp = TestPlatform {
        state_dir,
        base_url: format!("http://{listen}"),
        api_key,
        pg_port,
        pgbouncer_port: settings.pgbouncer.port,
        hba: platform.hba.clone(),
        socket_dir: platform.cluster.socket_dir.clone(),
        superuser: platform.cluster.superuser.clone(),
        ca_file: settings.tls.ca_file.clone().unwrap(),
        log_file: platform.cluster.log_file.clone(),
        pgpass_file: platform.layout.pgpass_file(),
        settings,
        _runtime: runtime,
    };
    // The platform (and its state-dir lock) lives for the whole process.
    std::mem::forget(platform);
    tp
}

/// Start a watchdog that, once this process has exited, stops any cluster under `dir` and
/// removes it.
pub fn watch_and_clean(dir: &Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        if [ -f "$2/run/pgbouncer.pid" ]; then kill -TERM "$(cat "$2/run/pgbouncer.pid")" 2>/dev/null; fi
        # Helpers a test started (an S3 server, a TLS terminator) leave their pid here.
        for pidfile in "$2"/*.pid; do
            [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null
        done
        for pidfile in "$2"/*/postmaster.pid "$2"/scratch/*/data/postmaster.pid; do
            [ -f "$pidfile" ] || continue
            pid=$(head -n 1 "$pidfile")
            kill -QUIT "$pid" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        done
        rm -rf "$2"
    "#;
    #[allow(clippy::zombie_processes)]
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("pgaas-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the cleanup watchdog");
    // Deliberately not waited for: it outlives this process to clean up after it.
    drop(child);
}

/// Run psql (the real client) with a connection string; returns (success, stdout, stderr).
pub fn psql(conninfo: &str, sql: &str, env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    cmd.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("psql is installed (postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The pgaas binary built for these tests.
pub fn pgaas_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgaas"));
    cmd.env_remove("PGAAS_CONFIG").env("PGAAS_LOG", "warn");
    cmd
}
