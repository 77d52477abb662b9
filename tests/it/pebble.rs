//! A private Pebble (Debian's `pebble` package) per test: its own HTTPS certificate from a small
//! CA made here (webpki accepts no self-signed leaf as a root), free ports for the directory,
//! the management API and the ports its validator dials, and `pebble-challtestsrv` as fake DNS
//! answering 127.0.0.1 for every name. Each test gets separate processes, so tests run in
//! parallel. They are killed on drop and, should the test binary die first, by a watchdog that
//! waits for this process to exit.
//!
//! Self-contained (no other test module), so the ACME bench includes it with `#[path]`.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

pub struct Pebble {
    /// `https://127.0.0.1:<port>/dir`
    pub directory_url: String,
    /// The CA of Pebble's own HTTPS listener: what `--ca-file` must trust.
    pub https_ca: PathBuf,
    /// Pebble's issuing root (PEM file), regenerated at every start.
    pub root_file: PathBuf,
    pub root_pem: String,
    /// The ports Pebble's validator dials for HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// `(kid, base64url HMAC key)` when external account binding is required.
    pub eab: Option<(String, String)>,
    log: PathBuf,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

pub use crate::harness::free_port;

impl Pebble {
    pub fn start() -> Self {
        Self::start_inner(false, None)
    }

    /// Pebble requiring external account binding, with one key.
    pub fn start_with_eab() -> Self {
        Self::start_inner(true, None)
    }

    /// Pebble resolving every name (and every DNS-01 record) through the given server.
    pub fn start_with_dns(server: &str) -> Self {
        Self::start_inner(false, Some(server.to_string()))
    }

    fn start_inner(eab: bool, dns_server: Option<String>) -> Self {
        assert!(
            Path::new("/usr/bin/pebble").exists(),
            "pebble is not installed: apt-get install pebble (scripts/test does it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("pgaas-pebble-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (ca_pem, leaf_pem, leaf_key) = listener_certs();
        std::fs::write(d.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(d.join("cert.pem"), leaf_pem).unwrap();
        std::fs::write(d.join("key.pem"), leaf_key).unwrap();

        let (listen, mgmt, http_port, tls_port, dns, dns_mgmt) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let eab = eab.then(|| {
            use base64::Engine;
            let key: [u8; 32] = rand::random();
            (
                "kid-pgaas-test".to_string(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
            )
        });
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": d.join("cert.pem"),
                "privateKey": d.join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab.is_some(),
            }
        });
        if let Some((kid, key)) = &eab {
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_file = d.join("pebble-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = d.join("pebble.log");

        let dns_addr = format!("127.0.0.1:{dns}");
        let mut children = Vec::new();
        if dns_server.is_none() {
            let challtestsrv = Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &dns_addr,
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .args([
                    "-management",
                    &format!("127.0.0.1:{dns_mgmt}"),
                    "-defaultIPv6",
                    "",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv (apt-get install pebble)");
            children.push(challtestsrv);
        }
        let dns_addr = dns_server.clone().unwrap_or(dns_addr);
        let out = std::fs::File::create(&log).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns_addr, "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order validates afresh: a remembered authorization would hide a failure.
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(d)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        children.push(pebble);
        kill_when_this_process_exits(children.iter().map(Child::id));

        let https_ca = d.join("ca.pem");
        let deadline = Instant::now() + Duration::from_secs(20);
        let root_pem = loop {
            let ready = (dns_server.is_some() || wait_tcp(dns_mgmt))
                && https_get(listen, "/dir", &https_ca).is_ok_and(|b| b.contains("newOrder"));
            if ready {
                if let Ok(root) = https_get(mgmt, "/roots/0", &https_ca) {
                    break root;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not come up; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let root_file = d.join("pebble-root.pem");
        std::fs::write(&root_file, &root_pem).unwrap();
        Self {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            https_ca,
            root_file,
            root_pem,
            http_port,
            tls_port,
            eab,
            log,
            children,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders Pebble accepted so far (it logs each one it stores).
    pub fn orders_placed(&self) -> usize {
        self.log().matches("Added order").count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA and a leaf for `localhost` and 127.0.0.1 signed by it, for Pebble's HTTPS listener.
fn listener_certs() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "pgaas test Pebble listener CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

fn wait_tcp(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A one-shot HTTPS GET against 127.0.0.1, trusting only `ca`.
pub fn https_get(port: u16, path: &str, ca: &Path) -> Result<String, String> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // Go's server may close without close_notify; what arrived is the whole answer.
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// Pebble must not outlive the test binary, even when it is killed: a shell waits for this
/// process to exit, then kills the given processes.
fn kill_when_this_process_exits(pids: impl Iterator<Item = u32>) {
    let pids: Vec<String> = pids.map(|p| p.to_string()).collect();
    let script = r#"
        parent="$1"; shift
        while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done
        # A pid may have been reused once Pebble was dropped: only kill what is still Pebble.
        for p in "$@"; do
            grep -q pebble "/proc/$p/cmdline" 2>/dev/null && kill "$p" 2>/dev/null
        done
    "#;
    #[allow(clippy::zombie_processes)]
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("pgaas-pebble-watchdog")
        .arg(std::process::id().to_string())
        .args(&pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the pebble watchdog");
    // Deliberately not waited for: it outlives this process to clean up after it.
    drop(child);
}
