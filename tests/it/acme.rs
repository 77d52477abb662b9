//! `pgaas cert` against a real ACME CA (Pebble) and a private platform (its own cluster and
//! PgBouncer in a temp dir; the shared platform's files stay on its local CA for other tests).
//! The binary runs as an operator runs it, with `--config <state>/pgaas.yaml`.

use std::{
    net::{IpAddr, TcpListener},
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
};

use pgaas::dev::{DevOptions, DevPlatform};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

use crate::{
    harness::{free_port, pgaas_bin, psql, temp_state_dir, test_settings},
    pebble::Pebble,
};

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A private platform, a Pebble, and the runtime that drives client connections meanwhile.
struct Site {
    rt: tokio::runtime::Runtime,
    platform: DevPlatform,
    state: PathBuf,
    pebble: Pebble,
}

impl Site {
    fn new(tag: &str) -> Self {
        Self::with_pebble(tag, Pebble::start())
    }

    fn with_pebble(tag: &str, pebble: Pebble) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = temp_state_dir(tag);
        let opts = DevOptions {
            state_dir: state.clone(),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            pg_port: free_port(),
            pgbouncer_port: free_port(),
        };
        let platform = rt
            .block_on(DevPlatform::up(test_settings(), &opts))
            .unwrap_or_else(|e| panic!("private platform did not start: {e:#}"));
        assert!(
            platform.pooler_available(),
            "PgBouncer must run (apt-get install pgbouncer)"
        );
        Self {
            rt,
            platform,
            state,
            pebble,
        }
    }

    fn cert_file(&self) -> &Path {
        &self.platform.settings.tls.cert_file
    }

    fn files(&self) -> (Vec<u8>, Vec<u8>) {
        let tls = &self.platform.settings.tls;
        (
            std::fs::read(&tls.cert_file).unwrap(),
            std::fs::read(&tls.key_file).unwrap(),
        )
    }

    fn file_leaf(&self) -> Vec<u8> {
        let pem = std::fs::read(self.cert_file()).unwrap();
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    fn served(&self, port: u16) -> Vec<u8> {
        self.rt
            .block_on(pgaas::acme::served_leaf(LOOPBACK, port))
            .unwrap_or_else(|e| panic!("reading what port {port} serves: {e}"))
    }

    fn ports(&self) -> [(&'static str, u16); 2] {
        let s = &self.platform.settings;
        [
            ("PostgreSQL", s.postgres.port),
            ("PgBouncer", s.pgbouncer.port),
        ]
    }

    fn assert_served(&self, leaf: &[u8]) {
        for (service, port) in self.ports() {
            assert!(
                self.served(port) == leaf,
                "{service} does not serve the expected certificate"
            );
        }
    }

    /// `pgaas cert ...`; ACME state goes under the temp dir, not this machine's /etc/pgaas.
    fn cert(&self, args: &[&str]) -> Output {
        pgaas_bin()
            .arg("--config")
            .arg(self.state.join("pgaas.yaml"))
            .arg("cert")
            .args(args)
            .env("PGAAS_PATHS__CONFIG_DIR", self.state.join("etc"))
            .output()
            .unwrap()
    }

    fn issue(&self, challenge: &str, listen_port: u16, directory: &str) -> Output {
        let listen = format!("127.0.0.1:{listen_port}");
        let ca = self.pebble.https_ca.to_string_lossy().into_owned();
        self.cert(&[
            "issue",
            "--domain",
            "localhost",
            "--email",
            "ops@pgaas.test",
            "--directory",
            directory,
            "--ca-file",
            &ca,
            "--challenge",
            challenge,
            "--http-listen",
            &listen,
        ])
    }

    fn postmaster_pid(&self) -> String {
        let text =
            std::fs::read_to_string(self.platform.cluster.data_dir.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().to_string()
    }

    /// psql with `sslmode=verify-full` against Pebble's root, by name.
    fn psql_verify_full(&self) -> (bool, String, String) {
        let s = &self.platform.settings;
        let conninfo = format!(
            "host=localhost port={} user={} dbname={} sslmode=verify-full sslrootcert={}",
            s.postgres.port,
            s.control_db.user,
            s.control_db.name,
            self.pebble.root_file.display()
        );
        let pgpass = self.platform.layout.pgpass_file();
        psql(
            &conninfo,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[("PGPASSFILE", pgpass.as_path())],
        )
    }

    /// A TLS session verified against Pebble's root, kept open by the runtime.
    fn open_session(&self) -> tokio_postgres::Client {
        let s = &self.platform.settings;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.pebble.root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let password = self
            .platform
            .settings
            .control_db_password()
            .unwrap()
            .unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(s.postgres.port)
            .user(&s.control_db.user)
            .dbname(&s.control_db.name)
            .password(password.expose())
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        self.rt.block_on(async {
            let (client, conn) = config
                .connect(tls)
                .await
                .expect("TLS session before the renewal");
            tokio::spawn(conn);
            client
        })
    }

    fn assert_no_temp_files(&self) {
        let dir = self.cert_file().parent().unwrap();
        let leftovers: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temp files left in {}: {leftovers:?}",
            dir.display()
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.platform.down();
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

fn assert_fails_with(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "no {needle:?} in\n{}",
        text(out)
    );
}

/// The chain in `pem` verifies for `name` against `root_pem` alone.
fn verify_chain(pem: &[u8], root_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name).unwrap().to_owned(),
            &[],
            UnixTime::now(),
        )
        .map(drop)
}

#[test]
fn http01_issue_is_served_verified_and_renews_without_a_restart() {
    let site = Site::new("acme-http");
    let pebble = &site.pebble;
    let local_ca =
        std::fs::read_to_string(site.platform.settings.tls.ca_file.as_ref().unwrap()).unwrap();

    let out = site.issue("http-01", pebble.http_port, &pebble.directory_url);
    assert_ok(&out);
    let (chain, key) = site.files();
    verify_chain(&chain, &pebble.root_pem, "localhost")
        .expect("the chain verifies against Pebble's root");
    assert!(
        verify_chain(&chain, &local_ca, "localhost").is_err(),
        "still the local CA's certificate"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&site.platform.settings.tls.key_file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            meta.uid(),
            site.platform.cluster.owner.uid,
            "the key belongs to the cluster's OS user"
        );
    }
    site.assert_served(&site.file_leaf());
    let (ok, out, err) = site.psql_verify_full();
    assert!(
        ok && out == "t",
        "psql verify-full with Pebble's root: {err}"
    );

    // Plenty of days left: no order, even with the challenge port taken (an attempt would fail).
    let orders = pebble.orders_placed();
    let busy = TcpListener::bind(("127.0.0.1", pebble.http_port)).unwrap();
    let out = site.cert(&["renew"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pebble.orders_placed(),
        orders,
        "renew placed an order although not due"
    );
    assert!(
        site.files() == (chain.clone(), key.clone()),
        "renew changed the files although not due"
    );
    drop(busy);

    // Forced: a new certificate, served after a reload, by the same postmaster, to old sessions too.
    let session = site.open_session();
    let postmaster = site.postmaster_pid();
    let out = site.cert(&["renew", "--force"]);
    assert_ok(&out);
    assert_eq!(pebble.orders_placed(), orders + 1);
    let (new_chain, new_key) = site.files();
    assert!(
        new_chain != chain && new_key != key,
        "renew --force kept the old files"
    );
    verify_chain(&new_chain, &pebble.root_pem, "localhost").unwrap();
    site.assert_served(&site.file_leaf());
    assert_eq!(
        site.postmaster_pid(),
        postmaster,
        "PostgreSQL was restarted"
    );
    let one: i32 = site
        .rt
        .block_on(session.query_one("SELECT 1", &[]))
        .expect("the session opened before the renewal is alive")
        .get(0);
    assert_eq!(one, 1);

    let out = site.cert(&["status", "--json"]);
    assert_ok(&out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sans"], serde_json::json!(["localhost"]));
    assert!(status["days_left"].as_i64().unwrap() > 30);
    for served in status["served"].as_array().unwrap() {
        assert_eq!(served["state"], "matches", "{status}");
    }
    site.assert_no_temp_files();
}

#[test]
fn failures_leave_the_old_files_in_use_then_tls_alpn01_issues() {
    let site = Site::new("acme-fail");
    let pebble = &site.pebble;
    let old_files = site.files();
    let old_leaf = site.file_leaf();
    let unchanged = |what: &str| {
        assert!(
            site.files() == old_files,
            "{what}: the key or certificate changed"
        );
        site.assert_no_temp_files();
        site.assert_served(&old_leaf);
    };

    let nowhere = format!("https://127.0.0.1:{}/dir", free_port());
    let out = site.issue("http-01", pebble.http_port, &nowhere);
    assert_fails_with(&out, 1, "cannot reach the ACME directory");
    unchanged("wrong directory URL");

    let orders = pebble.orders_placed();
    let busy = TcpListener::bind(("127.0.0.1", pebble.http_port)).unwrap();
    let out = site.issue("http-01", pebble.http_port, &pebble.directory_url);
    assert_fails_with(&out, 1, &format!("challenge port {} ", pebble.http_port));
    drop(busy);
    assert_eq!(
        pebble.orders_placed(),
        orders,
        "an order was placed although the port was busy"
    );
    unchanged("busy challenge port");

    // The responder listens where Pebble's validator does not dial.
    let out = site.issue("http-01", free_port(), &pebble.directory_url);
    assert_fails_with(&out, 1, "could not validate localhost with http-01");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("urn:ietf:params:acme:error:"),
        "{}",
        text(&out)
    );
    unchanged("challenge rejected");

    let out = site.issue("tls-alpn-01", pebble.tls_port, &pebble.directory_url);
    assert_ok(&out);
    let (chain, _) = site.files();
    verify_chain(&chain, &pebble.root_pem, "localhost").unwrap();
    site.assert_served(&site.file_leaf());
    let (ok, out, err) = site.psql_verify_full();
    assert!(
        ok && out == "t",
        "psql verify-full after tls-alpn-01: {err}"
    );
    site.assert_no_temp_files();
}

#[test]
fn eab_required_works_with_the_key_and_fails_clearly_without() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pebble = Pebble::start_with_eab();
    let (kid, hmac) = pebble.eab.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No services: the certificate only lands in --tls-dir.
    let config = d.join("pgaas.yaml");
    std::fs::write(
        &config,
        format!(
            "postgres:\n  socket_dir: {d}/run\npgbouncer:\n  enabled: false\npaths:\n  state_dir: {d}/state\n  config_dir: {d}/etc\ntls:\n  cert_file: {d}/tls/server.crt\n  key_file: {d}/tls/server.key\n",
            d = d.display()
        ),
    )
    .unwrap();
    let tls_dir = d.join("out");
    let run = |extra: &[&str], env: Option<&str>| {
        let mut cmd = pgaas_bin();
        cmd.arg("--config")
            .arg(&config)
            .arg("cert")
            .args(extra)
            .env_remove("ACME_EAB_HMAC_KEY");
        if let Some(key) = env {
            cmd.env("ACME_EAB_HMAC_KEY", key);
        }
        cmd.output().unwrap()
    };
    let ca = pebble.https_ca.to_string_lossy().into_owned();
    let listen = format!("127.0.0.1:{}", pebble.http_port);
    let tls = tls_dir.to_string_lossy().into_owned();
    let issue: Vec<&str> = vec![
        "issue",
        "--domain",
        "localhost",
        "--email",
        "ops@pgaas.test",
        "--directory",
        &pebble.directory_url,
        "--ca-file",
        &ca,
        "--http-listen",
        &listen,
        "--tls-dir",
        &tls,
    ];

    assert_fails_with(&run(&["renew"], None), 2, "run that first");
    assert_fails_with(
        &run(
            &["issue", "--domain", "no such host", "--email", "a@b.c"],
            None,
        ),
        2,
        "not a host name",
    );

    let out = run(&issue, None);
    assert_fails_with(&out, 1, "externalAccountRequired");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--eab-kid"),
        "{}",
        text(&out)
    );
    assert!(!tls_dir.join("server.crt").exists());

    let wrong = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
    };
    let with_kid = [issue.as_slice(), &["--eab-kid", &kid]].concat();
    let out = run(&with_kid, Some(&wrong));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!tls_dir.join("server.crt").exists());

    // The HMAC key comes from the environment, never from argv.
    let out = run(&with_kid, Some(&hmac));
    assert_ok(&out);
    let chain = std::fs::read(tls_dir.join("server.crt")).unwrap();
    verify_chain(&chain, &pebble.root_pem, "localhost").unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&hmac));
    let stored = std::fs::read_to_string(d.join("state/acme/certificate.json"))
        .or_else(|_| std::fs::read_to_string(d.join("etc/acme/certificate.json")))
        .unwrap();
    assert!(!stored.contains(&hmac), "the EAB key was stored");
}

