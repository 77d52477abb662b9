//! `pgaas dev`: the whole platform on one machine without root. Everything lives under a state
//! directory: a local cluster (created on first run, reused after), TLS from a local CA, the
//! control database with its migrations and least-privilege API role, and the API. The test
//! harness brings the platform up through the same code.
//!
//! Every step checks before it acts, so a re-run (or a run after a killed one) picks up where the
//! state is: a half-made cluster is discarded and recreated, a running one is reused.

mod layout;

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use sqlx::PgPool;

pub use layout::DevLayout;

use crate::{
    control_db,
    files::WriteOutcome,
    hba::{
        HbaPolicy,
        apply::{HbaApplier, PoolerReload},
    },
    pg::{
        binaries::PgBinaries,
        cluster::{Cluster, LocalCluster, OsUser},
        pgbouncer::LocalPgBouncer,
        tls::{LocalCa, ServerCertTarget, server_names},
    },
    render::{self, HostFacts, RenderInputs},
    settings::{Secret, Settings},
    tenant::TenantService,
};

/// What `pgaas dev` needs to know beyond the settings file.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub state_dir: PathBuf,
    pub listen: std::net::SocketAddr,
    pub pg_port: u16,
    pub pgbouncer_port: u16,
}

/// A running local platform (without the API server, which the caller runs).
pub struct DevPlatform {
    pub layout: DevLayout,
    pub settings: Settings,
    pub cluster: LocalCluster,
    pub pool: PgPool,
    /// Set on the run that created the first API key: shown once, never stored in plaintext.
    pub first_api_key: Option<Secret>,
    /// Whether this run created the cluster (false when it reused one).
    pub created: bool,
    /// PgBouncer, when it is installed.
    pub pgbouncer: Option<LocalPgBouncer>,
    /// Writes pg_hba.conf and PgBouncer's files from the control DB.
    pub hba: HbaApplier,
    /// Continuous archiving, when pgBackRest is installed and `archive.enabled`.
    pub archive: Option<crate::archive::restore::ArchiveHost>,
    _lock: nix::fcntl::Flock<File>,
}

impl DevPlatform {
    /// Bring everything up but the API. Idempotent.
    pub async fn up(base: Settings, opts: &DevOptions) -> anyhow::Result<DevPlatform> {
        let layout = DevLayout::new(&opts.state_dir);
        let lock = layout.prepare_state_dir()?;
        let owner = OsUser::cluster_owner()?;
        let bin = PgBinaries::find(base.postgres.version)?;
        let settings = layout.settings(base, opts, &owner, bin.version);

        let cluster = LocalCluster {
            bin,
            data_dir: layout.data_dir(),
            socket_dir: layout.socket_dir(),
            port: opts.pg_port,
            log_file: layout.log_file(),
            owner: owner.clone(),
            superuser: settings.postgres.superuser.clone(),
        };

        progress("TLS: local CA and server certificate");
        let ca = LocalCa::in_dir(&layout.tls_dir());
        let key_owner = Some((owner.uid, owner.gid));
        ca.ensure_server_cert(
            &ServerCertTarget {
                cert_file: settings.tls.cert_file.clone(),
                key_file: settings.tls.key_file.clone(),
                key_owner,
            },
            &server_names(&settings.public_host),
        )?;

        let created = if cluster.exists() {
            false
        } else {
            progress(&format!(
                "creating a PostgreSQL {} cluster in {}",
                cluster.bin.version,
                cluster.data_dir.display()
            ));
            cluster.init()?
        };

        let bouncer_bin = crate::pg::pgbouncer::find_binary();
        let changed = write_managed_files(&settings, &cluster, &owner, bouncer_bin.is_some())?;
        // What this run started, and so may stop if it fails: a cluster or PgBouncer that was
        // already running (another `pgaas dev`, say) is never stopped because this start failed.
        let started_cluster = !cluster.is_running();
        if !started_cluster {
            if changed {
                let mut conn = cluster.admin_connect("postgres").await?;
                crate::pg::cluster::reload(&mut conn).await?;
            }
        } else {
            progress(&format!("starting PostgreSQL on port {}", cluster.port));
            cluster.start()?;
        }

        progress("control database: roles, database, migrations");
        let password = control_db::ensure_password_file(&layout.control_password_file())
            .with_context(|| format!("writing {}", layout.control_password_file().display()))?;
        control_db::bootstrap(&cluster.admin_options(), &settings, &password).await?;
        let pool = control_db::pool(control_db::connect_options(&settings, Some(&password)), 8);
        control_db::migrate(&pool).await?;
        layout.write_pgpass(&settings, &password)?;
        // The effective settings, so every other command can reach this platform with
        // `pgaas --config <state>/pgaas.yaml ...`.
        crate::files::write_if_changed(
            &layout.settings_file(),
            &settings.to_yaml_without_secrets(),
            0o644,
        )?;

        let pgbouncer = bouncer_bin.map(|binary| LocalPgBouncer {
            binary,
            ini: settings.pgbouncer.config_dir.join("pgbouncer.ini"),
            pidfile: settings.pgbouncer.pidfile.clone(),
            port: settings.pgbouncer.port,
            owner: owner.clone(),
        });
        let mut hba = HbaApplier::new(
            &settings,
            cluster.bin.version,
            None,
            pgbouncer
                .clone()
                .map(|p| Arc::new(p) as Arc<dyn PoolerReload>),
            Some((owner.uid, owner.gid)),
        );
        if pgbouncer.is_none() {
            // Not installed: no files of its own to keep.
            hba.pgbouncer = None;
        }
        progress("access rules: pg_hba.conf from the control DB");
        hba.sync(&pool).await?;
        let mut started_bouncer = false;
        if let Some(p) = &pgbouncer {
            if !p.is_running() {
                progress(&format!("starting PgBouncer on port {}", p.port));
                if let Err(e) = p.start() {
                    if started_cluster {
                        cluster.stop().ok();
                    }
                    return Err(e.into());
                }
                started_bouncer = true;
            }
        }

        let archive = if settings.archive.enabled {
            match setup_archive(&settings, &cluster, &owner, &hba).await {
                Ok(host) => Some(host),
                Err(e) => {
                    if let Some(p) = pgbouncer.as_ref().filter(|_| started_bouncer) {
                        p.stop();
                    }
                    if started_cluster {
                        cluster.stop().ok();
                    } else {
                        eprintln!(
                            "  PostgreSQL was already running before this start, so it is left running"
                        );
                    }
                    return Err(e.context(
                        "continuous archiving could not be set up (archive.enabled: false turns it off)",
                    ));
                }
            }
        } else {
            None
        };

        let first_api_key = if control_db::api_keys::count_active(&pool).await? == 0 {
            let key = control_db::api_keys::create_admin_key(&pool, "pgaas dev").await?;
            Some(key)
        } else {
            None
        };

        Ok(DevPlatform {
            layout,
            settings,
            cluster,
            pool,
            first_api_key,
            created,
            pgbouncer,
            hba,
            archive,
            _lock: lock,
        })
    }

