//! A careless operator, on platforms of their own (these tests break the access files on
//! purpose). `pgaas render` run as root used to leave `pgbouncer_hba.conf` root-owned, after
//! which PgBouncer refused every tenant and no command noticed; `pgaas doctor` finished
//! deletions without taking the tenant's lines out of the access files; the pooler's auth file
//! was serialised only inside one process.

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use pgaas::dev::{DevOptions, DevPlatform};

use super::*;
use crate::{
    allowlist::{Creds, connect_with_ca},
    harness::{free_port, pgaas_bin, temp_state_dir, test_settings},
};

async fn private_platform(tag: &str) -> DevPlatform {
    let dir = temp_state_dir(tag);
    let opts = DevOptions {
        state_dir: dir,
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    DevPlatform::up(test_settings(), &opts).await.unwrap()
}

fn cli(platform: &DevPlatform, args: &[&str]) -> (i32, String) {
    let out = pgaas_bin()
        .arg("--config")
        .arg(platform.layout.settings_file())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn pooled(platform: &DevPlatform, t: &Provisioned) -> Result<(), String> {
    let creds = Creds {
        user: t.tenant.username.to_string(),
        password: t.password.expose().to_string(),
        database: t.tenant.database_name.to_string(),
    };
    let ca = platform.settings.tls.ca_file.clone().unwrap();
    connect_with_ca(&ca, v4(1), platform.settings.pgbouncer.port, &creds, true)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn access_files_a_server_cannot_read_are_reported_and_repaired() {
    let platform = private_platform("ops-owner").await;
    let svc = platform.tenants();
    let t = tenant(&svc, "ops-owner").await;
    pooled(&platform, &t).await.unwrap();
    let (code, out) = cli(&platform, &["status"]);
    assert!(out.contains("Access files: match"), "{code}: {out}");

    // What a root-run tool used to leave behind: a file PgBouncer's user cannot read.
    let file = platform
        .settings
        .pgbouncer
        .config_dir
        .join("pgbouncer_hba.conf");
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    } else {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    platform
        .pgbouncer
        .as_ref()
        .unwrap()
        .signal_reload()
        .unwrap();
    // SIGHUP is handled when PgBouncer gets to it: wait for the reload, not for a fixed time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pooled(&platform, &t).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "PgBouncer still admits tenants with an unreadable hba file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, out) = cli(&platform, &["status"]);
    assert!(
        out.contains("PROBLEMS") && out.contains("pgbouncer_hba.conf"),
        "status did not notice: {out}"
    );
    let (code, out) = cli(&platform, &["doctor"]);
    assert_eq!(code, 1, "doctor did not notice: {out}");
    assert!(out.contains("pgbouncer_hba.conf"), "{out}");

    let (code, out) = cli(&platform, &["render"]);
    assert_eq!(code, 0, "{out}");
    let reader = pgaas::hba::check::Reader::lookup(&platform.settings.postgres.os_user).unwrap();
    for f in ["pgbouncer_hba.conf", "userlist.txt"] {
        let path = platform.settings.pgbouncer.config_dir.join(f);
        assert_eq!(reader.cannot_read(&path), None, "{f} after render");
    }
    assert_eq!(
        reader.cannot_read(&platform.cluster.data_dir.join("pg_hba.conf")),
        None
    );
    pooled(&platform, &t)
        .await
        .unwrap_or_else(|e| panic!("tenants still refused after render: {e}"));
    let (code, out) = cli(&platform, &["status"]);
    assert!(out.contains("Access files: match"), "{code}: {out}");
    platform.down().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_takes_a_crashed_deletes_rules_out_of_the_access_files() {
    let platform = private_platform("ops-doctor").await;
    let svc = platform.tenants();
    let t = tenant(&svc, "ops-doctor").await;
    svc.allow(
        t.tenant.id,
        pgaas::model::AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    let db = t.tenant.database_name.to_string();
    let pg_hba = platform.cluster.data_dir.join("pg_hba.conf");
    let bouncer_hba = platform
        .settings
        .pgbouncer
        .config_dir
        .join("pgbouncer_hba.conf");
    for f in [&pg_hba, &bouncer_hba] {
        assert!(std::fs::read_to_string(f).unwrap().contains(&db));
    }
    // A delete that crashed after marking the row, long enough ago for doctor to take it over.
    let mut control = platform
        .cluster
        .admin_connect(&platform.settings.control_db.name)
        .await
        .unwrap();
    for sql in [
        "SET session_replication_role = replica",
        &format!(
            "UPDATE databases SET status = 'deleting', updated_at = now() - interval '1 hour'
             WHERE id = '{}'",
            t.tenant.id
        ),
    ] {
        sqlx::query(sql).execute(&mut control).await.unwrap();
    }
    let (_, out) = cli(&platform, &["doctor"]);
    assert!(
        out.contains(&db),
        "doctor did not report finishing it: {out}"
    );
    for f in [&pg_hba, &bouncer_hba] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            !text.contains(&db),
            "{} still names {db}:\n{text}",
            f.display()
        );
    }
    let (_, out) = cli(&platform, &["status"]);
    assert!(out.contains("Access files: match"), "{out}");
    platform.down().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_in_several_processes_never_lose_a_tenant_from_the_auth_file() {
    let platform = private_platform("ops-authfile").await;
    let svc = platform.tenants();
    let cfg = platform.layout.settings_file();
    let bin = env!("CARGO_BIN_EXE_pgaas");
    // Four CLI processes and this one, creating at the same time.
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(bin)
                .env("PGAAS_LOG", "warn")
                .arg("--config")
                .arg(&cfg)
                .args([
                    "db",
                    "create",
                    "--friendly-name",
                    &format!("cli {i}"),
                    "--owner-email",
                    &format!("cli-{i}@attack.example.com"),
                    "--json",
                ])
                .output()
        })
        .collect();
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(tenant(&svc, "ops-authfile").await);
    }
    for c in children {
        let out = c.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let roles: Vec<String> = sqlx::query_scalar("SELECT username FROM databases")
        .fetch_all(&platform.pool)
        .await
        .unwrap();
    assert_eq!(roles.len(), 8);
    let text = std::fs::read_to_string(platform.settings.pgbouncer.config_dir.join("userlist.txt"))
        .unwrap();
    for role in &roles {
        assert!(
            text.contains(&format!("\"{role}\"")),
            "{role} is missing from the auth file:\n{text}"
        );
    }
    for t in &made {
        pooled(&platform, t).await.unwrap();
    }
    platform.down().unwrap();
}
