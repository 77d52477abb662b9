//! The steps only a cluster's nodes run: the shared secrets put in place (the API role's
//! password and the local CA come from them, so every node logs into the same control DB and
//! presents a certificate from the same CA), etcd's majority awaited, and Patroni's PostgreSQL
//! awaited. The waits print progress and say what to do on the other nodes: the three installs
//! bring the cluster up together, in any order.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{Effects, Plan};
use crate::{
    install::{
        context::{Cx, read_opt, write_atomic},
        manifest::Manifest,
    },
    model::cluster::ClusterSecrets,
    settings::Settings,
};

/// How long a node waits for the others before it gives up (they are being installed too).
const WAIT: Duration = Duration::from_secs(20 * 60);
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

fn missing(s: &Settings) -> String {
    format!(
        "the cluster's secrets file {path} is missing: run `pgaas cluster secrets` on one node \
         (once), copy {path} to the same place on every other node (root-only, mode 0600), \
         then run `pgaas install` again",
        path = s.cluster.secrets_file.display()
    )
}

/// The cluster's secrets, from the file the operator copied here.
pub fn read_secrets(cx: &Cx) -> Result<ClusterSecrets> {
    let path = cx.path(&cx.settings.cluster.secrets_file);
    let Some(bytes) = read_opt(&path)? else {
        bail!(missing(&cx.settings));
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}); it holds the cluster's passwords and CA key: chmod 600 it",
            path.display(),
            mode & 0o7777
        );
    }
    ClusterSecrets::parse(&String::from_utf8_lossy(&bytes))
        .with_context(|| format!("reading {}", path.display()))
}

/// The files the secrets put in place: `(path, contents, mode)`.
fn derived(cx: &Cx, secrets: &ClusterSecrets) -> Result<Vec<(std::path::PathBuf, String, u32)>> {
    let mut out = Vec::new();
    if let Some(p) = &cx.settings.control_db.password_file {
        out.push((p.clone(), secrets.api.expose().to_string(), 0o600));
    }
    let a = &cx.settings.archive;
    let witness = cx.settings.cluster.this_node().is_some_and(|n| n.witness);
    if let (true, false, Some(s3)) = (a.enabled, witness, &a.s3) {
        let Some(pass) = &secrets.backup else {
            bail!(
                "{} has no `backup` line (it was made before continuous archiving ran on clusters): \
                 add one line `backup=` followed by the repository's passphrase (the contents of {} \
                 on the node that archived so far, or for a new repository 64 random letters and \
                 digits: `openssl rand -hex 32`), the same on every node, and run `pgaas install` again",
                cx.settings.cluster.secrets_file.display(),
                s3.cipher_pass_file.display()
            );
        };
        // The repository's backups and WAL are encrypted with the passphrase already here:
        // replacing it would lock every node out of them.
        if let Some(have) = crate::settings::read_secret_file(&cx.path(&s3.cipher_pass_file))?
            .filter(|h| !h.expose().is_empty())
        {
            if have.expose() != pass.expose() {
                bail!(
                    "{} holds a repository passphrase other than the `backup` line of {}: the \
                     backups already in the repository are encrypted with it. Put it on that line \
                     (on every node), or remove {} if the repository holds nothing yet, and run \
                     `pgaas install` again",
                    s3.cipher_pass_file.display(),
                    cx.settings.cluster.secrets_file.display(),
                    s3.cipher_pass_file.display()
                );
            }
        }
        out.push((
            s3.cipher_pass_file.clone(),
            pass.expose().to_string(),
            0o600,
        ));
    }
    if let Some((cert, key)) = &secrets.ca {
        let dir = Path::new(&cx.vars.tls_dir);
        out.push((dir.join("ca.crt"), cert.clone(), 0o644));
        out.push((dir.join("ca.key"), key.expose().to_string(), 0o600));
    }
    Ok(out)
}

