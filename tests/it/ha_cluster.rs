//! A Patroni cluster on this machine for the high-availability tests and the failover bench:
//! three etcd members and two Patroni nodes, each node on a loopback address of its own
//! (127.0.0.1, 127.0.0.2; the witness 127.0.0.3), configured only through what pgaas renders
//! for it (`render::patroni`, `pgaas.conf`, pg_hba.conf with the replication lines), and
//! `pgaas serve` on the data nodes. Every process is stopped when its node is dropped; the
//! caller owns the directory.
//!
//! Loopback connections leave from 127.0.0.1 whatever address they go to, so the node on
//! 127.0.0.1 is where the other node's replication arrives from; attackers bind other addresses.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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
    settings::{ClusterNode, LoadOptions, Settings},
};
use serde_json::Value;
use tokio_postgres::NoTls;

pub use crate::harness::free_port;

/// One cluster at a time in this process: two would share the loopback addresses, and on 2
/// cores the load of both makes etcd answer slower than Patroni waits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn v4(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

/// Settings that ignore this machine's /etc/pgaas and environment.
fn base_settings() -> Settings {
    Settings::load(&LoadOptions {
        config_file: Some(PathBuf::from("/dev/null")),
        env_file: None,
        env: Vec::new(),
        flags: Vec::new(),
    })
    .expect("default settings load")
}

pub fn pgaas_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgaas"));
    cmd.env_remove("PGAAS_CONFIG").env("PGAAS_LOG", "warn");
    cmd
}

pub struct Ports {
    pub pg: u16,
    pub patroni: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
}

pub struct Node {
    pub name: &'static str,
    pub addr: Ipv4Addr,
    pub dir: PathBuf,
    pub settings: Settings,
    pub patroni: Option<Child>,
    pub etcd: Option<Child>,
    pub serve: Option<Child>,
    /// `pgaas worker` (restore jobs, repository checks), when archiving is on.
    pub worker: Option<Child>,
}

