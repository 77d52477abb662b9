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
    model::{
        cluster::ClusterSecrets,
        hba::{HbaPolicy, TenantAccess},
    },
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
use tokio_postgres::NoTls;

use crate::{
    allowlist::{Creds, connect_to, v4},
    attack::refused_before_password,
    harness::{free_port, temp_state_dir, test_settings},
};

const TENANT: &str = "tenant_ha";
const LOCKED: &str = "tenant_ha_locked";
const PASSWORD: &str = "haTenantPassw0rd";

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

    /// The machine dies: Patroni and every PostgreSQL process, SIGKILL, no shutdown.
    fn kill_hard(&mut self) {
        if let Some(mut p) = self.patroni.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) {
            let pid = pid.lines().next().unwrap_or("").trim().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
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
fn write_access_files(node: &Node, owner: &OsUser, tenants: &[TenantAccess]) {
    let mut policy = HbaPolicy::base(&node.settings);
    policy.tenants = tenants.to_vec();
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

/// The tenant's multi-host URL, as a client would be handed it.
fn tenant_url(nodes: &[Node], ca: &Path, port: u16) -> String {
    let hosts: Vec<String> = nodes
        .iter()
        .filter(|n| !n.settings.cluster.this_node().unwrap().witness)
        .map(|n| format!("{}:{port}", n.addr))
        .collect();
    format!(
        "postgresql://{TENANT}:{PASSWORD}@{}/{TENANT}?sslmode=verify-ca&sslrootcert={}&target_session_attrs=read-write&connect_timeout=2",
        hosts.join(","),
        ca.display()
    )
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
            witness: false,
        },
        ClusterNode {
            name: "n2".into(),
            address: v4(2),
            witness: false,
        },
        ClusterNode {
            name: "w".into(),
            address: v4(3),
            witness: true,
        },
    ];
    let ca = LocalCa::in_dir(&base);
    ca.ensure().unwrap();
    let secrets = ClusterSecrets::generate();
    let bin = PgBinaries::find(None).unwrap();
    let allow_locked = vec![TenantAccess {
        database: LOCKED.into(),
        role: LOCKED.into(),
        allow: vec!["127.0.0.7/32".parse().unwrap()],
    }];

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
        write_access_files(node, &owner, &allow_locked);
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

    // A tenant as pgaas makes one, and a second one behind an allow-list.
    {
        let su = nodes[primary].su("postgres").await.unwrap();
        for sql in [
            "CREATE ROLE pgaas_tenants NOLOGIN".to_string(),
            format!("CREATE ROLE {TENANT} LOGIN PASSWORD '{PASSWORD}' IN ROLE pgaas_tenants"),
            format!("CREATE DATABASE {TENANT} OWNER {TENANT}"),
            format!("CREATE ROLE {LOCKED} LOGIN PASSWORD '{PASSWORD}' IN ROLE pgaas_tenants"),
            format!("CREATE DATABASE {LOCKED} OWNER {LOCKED}"),
        ] {
            su.batch_execute(&sql).await.unwrap();
        }
        let own = nodes[primary].su(TENANT).await.unwrap();
        own.batch_execute(&format!(
            "CREATE TABLE acked (id bigint PRIMARY KEY); ALTER TABLE acked OWNER TO {TENANT}"
        ))
        .await
        .unwrap();
    }

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
    let url = tenant_url(&nodes, &ca.cert_file, ports.pg);
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
    let n = all_acknowledged_on(&nodes[primary], &acked).await;
    t_log(&format!("{n} acknowledged writes, none lost"));

    // The new primary enforces exactly the rules the old one did.
    let locked = Creds {
        user: LOCKED.into(),
        password: PASSWORD.into(),
        database: LOCKED.into(),
    };
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
        let c = nodes[standby].su(TENANT).await.unwrap();
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
    all_acknowledged_on(&nodes[standby], &acked).await;
    // It is read-only: the URL's read-write attribute never lands a client on it.
    let c = nodes[standby].su(TENANT).await.unwrap();
    let ro: String = c
        .query_one("SHOW transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
}

/// Every acknowledged id is in the node's table; how many there are.
async fn all_acknowledged_on(node: &Node, acked: &Mutex<Vec<(u64, Instant)>>) -> usize {
    let acked: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let c = node.su(TENANT).await.unwrap();
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
