//! Continuous archiving and point-in-time recovery with the real engine: pgBackRest archiving a
//! real cluster's WAL, restores into scratch clusters, an S3-protocol server (moto behind
//! stunnel) as the off-host repository. Each test brings up a platform of its own with archiving
//! on (a first full backup included), because restores, drills and damage are per-host events.
//!
//! - `restore`: one tenant to an instant, into a new database and in place (CLI and API), the
//!   neighbours untouched, the window enforced, an interrupted restore undone;
//! - `operations`: drills, a damaged repository, archiving across a restart, the whole cluster
//!   to an instant;
//! - `offsite`: the S3 repository alone restores everything after the local one is lost.

use std::{
    path::PathBuf,
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use pgaas::{
    api::{self, AppState},
    dev::{DevOptions, DevPlatform},
    model::{FriendlyName, OwnerEmail},
    tenant::{AuditContext, NewTenant, Provisioned, TenantService},
};

use crate::{
    allowlist::{Creds, connect_with_ca, v4},
    harness::{free_port, pgaas_bin, temp_state_dir, test_settings},
};

mod leftovers;
mod offsite;
mod operations;
mod restore;
pub mod s3;

/// A platform with continuous archiving, its API and its restore worker.
pub struct ArchivePlatform {
    pub platform: DevPlatform,
    pub base_url: String,
    pub api_key: String,
    pub tenants: TenantService,
}

impl ArchivePlatform {
    /// `tweak` adjusts the settings (an S3 repository, say) before it comes up.
    pub async fn up(
        tag: &str,
        tweak: impl FnOnce(&mut pgaas::settings::Settings, &std::path::Path),
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = temp_state_dir(tag);
        let mut settings = test_settings();
        settings.archive.enabled = true;
        tweak(&mut settings, &dir);
        let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let opts = DevOptions {
            state_dir: dir.clone(),
            listen,
            pg_port: free_port(),
            pgbouncer_port: free_port(),
        };
        let platform = DevPlatform::up(settings, &opts).await.unwrap_or_else(|e| {
            panic!("archive platform did not start (apt-get install pgbackrest): {e:#}")
        });
        assert!(
            platform.archive.is_some(),
            "archiving must be on (pgBackRest installed)"
        );
        let api_key = platform
            .first_api_key
            .as_ref()
            .unwrap()
            .expose()
            .to_string();
        let mut state = AppState::new(platform.pool.clone(), Arc::new(platform.settings.clone()))
            .with_pooler_available(platform.pooler_available());
        state.tenants = platform.tenants();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        tokio::spawn(api::serve(listener, state, std::future::pending()));
        let host = platform.archive.clone().unwrap();
        tokio::spawn(
            async move { pgaas::archive::jobs::work(host, Duration::from_millis(500)).await },
        );
        let tenants = platform.tenants();
        ArchivePlatform {
            base_url: format!("http://{listen}"),
            api_key,
            tenants,
            platform,
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.platform.layout.settings_file()
    }

    /// `pgaas --config <this platform> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        pgaas_bin()
            .arg("--config")
            .arg(self.config_file())
            .args(args)
            .output()
            .unwrap()
    }

    pub async fn tenant(&self, tag: &str) -> Provisioned {
        self.tenants
            .create(
                NewTenant {
                    friendly_name: FriendlyName::parse(&format!("archive {tag}")).unwrap(),
                    owner_email: OwnerEmail::parse(&format!("{tag}@archive.example.com")).unwrap(),
                    max_connections: Some(10),
                    max_size_mb: None,
                },
                &AuditContext::cli(),
            )
            .await
            .unwrap()
    }

    /// A tenant's session on `database` (its own by default) over TLS, on `port`.
    pub async fn session(
        &self,
        t: &Provisioned,
        database: Option<&str>,
        port: u16,
    ) -> Result<tokio_postgres::Client, String> {
        let mut creds = Creds::from(t);
        if let Some(db) = database {
            creds.database = db.into();
        }
        connect_with_ca(
            self.platform.settings.tls.ca_file.as_ref().unwrap(),
            v4(1),
            port,
            &creds,
            true,
        )
        .await
    }

    pub fn pg_port(&self) -> u16 {
        self.platform.settings.postgres.port
    }

    pub fn pooler_port(&self) -> u16 {
        self.platform.settings.pgbouncer.port
    }

    /// The superuser over the local socket.
    pub async fn su(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.platform.cluster.socket_dir)
            .port(self.pg_port())
            .user(&self.platform.cluster.superuser)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// A physical backup now, through the CLI (what the timers run).
    pub fn backup(&self, kind: &str) {
        let out = self.cli(&["backup", "base", "--type", kind]);
        assert!(out.status.success(), "backup base: {}", text(&out));
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Follow a restore job until it ends.
    pub async fn wait_job(&self, tenant: &Provisioned, job: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (status, body) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/databases/{}/restore/{job}", tenant.tenant.id),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let s = body["data"]["status"].as_str().unwrap().to_string();
            if s == "succeeded" || s == "failed" {
                return body["data"].clone();
            }
            assert!(Instant::now() < deadline, "job still {s}: {body}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server's clock now (commit timestamps come from it), after a moment on each side so the
/// instant falls strictly between the commits before and after it.
pub async fn instant(client: &tokio_postgres::Client) -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text: String = client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let t: DateTime<Utc> = text.parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    t
}

pub fn pg_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

pub async fn count(client: &tokio_postgres::Client, table: &str) -> Result<i64, String> {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())
}