/// DNS-01 for a host whose ports 80 and 443 belong to something else: the record goes into a
/// real BIND 9 zone through RFC 2136 (TSIG-signed), Pebble resolves through that server, and
/// nothing listens here. Issue, renew with the stored parameters, no record left behind; a key
/// the server refuses, or one others can read, changes nothing that is served.
#[test]
fn dns01_through_rfc2136_issues_renews_cleans_up_and_a_refused_update_changes_nothing() {
    let named = crate::bind::Named::start("pgaas.test", &["db"]);
    let site = Site::with_pebble("acme-dns", Pebble::start_with_dns(&named.address()));
    let pebble = &site.pebble;
    let domain = "db.pgaas.test";
    let record = "_acme-challenge.db.pgaas.test";
    let ca = pebble.https_ca.to_string_lossy().into_owned();
    let key = named.key_file.to_string_lossy().into_owned();
    let server = named.address();
    let out = site.cert(&[
        "issue",
        "--domain",
        domain,
        "--email",
        "ops@pgaas.test",
        "--directory",
        &pebble.directory_url,
        "--ca-file",
        &ca,
        "--challenge",
        "dns-01",
        "--dns-server",
        &server,
        "--dns-key-file",
        &key,
        "--dns-zone",
        "pgaas.test",
    ]);
    assert_ok(&out);
    let (chain, _) = site.files();
    verify_chain(&chain, &pebble.root_pem, domain).expect("the chain verifies for the name");
    let leaf = site.file_leaf();
    site.assert_served(&leaf);
    assert!(
        named.query("TXT", record).is_empty(),
        "the challenge record was left in the zone: {:?}",
        named.query("TXT", record)
    );
    assert!(
        named
            .log()
            .contains("updating zone 'pgaas.test/IN': adding an RR"),
        "BIND took no update:\n{}",
        named.log()
    );

    // The renewal timer's path: the stored parameters, the same server and key.
    let orders = pebble.orders_placed();
    assert_ok(&site.cert(&["renew", "--force"]));
    assert_eq!(pebble.orders_placed(), orders + 1);
    let renewed = site.file_leaf();
    assert_ne!(
        renewed, leaf,
        "renew --force must install a new certificate"
    );
    site.assert_served(&renewed);
    assert!(named.query("TXT", record).is_empty());

    // A key the server does not accept (same name, another secret): refused, nothing changes.
    let other = std::process::Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", "pgaas-test"])
        .output()
        .unwrap();
    let good_key = std::fs::read(&named.key_file).unwrap();
    std::fs::write(&named.key_file, &other.stdout).unwrap();
    let files = site.files();
    let out = site.cert(&["renew", "--force"]);
    assert_fails_with(&out, 1, "refused to update");
    assert_fails_with(&out, 1, "TSIG");
    assert_eq!(site.files(), files, "a failed renewal touched the files");
    site.assert_served(&renewed);
    assert!(named.query("TXT", record).is_empty());
    assert!(
        !text(&out).contains(std::str::from_utf8(&other.stdout).unwrap().trim()),
        "the key reached the output"
    );

    // A key file others can read: refused before the CA is asked for anything.
    std::fs::write(&named.key_file, &good_key).unwrap();
    std::fs::set_permissions(
        &named.key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let orders = pebble.orders_placed();
    assert_fails_with(&site.cert(&["renew", "--force"]), 2, "chmod 600");
    assert_eq!(pebble.orders_placed(), orders, "an order was placed anyway");
    site.assert_served(&renewed);
}

/// DNS-01 through Cloudflare's API (a local server speaking its endpoints, writing into a real
/// BIND zone that Pebble resolves through): the zone found from the name, the record created,
/// checked where told, validated, and deleted; a token the API refuses changes nothing served and
/// never reaches the output.
#[test]
fn dns01_through_cloudflare_creates_and_deletes_its_record_and_a_refused_token_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let named = crate::bind::Named::start("pgaas.test", &["db"]);
    let site = Site::with_pebble("acme-cf", Pebble::start_with_dns(&named.address()));
    let pebble = &site.pebble;
    let token = "cf-test-token-4b1d";
    let api = site.rt.block_on(crate::cloudflare::FakeCloudflare::start(
        token,
        "pgaas.test",
        &named.address(),
        &named.key_file,
        &pebble.dir().join("cert.pem"),
        &pebble.dir().join("key.pem"),
    ));
    let token_file = site.state.join("cloudflare.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (domain, record) = ("db.pgaas.test", "_acme-challenge.db.pgaas.test");
    let ca = pebble.https_ca.to_string_lossy().into_owned();
    let token_arg = token_file.to_string_lossy().into_owned();
    let check = named.address();
    let out = site.cert(&[
        "issue",
        "--domain",
        domain,
        "--email",
        "ops@pgaas.test",
        "--directory",
        &pebble.directory_url,
        "--ca-file",
        &ca,
        "--challenge",
        "dns-01",
        "--cloudflare-token-file",
        &token_arg,
        "--cloudflare-api",
        &api.api,
        "--dns-check-server",
        &check,
    ]);
    assert_ok(&out);
    let (chain, _) = site.files();
    verify_chain(&chain, &pebble.root_pem, domain).expect("the chain verifies for the name");
    let leaf = site.file_leaf();
    site.assert_served(&leaf);
    let calls = api.calls();
    assert_eq!(
        calls[..2],
        [
            "GET zones?name=db.pgaas.test".to_string(),
            "GET zones?name=pgaas.test".to_string()
        ],
        "the zone is the longest parent the token sees: {calls:?}"
    );
    assert!(calls.contains(&"POST dns_records".to_string()), "{calls:?}");
    assert!(
        calls.iter().any(|c| c.starts_with("DELETE rec")),
        "{calls:?}"
    );
    assert_eq!(api.live_records(), 0, "a record was left at Cloudflare");
    assert!(
        named.query("TXT", record).is_empty(),
        "the record is still in DNS"
    );
    assert!(!text(&out).contains(token), "the token reached the output");

    // A token Cloudflare refuses: the renewal fails with what to do, nothing changes.
    std::fs::write(&token_file, "revoked-token\n").unwrap();
    let files = site.files();
    let out = site.cert(&["renew", "--force"]);
    assert_fails_with(&out, 1, "Zone.DNS Edit");
    assert!(
        !text(&out).contains("revoked-token"),
        "the token reached the output"
    );
    assert_eq!(site.files(), files);
    site.assert_served(&leaf);
    assert_eq!(api.live_records(), 0);
}
