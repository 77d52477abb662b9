//! A cluster node's Patroni configuration and etcd's environment file (`cluster.*` settings).
//!
//! Patroni owns PostgreSQL's start, stop, promotion and replication settings; pgaas keeps the
//! rest. Patroni includes pgaas's `pgaas.conf` as its `custom_conf` (tuning, TLS, statistics),
//! is told pgaas's `hba_file` and `ident_file` (so the access rules stay pgaas's, on every node),
//! and reaches the server as the superuser over the socket by peer, like every pgaas command:
//! the superuser never logs in over TCP, not even Patroni's. The YAML is built as data and
//! serialised, so no value needs quoting by hand.

use std::path::Path;

use serde_json::{Value, json};

use super::RenderError;
use crate::{model::cluster::ClusterSecrets, settings::Settings};

/// The user of Patroni's REST API's basic authentication.
pub const PATRONI_API_USER: &str = "pgaas";

/// What a node's Patroni configuration depends on besides settings.
#[derive(Clone, Debug)]
pub struct PatroniInputs<'a> {
    pub settings: &'a Settings,
    pub secrets: &'a ClusterSecrets,
    /// PostgreSQL's data directory under Patroni.
    pub data_dir: &'a Path,
    /// The server's binaries (`/usr/lib/postgresql/<ver>/bin`).
    pub bin_dir: &'a Path,
    /// pgaas's rendered `pgaas.conf`, which Patroni includes.
    pub custom_conf: &'a Path,
    /// Where Patroni keeps the pgpass file it writes for replication and rewind.
    pub pgpass: &'a Path,
}

fn path(what: &str, p: &Path) -> Result<String, RenderError> {
    let s = p.to_string_lossy();
    if !p.is_absolute() || s.chars().any(char::is_control) {
        return Err(RenderError::invalid(
            what,
            s,
            "must be an absolute path without control characters",
        ));
    }
    Ok(s.into_owned())
}

/// `host:port`, with IPv6 addresses bracketed.
fn host_port(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The cluster's name and this node's entry; an error without them.
fn scope_and_node(
    cl: &crate::settings::ClusterSettings,
) -> Result<(&str, &crate::settings::ClusterNode), RenderError> {
    match (cl.name.as_deref(), cl.this_node()) {
        (Some(scope), Some(me)) => Ok((scope, me)),
        _ => Err(RenderError::invalid(
            "cluster",
            cl.name.clone().unwrap_or_default(),
            "no cluster.name, or cluster.node is not one of cluster.nodes",
        )),
    }
}

/// Patroni's cluster-wide ("dynamic") configuration as pgaas's settings want it. Patroni takes
/// it from `bootstrap.dcs` once, when it makes the cluster, and keeps it in etcd; after that a
/// change reaches it only through its REST API (`PATCH /config`), which `pgaas install` sends
/// (see [`config_drift`]).
pub fn dynamic_config(s: &Settings) -> Value {
    let cl = &s.cluster;
    json!({
        "ttl": cl.ttl_secs,
        "loop_wait": cl.loop_wait_secs,
        "retry_timeout": cl.retry_timeout_secs,
        "maximum_lag_on_failover": cl.maximum_lag_on_failover_bytes,
        "synchronous_mode": cl.synchronous,
        "synchronous_mode_strict": cl.synchronous && cl.synchronous_strict,
        // etcd without a majority stops failover, not the primary: it keeps serving while
        // every member answers its REST API.
        "failsafe_mode": true,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            // Parameters every node must share; Patroni passes them on the command line, so
            // they win over pgaas.conf.
            "parameters": {
                "max_connections": s.postgres.max_connections,
                "wal_level": "replica",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "256MB",
            },
        },
    })
}

