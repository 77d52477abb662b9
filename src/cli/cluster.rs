//! `pgaas cluster secrets`: make, once, the file every node of a cluster shares (the
//! replication, rewind and API roles' passwords and the local CA), to be copied by the
//! operator to the other nodes before `pgaas install` runs on each.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};

use crate::{
    model::{Secret, cluster::ClusterSecrets},
    pg::tls::LocalCa,
    settings::LoadOptions,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the cluster's shared secrets file (cluster.secrets_file) on this node, once; copy
    /// it to the same path on the other nodes, then run `pgaas install` on every node.
    Secrets,
}

pub fn run(config: Option<PathBuf>, cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Secrets = cmd;
    let settings = match super::load_settings(LoadOptions {
        config_file: config,
        dotenv_dir: None,
        env: Vec::new(),
        flags: Vec::new(),
    }) {
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
