//! High availability (`cluster`): two PostgreSQL nodes under Patroni, with etcd on every node as
//! its consensus store (the third node a witness that runs only etcd). Patroni elects the
//! primary, fences and rejoins; pgaas renders its configuration, etcd's, and the access rules
//! that let the nodes replicate. Without a `cluster.name` the host is a single node, exactly as
//! before.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Patroni's scope and etcd's cluster token; unset means a single host.
    pub name: Option<String>,
    /// Which of `nodes` this host is.
    pub node: Option<String>,
    pub nodes: Vec<ClusterNode>,
    /// The role the standby streams WAL with (TLS + SCRAM, from the other nodes' addresses only).
    pub replication_user: String,
    /// The role `pg_rewind` reads the new primary with when an old primary rejoins. Not a
    /// superuser: Patroni grants it the few functions pg_rewind calls.
    pub rewind_user: String,
    /// Both roles' passwords, one per line as `replication=...` and `rewind=...`: the same file
    /// on every node (the operator copies it once), root-only; Patroni's configuration, which
    /// carries them to PostgreSQL, is readable by the cluster's OS user only.
    pub secrets_file: PathBuf,
    /// Patroni's `synchronous_mode`: a commit returns once the standby has it, so a failover
    /// loses nothing acknowledged. Not strict: a primary without a standby keeps serving (and
    /// `pgaas status` says it is alone).
    pub synchronous: bool,
    /// Patroni's `synchronous_mode_strict` (with `synchronous`): a primary without a standby
    /// stops acknowledging commits instead of acknowledging them on one machine only. Tenants
    /// then cannot write while the standby is down; off by default.
    pub synchronous_strict: bool,
    /// A standby further behind than this is not promoted (Patroni's `maximum_lag_on_failover`).
    pub maximum_lag_on_failover_bytes: u64,
    /// Patroni's leader key lifetime, loop period and retry timeout, seconds: a dead primary is
    /// replaced within about `ttl` + `loop_wait`.
    pub ttl_secs: u32,
    pub loop_wait_secs: u32,
    pub retry_timeout_secs: u32,
    /// Patroni's REST API (health checks, switchover) on each node.
    pub patroni_port: u16,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    /// Where Patroni's configuration is written (the Debian unit reads `config.yml` here).
    pub patroni_config_dir: PathBuf,
    /// Where etcd keeps its data.
    pub etcd_data_dir: PathBuf,
}

/// etcd's TLS files on a node, all from the cluster's CA (`ca.crt` beside the server
/// certificate, put there from the cluster's secrets): etcd's own certificate (server and peer,
/// owned by etcd), and Patroni's client certificate (owned by the cluster's OS user). pgaas, as
/// root, authenticates with etcd's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    pub fn of(s: &super::Settings) -> Self {
        let dir = s
            .tls
            .cert_file
            .parent()
            .unwrap_or(&s.paths.config_dir)
            .to_path_buf();
        Self {
            ca: dir.join("ca.crt"),
            peer_cert: dir.join("etcd.crt"),
            peer_key: dir.join("etcd.key"),
            client_cert: dir.join("etcd-client.crt"),
            client_key: dir.join("etcd-client.key"),
        }
    }
}

/// One machine of the cluster.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    pub name: String,
    /// The address the other nodes (and clients) reach it on.
    pub address: IpAddr,
    /// Its DNS name, if it has one: tenants' URLs name it instead of the address, and the
    /// certificate covers it.
    #[serde(default)]
    pub host: Option<String>,
    /// A witness runs only etcd: it breaks ties, it never holds data.
    #[serde(default)]
    pub witness: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            name: None,
            node: None,
            nodes: Vec::new(),
            replication_user: "pgaas_replicator".into(),
            rewind_user: "pgaas_rewind".into(),
            secrets_file: PathBuf::from("/etc/pgaas/secrets/cluster"),
            synchronous: true,
            synchronous_strict: false,
            maximum_lag_on_failover_bytes: 1024 * 1024,
            ttl_secs: 30,
            loop_wait_secs: 10,
            retry_timeout_secs: 10,
            patroni_port: 8008,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            patroni_config_dir: PathBuf::from("/etc/patroni"),
            etcd_data_dir: PathBuf::from("/var/lib/etcd/pgaas"),
        }
    }
}

/// db1 and db2 (PostgreSQL) and a witness, on 10.0.0.1 to 10.0.0.3: the tests' cluster.
#[cfg(test)]
pub(crate) fn example_nodes() -> Vec<ClusterNode> {
    ["db1", "db2", "witness"]
        .iter()
        .enumerate()
        .map(|(i, n)| ClusterNode {
            name: n.to_string(),
            address: std::net::IpAddr::from([10, 0, 0, i as u8 + 1]),
            host: None,
            witness: *n == "witness",
        })
        .collect()
}

impl ClusterSettings {
    /// Whether this host is part of a cluster at all.
    pub fn enabled(&self) -> bool {
        self.name.is_some()
    }

    /// Nothing of a cluster is configured (what a settings file leaves out).
    pub fn is_single_host(&self) -> bool {
        self.name.is_none() && self.node.is_none() && self.nodes.is_empty()
    }

    /// This host's entry (validation makes sure there is one when the cluster is enabled).
    pub fn this_node(&self) -> Option<&ClusterNode> {
        let me = self.node.as_deref()?;
        self.nodes.iter().find(|n| n.name == me)
    }

    /// The nodes that run PostgreSQL, in the order given.
    pub fn data_nodes(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| !n.witness)
    }
}
