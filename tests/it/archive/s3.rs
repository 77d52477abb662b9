//! A real S3-protocol server for the off-host repository: moto in server mode (plain HTTP) behind
//! stunnel, which gives it TLS with a certificate from a test CA, as pgBackRest requires. Both
//! leave pid files in the test's state directory, so the watchdog stops them however the test
//! process ends.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::free_port;

pub struct S3Server {
    pub port: u16,
    pub ca_file: PathBuf,
    pub bucket: String,
    children: Vec<Child>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// moto's server program: where `scripts/test` installs it, or on PATH.
fn moto_server() -> PathBuf {
    let candidates = [
        std::env::var_os("MOTO_SERVER_BIN").map(PathBuf::from),
        Some(PathBuf::from("/var/cache/pgaas-ci/moto/bin/moto_server")),
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/pgaas/moto/bin/moto_server")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| which("moto_server"))
        .expect(
            "moto's S3 server is needed for the off-host repository tests: scripts/test installs it \
             (python3 -m venv /var/cache/pgaas-ci/moto && /var/cache/pgaas-ci/moto/bin/pip install 'moto[server]')",
        )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn wait_for(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string()).unwrap();
    child
}

/// Start moto and stunnel in `dir` (the test's state directory) and make a bucket.
pub fn start(dir: &Path) -> S3Server {
    let s3_dir = dir.join("s3");
    std::fs::create_dir_all(&s3_dir).unwrap();
    let ca = pgaas::pg::tls::LocalCa::in_dir(&s3_dir);
    let (cert, key) = (s3_dir.join("server.crt"), s3_dir.join("server.key"));
    ca.ensure_server_cert(
        &pgaas::pg::tls::ServerCertTarget {
            cert_file: cert.clone(),
            key_file: key.clone(),
            key_owner: None,
        },
        &["localhost".to_string()],
    )
    .unwrap();
    let (http, https) = (free_port(), free_port());
    let moto = spawn(
        Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &http.to_string()])
            .env("MOTO_ALLOW_NONEXISTENT_REGION", "true"),
        dir,
        "moto",
    );
    let conf = s3_dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{https}\nconnect = 127.0.0.1:{http}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let stunnel = spawn(Command::new("stunnel4").arg(&conf), dir, "stunnel");
    let mut server = S3Server {
        port: https,
        ca_file: ca.cert_file.clone(),
        bucket: "pgaas-test".into(),
        children: vec![moto, stunnel],
    };
    wait_for(http, "moto_server");
    wait_for(https, "stunnel");
    // Create the bucket over plain HTTP (moto takes any credentials).
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .arg(format!("http://127.0.0.1:{http}/{}", server.bucket))
        .output()
        .expect("curl is installed");
    let code = String::from_utf8_lossy(&status.stdout).to_string();
    assert_eq!(code, "200", "creating the bucket");
    server.children.shrink_to_fit();
    server
}

/// The settings of a repository on `server`, with credentials in `dir`.
pub fn repository(server: &S3Server, dir: &Path) -> pgaas::settings::S3Repository {
    let creds = dir.join("s3-credentials");
    std::fs::write(
        &creds,
        "AWS_ACCESS_KEY_ID=pgaastestkey\nAWS_SECRET_ACCESS_KEY=pgaas-test-secret-9f8e7d\n",
    )
    .unwrap();
    pgaas::settings::S3Repository {
        endpoint: "localhost".into(),
        port: server.port,
        bucket: server.bucket.clone(),
        region: "us-east-1".into(),
        path: "/pgaas".into(),
        uri_style: "path".into(),
        ca_file: Some(server.ca_file.clone()),
        credentials_file: creds,
        cipher_pass_file: dir.join("backup-passphrase"),
        retention_full: 2,
    }
}
