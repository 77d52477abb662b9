//! The cluster part of `pgaas status`: Patroni's view of the members (role, state, timeline,
//! lag) from this node's REST API, and each etcd member's health. Read over HTTP on the nodes'
//! addresses with short timeouts, so a dead node costs the report two seconds, not a hang.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::Settings;

#[derive(Debug, Default, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub node: String,
    /// Patroni's members, as this node's Patroni sees them; empty with `patroni_error`.
    pub members: Vec<Member>,
    pub patroni_error: Option<String>,
    /// The standbys the primary's PostgreSQL streams to (`pg_stat_replication`, read through
    /// the leader's Patroni); `None` when there is no leader or it did not answer.
    pub replication: Option<Vec<Replication>>,
    /// `(node, healthy)` for every etcd member.
    pub etcd: Vec<(String, bool)>,
    /// Why etcd could not be asked at all (its certificate is root's to read).
    pub etcd_error: Option<String>,
    pub synchronous: bool,
    /// `cluster.synchronous_strict`: without a synchronous standby, commits wait.
    pub strict: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Member {
    pub name: String,
    /// `leader`, `sync_standby`, `replica`, ...
    pub role: String,
    /// `running`, `streaming`, `stopped`, ...
    pub state: String,
    #[serde(default)]
    pub timeline: Option<i64>,
    /// Bytes behind the leader; Patroni reports `"unknown"` for a member it cannot measure.
    #[serde(default)]
    pub lag: Option<serde_json::Value>,
    /// A setting read only at start (`archive_mode`, `shared_buffers`, ...) changed and waits
    /// for a restart, which Patroni makes when asked.
    #[serde(default)]
    pub pending_restart: bool,
    /// The member's Patroni REST API (`http://host:port/patroni`).
    #[serde(default)]
    pub api_url: Option<String>,
}

/// A standby as the primary's PostgreSQL sees it: one row of its `pg_stat_replication`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Replication {
    /// The standby's member name (Patroni sets it as the application name).
    pub application_name: String,
    /// `streaming`, `catchup`, `backup`, ...
    #[serde(default)]
    pub state: String,
    /// `sync`, `quorum`, `async`, `potential`.
    #[serde(default)]
    pub sync_state: String,
}

impl Replication {
    fn synchronous(&self) -> bool {
        self.state == "streaming" && matches!(self.sync_state.as_str(), "sync" | "quorum")
    }
}

#[derive(Deserialize)]
struct PatroniNode {
    #[serde(default)]
    state: String,
    #[serde(default)]
    role: String,
    /// Absent both when no standby streams and when Patroni could not ask PostgreSQL.
    #[serde(default)]
    replication: Option<Vec<Replication>>,
}

impl PatroniNode {
    /// The standbys, when the answer comes from a running primary's PostgreSQL; `None` when
    /// it is unknown (PostgreSQL starting, restarting, or not answering Patroni).
    fn streams_to(self) -> Option<Vec<Replication>> {
        let primary = matches!(self.role.as_str(), "master" | "primary");
        (primary && self.state == "running").then(|| self.replication.unwrap_or_default())
    }
}

#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
}

/// Why the primary acknowledges commits alone although the cluster runs in synchronous mode.
#[derive(Debug, PartialEq, Eq)]
pub enum OneMachine {
    /// No standby is a member of the cluster (its machine or its Patroni is down).
    NoStandby,
    /// Standbys are members, but none streams from the primary: `(name, Patroni's state)`.
    StandbyDown(Vec<(String, String)>),
    /// A standby streams but has not caught up: Patroni makes it synchronous once it has.
    CatchingUp(Vec<String>),
    /// Patroni names a synchronous standby, but the primary's PostgreSQL does not wait for it
    /// yet (for a moment after a restart of the primary).
    NotWaitingYet(String),
}

impl OneMachine {
    fn explain(&self) -> String {
        match self {
            OneMachine::NoStandby => {
                "no standby is in the cluster (its machine or Patroni is down)".into()
            }
            OneMachine::StandbyDown(down) => {
                let names: Vec<String> = down.iter().map(|(n, s)| format!("{n} ({s})")).collect();
                format!(
                    "the standby is down: {} does not stream from the primary",
                    names.join(", ")
                )
            }
            OneMachine::CatchingUp(names) => format!(
                "the standby is catching up: {} streams but is not synchronous yet (Patroni makes it so once it has caught up)",
                names.join(", ")
            ),
            OneMachine::NotWaitingYet(name) => format!(
                "Patroni names {name} the synchronous standby, but the primary's PostgreSQL does not wait for it yet. \
                 This passes within seconds of a restart; if it lasts, see `journalctl -u patroni` on both nodes"
            ),
        }
    }
}