/// What of `want` (a [`dynamic_config`]) the `live` configuration (Patroni's `GET /config`)
/// lacks or holds otherwise: the patch for `PATCH /config` (`None` when they agree), and one
/// line per difference for the operator. Keys pgaas does not set are left as they are.
pub fn config_drift(live: &Value, want: &Value) -> Option<(Value, Vec<String>)> {
    fn walk(live: &Value, want: &Value, at: &str, lines: &mut Vec<String>) -> Option<Value> {
        match want {
            Value::Object(keys) => {
                let mut patch = serde_json::Map::new();
                for (k, w) in keys {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    if let Some(p) = walk(live.get(k).unwrap_or(&Value::Null), w, &here, lines) {
                        patch.insert(k.clone(), p);
                    }
                }
                (!patch.is_empty()).then_some(Value::Object(patch))
            }
            _ if same(live, want) => None,
            _ => {
                let was = if live.is_null() {
                    "unset".to_string()
                } else {
                    live.to_string()
                };
                lines.push(format!("{at}: {was} -> {want}"));
                Some(want.clone())
            }
        }
    }
    /// Patroni keeps what it was given, but an operator's `patronictl edit-config` may have
    /// written `"10"` for `10`, or `on`/`"True"` for `true` (Patroni's own `parse_bool`
    /// reading): the same value, not a difference. Other strings compare exactly (PostgreSQL's
    /// units are case-sensitive).
    fn same(live: &Value, want: &Value) -> bool {
        let as_bool = |v: &Value| match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => n.as_i64().and_then(|n| match n {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            }),
            Value::String(s) => match s.to_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        };
        match (live, want) {
            _ if live == want => true,
            (_, Value::Bool(w)) => as_bool(live) == Some(*w),
            // `hot_standby: on` in config.yml is YAML 1.1's `true` to Patroni.
            (Value::Bool(l), _) => as_bool(want) == Some(*l),
            (Value::String(l), Value::Number(w)) => l.trim() == w.to_string(),
            _ => false,
        }
    }
    let mut lines = Vec::new();
    walk(live, want, "", &mut lines).map(|patch| (patch, lines))
}

/// `/etc/patroni/config.yml` for this node.
pub fn render_patroni(i: &PatroniInputs) -> Result<String, RenderError> {
    let s = i.settings;
    let cl = &s.cluster;
    let (scope, me) = scope_and_node(cl)?;
    let hba_dir =
        s.postgres.hba_dir.clone().ok_or_else(|| {
            RenderError::invalid("postgres.hba_dir", "", "a cluster node needs it")
        })?;
    let etcd_tls = crate::settings::EtcdTls::of(s);
    let etcd: Vec<String> = cl
        .nodes
        .iter()
        .map(|n| host_port(n.address, cl.etcd_client_port))
        .collect();
    // Replication and rewind go over TLS, checked against the local CA where there is one.
    let tls = |user: &str, password: &str| -> Result<Value, RenderError> {
        let mut v = json!({ "username": user, "password": password, "sslmode": "require" });
        if let Some(ca) = &s.tls.ca_file {
            v["sslmode"] = json!("verify-ca");
            v["sslrootcert"] = json!(path("tls.ca_file", ca)?);
        }
        Ok(v)
    };
    let mut listen: Vec<String> = s.postgres.listen_addresses.clone();
    if listen.is_empty() {
        listen.push(me.address.to_string());
    }
    let doc = json!({
        "scope": scope,
        "namespace": "/pgaas/",
        "name": me.name,
        "restapi": {
            "listen": host_port(me.address, cl.patroni_port),
            "connect_address": host_port(me.address, cl.patroni_port),
            // What changes something (switchover, restart, the failsafe calls between members)
            // needs the password; health and state stay readable for checks.
            "authentication": { "username": PATRONI_API_USER, "password": i.secrets.patroni.expose() },
        },
        // etcd only talks TLS with a certificate from the cluster's CA, in both directions.
        "etcd3": {
            "hosts": etcd,
            "protocol": "https",
            "cacert": path("etcd CA", &etcd_tls.ca)?,
            "cert": path("etcd client certificate", &etcd_tls.client_cert)?,
            "key": path("etcd client key", &etcd_tls.client_key)?,
        },
        "bootstrap": {
            "dcs": dynamic_config(s),
            "initdb": [
                { "encoding": "UTF8" },
                { "locale": "C" },
                "data-checksums",
                { "auth-local": "peer" },
                { "auth-host": "scram-sha-256" },
                { "username": s.postgres.superuser },
            ],
        },
        "postgresql": {
            "listen": format!("{}:{}", listen.join(","), s.postgres.port),
            "connect_address": host_port(me.address, s.postgres.port),
            "data_dir": path("cluster data directory", i.data_dir)?,
            "bin_dir": path("PostgreSQL binaries", i.bin_dir)?,
            "pgpass": path("Patroni's pgpass", i.pgpass)?,
            "custom_conf": path("pgaas.conf", i.custom_conf)?,
            // A new standby copies the primary at once: a spread checkpoint would pace itself
            // over most of checkpoint_timeout (15 min) however little there is to write.
            "basebackup": [{ "checkpoint": "fast" }],
            // The superuser over the socket by peer; this node's own replication checks over
            // the socket too (other nodes' replication comes over TCP).
            "use_unix_socket": true,
            "use_unix_socket_repl": true,
            "authentication": {
                "superuser": { "username": s.postgres.superuser },
                "replication": tls(&cl.replication_user, i.secrets.replication.expose())?,
                "rewind": tls(&cl.rewind_user, i.secrets.rewind.expose())?,
            },
            "parameters": {
                "unix_socket_directories": path("postgres.socket_dir", &s.postgres.socket_dir)?,
                "hba_file": path("postgres.hba_dir", &hba_dir.join("pg_hba.conf"))?,
                "ident_file": path("postgres.hba_dir", &hba_dir.join("pg_ident.conf"))?,
            },
        },
        "tags": {
            "nofailover": false,
            "noloadbalance": false,
            "clonefrom": false,
            "nosync": false,
        },
    });
    let yaml = yaml_serde::to_string(&doc).map_err(|e| {
        RenderError::invalid("Patroni configuration", "", format!("serialising: {e}"))
    })?;
    Ok(format!(
        "# Managed by pgaas (`pgaas render`): change /etc/pgaas/pgaas.yaml, not this file.\n{yaml}"
    ))
}

