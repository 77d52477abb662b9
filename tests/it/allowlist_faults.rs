//! Faults during allow-list changes, on a platform of their own: a row that cannot be rendered,
//! an unwritable hba file, PostgreSQL stopped mid-change, and a hand edit. In every case the
//! request fails cleanly, the file on disk is the last valid one, and the cluster still starts.

use std::{path::PathBuf, sync::Arc};

use pgaas::{
    dev::{DevOptions, DevPlatform},
    model::{AllowEntry, FriendlyName, OwnerEmail},
    pg::cluster::Cluster,
    tenant::{AuditContext, NewTenant, TenantService},
};

use crate::harness::{free_port, pgaas_bin, temp_state_dir, test_settings};

#[tokio::test]
async fn faults_leave_the_last_valid_file_and_no_row() {
    let dir = temp_state_dir("hba-faults");
    let opts = DevOptions {
        state_dir: dir.clone(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    let platform = DevPlatform::up(test_settings(), &opts).await.unwrap();
    let svc = platform.tenants();
    let ctx = AuditContext::cli();
    let t = svc
        .create(
            NewTenant {
                friendly_name: FriendlyName::parse("faults").unwrap(),
                owner_email: OwnerEmail::parse("faults@example.com").unwrap(),
                max_connections: None,
                max_size_mb: None,
            },
            &ctx,
        )
        .await
        .unwrap()
        .tenant;
    svc.allow(t.id, AllowEntry::parse("10.0.0.0/8").unwrap(), None, &ctx)
        .await
        .unwrap();
    let hba: PathBuf = dir.join("pgdata/pg_hba.conf");
    let good = std::fs::read(&hba).unwrap();
    let entries = || async { svc.list_allowed(t.id).await.unwrap().len() };
    let attempt = || svc.allow(t.id, AllowEntry::parse("192.0.2.0/24").unwrap(), None, &ctx);

    // 1. A row written around pgaas that no pg_hba.conf line can express.
    let mut su = platform
        .cluster
        .admin_connect(&platform.settings.control_db.name)
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE databases DROP CONSTRAINT databases_database_name_check",
        "INSERT INTO databases (id, database_name, username, owner_email, friendly_name, status)
         VALUES ('00000000-0000-4000-8000-000000000001', E'tenant_bad\\nhost all all 0.0.0.0/0 trust', 'user_00000000000000aa', 'x@example.com', 'x', 'active')",
        "INSERT INTO ip_whitelist (database_id, ip_address) VALUES ('00000000-0000-4000-8000-000000000001', '198.51.100.0/24')",
    ] {
        sqlx::query(sql).execute(&mut su).await.unwrap();
    }
    let err = attempt().await.unwrap_err();
    let chain = pgaas::error_chain(&err);
    assert!(chain.contains("could not be applied"), "{chain}");
    assert_eq!(
        std::fs::read(&hba).unwrap(),
        good,
        "an unrenderable row changed pg_hba.conf"
    );
    assert_eq!(entries().await, 1, "the refused entry was stored");
    sqlx::query("DELETE FROM databases WHERE id = '00000000-0000-4000-8000-000000000001'")
        .execute(&mut su)
        .await
        .unwrap();

    // 2. An hba file that cannot be written.
    let mut broken = platform.hba.clone();
    broken.pg_hba_file = PathBuf::from("/proc/pgaas-no-such-dir/pg_hba.conf");
    let broken_svc = TenantService::new(platform.pool.clone(), Arc::new(platform.settings.clone()))
        .with_hba(broken);
    let err = broken_svc
        .allow(t.id, AllowEntry::parse("192.0.2.0/24").unwrap(), None, &ctx)
        .await
        .unwrap_err();
    let chain = pgaas::error_chain(&err);
    assert!(chain.contains("cannot write"), "{chain}");
    assert_eq!(std::fs::read(&hba).unwrap(), good);
    assert_eq!(entries().await, 1);

    // 3. A hand edit is drift: `render --check` reports it, `render` restores the file.
    let cfg = dir.join("pgaas.yaml");
    let check = || {
        pgaas_bin()
            .arg("--config")
            .arg(&cfg)
            .args(["render", "--check"])
            .output()
            .unwrap()
    };
    let clean = check();
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&clean.stdout),
        String::from_utf8_lossy(&clean.stderr)
    );
    let mut edited = String::from_utf8(good.clone()).unwrap();
    edited.push_str("host all all 0.0.0.0/0 trust\n");
    std::fs::write(&hba, &edited).unwrap();
    let drift = check();
    assert_eq!(drift.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&drift.stdout).contains("+host all all 0.0.0.0/0 trust")
            || String::from_utf8_lossy(&drift.stdout).contains("-host all all 0.0.0.0/0 trust")
    );
    let fix = pgaas_bin()
        .arg("--config")
        .arg(&cfg)
        .arg("render")
        .output()
        .unwrap();
    assert!(
        fix.status.success(),
        "{}",
        String::from_utf8_lossy(&fix.stderr)
    );
    assert_eq!(
        std::fs::read(&hba).unwrap(),
        good,
        "render restores the file from rows"
    );

    // 4. PostgreSQL stopped mid-change: the request fails, nothing changes, the cluster restarts.
    drop(su);
    platform.cluster.stop().unwrap();
    assert!(attempt().await.is_err());
    assert_eq!(std::fs::read(&hba).unwrap(), good);
    platform.cluster.start().unwrap();
    assert_eq!(entries().await, 1);
    svc.allow(t.id, AllowEntry::parse("192.0.2.0/24").unwrap(), None, &ctx)
        .await
        .unwrap();
    assert!(
        std::fs::read_to_string(&hba)
            .unwrap()
            .contains("192.0.2.0/24")
    );

    svc.pool().close().await;
    platform.pool.close().await;
    platform.down().unwrap();
}