    /// The tenant service of this platform, managing its hba files.
    pub fn tenants(&self) -> TenantService {
        TenantService::new(self.pool.clone(), Arc::new(self.settings.clone()))
            .with_hba(self.hba.clone())
    }

    /// Whether pooled (`DATABASE_URL`) connections are available.
    pub fn pooler_available(&self) -> bool {
        self.pgbouncer
            .as_ref()
            .is_some_and(LocalPgBouncer::is_running)
    }

    /// Stop PgBouncer and the cluster (the API is stopped by its caller).
    pub fn down(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.pgbouncer {
            p.stop();
        }
        self.cluster.stop()?;
        Ok(())
    }

    /// The operator-facing summary printed when the platform is up.
    pub fn summary(&self) -> String {
        let s = &self.settings;
        let ca = s.tls.ca_file.as_deref().unwrap_or(Path::new("?"));
        let mut out = String::new();
        out.push_str("pgaas dev is running\n\n");
        out.push_str(&format!("  API:          http://{}\n", s.api.listen));
        out.push_str(&format!(
            "  PostgreSQL:   {} on port {} (TLS required; cluster in {})\n",
            self.cluster.bin.version,
            self.cluster.port,
            self.cluster.data_dir.display()
        ));
        match &self.archive {
            Some(_) => out.push_str(&format!(
                "  Backups:      pgBackRest, point-in-time (repository {})\n",
                s.archive.repo_path.display()
            )),
            None => out.push_str(
                "  Backups:      nightly dumps only (apt-get install pgbackrest for point-in-time recovery)\n",
            ),
        }
        match &self.pgbouncer {
            Some(p) => out.push_str(&format!("  PgBouncer:    port {} (TLS required)\n", p.port)),
            None => out.push_str(
                "  PgBouncer:    not installed (apt-get install pgbouncer for pooled URLs)\n",
            ),
        }
        out.push_str(&format!("  CA file:      {}\n", ca.display()));
        out.push_str(&format!(
            "  server log:   {}\n",
            self.cluster.log_file.display()
        ));
        if let Some(key) = &self.first_api_key {
            out.push_str(&format!(
                "\n  API key (shown once, only its hash is stored): {}\n",
                key.expose()
            ));
        }
        out.push_str("\n  Control DB over TLS, verified against the CA:\n");
        out.push_str(&format!(
            "    PGPASSFILE={} psql \"host=localhost port={} dbname={} user={} sslmode=verify-full sslrootcert={}\"\n",
            self.layout.pgpass_file().display(),
            self.cluster.port,
            s.control_db.name,
            s.control_db.user,
            ca.display()
        ));
        out.push_str(&format!(
            "\n  Health:       curl http://{}/health\n",
            s.api.listen
        ));
        out.push_str(&format!(
            "  CLI:          {} --config {} db list\n",
            cli_command(),
            self.layout.settings_file().display()
        ));
        out.push_str("\n  Stop with Ctrl-C (stops the API and the cluster).\n");
        out
    }
}