pub fn secrets_check(cx: &mut Cx) -> Result<Plan> {
    let debian = Path::new("/etc/postgresql")
        .join(cx.vars.pg_version.to_string())
        .join("main/postgresql.conf");
    if !cx.settings.cluster.this_node().is_some_and(|n| n.witness) && cx.path(&debian).exists() {
        bail!(
            "a Debian cluster {v}/main exists on this node, and Patroni runs PostgreSQL here: \
             move its data elsewhere if it holds any, remove it (`pg_dropcluster --stop {v} main`) \
             and run `pgaas install` again",
            v = cx.vars.pg_version
        );
    }
    let secrets = read_secrets(cx)?;
    let mut plan = Plan::default();
    for (path, want, _) in derived(cx, &secrets)? {
        let have = read_opt(&cx.path(&path))?;
        let same = have
            .as_deref()
            .is_some_and(|h| String::from_utf8_lossy(h).trim_end() == want.trim_end());
        if !same {
            plan.change(format!("{} from the cluster's secrets", path.display()));
        }
    }
    Ok(plan)
}

pub fn secrets_apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let secrets = read_secrets(cx)?;
    let mut effects = Effects::default();
    for (path, want, mode) in derived(cx, &secrets)? {
        let target = cx.path(&path);
        let existed = target.exists();
        write_atomic(&target, want.as_bytes(), mode)?;
        if !existed && !manifest.owns_path(&path) {
            effects
                .records
                .push(crate::install::manifest::Record::File { path });
        }
    }
    Ok(effects)
}

/// etcd's certificates on this node: `(certificate, key, key owner)`; Patroni's only where it
/// runs.
fn etcd_certs(cx: &Cx) -> Vec<(std::path::PathBuf, std::path::PathBuf, String)> {
    let tls = crate::settings::EtcdTls::of(&cx.settings);
    let mut out = vec![(tls.peer_cert, tls.peer_key, "etcd".to_string())];
    if !cx.settings.cluster.this_node().is_some_and(|n| n.witness) {
        out.push((tls.client_cert, tls.client_key, cx.vars.pg_user.clone()));
    }
    out
}

/// The names an etcd certificate covers: the node's address (and DNS name).
fn etcd_names(cx: &Cx) -> Vec<String> {
    let me = cx.settings.cluster.this_node();
    me.into_iter()
        .flat_map(|n| n.host.iter().cloned().chain([n.address.to_string()]))
        .collect()
}

pub fn etcd_tls_check(cx: &mut Cx) -> Result<Plan> {
    let ca = cx.path(&crate::settings::EtcdTls::of(&cx.settings).ca);
    let names = etcd_names(cx);
    let mut plan = Plan::default();
    for (cert, key, owner) in etcd_certs(cx) {
        let good = cx.path(&key).exists()
            && std::fs::read_to_string(cx.path(&cert))
                .is_ok_and(|pem| crate::pg::tls::cert_is_current(&pem, &names, &ca));
        if !good {
            plan.change(format!(
                "issue {} for {} from the cluster's CA",
                cert.display(),
                names.join(", ")
            ));
        } else {
            let want = crate::install::context::Attrs::new(&owner, &owner, 0o600);
            for d in cx.attr_drift(&cx.path(&key), &want) {
                plan.change(format!("{}: {d}", key.display()));
            }
        }
    }
    Ok(plan)
}

pub fn etcd_tls_apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let tls = crate::settings::EtcdTls::of(&cx.settings);
    let dir = tls.ca.parent().unwrap_or(Path::new("/"));
    let ca = crate::pg::tls::LocalCa::in_dir(&cx.path(dir));
    if !ca.key_file.exists() {
        bail!(
            "{} is missing: it comes from the cluster's secrets file (run `pgaas cluster secrets` once and copy the file here)",
            ca.key_file.display()
        );
    }
    let names = etcd_names(cx);
    let mut effects = Effects::default();
    for (cert, key, owner) in etcd_certs(cx) {
        let existed = cx.path(&cert).exists();
        let target = crate::pg::tls::ServerCertTarget {
            cert_file: cx.path(&cert),
            key_file: cx.path(&key),
            key_owner: cx.ids(&owner, &owner),
        };
        ca.ensure_peer_cert(&target, &names)?;
        for p in [cert, key] {
            if !existed && !manifest.owns_path(&p) {
                effects
                    .records
                    .push(crate::install::manifest::Record::File { path: p });
            }
        }
    }
    effects.notify.push(crate::install::playbook::Handler::new(
        crate::install::playbook::HandlerAction::Restart,
        super::ETCD_UNIT,
    ));
    Ok(effects)
}