impl ClusterStatus {
    /// Whether, and why, the primary acknowledges commits on its own machine only while the
    /// cluster is in (non-strict) synchronous mode; `None` outside synchronous mode, in strict
    /// mode (commits wait instead), without a leader, or with a synchronous standby streaming.
    pub fn one_machine_commits(&self) -> Option<OneMachine> {
        if !self.synchronous || self.strict || self.patroni_error.is_some() {
            return None;
        }
        let leader = self.members.iter().find(|m| m.role == "leader")?;
        let standbys: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.name != leader.name)
            .collect();
        if standbys.is_empty() {
            return Some(OneMachine::NoStandby);
        }
        // The primary's PostgreSQL waits for a standby: whatever Patroni's keys say yet.
        if let Some(rep) = &self.replication
            && rep.iter().any(Replication::synchronous)
        {
            return None;
        }
        let streams = |m: &Member| match &self.replication {
            Some(rep) => rep.iter().any(|r| {
                r.application_name == m.name && matches!(r.state.as_str(), "streaming" | "catchup")
            }),
            // The primary's own view is unknown: Patroni's word for the standby.
            None => m.state == "streaming",
        };
        if let Some(named) = standbys.iter().find(|m| m.role == "sync_standby") {
            return match &self.replication {
                Some(rep) if !rep.iter().any(Replication::synchronous) => {
                    Some(OneMachine::NotWaitingYet(named.name.clone()))
                }
                _ => None,
            };
        }
        let (streaming, down): (Vec<&Member>, Vec<&Member>) =
            standbys.into_iter().partition(|m| streams(m));
        if !streaming.is_empty() {
            return Some(OneMachine::CatchingUp(
                streaming.iter().map(|m| m.name.clone()).collect(),
            ));
        }
        Some(OneMachine::StandbyDown(
            down.iter()
                .map(|m| (m.name.clone(), m.state.clone()))
                .collect(),
        ))
    }

    /// What an operator must hear about: a lone primary, no leader, an etcd without majority.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.patroni_error.is_some() {
            return out;
        }
        let leader = self.members.iter().find(|m| m.role == "leader");
        match leader {
            None => out.push(
                "no primary: tenants cannot write until Patroni elects one (see `journalctl -u patroni`)"
                    .into(),
            ),
            Some(l) => {
                let standbys = self.members.iter().filter(|m| m.name != l.name).count();
                let sync = self.members.iter().any(|m| m.role == "sync_standby");
                if self.synchronous && self.strict && !sync {
                    out.push(format!(
                        "{} has no synchronous standby and synchronous mode is strict: tenants' commits wait \
                         until a standby streams again (cluster.synchronous_strict)",
                        l.name
                    ));
                } else if let Some(why) = self.one_machine_commits() {
                    out.push(format!(
                        "commits are acknowledged on {} only (one machine), without a synchronous standby: {}. \
                         Commits acknowledged now are lost if {} fails before a standby has them",
                        l.name,
                        why.explain(),
                        l.name
                    ));
                }
                if standbys == 0 && !self.strict {
                    out.push(format!(
                        "{} is the primary and has no standby: a failure of it now stops every tenant",
                        l.name
                    ));
                }
            }
        }
        for m in self.members.iter().filter(|m| m.pending_restart) {
            out.push(format!(
                "{} has settings waiting for a restart of its PostgreSQL (such as archive_mode): \
                 `patronictl -c /etc/patroni/config.yml restart {} {}` when convenient, the standby first",
                m.name, self.name, m.name
            ));
        }
        if self.etcd_error.is_some() {
            return out;
        }
        let healthy = self.etcd.iter().filter(|(_, h)| *h).count();
        if !self.etcd.is_empty() && healthy * 2 <= self.etcd.len() {
            out.push(format!(
                "etcd has {healthy} of {} members healthy, no majority: no failover can happen (the primary keeps serving)",
                self.etcd.len()
            ));
        } else if healthy < self.etcd.len() {
            out.push(format!(
                "etcd has {healthy} of {} members healthy: one more loss stops failover",
                self.etcd.len()
            ));
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = format!("Cluster {} (this node: {})\n", self.name, self.node);
        match &self.patroni_error {
            Some(e) => out.push_str(&format!(
                "  Patroni: not reachable ({e}); check `systemctl status patroni`\n"
            )),
            None => {
                out.push_str(&format!(
                    "  {:<16} {:<14} {:<10} {:>8} {:>10}\n",
                    "member", "role", "state", "timeline", "lag"
                ));
                for m in &self.members {
                    let lag = match &m.lag {
                        Some(serde_json::Value::Number(n)) => format!("{n} B"),
                        Some(v) => v.to_string().trim_matches('"').to_string(),
                        None => "-".into(),
                    };
                    out.push_str(&format!(
                        "  {:<16} {:<14} {:<10} {:>8} {:>10}\n",
                        m.name,
                        m.role,
                        m.state,
                        m.timeline.map_or("-".into(), |t| t.to_string()),
                        lag
                    ));
                }
                if let Some(rep) = &self.replication {
                    let to: Vec<String> = rep
                        .iter()
                        .map(|r| format!("{} ({}, {})", r.application_name, r.state, r.sync_state))
                        .collect();
                    out.push_str(&format!(
                        "  the primary's PostgreSQL streams to: {}\n",
                        if to.is_empty() {
                            "no standby".into()
                        } else {
                            to.join(", ")
                        }
                    ));
                }
            }
        }
        let etcd: Vec<String> = self
            .etcd
            .iter()
            .map(|(n, h)| format!("{n} {}", if *h { "healthy" } else { "UNREACHABLE" }))
            .collect();
        match &self.etcd_error {
            Some(e) => out.push_str(&format!("  etcd: not checked ({e})\n")),
            None => out.push_str(&format!("  etcd: {}\n", etcd.join(", "))),
        }
        for w in self.warnings() {
            out.push_str(&format!("  WARNING: {w}\n"));
        }
        out
    }
}

