//! One ACME issuance, pgaas against certbot: `cargo bench --bench acme`.
//!
//! Starts a private Pebble (no-sleep validation, no authorization reuse, so every order validates)
//! and times, wall clock, `BENCH_N` (default 3) complete issuances by each client, interleaved,
//! each from a fresh state directory: account registration, order, HTTP-01 challenge served by
//! the client itself on Pebble's validation port, finalization, download, files written. pgaas
//! runs as its release binary with `--tls-dir` (no services to reload); certbot runs
//! `certonly --standalone` from Debian's package (`apt-get install certbot`).

#[path = "../tests/it/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/it/pebble.rs"]
mod pebble;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pebble::Pebble;

fn run_pgaas(p: &Pebble, dir: &Path) -> Duration {
    let config = dir.join("pgaas.yaml");
    std::fs::write(
        &config,
        format!(
            "postgres:\n  socket_dir: {d}/run\npgbouncer:\n  enabled: false\npaths:\n  state_dir: {d}/state\n  config_dir: {d}/etc\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pgaas"))
        .arg("--config")
        .arg(&config)
        .args([
            "cert",
            "issue",
            "--domain",
            "localhost",
            "--email",
            "ops@pgaas.test",
        ])
        .args(["--directory", &p.directory_url])
        .arg("--ca-file")
        .arg(&p.https_ca)
        .args(["--http-listen", &format!("127.0.0.1:{}", p.http_port)])
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .env("PGAAS_LOG", "warn")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "pgaas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("tls/server.crt").is_file());
    elapsed
}

fn run_certbot(p: &Pebble, dir: &Path) -> Duration {
    let started = Instant::now();
    let out = Command::new("certbot")
        .args([
            "certonly",
            "--standalone",
            "--non-interactive",
            "--agree-tos",
        ])
        .args(["-m", "ops@pgaas.test", "-d", "localhost", "--no-verify-ssl"])
        .args(["--server", &p.directory_url])
        .args([
            "--http-01-port",
            &p.http_port.to_string(),
            "--http-01-address",
            "127.0.0.1",
        ])
        .arg("--config-dir")
        .arg(dir.join("config"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--logs-dir")
        .arg(dir.join("logs"))
        .output()
        .expect("certbot is installed (apt-get install certbot)");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "certbot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("config/live/localhost/fullchain.pem").exists());
    elapsed
}

fn summary(name: &str, runs: &mut [Duration]) {
    runs.sort();
    let ms: Vec<String> = runs
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "{name:<8} median {:>6.0} ms   min {:>6.0} ms   runs (ms): {}",
        runs[runs.len() / 2].as_secs_f64() * 1000.0,
        runs[0].as_secs_f64() * 1000.0,
        ms.join(", ")
    );
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pebble = Pebble::start();
    let mut pgaas = Vec::new();
    let mut certbot = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        pgaas.push(run_pgaas(&pebble, dir.path()));
        let dir = tempfile::tempdir().unwrap();
        certbot.push(run_certbot(&pebble, dir.path()));
    }
    println!("one issuance against Pebble (no-sleep), account to files, {n} runs each:");
    summary("pgaas", &mut pgaas);
    summary("certbot", &mut certbot);
    println!(
        "orders placed: {} (every run validated afresh)",
        pebble.orders_placed()
    );
}