/// pgBackRest for the dev cluster: its directories and secrets, `archive_mode` in force (a
/// cluster made before archiving was on is restarted once), the stanza and a first backup.
async fn setup_archive(
    settings: &Settings,
    cluster: &LocalCluster,
    owner: &OsUser,
    hba: &HbaApplier,
) -> anyhow::Result<crate::archive::restore::ArchiveHost> {
    use crate::archive;
    archive::prepare_dirs(settings, owner)?;
    if let Some(pass) = archive::write_secrets(settings, (owner.uid, owner.gid))? {
        eprintln!(
            "\n  The off-host backups are encrypted with this passphrase (shown once; it is in {}).\n  Keep a copy somewhere else: without it they cannot be read.\n\n    {}\n",
            settings
                .archive
                .s3
                .as_ref()
                .map(|s| s.cipher_pass_file.display().to_string())
                .unwrap_or_default(),
            pass.expose()
        );
    }
    let mut conn = cluster.admin_connect("postgres").await?;
    let mode: String = sqlx::query_scalar("SELECT current_setting('archive_mode')")
        .fetch_one(&mut conn)
        .await?;
    drop(conn);
    if mode != "on" {
        progress("restarting PostgreSQL to turn archiving on");
        cluster.stop()?;
        cluster.start()?;
    }
    let host = archive::restore::ArchiveHost::new(
        Arc::new(settings.clone()),
        Some(Arc::new(hba.clone())),
    )?;
    archive::bootstrap(&host, &archive::terminal_progress()).await?;
    Ok(host)
}

fn progress(msg: &str) {
    eprintln!("==> {msg}");
}

/// Render pgaas.conf, pg_ident.conf (and PgBouncer's ini) into place; returns whether any changed.
/// The hba files are written here only when missing: once the control DB is up, they come from
/// its rows (`HbaApplier::sync`), and a restart must never fall back to rules without allow-lists.
fn write_managed_files(
    settings: &Settings,
    cluster: &LocalCluster,
    owner: &OsUser,
    include_pgbouncer: bool,
) -> anyhow::Result<bool> {
    let policy = HbaPolicy::base(settings);
    let memory_mb = settings.postgres.memory_mb.unwrap_or(1024);
    // Units go under the state dir (paths.systemd_dir): nothing runs them, but `pgaas render
    // --check` with dev's settings then finds the whole set in place.
    let rules = crate::hba::compile_all(&policy)?;
    let files = render::managed_files(&RenderInputs {
        settings,
        facts: HostFacts {
            pg_version: cluster.bin.version,
            memory_mb,
        },
        hba: &policy,
        rules: &rules,
        generation: 0,
        pg_config_dir: cluster.config_dir().to_path_buf(),
        data_dir: cluster.data_dir.clone(),
        include_systemd: true,
        include_pgbouncer,
    })?;
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| {
            let hba = f
                .path
                .file_name()
                .is_some_and(|n| n == "pg_hba.conf" || n == "pgbouncer_hba.conf");
            // initdb's own pg_hba.conf is not ours: replace it.
            let ours =
                std::fs::read_to_string(&f.path).is_ok_and(|t| t.starts_with("# pgaas managed"));
            !(hba && ours)
        })
        .collect();
    let results = render::write_all(&files, None)?;
    for (path, _) in &results {
        owner.chown(path)?;
    }
    Ok(results.iter().any(|(_, o)| *o == WriteOutcome::Changed))
}

/// `apt-get install` the server packages (root only).
pub fn install_deps() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "--install-deps needs root; run: sudo apt-get install postgresql postgresql-contrib pgbouncer pgbackrest"
        );
    }
    progress("installing postgresql, postgresql-contrib, pgbouncer and pgbackrest with apt-get");
    let status = std::process::Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "postgresql",
            "postgresql-contrib",
            "pgbouncer",
            "pgbackrest",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install failed ({status}); run `apt-get update` and try again");
    }
    Ok(())
}

/// How to run this binary from a shell: `pgaas` when that name on PATH is this binary, else its
/// full path (after `cargo run` it is in `target/`, not on PATH).
fn cli_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "pgaas".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::canonicalize(dir.join("pgaas")).is_ok_and(|p| p == exe))
    });
    if on_path {
        "pgaas".into()
    } else {
        exe.display().to_string()
    }
}
