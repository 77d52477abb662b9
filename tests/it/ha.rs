//! High availability with the real engines: three etcd members and two Patroni nodes, each node
//! on a loopback address of its own (127.0.0.1, 127.0.0.2; the witness 127.0.0.3), configured
//! only through what pgaas renders for it (`render::patroni`, `pgaas.conf`, pg_hba.conf with the
//! replication lines). A tenant writes continuously through a libpq multi-host URL while the
//! primary's machine dies (SIGKILL of Patroni and of PostgreSQL); every acknowledged write is
//! on the new primary, the old one rejoins as a standby, and the access rules hold on both.
//!
//! Loopback connections leave from 127.0.0.1 whatever address they go to, so the node on
//! 127.0.0.1 is where the other node's replication arrives from; attackers bind other addresses.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pgaas::{
    model::{cluster::ClusterSecrets, hba::HbaPolicy},
    pg::{
        binaries::PgBinaries,
        cluster::OsUser,
        tls::{LocalCa, ServerCertTarget},
    },
    render::{
        self, HostFacts, RenderInputs,
        patroni::{PatroniInputs, render_etcd_env, render_patroni},
    },
    settings::{ClusterNode, Settings},
};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

use crate::{
    allowlist::{Creds, connect_to, v4},
    attack::refused_before_password,
    harness::{free_port, pgaas_bin, temp_state_dir, test_settings},
};

struct Ports {
    pg: u16,
    patroni: u16,
    etcd_client: u16,
    etcd_peer: u16,
}

struct Node {
    name: &'static str,
    addr: Ipv4Addr,
    dir: PathBuf,
    settings: Settings,
    patroni: Option<Child>,
    etcd: Option<Child>,
    serve: Option<Child>,
}