fn host_port(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::from((ip, port)).to_string()
}

/// Patroni's members as the first of `nodes` that answers sees them (`GET /cluster`), or
/// the last error.
pub async fn members(
    http: &reqwest::Client,
    nodes: &[std::net::IpAddr],
    port: u16,
) -> Result<Vec<Member>, String> {
    let mut last = "no PostgreSQL node to ask".to_string();
    for ip in nodes {
        let url = format!("http://{}/cluster", host_port(*ip, port));
        match http.get(&url).send().await {
            Ok(r) => match r.json::<Members>().await {
                Ok(m) => return Ok(m.members),
                Err(e) => last = format!("{url}: {e}"),
            },
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

/// The standbys the leader's PostgreSQL streams to, from its Patroni (`GET /patroni`, which
/// reads `pg_stat_replication`): live, where the members' roles come from etcd's keys.
async fn leader_replication(
    http: &reqwest::Client,
    members: &[Member],
) -> Option<Vec<Replication>> {
    let url = members
        .iter()
        .find(|m| m.role == "leader")?
        .api_url
        .as_ref()?;
    let node: PatroniNode = http.get(url).send().await.ok()?.json().await.ok()?;
    node.streams_to()
}

/// Patroni's cluster-wide configuration against what pgaas's settings want, on the node at
/// `ip`: the differences, one line each (empty when they agree). With `password` (the REST
/// API's, from the cluster's secrets) the differences are sent (`PATCH /config`), and Patroni
/// passes them to every member; parameters read only at start then wait for a restart, which
/// `pgaas status` lists.
pub async fn sync_patroni_config(
    http: &reqwest::Client,
    settings: &Settings,
    ip: std::net::IpAddr,
    password: Option<&str>,
) -> Result<Vec<String>, String> {
    let url = format!(
        "http://{}/config",
        host_port(ip, settings.cluster.patroni_port)
    );
    let want = crate::render::patroni::dynamic_config(settings);
    // Patroni answers 409 when another writer (the other node's install) changed the
    // configuration in between: read it again and send what still differs.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let live: serde_json::Value = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                r.json().await.map_err(|e| format!("{url}: {e}"))?
            }
            Ok(r) => return Err(format!("{url}: {}", r.status())),
            Err(e) => return Err(format!("{url}: {e}")),
        };
        let Some((patch, lines)) = crate::render::patroni::config_drift(&live, &want) else {
            return Ok(Vec::new());
        };
        let Some(password) = password else {
            return Ok(lines);
        };
        let r = http
            .patch(&url)
            .basic_auth(crate::render::patroni::PATRONI_API_USER, Some(password))
            .json(&patch)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = r.status();
        if status.is_success() {
            return Ok(lines);
        }
        if status == reqwest::StatusCode::CONFLICT && attempt < 3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let body = r.text().await.unwrap_or_default();
        return Err(format!(
            "{url} refused the change: {status} {}",
            body.trim()
        ));
    }
}