impl Node {
    /// Beside the node's directory, where the harness's watchdog finds its postmaster.pid.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.with_extension("data")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    pub fn rest(&self, path: &str) -> String {
        format!(
            "http://{}:{}{path}",
            self.addr, self.settings.cluster.patroni_port
        )
    }

    pub async fn su(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
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

    pub fn start_patroni(&mut self, owner: &OsUser) {
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
    pub fn start_serve(&mut self) {
        self.serve = Some(self.spawn_pgaas("serve"));
    }

    /// `pgaas worker` with this node's settings file.
    pub fn start_worker(&mut self) {
        self.worker = Some(self.spawn_pgaas("worker"));
    }

    /// `pgaas COMMAND`, logging to COMMAND.log, its pid beside the node's directory.
    fn spawn_pgaas(&self, command: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{command}.log")))
            .unwrap();
        let child = pgaas_bin()
            .arg("--config")
            .arg(self.dir.join("pgaas.yaml"))
            .arg(command)
            .env("PGAAS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(
            self.dir.with_extension(format!("{command}.pid")),
            child.id().to_string(),
        )
        .unwrap();
        child
    }

    /// The last lines of `pgaas worker`'s log.
    pub fn worker_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn wait_health(&self, http: &reqwest::Client) {
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

    pub fn serve_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn kill_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `pgaas status` on this node.
    pub fn status(&self) -> String {
        self.cli(&["status"])
    }

    /// A pgaas command on this node; its stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = pgaas_bin()
            .arg("--config")
            .arg(self.dir.join("pgaas.yaml"))
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub async fn wait_status_says(&self, needle: &str) {
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
    pub fn kill_hard(&mut self) {
        for child in [self.serve.take(), self.worker.take(), self.patroni.take()]
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
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("WARNING"))
            .collect();
        let etcd = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let etcd: Vec<&str> = etcd.lines().collect();
        format!(
            "{}\n...\n{}\n-- etcd\n{}",
            errors[errors.len().saturating_sub(20)..].join("\n"),
            lines[lines.len().saturating_sub(25)..].join("\n"),
            etcd[etcd.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for mut child in [self.serve.take(), self.worker.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
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

pub fn node_settings(
    base: &Path,
    name: &str,
    ports: &Ports,
    nodes: &[ClusterNode],
    ca: &LocalCa,
) -> Settings {
    let dir = base.join(name);
    let mut s = base_settings();
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
    cl.secrets_file = base.join("cluster-secrets");
    cl.patroni_config_dir = dir.clone();
    s
}

/// The access files pgaas renders for a node: the same on every node (one policy).
pub fn write_access_files(node: &Node, owner: &OsUser) {
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

pub fn chown_tree(owner: &OsUser, dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{}:{}", owner.uid, owner.gid)])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Wait until every etcd member serves and the members agreed on the cluster's version, as
/// `pgaas install` waits for etcd before it starts Patroni. etcd decides that version only
/// once every member answers, and until then Patroni reads "3.0.0" and talks an API etcd 3.4
/// no longer serves.
async fn wait_etcd_cluster_version(nodes: &[Node]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<reqwest::Client> = nodes
        .iter()
        .map(|n| pgaas::install::cluster_status::etcd_client(&n.settings).unwrap())
        .collect();
    loop {
        let mut waiting = Vec::new();
        for (n, http) in nodes.iter().zip(&clients) {
            let url = format!(
                "https://{}:{}/version",
                n.addr, n.settings.cluster.etcd_client_port
            );
            let version = match http.get(&url).send().await {
                Ok(r) => r.json::<Value>().await.map(|v| v["etcdcluster"].clone()),
                Err(e) => Err(e),
            };
            match version {
                Ok(Value::String(v)) if v.starts_with("3.") && v != "3.0.0" => {}
                other => waiting.push(format!("{}: {other:?}", n.name)),
            }
        }
        if waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd's members never agreed on a cluster version: {}\n{}",
            waiting.join("; "),
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every node's [`Node::log_tail`], for a failure message.
fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("== {}\n{}", n.name, n.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Wait until exactly one node answers Patroni's `/primary` with 200; its index.
pub async fn wait_primary(http: &reqwest::Client, nodes: &[Node], timeout: Duration) -> usize {
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
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn wait_status(http: &reqwest::Client, node: &Node, path: &str, timeout: Duration) {
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

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Api {
    /// `(status, body, Retry-After)`.
    pub async fn call(
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

/// One statement through psql (libpq: multi-host URLs, failover); true when it succeeded.
pub fn psql_ok(url: &str, sql: &str) -> bool {
    Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `sql` through psql until it succeeds, for at most `limit`. A new tenant's rule reaches the
/// standby's pg_hba.conf a moment after the primary answers (its `pgaas serve` follows the
/// replicated rows), and libpq does not try the next host after a refused login: a URL that
/// lists the standby first works from then on.
pub fn psql_retrying(url: &str, sql: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while !psql_ok(url, sql) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// One INSERT through psql, retried until it is acknowledged (an id already in, from an
/// attempt whose answer was lost, counts); how long it took, or `None` after `limit`.
pub fn insert_retrying(url: &str, id: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if psql_ok(
            url,
            &format!("INSERT INTO acked VALUES ({id}) ON CONFLICT DO NOTHING"),
        ) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One INSERT through psql; true when acknowledged.
pub fn insert(url: &str, id: u64) -> bool {
    psql_ok(url, &format!("INSERT INTO acked VALUES ({id})"))
}

pub struct Cluster {
    pub base: PathBuf,
    /// n1, n2 (PostgreSQL) and w (the witness).
    pub nodes: Vec<Node>,
    pub ports: Ports,
    pub ca: LocalCa,
    pub secrets: ClusterSecrets,
    pub owner: OsUser,
    pub http: reqwest::Client,
    pub bin: PgBinaries,
    /// Set by [`Cluster::start_api`].
    pub api_key: String,
    pub api_port: u16,
    /// Held while this cluster runs ([`ONE_AT_A_TIME`]).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// etcd on all three nodes, both data nodes' files, and Patroni on the first `running` of
    /// them. `base` must be a directory the cluster's OS user can traverse.
    pub async fn start(base: PathBuf, running: usize) -> Cluster {
        Self::start_with(base, running, |_, _| {}).await
    }

    /// [`Cluster::start`], with `tweak` adjusting each node's settings (given its directory)
    /// before anything is written. With archiving on, each data node gets what `pgaas install`
    /// puts there: the shared repository's passphrase from the cluster's secrets, pgBackRest's
    /// directories and `conf.d/secrets.conf`.
    pub async fn start_with(
        base: PathBuf,
        running: usize,
        tweak: impl Fn(&mut Settings, &Path),
    ) -> Cluster {
        let turn = ONE_AT_A_TIME.lock().await;
        let owner = OsUser::cluster_owner().unwrap();
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
        let secrets_file = base.join("cluster-secrets");
        std::fs::write(&secrets_file, secrets.render()).unwrap();
        std::fs::set_permissions(
            &secrets_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let bin = PgBinaries::find(None).unwrap();

        let mut nodes: Vec<Node> = Vec::new();
        for (name, last) in [("n1", 1u8), ("n2", 2), ("w", 3)] {
            let mut settings = node_settings(&base, name, &ports, &cluster_nodes, &ca);
            let dir = base.join(name);
            tweak(&mut settings, &dir);
            std::fs::create_dir_all(dir.join("socket")).unwrap();
            let node = Node {
                name,
                addr: Ipv4Addr::new(127, 0, 0, last),
                dir,
                settings,
                patroni: None,
                etcd: None,
                serve: None,
                worker: None,
            };
            nodes.push(node);
        }

        // etcd's certificates from the cluster's CA, where `pgaas install` puts them: its own
        // (server and peer) on every node, Patroni's client certificate on the data nodes.
        for (i, node) in nodes.iter().enumerate() {
            let tls = pgaas::settings::EtcdTls::of(&node.settings);
            std::fs::create_dir_all(tls.ca.parent().unwrap()).unwrap();
            std::fs::copy(&ca.cert_file, &tls.ca).unwrap();
            // etcd rejects a peer whose certificate does not name the address it connects
            // from, and on loopback every connection comes from 127.0.0.1 (the kernel's source
            // for all of 127/8): without that name, members reach each other only through the
            // connections 127.0.0.1's member dials, and a leader elected elsewhere cannot reach
            // every member, so etcd never settles its cluster version. Machines of their own
            // (the whole-machine `ha` scenario) connect from their own addresses.
            let names = [node.addr.to_string(), "127.0.0.1".to_string()];
            ca.ensure_peer_cert(
                &ServerCertTarget {
                    cert_file: tls.peer_cert.clone(),
                    key_file: tls.peer_key.clone(),
                    key_owner: None,
                },
                &names,
            )
            .unwrap();
            if i < 2 {
                ca.ensure_peer_cert(
                    &ServerCertTarget {
                        cert_file: tls.client_cert.clone(),
                        key_file: tls.client_key.clone(),
                        key_owner: Some((owner.uid, owner.gid)),
                    },
                    &names,
                )
                .unwrap();
            }
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
            if let (true, Some(s3)) = (node.settings.archive.enabled, &node.settings.archive.s3) {
                let pass = secrets.backup.as_ref().unwrap().expose();
                std::fs::write(&s3.cipher_pass_file, pass).unwrap();
                std::fs::set_permissions(
                    &s3.cipher_pass_file,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                pgaas::archive::prepare_dirs(&node.settings, &owner).unwrap();
                pgaas::archive::write_secrets(&node.settings, (owner.uid, owner.gid)).unwrap();
            }
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
        wait_etcd_cluster_version(&nodes).await;
        for node in nodes.iter_mut().take(running) {
            node.start_patroni(&owner);
        }
        Cluster {
            base,
            nodes,
            ports,
            ca,
            secrets,
            owner,
            http,
            bin,
            api_key: String::new(),
            api_port: 0,
            _turn: turn,
        }
    }

    /// The API of node `i`, for each `i`, with the key [`Cluster::start_api`] made; owns what
    /// it needs, so the cluster can be taken apart after.
    pub fn apis(&self) -> impl Fn(usize) -> Api + use<> {
        let (http, key, port) = (self.http.clone(), self.api_key.clone(), self.api_port);
        let addrs: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.addr).collect();
        move |i| Api {
            http: http.clone(),
            base: format!("http://{}:{port}", addrs[i]),
            key: key.clone(),
        }
    }

    /// The index of the data node Patroni made primary.
    pub async fn primary(&self) -> usize {
        wait_primary(&self.http, &self.nodes[..2], Duration::from_secs(90)).await
    }

    /// The control DB on the primary, then `pgaas serve` on the data nodes in `order` (the
    /// primary first: it runs the migrations).
    pub async fn start_api(&mut self, primary: usize, order: &[usize]) {
        // The control DB on the primary; `pgaas serve` on both nodes, each on its own database.
        let (nodes, ports, base, bin) = (&mut self.nodes, &self.ports, &self.base, &self.bin);
        let api_password = pgaas::model::Secret::generate();
        let password_file = base.join("api-password");
        std::fs::write(&password_file, api_password.expose()).unwrap();
        let key_file = base.join("api-key");
        let api_key = format!("ha-{}", pgaas::model::Secret::generate().expose());
        std::fs::write(&key_file, &api_key).unwrap();
        for f in [&password_file, &key_file] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
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
        for &i in order {
            nodes[i].start_serve();
            nodes[i].wait_health(&self.http).await;
        }
        self.api_key = api_key;
        self.api_port = api_port;
    }
}