/// What etcd's members say: who answers healthy, and the cluster version this node's member
/// reports.
struct EtcdView {
    /// `(name, address, healthy)` for every member.
    members: Vec<(String, std::net::IpAddr, bool)>,
    /// This node's member's `etcdcluster` (`/version`), if it answered.
    cluster_version: Option<String>,
}

impl EtcdView {
    fn healthy(&self, name: Option<&String>) -> bool {
        self.members.iter().any(|(n, _, ok)| *ok && Some(n) == name)
    }

    /// etcd sets its cluster version (the lowest of its members') once every member has
    /// answered; until then it reports "3.0.0" (or "not_decided"), and Patroni takes that for
    /// an etcd too old for the API it needs, so it cannot start.
    fn version_decided(&self) -> bool {
        cluster_version_decided(self.cluster_version.as_deref())
    }
}

/// Whether etcd's `/version` `etcdcluster` names a decided version (3.1 or later).
fn cluster_version_decided(v: Option<&str>) -> bool {
    let Some(v) = v else { return false };
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    matches!((parts.next(), parts.next()), (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= (3, 1))
}

fn etcd_view(cx: &mut Cx) -> Result<EtcdView> {
    let client =
        crate::install::cluster_status::etcd_client(&cx.settings).map_err(anyhow::Error::msg)?;
    let cl = cx.settings.cluster.clone();
    let me = cl.this_node().map(|n| n.address);
    cx.block_on(async move {
        let mut members = Vec::new();
        for n in &cl.nodes {
            let ok = match client
                .get(crate::install::cluster_status::etcd_health_url(
                    n.address,
                    cl.etcd_client_port,
                ))
                .send()
                .await
            {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["health"] == "true"),
                Err(_) => false,
            };
            members.push((n.name.clone(), n.address, ok));
        }
        let mut cluster_version = None;
        if let Some(ip) = me {
            let url = format!(
                "https://{}/version",
                std::net::SocketAddr::from((ip, cl.etcd_client_port))
            );
            if let Ok(r) = client.get(url).send().await
                && let Ok(v) = r.json::<serde_json::Value>().await
            {
                cluster_version = v["etcdcluster"].as_str().map(str::to_string);
            }
        }
        EtcdView {
            members,
            cluster_version,
        }
    })
}

pub fn etcd_quorum_check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let view = etcd_view(cx)?;
    if !view.healthy(cx.settings.cluster.node.as_ref()) || !view.version_decided() {
        plan.change(
            "wait until etcd has a majority and every member has answered once (the other nodes' installs start theirs)",
        );
    }
    Ok(plan)
}

pub fn etcd_quorum_apply(cx: &mut Cx) -> Result<Effects> {
    let start = std::time::Instant::now();
    let mut said = start - PROGRESS_EVERY;
    loop {
        let view = etcd_view(cx)?;
        let healthy = view.healthy(cx.settings.cluster.node.as_ref());
        if healthy && view.version_decided() {
            return Ok(Effects::default());
        }
        let waiting: Vec<String> = view
            .members
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(n, a, _)| format!("{n} ({a})"))
            .collect();
        let what = if healthy {
            "every etcd member to answer once (etcd settles its cluster version only then, and \
             Patroni needs it)"
        } else {
            "etcd's majority"
        };
        if start.elapsed() > WAIT {
            bail!(
                "etcd has {} after {} minutes; not answering: {}. Run `pgaas install` on those nodes, \
                 check that they reach each other on ports {} and {}, and see `journalctl -u etcd -n 50`",
                if healthy {
                    "a majority but not every member has joined it yet"
                } else {
                    "no majority"
                },
                WAIT.as_secs() / 60,
                if waiting.is_empty() {
                    "none, but etcd has not settled its cluster version yet".to_string()
                } else {
                    waiting.join(", ")
                },
                cx.settings.cluster.etcd_client_port,
                cx.settings.cluster.etcd_peer_port
            );
        }
        if said.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "==> waiting for {what} ({}s): not answering yet: {} (run `pgaas install` there)",
                start.elapsed().as_secs(),
                if waiting.is_empty() {
                    "none".to_string()
                } else {
                    waiting.join(", ")
                }
            );
            said = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Patroni's view of this node: `(PostgreSQL running, role)`.