/// A client of etcd's API: TLS against the cluster's CA, authenticated with this node's etcd
/// certificate (etcd refuses clients without one; root reads it).
pub fn etcd_client(settings: &Settings) -> Result<reqwest::Client, String> {
    let tls = crate::settings::EtcdTls::of(settings);
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca = reqwest::Certificate::from_pem(&read(&tls.ca)?).map_err(|e| e.to_string())?;
    let mut pem = read(&tls.peer_cert)?;
    pem.extend(read(&tls.peer_key)?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())
}

/// etcd's health endpoint on a member.
pub fn etcd_health_url(ip: std::net::IpAddr, port: u16) -> String {
    format!("https://{}/health", host_port(ip, port))
}

/// The cluster's state, or `None` on a single host.
pub async fn gather(settings: &Settings) -> Option<ClusterStatus> {
    let cl = &settings.cluster;
    let (name, me) = (cl.name.clone()?, cl.this_node()?);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let mut st = ClusterStatus {
        name,
        node: me.name.clone(),
        synchronous: cl.synchronous,
        strict: cl.synchronous && cl.synchronous_strict,
        ..Default::default()
    };
    // A witness runs no Patroni: it asks the data nodes'.
    let ask: Vec<std::net::IpAddr> = if me.witness {
        cl.data_nodes().map(|n| n.address).collect()
    } else {
        vec![me.address]
    };
    match members(&http, &ask, cl.patroni_port).await {
        Ok(m) => st.members = m,
        Err(e) => st.patroni_error = Some(e),
    }
    st.replication = leader_replication(&http, &st.members).await;
    let etcd = match etcd_client(settings) {
        Ok(c) => c,
        Err(e) => {
            st.etcd_error = Some(e);
            return Some(st);
        }
    };
    for n in &cl.nodes {
        let url = etcd_health_url(n.address, cl.etcd_client_port);
        let healthy = match etcd.get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["health"] == "true"),
            Err(_) => false,
        };
        st.etcd.push((n.name.clone(), healthy));
    }
    Some(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: &str) -> Member {
        Member {
            name: name.into(),
            role: role.into(),
            state: "running".into(),
            timeline: Some(1),
            lag: Some(serde_json::json!(0)),
            pending_restart: false,
            api_url: None,
        }
    }

    #[test]
    fn an_operator_hears_about_a_lone_primary_and_a_lost_majority() {
        let mut st = ClusterStatus {
            name: "main".into(),
            node: "db1".into(),
            members: vec![member("db1", "leader"), member("db2", "sync_standby")],
            etcd: vec![
                ("db1".into(), true),
                ("db2".into(), true),
                ("w".into(), true),
            ],
            synchronous: true,
            ..Default::default()
        };
        assert!(st.warnings().is_empty(), "{:?}", st.warnings());
        // Patroni's key names db2, but the primary's PostgreSQL does not wait for it yet (just
        // after Patroni restarted it), then does: Patroni's `GET /patroni` on the leader.
        let live: PatroniNode = serde_json::from_str(
            r#"{"state": "running", "role": "master", "replication": [{"usename": "replicator",
                "application_name": "db2", "client_addr": "10.0.0.2", "state": "streaming",
                "sync_state": "async", "sync_priority": 0}]}"#,
        )
        .unwrap();
        st.replication = live.streams_to();
        assert!(
            st.warnings()[0].contains("commits are acknowledged on db1 only (one machine)")
                && st.warnings()[0].contains("does not wait for it yet"),
            "{:?}",
            st.warnings()
        );
        assert!(st.render().contains("streams to: db2 (streaming, async)"));
        st.replication.as_mut().unwrap()[0].sync_state = "sync".into();
        assert!(st.warnings().is_empty(), "{:?}", st.warnings());
        let none: PatroniNode =
            serde_json::from_str(r#"{"state": "running", "role": "master"}"#).unwrap();
        st.replication = none.streams_to();
        assert!(st.warnings()[0].contains("does not wait for it yet"));
        // PostgreSQL restarting under Patroni: what it streams to is unknown, not "nothing".
        let unknown: PatroniNode =
            serde_json::from_str(r#"{"state": "starting", "role": "master"}"#).unwrap();
        assert!(unknown.streams_to().is_none());
        assert!(st.render().contains("streams to: no standby"));
        st.replication = None;
        // Patroni's own words for a member whose settings wait for a restart.
        let m: Member = serde_json::from_str(
            r#"{"name": "db2", "role": "sync_standby", "state": "streaming", "timeline": 1, "lag": 0, "pending_restart": true}"#,
        )
        .unwrap();
        st.members[1] = m;
        assert!(
            st.warnings()[0].contains("db2 has settings waiting for a restart")
                && st.warnings()[0].contains("restart main db2"),
            "{:?}",
            st.warnings()
        );
        st.members[1].pending_restart = false;
        st.members[1].role = "replica".into();
        assert!(st.warnings()[0].contains("without a synchronous standby"));
        st.members.pop();
        assert!(st.warnings()[0].contains("no standby is in the cluster"));
        assert!(st.warnings()[1].contains("has no standby"));
        st.strict = true;
        assert!(
            st.warnings()[0].contains("commits wait"),
            "{:?}",
            st.warnings()
        );
        st.strict = false;
        st.etcd[1].1 = false;
        st.etcd[2].1 = false;
        assert!(st.warnings().iter().any(|w| w.contains("no majority")));
        st.members.clear();
        assert!(st.warnings()[0].contains("no primary"));
        let text = st.render();
        assert!(
            text.contains("Cluster main (this node: db1)") && text.contains("w UNREACHABLE"),
            "{text}"
        );
    }

    /// What `pgaas status` says about where commits are, and why, for each state a standby
    /// passes through: down, streaming but behind, synchronous in Patroni's keys only, in sync.
    #[test]
    fn commits_on_one_machine_are_named_with_the_reason() {
        let rep = |state: &str, sync_state: &str| {
            Some(vec![Replication {
                application_name: "db2".into(),
                state: state.into(),
                sync_state: sync_state.into(),
            }])
        };
        let mut st = ClusterStatus {
            name: "main".into(),
            node: "db1".into(),
            members: vec![member("db1", "leader"), member("db2", "replica")],
            synchronous: true,
            ..Default::default()
        };
        // The standby's PostgreSQL stopped: Patroni still lists it, the primary has no stream.
        st.members[1].state = "stopped".into();
        st.replication = Some(Vec::new());
        assert_eq!(
            st.one_machine_commits(),
            Some(OneMachine::StandbyDown(vec![(
                "db2".into(),
                "stopped".into()
            )]))
        );
        let w = &st.warnings()[0];
        assert!(
            w.contains("commits are acknowledged on db1 only (one machine)")
                && w.contains("the standby is down: db2 (stopped)"),
            "{w}"
        );
        // Back, replaying what it missed.
        st.members[1].state = "streaming".into();
        st.replication = rep("catchup", "async");
        assert_eq!(
            st.one_machine_commits(),
            Some(OneMachine::CatchingUp(vec!["db2".into()]))
        );
        assert!(st.warnings()[0].contains("the standby is catching up: db2"));
        // Caught up and streaming, Patroni has not named it yet; the primary's view unknown.
        st.replication = None;
        assert_eq!(
            st.one_machine_commits(),
            Some(OneMachine::CatchingUp(vec!["db2".into()]))
        );
        // Named in Patroni's keys, not yet waited for by PostgreSQL.
        st.members[1].role = "sync_standby".into();
        st.replication = rep("streaming", "async");
        assert_eq!(
            st.one_machine_commits(),
            Some(OneMachine::NotWaitingYet("db2".into()))
        );
        // Synchronous: commits are on two machines, nothing to say.
        st.replication = rep("streaming", "sync");
        assert_eq!(st.one_machine_commits(), None);
        assert!(st.warnings().is_empty(), "{:?}", st.warnings());
        // PostgreSQL already waits for it although Patroni's key lags: two machines.
        st.members[1].role = "replica".into();
        assert_eq!(st.one_machine_commits(), None);
        // The standby's machine is gone and its member key expired.
        st.members.pop();
        assert_eq!(st.one_machine_commits(), Some(OneMachine::NoStandby));
        // Strict mode holds commits instead; asynchronous mode never waits for a standby.
        st.strict = true;
        assert_eq!(st.one_machine_commits(), None);
        st.strict = false;
        st.synchronous = false;
        assert_eq!(st.one_machine_commits(), None);
    }
}
