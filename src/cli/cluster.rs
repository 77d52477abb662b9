//! `pgaas cluster secrets`: make, once, the file every node of a cluster shares (the
//! replication, rewind and API roles' passwords and the local CA), to be copied by the
//! operator to the other nodes before `pgaas install` runs on each.

use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::{
    model::{Secret, cluster::ClusterSecrets},
    pg::tls::LocalCa,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the cluster's shared secrets file (cluster.secrets_file) on this node, once; copy
    /// it to the same path on the other nodes, then run `pgaas install` on every node.
    Secrets,
    /// Move the primary to another node, planned (maintenance of the current primary): Patroni
    /// hands over once the other node has every commit; clients that retry see no error.
    Switchover(SwitchoverArgs),
}

#[derive(Debug, clap::Args)]
pub struct SwitchoverArgs {
    /// The node to make primary (default: the synchronous standby).
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Secrets => secrets(config),
        Command::Switchover(args) => switchover(config, args),
    }
}

fn load(config: super::Sources) -> Result<crate::settings::Settings, ExitCode> {
    let settings = super::load_settings(config.without_environment())?;
    if !settings.cluster.enabled() {
        eprintln!(
            "error: this host's settings have no cluster (cluster.name, cluster.node, cluster.nodes); \
             write them in /etc/pgaas/pgaas.yaml first (see the README's high availability section)"
        );
        return Err(ExitCode::from(2));
    }
    Ok(settings)
}

/// Members as Patroni's `/cluster` lists them, from whichever data node answers:
/// `(name, role)`.
async fn members(
    http: &reqwest::Client,
    settings: &crate::settings::Settings,
) -> anyhow::Result<Vec<(String, String)>> {
    let cl = &settings.cluster;
    let nodes: Vec<std::net::IpAddr> = cl.data_nodes().map(|n| n.address).collect();
    let members = crate::install::cluster_status::members(http, &nodes, cl.patroni_port)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(members.into_iter().map(|m| (m.name, m.role)).collect())
}

fn switchover(config: super::Sources, args: SwitchoverArgs) -> anyhow::Result<ExitCode> {
    let settings = match load(config) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let secrets = ClusterSecrets::parse(
        &std::fs::read_to_string(&settings.cluster.secrets_file).with_context(|| {
            format!(
                "reading {} (the cluster's secrets; run as root on a cluster node)",
                settings.cluster.secrets_file.display()
            )
        })?,
    )?;
    let rt = super::tokio_runtime()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let before = members(&http, &settings).await?;
        let leader = before
            .iter()
            .find(|(_, r)| r == "leader")
            .map(|(n, _)| n.clone())
            .context("the cluster has no primary now; nothing to switch over (see `pgaas status`)")?;
        let candidate = match args.to {
            Some(to) => to,
            None => before
                .iter()
                .find(|(_, r)| r == "sync_standby")
                .or_else(|| before.iter().find(|(_, r)| r == "replica"))
                .map(|(n, _)| n.clone())
                .context("no standby to hand over to (see `pgaas status`)")?,
        };
        if candidate == leader {
            eprintln!("{leader} is the primary already; nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        let node = settings
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == leader)
            .context("the primary Patroni names is not in cluster.nodes")?;
        let url = format!(
            "http://{}/switchover",
            std::net::SocketAddr::from((node.address, settings.cluster.patroni_port))
        );
        eprintln!("==> switching over from {leader} to {candidate}");
        let start = std::time::Instant::now();
        let resp = http
            .post(&url)
            .basic_auth(
                crate::render::patroni::PATRONI_API_USER,
                Some(secrets.patroni.expose()),
            )
            .json(&serde_json::json!({ "leader": leader, "candidate": candidate }))
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("Patroni refused the switchover ({status}): {}", text.trim());
        }
        // Patroni answers once the new primary runs; wait until the members say so too.
        let deadline = start + std::time::Duration::from_secs(120);
        loop {
            if let Ok(m) = members(&http, &settings).await {
                if m.iter().any(|(n, r)| *n == candidate && r == "leader") {
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{candidate} is not the primary two minutes after the switchover; see `pgaas status`");
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        println!(
            "{candidate} is the primary ({:.1} s); {leader} follows it as a standby",
            start.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn secrets(config: super::Sources) -> anyhow::Result<ExitCode> {
    let settings = match super::load_settings(config.without_environment()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if !settings.cluster.enabled() {
        bail!(
            "this host's settings have no cluster (cluster.name, cluster.node, cluster.nodes); \
             write them in /etc/pgaas/pgaas.yaml first (see the README's high availability section)"
        );
    }
    let path = settings.cluster.secrets_file.clone();
    if path.exists() {
        eprintln!(
            "{} exists; left as it is. Copy it to the same path on every other node (root-only, mode 0600).",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut secrets = ClusterSecrets::generate();
    // A host that already has an API role keeps its password.
    if let Some(p) = settings
        .control_db_password()
        .context("reading the control DB password file")?
    {
        secrets.api = p;
    }
    // A host that already archives keeps its repository's passphrase: its backups are
    // encrypted with it.
    if let Some(s3) = settings
        .archive
        .s3
        .as_ref()
        .filter(|_| settings.archive.enabled)
    {
        if let Some(p) = crate::settings::read_secret_file(&s3.cipher_pass_file)
            .with_context(|| format!("reading {}", s3.cipher_pass_file.display()))?
            .filter(|p| !p.expose().is_empty())
        {
            if !p.expose().chars().all(|c| c.is_ascii_alphanumeric()) {
                anyhow::bail!(
                    "{} holds a passphrase with characters other than letters and digits, which the cluster's secrets file cannot carry",
                    s3.cipher_pass_file.display()
                );
            }
            secrets.backup = Some(p);
        }
    }
    let tls_dir = settings
        .tls
        .cert_file
        .parent()
        .unwrap_or(&settings.paths.config_dir)
        .to_path_buf();
    std::fs::create_dir_all(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    let ca = LocalCa::in_dir(&tls_dir);
    ca.ensure().context("making the local CA")?;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    secrets.ca = Some((read(&ca.cert_file)?, Secret::new(read(&ca.key_file)?)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    crate::files::write_if_changed(&path, &secrets.render(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {path}: the cluster's passwords and CA.\n\
         Copy it to {path} on every other node (root-only, mode 0600), for example\n  \
         scp -p {path} root@OTHER-NODE:{path}\n\
         then run `pgaas install` on every node (in any order: each waits for the others).",
        path = path.display()
    );
    Ok(ExitCode::SUCCESS)
}