fn patroni_state(cx: &mut Cx) -> Result<(bool, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let cl = cx.settings.cluster.clone();
    let me = cl
        .this_node()
        .context("cluster.node is not one of cluster.nodes")?
        .clone();
    cx.block_on(async move {
        match client
            .get(format!(
                "http://{}/patroni",
                std::net::SocketAddr::from((me.address, cl.patroni_port))
            ))
            .send()
            .await
        {
            Ok(r) => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                (
                    v["state"] == "running",
                    v["role"].as_str().unwrap_or("unknown").to_string(),
                )
            }
            Err(_) => (false, "not answering".into()),
        }
    })
}

pub fn patroni_ready_check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    if !patroni_state(cx)?.0 {
        plan.change(
            "wait until Patroni runs PostgreSQL here (a new cluster on the first node, a copy of the primary on the others)",
        );
    }
    Ok(plan)
}

pub fn patroni_ready_apply(cx: &mut Cx) -> Result<Effects> {
    let start = std::time::Instant::now();
    let mut said = start - PROGRESS_EVERY;
    loop {
        let (running, role) = patroni_state(cx)?;
        if running {
            eprintln!("==> Patroni runs PostgreSQL here as the {role}");
            return Ok(Effects::default());
        }
        if start.elapsed() > WAIT {
            bail!(
                "Patroni has not started PostgreSQL after {} minutes (Patroni says: {role}); see `journalctl -u patroni -n 80`",
                WAIT.as_secs() / 60
            );
        }
        if said.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "==> waiting for Patroni to start PostgreSQL ({}s, Patroni says: {role})",
                start.elapsed().as_secs()
            );
            said = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Patroni's cluster-wide configuration against pgaas.yaml, on this node's Patroni: the
/// differences, or why it could not be asked; with `send`, the differences are sent.
fn patroni_config(cx: &mut Cx, send: bool) -> Result<Result<Vec<String>, String>> {
    let password = if send {
        Some(read_secrets(cx)?.patroni.expose().to_string())
    } else {
        None
    };
    let settings = cx.settings.clone();
    let me = settings
        .cluster
        .this_node()
        .context("cluster.node is not one of cluster.nodes")?
        .address;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    cx.block_on(async move {
        crate::install::cluster_status::sync_patroni_config(
            &http,
            &settings,
            me,
            password.as_deref(),
        )
        .await
    })
}

/// Patroni keeps its cluster-wide settings (ttl, synchronous mode, max_connections, ...) in
/// etcd from the cluster's first start: pgaas.yaml reaches them only through its REST API.
pub fn patroni_config_check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    match patroni_config(cx, false)? {
        Ok(lines) => {
            for l in lines {
                plan.change(format!("Patroni's cluster-wide setting {l}"));
            }
        }
        // Not running yet (a dry run before the first install): the apply asks again.
        Err(_) => plan.change("bring Patroni's cluster-wide settings in line with pgaas.yaml"),
    }
    Ok(plan)
}