impl Node {
    /// Beside the node's directory, where the harness's watchdog finds its postmaster.pid.
    fn data_dir(&self) -> PathBuf {
        self.dir.with_extension("data")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    fn rest(&self, path: &str) -> String {
        format!(
            "http://{}:{}{path}",
            self.addr, self.settings.cluster.patroni_port
        )
    }

    async fn su(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.settings.postgres.socket_dir)
            .port(self.settings.postgres.port)
            .user("postgres")
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn start_patroni(&mut self, owner: &OsUser) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("patroni.log"))
            .unwrap();
        let child = Command::new("patroni")
            .arg(self.config())
            .uid(owner.uid)
            .gid(owner.gid)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("patroni is installed (apt-get install patroni)");
        std::fs::write(
            self.dir.with_extension("patroni.pid"),
            child.id().to_string(),
        )
        .unwrap();
        self.patroni = Some(child);
    }

    /// `pgaas serve` with this node's settings file.
    fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .unwrap();
        let child = pgaas_bin()
            .arg("--config")
            .arg(self.dir.join("pgaas.yaml"))
            .arg("serve")
            .env("PGAAS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(self.dir.with_extension("serve.pid"), child.id().to_string()).unwrap();
        self.serve = Some(child);
    }

    async fn wait_health(&self, http: &reqwest::Client) {
        let url = format!("http://{}/health", self.settings.api.listen);
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(http, &url).await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "pgaas serve on {} is not healthy:\n{}",
                self.name,
                self.serve_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn serve_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn kill_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `pgaas status` on this node.
    fn status(&self) -> String {
        let out = pgaas_bin()
            .arg("--config")
            .arg(self.dir.join("pgaas.yaml"))
            .arg("status")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    async fn wait_status_says(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.status();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`pgaas status` never said {needle:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The machine dies: pgaas, Patroni and every PostgreSQL process, SIGKILL, no shutdown.
    fn kill_hard(&mut self) {
        for child in [self.serve.take(), self.patroni.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) {
            let pid = pid.lines().next().unwrap_or("").trim().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }

    /// Patroni's and PostgreSQL's errors, then the last lines of the log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("WARNING"))
            .collect();
        format!(
            "{}\n...\n{}",
            errors[errors.len().saturating_sub(20)..].join("\n"),
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in [self.patroni.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn node_settings(
    base: &Path,
    name: &str,
    ports: &Ports,
    nodes: &[ClusterNode],
    ca: &LocalCa,
) -> Settings {
    let dir = base.join(name);
    let mut s = test_settings();
    s.public_host = "localhost".into();
    s.archive.enabled = false;
    s.postgres.port = ports.pg;
    let me = nodes.iter().find(|n| n.name == name).unwrap();
    s.postgres.listen_addresses = vec![me.address.to_string()];
    s.postgres.socket_dir = dir.join("socket");
    s.postgres.hba_dir = Some(dir.join("hba"));
    s.postgres.superuser = "postgres".into();
    s.postgres.memory_mb = Some(512);
    s.tls.cert_file = dir.join("tls/server.crt");
    s.tls.key_file = dir.join("tls/server.key");
    s.tls.ca_file = Some(ca.cert_file.clone());
    let cl = &mut s.cluster;
    cl.name = Some("pgaas_it".into());
    cl.node = Some(name.into());
    cl.nodes = nodes.to_vec();
    cl.ttl_secs = 10;
    cl.loop_wait_secs = 1;
    cl.retry_timeout_secs = 4;
    cl.patroni_port = ports.patroni;
    cl.etcd_client_port = ports.etcd_client;
    cl.etcd_peer_port = ports.etcd_peer;
    cl.etcd_data_dir = dir.join("etcd");
    cl.patroni_config_dir = dir.clone();
    s
}

/// The access files pgaas renders for a node: the same on every node (one policy).
fn write_access_files(node: &Node, owner: &OsUser) {
    let policy = HbaPolicy::base(&node.settings);
    let rules = pgaas::hba::compile_all(&policy).unwrap();
    let files = render::managed_files(&RenderInputs {
        settings: &node.settings,
        facts: HostFacts {
            pg_version: PgBinaries::find(None).unwrap().version,
            memory_mb: 512,
        },
        hba: &policy,
        rules: &rules,
        generation: 1,
        pg_config_dir: node.dir.join("conf"),
        data_dir: node.data_dir(),
        include_systemd: false,
        include_pgbouncer: false,
    })
    .unwrap();
    for f in files {
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        let tmp = f.path.with_extension("tmp");
        std::fs::write(&tmp, &f.contents).unwrap();
        owner.chown(&tmp).unwrap();
        std::fs::rename(&tmp, &f.path).unwrap();
    }
}

fn chown_tree(owner: &OsUser, dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{}:{}", owner.uid, owner.gid)])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

async fn status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Wait until exactly one node answers Patroni's `/primary` with 200; its index.
async fn wait_primary(http: &reqwest::Client, nodes: &[Node], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.patroni.is_some() && status(http, &n.rest("/primary")).await == Some(200) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no primary within {timeout:?}:\n{}",
            nodes
                .iter()
                .map(|n| format!("== {}\n{}", n.name, n.log_tail()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_status(http: &reqwest::Client, node: &Node, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while status(http, &node.rest(path)).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{} never answered 200 on {path}:\n{}",
            node.name,
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// `(status, body, Retry-After)`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (code, resp.json().await.unwrap_or(Value::Null), retry)
    }
}

/// One INSERT through psql (libpq's multi-host failover); true when acknowledged.
fn insert(url: &str, id: u64) -> bool {
    Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("INSERT INTO acked VALUES ({id})"),
        ])
        .env_remove("PGPASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_is_replaced_with_nothing_acknowledged_lost_and_the_rules_hold() {
    let owner = OsUser::cluster_owner().unwrap();
    let base = temp_state_dir("ha");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ports = Ports {
        pg: free_port(),
        patroni: free_port(),
        etcd_client: free_port(),
        etcd_peer: free_port(),
    };
    let cluster_nodes = vec![
        ClusterNode {
            name: "n1".into(),
            address: v4(1),
            host: None,
            witness: false,
        },
        ClusterNode {
            name: "n2".into(),
            address: v4(2),
            host: None,
            witness: false,
        },
        ClusterNode {
            name: "w".into(),
            address: v4(3),
            host: None,
            witness: true,
        },
    ];
    let ca = LocalCa::in_dir(&base);
    ca.ensure().unwrap();
    let secrets = ClusterSecrets::generate();
    let bin = PgBinaries::find(None).unwrap();

    let mut nodes: Vec<Node> = Vec::new();
    for (name, last) in [("n1", 1u8), ("n2", 2), ("w", 3)] {
        let settings = node_settings(&base, name, &ports, &cluster_nodes, &ca);
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("socket")).unwrap();
        let node = Node {
            name,
            addr: Ipv4Addr::new(127, 0, 0, last),
            dir,
            settings,
            patroni: None,
            etcd: None,
            serve: None,
        };
        nodes.push(node);
    }

    // etcd on every node, the witness too, from the environment file pgaas renders.
    for node in &mut nodes {
        let env = render_etcd_env(&node.settings).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        for line in env.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v);
        }
        let log = std::fs::File::create(node.dir.join("etcd.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        std::fs::write(node.dir.with_extension("etcd.pid"), child.id().to_string()).unwrap();
        node.etcd = Some(child);
    }

    // The PostgreSQL nodes: TLS, pgaas.conf and the access files, then Patroni's configuration.
    for node in nodes.iter_mut().take(2) {
        ca.ensure_server_cert(
            &ServerCertTarget {
                cert_file: node.settings.tls.cert_file.clone(),
                key_file: node.settings.tls.key_file.clone(),
                key_owner: Some((owner.uid, owner.gid)),
            },
            &["localhost".into(), node.addr.to_string()],
        )
        .unwrap();
        write_access_files(node, &owner);
        let yaml = render_patroni(&PatroniInputs {
            settings: &node.settings,
            secrets: &secrets,
            data_dir: &node.data_dir(),
            bin_dir: &bin.bindir,
            custom_conf: &node.dir.join("conf/conf.d/pgaas.conf"),
            pgpass: &node.dir.join("pgpass"),
        })
        .unwrap();
        std::fs::write(node.config(), yaml).unwrap();
        std::fs::set_permissions(
            node.config(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        chown_tree(&owner, &node.dir);
        std::fs::create_dir(node.data_dir()).unwrap();
        owner.chown(&node.data_dir()).unwrap();
        std::fs::set_permissions(
            node.data_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
    }
    let http = reqwest::Client::new();
    for node in nodes.iter_mut().take(2) {
        node.start_patroni(&owner);
    }
    let mut primary = wait_primary(&http, &nodes[..2], Duration::from_secs(90)).await;
    let mut standby = 1 - primary;
    t_log(&format!("primary {}", nodes[primary].name));
    // Synchronous replication: the standby confirms commits before they are acknowledged.
    wait_status(&http, &nodes[standby], "/sync", Duration::from_secs(90)).await;

    // The control DB on the primary; `pgaas serve` on both nodes, each on its own database.
    let api_password = pgaas::model::Secret::generate();
    let password_file = base.join("api-password");
    std::fs::write(&password_file, api_password.expose()).unwrap();
    let key_file = base.join("api-key");
    let api_key = format!("ha-{}", pgaas::model::Secret::generate().expose());
    std::fs::write(&key_file, &api_key).unwrap();
    for f in [&password_file, &key_file] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    pgaas::control_db::bootstrap(
        &sqlx::postgres::PgConnectOptions::new()
            .socket(&nodes[primary].settings.postgres.socket_dir)
            .port(ports.pg)
            .username("postgres"),
        &nodes[primary].settings,
        &api_password,
    )
    .await
    .unwrap();
    let api_port = free_port();
    for node in nodes.iter_mut().take(2) {
        let s = &mut node.settings;
        s.control_db.host = s.postgres.socket_dir.to_string_lossy().into_owned();
        s.control_db.port = Some(ports.pg);
        s.control_db.password_file = Some(password_file.clone());
        s.api.api_key_file = Some(key_file.clone());
        s.api.listen = (node.addr, api_port).into();
        s.pgbouncer.enabled = false;
        s.postgres.version = Some(bin.version);
        std::fs::write(node.dir.join("pgaas.yaml"), s.to_yaml_without_secrets()).unwrap();
    }
    // The primary's first: it runs the migrations.
    for i in [primary, standby] {
        nodes[i].start_serve();
        nodes[i].wait_health(&http).await;
    }
    let addrs: Vec<Ipv4Addr> = nodes.iter().map(|n| n.addr).collect();
    let api = |i: usize| Api {
        http: http.clone(),
        base: format!("http://{}:{api_port}", addrs[i]),
        key: api_key.clone(),
    };
    for (i, role) in [(primary, "primary"), (standby, "standby")] {
        let (code, health, _) = api(i).call("GET", "/health", None).await;
        assert_eq!(code, 200, "{health}");
        assert_eq!(health["cluster"]["role"], role, "{health}");
        assert_eq!(health["cluster"]["node"], nodes[i].name, "{health}");
    }

    // Tenants are made through the primary's API; the standby's refuses writes cleanly.
    let create = json!({ "friendlyName": "ha writer", "ownerEmail": "ha@example.com" });
    let (code, body, retry) = api(standby)
        .call("POST", "/api/databases", Some(create.clone()))
        .await;
    assert_eq!(code, 503, "a write on the standby's API: {body}");
    assert!(retry.is_some(), "503 without Retry-After: {body}");
    let (code, body, _) = api(primary)
        .call("POST", "/api/databases", Some(create))
        .await;
    assert_eq!(code, 201, "{body}");
    let writer_db = body["data"]["database_name"].as_str().unwrap().to_string();
    let writer_url = body["data"]["connection_string"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        writer_url.contains(&format!("@127.0.0.1:{0},127.0.0.2:{0}/", ports.pg))
            && writer_url.contains("target_session_attrs=read-write"),
        "not a multi-host URL: {writer_url}"
    );
    let (code, body, _) = api(primary)
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "ha locked", "ownerEmail": "ha@example.com" })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let locked_id = body["data"]["id"].as_str().unwrap().to_string();
    let locked = Creds {
        user: body["data"]["username"].as_str().unwrap().into(),
        password: body["data"]["password"].as_str().unwrap().into(),
        database: body["data"]["database_name"].as_str().unwrap().into(),
    };
    // Read by the standby through replication: its API answers reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body, _) = api(standby)
            .call("GET", &format!("/api/databases/{locked_id}"), None)
            .await;
        if code == 200 {
            break;
        }
        assert!(
            code == 404 && Instant::now() < deadline,
            "a read on the standby's API: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An allow-list change through the primary: in force there when the API answers, and on
    // the standby (whose files only its own pgaas writes, from the replicated rows) soon after.
    let standby_addr = IpAddr::V4(nodes[standby].addr);
    // Synchronous commit waits for the standby's flush, not its replay: the new role may take
    // a moment to be visible there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = connect_to(&ca.cert_file, v4(8), standby_addr, ports.pg, &locked, true).await
    {
        assert!(
            Instant::now() < deadline,
            "the open tenant cannot reach the standby: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body, _) = api(primary)
        .call(
            "POST",
            &format!("/api/databases/{locked_id}/whitelist"),
            Some(json!({ "ipAddress": "127.0.0.7/32", "description": "the only client" })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let answered = Instant::now();
    let r = connect_to(
        &ca.cert_file,
        v4(8),
        IpAddr::V4(nodes[primary].addr),
        ports.pg,
        &locked,
        true,
    )
    .await;
    refused_before_password(
        &r,
        "an unlisted address on the primary, once the API answered",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = connect_to(&ca.cert_file, v4(8), standby_addr, ports.pg, &locked, true).await;
        if r.is_err() {
            refused_before_password(&r, "an unlisted address on the standby");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never enforced the new allow-list:\n{}",
            nodes[standby].serve_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t_log(&format!(
        "allow-list in force on the standby {:?} after the primary's API answered",
        answered.elapsed()
    ));
    connect_to(&ca.cert_file, v4(7), standby_addr, ports.pg, &locked, true)
        .await
        .unwrap_or_else(|e| panic!("the listed address is refused on the standby: {e}"));

    // The cluster's roles are for the nodes alone: refused from anywhere else before any
    // password, on both nodes; the superuser never over TCP.
    for node in &nodes[..2] {
        for (user, db) in [
            ("pgaas_rewind", "postgres"),
            ("pgaas_replicator", "postgres"),
            ("postgres", "postgres"),
        ] {
            let creds = Creds {
                user: user.into(),
                password: secrets.rewind.expose().into(),
                database: db.into(),
            };
            let r = connect_to(
                &ca.cert_file,
                v4(9),
                IpAddr::V4(node.addr),
                ports.pg,
                &creds,
                true,
            )
            .await;
            refused_before_password(&r, &format!("{user} from 127.0.0.9 to {}", node.name));
        }
    }

    // Continuous writes through the multi-host URL, each acknowledged one recorded.
    let url = writer_url.replace(
        "sslmode=require",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.cert_file.display()),
    ) + "&connect_timeout=2";
    let created = Command::new("psql")
        .arg(&url)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TABLE acked (id bigint PRIMARY KEY)",
        ])
        .status()
        .unwrap();
    assert!(created.success(), "the tenant cannot use its URL");
    assert!(insert(&url, 0), "the tenant cannot write through {url}");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
        std::thread::spawn(move || {
            let mut id = 1;
            while !stop.load(Ordering::Relaxed) {
                if insert(&url, id) {
                    acked.lock().unwrap().push((id, Instant::now()));
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
                id += 1;
            }
        })
    };
    let wait_acks = |n: usize, after: Instant, what: &'static str| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let count = acked
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, t)| *t > after)
                    .count();
                if count >= n {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: only {count} writes acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_acks(20, Instant::now(), "before the failover").await;

    // The primary's machine dies.
    let killed_at = Instant::now();
    nodes[primary].kill_hard();
    let new_primary = wait_primary(&http, &nodes[..2], Duration::from_secs(90)).await;
    assert_eq!(new_primary, standby, "the standby was not promoted");
    wait_acks(20, killed_at, "after the failover").await;
    let first_after = acked
        .lock()
        .unwrap()
        .iter()
        .find(|(_, t)| *t > killed_at)
        .map(|(_, t)| *t - killed_at)
        .unwrap();
    t_log(&format!(
        "writes resumed {first_after:?} after the primary died"
    ));
    (primary, standby) = (standby, primary);

    // Every acknowledged write is on the new primary.
    let n = all_acknowledged_on(&nodes[primary], &writer_db, &acked).await;
    t_log(&format!("{n} acknowledged writes, none lost"));

    // The new primary enforces exactly the rules the old one did.
    let target = IpAddr::V4(nodes[primary].addr);
    connect_to(&ca.cert_file, v4(7), target, ports.pg, &locked, true)
        .await
        .unwrap_or_else(|e| panic!("the listed address is refused on the new primary: {e}"));
    let r = connect_to(&ca.cert_file, v4(8), target, ports.pg, &locked, true).await;
    refused_before_password(&r, "an unlisted address on the new primary");
    let plain = connect_to(&ca.cert_file, v4(7), target, ports.pg, &locked, false).await;
    assert!(plain.is_err(), "plaintext accepted on the new primary");

    // The old primary comes back and rejoins as a standby of the new one (pg_rewind if it
    // had diverged), and catches up with the writes made without it.
    nodes[standby].start_patroni(&owner);
    wait_status(&http, &nodes[standby], "/replica", Duration::from_secs(120)).await;
    wait_status(&http, &nodes[standby], "/sync", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = acked.lock().unwrap().len();
        let c = nodes[standby].su(&writer_db).await.unwrap();
        let have: i64 = c
            .query_one("SELECT count(*) FROM acked", &[])
            .await
            .unwrap()
            .get(0);
        if have as usize >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined node has {have} of {total} rows"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all_acknowledged_on(&nodes[standby], &writer_db, &acked).await;
    nodes[standby].start_serve();
    nodes[standby].wait_health(&http).await;
    let (_, health, _) = api(standby).call("GET", "/health", None).await;
    assert_eq!(health["cluster"]["role"], "standby", "{health}");
    let (_, health, _) = api(primary).call("GET", "/health", None).await;
    assert_eq!(health["cluster"]["role"], "primary", "{health}");
    let (code, body, _) = api(primary)
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "after failover", "ownerEmail": "ha@example.com" })),
        )
        .await;
    assert_eq!(code, 201, "the new primary's API: {body}");
    let (code, body, retry) = api(standby)
        .call("DELETE", &format!("/api/databases/{locked_id}"), None)
        .await;
    assert_eq!(code, 503, "a write on the rejoined standby's API: {body}");
    assert!(retry.is_some());
    // It is read-only: the URL's read-write attribute never lands a client on it.
    let c = nodes[standby].su(&writer_db).await.unwrap();
    let ro: String = c
        .query_one("SHOW transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");

    // `pgaas status` shows the cluster as Patroni and etcd see it.
    let text = nodes[standby].status();
    for needle in [
        "Cluster pgaas_it (this node: ",
        " leader ",
        " sync_standby ",
        "etcd: n1 healthy, n2 healthy, w healthy",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} not in `pgaas status`:\n{text}"
        );
    }
    assert!(!text.contains("WARNING"), "{text}");

    // etcd loses a member: nothing changes but a warning. It loses a second, and with it the
    // majority: no failover could happen now, but the primary keeps taking writes well past
    // the leader key's lifetime (Patroni's failsafe mode: every member still answers).
    nodes[2].kill_etcd();
    assert!(insert(&url, 1_000_000), "a write with one etcd member down");
    // (If the lost member led etcd's raft, the others elect a new leader first.)
    nodes[standby]
        .wait_status_says("one more loss stops failover")
        .await;
    nodes[standby].kill_etcd();
    let ttl = Duration::from_secs(u64::from(nodes[0].settings.cluster.ttl_secs));
    let until = Instant::now() + ttl * 2;
    let mut id = 1_000_001;
    while Instant::now() < until {
        assert!(
            insert(&url, id),
            "a write failed with etcd's majority lost:\n{}",
            nodes[primary].log_tail()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    nodes[primary].wait_status_says("no majority").await;
}

/// Every acknowledged id is in the node's table; how many there are.
async fn all_acknowledged_on(node: &Node, db: &str, acked: &Mutex<Vec<(u64, Instant)>>) -> usize {
    let acked: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let c = node.su(db).await.unwrap();
    let rows = c.query("SELECT id FROM acked", &[]).await.unwrap();
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !have.contains(&(*id as i64)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing on {}: {:?}",
        lost.len(),
        node.name,
        &lost[..lost.len().min(20)]
    );
    acked.len()
}

fn t_log(msg: &str) {
    eprintln!("ha: {msg}");
}