/// etcd's environment file (`/etc/default/etcd`, read by Debian's `etcd.service`). Every node
/// runs a member, the witness too.
pub fn render_etcd_env(s: &Settings) -> Result<String, RenderError> {
    let cl = &s.cluster;
    let (scope, me) = scope_and_node(cl)?;
    let url = |ip, port| format!("https://{}", host_port(ip, port));
    let tls = crate::settings::EtcdTls::of(s);
    let file = |what: &str, p: &Path| path(what, p);
    let initial: Vec<String> = cl
        .nodes
        .iter()
        .map(|n| format!("{}={}", n.name, url(n.address, cl.etcd_peer_port)))
        .collect();
    // Clients (Patroni, etcdctl) use the node's address, as the other nodes' Patroni do.
    let client = url(me.address, cl.etcd_client_port);
    let data = path("cluster.etcd_data_dir", &cl.etcd_data_dir)?;
    Ok(format!(
        "# Managed by pgaas (`pgaas render`): change /etc/pgaas/pgaas.yaml, not this file.\n\
         ETCD_NAME={name}\n\
         ETCD_DATA_DIR={data}\n\
         ETCD_LISTEN_PEER_URLS={peer}\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS={peer}\n\
         ETCD_LISTEN_CLIENT_URLS={client}\n\
         ETCD_ADVERTISE_CLIENT_URLS={advertise}\n\
         ETCD_INITIAL_CLUSTER={initial}\n\
         ETCD_INITIAL_CLUSTER_STATE=new\n\
         ETCD_INITIAL_CLUSTER_TOKEN=pgaas-{scope}\n\
         ETCD_ENABLE_V2=false\n\
         # Clients and members alike present a certificate from the cluster's CA.\n\
         ETCD_CERT_FILE={cert}\n\
         ETCD_KEY_FILE={key}\n\
         ETCD_TRUSTED_CA_FILE={ca}\n\
         ETCD_CLIENT_CERT_AUTH=true\n\
         ETCD_PEER_CERT_FILE={cert}\n\
         ETCD_PEER_KEY_FILE={key}\n\
         ETCD_PEER_TRUSTED_CA_FILE={ca}\n\
         ETCD_PEER_CLIENT_CERT_AUTH=true\n",
        cert = file("etcd certificate", &tls.peer_cert)?,
        key = file("etcd key", &tls.peer_key)?,
        ca = file("etcd CA", &tls.ca)?,
        name = me.name,
        peer = url(me.address, cl.etcd_peer_port),
        advertise = client,
        initial = initial.join(","),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::ClusterNode;

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.postgres.hba_dir = Some("/etc/pgaas/postgresql".into());
        s.tls.ca_file = Some("/etc/pgaas/tls/ca.crt".into());
        s.cluster.name = Some("main".into());
        s.cluster.node = Some("db2".into());
        s.cluster.nodes = [
            ("db1", "10.0.0.1", false),
            ("db2", "10.0.0.2", false),
            ("w", "fd00::3", true),
        ]
        .iter()
        .map(|(n, a, w)| ClusterNode {
            name: n.to_string(),
            address: a.parse().unwrap(),
            host: None,
            witness: *w,
        })
        .collect();
        s
    }

    #[test]
    fn patroni_keeps_pgaas_access_rules_and_the_superuser_on_the_socket() {
        let s = settings();
        let secrets = ClusterSecrets::generate();
        let text = render_patroni(&PatroniInputs {
            settings: &s,
            secrets: &secrets,
            data_dir: Path::new("/var/lib/postgresql/15/main"),
            bin_dir: Path::new("/usr/lib/postgresql/15/bin"),
            custom_conf: Path::new("/etc/patroni/conf.d/pgaas.conf"),
            pgpass: Path::new("/var/lib/postgresql/.pgpass.patroni"),
        })
        .unwrap();
        let doc: serde_json::Value = yaml_serde::from_str(&text).unwrap();
        assert_eq!(doc["name"], "db2");
        assert_eq!(doc["restapi"]["listen"], "10.0.0.2:8008");
        assert_eq!(
            doc["restapi"]["authentication"]["password"],
            secrets.patroni.expose()
        );
        assert_eq!(
            doc["etcd3"]["hosts"],
            json!(["10.0.0.1:2379", "10.0.0.2:2379", "[fd00::3]:2379"])
        );
        let pg = &doc["postgresql"];
        assert_eq!(
            pg["parameters"]["hba_file"],
            "/etc/pgaas/postgresql/pg_hba.conf"
        );
        assert_eq!(pg["custom_conf"], "/etc/patroni/conf.d/pgaas.conf");
        assert_eq!(pg["use_unix_socket"], true);
        assert_eq!(pg["basebackup"], json!([{ "checkpoint": "fast" }]));
        // No superuser password: it logs in by peer over the socket, never over TCP.
        assert!(pg["authentication"]["superuser"].get("password").is_none());
        assert_eq!(pg["authentication"]["replication"]["sslmode"], "verify-ca");
        assert_eq!(
            pg["authentication"]["rewind"]["password"],
            secrets.rewind.expose()
        );
        let dcs = &doc["bootstrap"]["dcs"];
        assert_eq!(dcs["synchronous_mode"], true);
        assert_eq!(dcs["synchronous_mode_strict"], false);
        assert_eq!(dcs["failsafe_mode"], true);
        assert_eq!(dcs["postgresql"]["use_pg_rewind"], true);

        let env = render_etcd_env(&s).unwrap();
        assert!(env.contains("ETCD_NAME=db2\n"), "{env}");
        assert!(
            env.contains("ETCD_INITIAL_CLUSTER=db1=https://10.0.0.1:2380,db2=https://10.0.0.2:2380,w=https://[fd00::3]:2380\n"),
            "{env}"
        );
        assert!(
            env.contains("ETCD_LISTEN_CLIENT_URLS=https://10.0.0.2:2379\n"),
            "{env}"
        );
        for both in [
            "ETCD_CLIENT_CERT_AUTH=true\n",
            "ETCD_PEER_CLIENT_CERT_AUTH=true\n",
        ] {
            assert!(env.contains(both), "{env}");
        }
        assert_eq!(doc["etcd3"]["protocol"], "https");
        assert_eq!(doc["etcd3"]["cert"], "/etc/pgaas/tls/etcd-client.crt");
    }

    #[test]
    fn a_changed_setting_reaches_patroni_as_a_patch_of_only_what_differs() {
        let mut s = settings();
        let live = dynamic_config(&s);
        // As made at bootstrap: nothing to send.
        assert!(config_drift(&live, &dynamic_config(&s)).is_none());
        // Spelled differently by someone's `patronictl edit-config`, and a key pgaas does not
        // set: still nothing.
        let mut edited = live.clone();
        edited["ttl"] = json!("30");
        edited["failsafe_mode"] = json!("True");
        // What Patroni reads from `hot_standby: on` in config.yml (YAML 1.1).
        edited["postgresql"]["parameters"]["hot_standby"] = json!(true);
        edited["postgresql"]["parameters"]["wal_log_hints"] = json!(true);
        edited["postgresql"]["parameters"]["work_mem"] = json!("8MB");
        edited["postgresql"]["use_slots"] = json!("on");
        assert!(config_drift(&edited, &dynamic_config(&s)).is_none());

        let was = s.postgres.max_connections;
        s.cluster.ttl_secs = 20;
        s.cluster.synchronous_strict = true;
        s.postgres.max_connections = 300;
        let (patch, lines) = config_drift(&edited, &dynamic_config(&s)).unwrap();
        assert_eq!(
            patch,
            json!({
                "ttl": 20,
                "synchronous_mode_strict": true,
                "postgresql": { "parameters": { "max_connections": 300 } },
            })
        );
        let mut lines = lines;
        lines.sort();
        assert_eq!(
            lines,
            [
                format!("postgresql.parameters.max_connections: {was} -> 300"),
                "synchronous_mode_strict: false -> true".to_string(),
                "ttl: \"30\" -> 20".to_string(),
            ]
        );
        // A key missing from the live configuration (an older Patroni's bootstrap) is sent.
        let mut older = live.clone();
        older.as_object_mut().unwrap().remove("failsafe_mode");
        let (patch, lines) = config_drift(&older, &dynamic_config(&settings())).unwrap();
        assert_eq!(patch, json!({ "failsafe_mode": true }));
        assert_eq!(lines, ["failsafe_mode: unset -> true"]);
    }
}