pub fn patroni_config_apply(cx: &mut Cx) -> Result<Effects> {
    let lines = patroni_config(cx, true)?.map_err(|e| {
        anyhow::anyhow!(
            "could not bring Patroni's cluster-wide settings in line with pgaas.yaml: {e}; see `journalctl -u patroni -n 50`"
        )
    })?;
    if !lines.is_empty() {
        // Off the step's own line, which ends with "changed".
        eprintln!();
    }
    for l in &lines {
        eprintln!("==> Patroni's cluster-wide setting {l}");
    }
    if !lines.is_empty() {
        eprintln!(
            "==> Patroni passes them to every member within its loop ({}s); give the other data node's \
             pgaas.yaml the same values, or its next `pgaas install` sends its own back",
            cx.settings.cluster.loop_wait_secs
        );
    }
    if lines
        .iter()
        .any(|l| l.starts_with("postgresql.parameters."))
    {
        eprintln!(
            "==> PostgreSQL reads some of these only at start: `pgaas status` lists the members waiting for a restart \
             (`patronictl -c /etc/patroni/config.yml restart {} <member>`, the standby first)",
            cx.settings.cluster.name.as_deref().unwrap_or("")
        );
    }
    Ok(Effects::default())
}

/// Whether this node's PostgreSQL is a standby (writes are the primary's install's to make).
pub fn is_standby(cx: &mut Cx) -> Result<bool> {
    if !cx.settings.cluster.enabled() {
        return Ok(false);
    }
    admin_scalar(cx, "SELECT pg_is_in_recovery()")
}

/// One value from this node's PostgreSQL, as the admin over the socket (database `postgres`).
pub fn admin_scalar<T>(cx: &mut Cx, sql: &'static str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + Send
        + Unpin
        + 'static,
{
    let opts = cx.admin()?.database("postgres");
    cx.block_on(async move {
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect_with(&opts).await?;
        sqlx::query_scalar::<_, T>(sql).fetch_one(&mut conn).await
    })?
    .map_err(Into::into)
}

/// On a standby, a step that finds something to write waits for the primary's install to
/// write it and replication to bring it here, instead of failing on a read-only server.
pub fn on_standby_wait_for_primary(
    cx: &mut Cx,
    what: &str,
    mut check: impl FnMut(&mut Cx) -> Result<Plan>,
) -> Result<Plan> {
    on_standby_wait(cx, what, &mut check, |p| !p.is_ok())
}

/// [`on_standby_wait_for_primary`], where `primary_work` says which of a plan's changes only
/// the primary can make; the rest are applied here.
pub fn on_standby_wait(
    cx: &mut Cx,
    what: &str,
    check: &mut dyn FnMut(&mut Cx) -> Result<Plan>,
    primary_work: impl Fn(&Plan) -> bool,
) -> Result<Plan> {
    let plan = check(cx)?;
    if !primary_work(&plan) || !is_standby(cx)? {
        return Ok(plan);
    }
    let start = std::time::Instant::now();
    let mut said = start;
    eprintln!("==> this node is a standby: waiting for the primary's install to make {what}");
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let plan = check(cx)?;
        if !primary_work(&plan) {
            return Ok(plan);
        }
        if start.elapsed() > WAIT {
            bail!(
                "this node is a standby and the primary has not made {what} after {} minutes: \
                 run `pgaas install` on the primary (`pgaas status` names it)",
                WAIT.as_secs() / 60
            );
        }
        if said.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "==> still waiting for the primary to make {what} ({}s)",
                start.elapsed().as_secs()
            );
            said = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_version_decided;

    #[test]
    fn etcd_is_ready_for_patroni_only_once_its_cluster_version_is_settled() {
        // What etcd 3.4's `/version` says with two of three members up, then with all three.
        for undecided in [
            None,
            Some("3.0.0"),
            Some("not_decided"),
            Some(""),
            Some("3"),
        ] {
            assert!(!cluster_version_decided(undecided), "{undecided:?}");
        }
        for decided in ["3.1.0", "3.4.0", "3.5.0", "3.6.0"] {
            assert!(cluster_version_decided(Some(decided)), "{decided}");
        }
    }
}
