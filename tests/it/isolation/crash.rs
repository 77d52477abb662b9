//! After a crash: rows stuck mid-create or mid-delete with their objects made by hand exactly as
//! `provision()` makes them, and tenant-named objects without a row. The reconciler finishes or
//! undoes the former and reports, but never drops, the latter; `pgaas doctor` says so.

use super::*;
use crate::isolation::cli::pgaas;

/// What `provision()` in src/tenant/lifecycle.rs leaves after each step, made by hand.
async fn fake_tenant_objects(su: &Client, id: uuid::Uuid, suffix: &str) {
    let api = &platform().settings.control_db.user;
    su.batch_execute(&format!(
        "CREATE ROLE user_{suffix} LOGIN CONNECTION LIMIT 2 IN ROLE pgaas_tenants;
         COMMENT ON ROLE user_{suffix} IS 'pgaas tenant {id}';
         GRANT user_{suffix} TO \"{api}\";"
    ))
    .await
    .unwrap();
    su.batch_execute(&format!(
        "CREATE DATABASE tenant_{suffix} OWNER user_{suffix} CONNECTION LIMIT 2"
    ))
    .await
    .unwrap();
    su.batch_execute(&format!(
        "COMMENT ON DATABASE tenant_{suffix} IS 'pgaas tenant {id}';
         REVOKE ALL ON DATABASE tenant_{suffix} FROM PUBLIC;"
    ))
    .await
    .unwrap();
}

async fn fake_row(control: &Client, id: uuid::Uuid, suffix: &str, status: &str, age: &str) {
    control
        .execute(
            &format!(
                "INSERT INTO databases (id, database_name, username, owner_email, friendly_name,
                                        max_connections, status, created_at, updated_at)
                 VALUES ($1::text::uuid, $2, $3, $4, 'crashed', 2, '{status}', now() - interval '{age}', now() - interval '{age}')"
            ),
            &[&id.to_string(), &format!("tenant_{suffix}"), &format!("user_{suffix}"), &unique_email("crash")],
        )
        .await
        .unwrap();
}

/// The two tests here run the reconciler on the shared platform (directly, and through
/// `pgaas doctor`); one would finish the other's staged crash before it looks.
pub(crate) static RECONCILER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciler_finishes_crashed_work_and_reports_orphans() {
    let _one_at_a_time = RECONCILER.lock().await;
    let svc = service();
    let su = superuser("postgres").await;
    let control = superuser(&platform().settings.control_db.name).await;
    let (stuck_create, stuck_delete, fresh) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let (s1, s2, s3, s4, s5) = (suffix(), suffix(), suffix(), suffix(), suffix());
    fake_tenant_objects(&su, stuck_create, &s1).await;
    fake_row(&control, stuck_create, &s1, "provisioning", "1 hour").await;
    fake_tenant_objects(&su, stuck_delete, &s2).await;
    fake_row(&control, stuck_delete, &s2, "deleting", "1 hour").await;
    // Orphans: tenant-named objects nobody has a row for.
    su.batch_execute(&format!("CREATE DATABASE tenant_{s3}"))
        .await
        .unwrap();
    su.batch_execute(&format!("CREATE ROLE user_{s4} NOLOGIN"))
        .await
        .unwrap();
    // A row younger than `min_age` is left to whoever may still be working on it (`pgaas
    // doctor` beside a live API); at API start (age zero) it is undone too.
    fake_row(&control, fresh, &s5, "provisioning", "0 seconds").await;

    let report = svc.reconcile(Duration::from_secs(1800)).await.unwrap();
    assert!(
        !report.undone_provisions.contains(&format!("tenant_{s5}")),
        "{report:?}"
    );
    assert!(
        report.undone_provisions.contains(&format!("tenant_{s1}")),
        "{report:?}"
    );
    assert!(
        report.finished_deletions.contains(&format!("tenant_{s2}")),
        "{report:?}"
    );
    assert!(
        report.orphan_databases.contains(&format!("tenant_{s3}")),
        "{report:?}"
    );
    assert!(
        report.orphan_roles.contains(&format!("user_{s4}")),
        "{report:?}"
    );
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!report.is_clean());

    for s in [&s1, &s2] {
        assert!(
            !database_exists(&format!("tenant_{s}")).await,
            "tenant_{s} left behind"
        );
        assert!(
            !role_exists(&format!("user_{s}")).await,
            "user_{s} left behind"
        );
    }
    assert!(
        database_exists(&format!("tenant_{s3}")).await,
        "an orphan database was dropped"
    );
    assert!(
        role_exists(&format!("user_{s4}")).await,
        "an orphan role was dropped"
    );
    let ids = vec![
        stuck_create.to_string(),
        stuck_delete.to_string(),
        fresh.to_string(),
    ];
    let rows: Vec<String> = control
        .query(
            "SELECT id::text FROM databases WHERE id::text = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![fresh.to_string()],
        "stuck rows must go, the in-flight one must stay"
    );
    let actions: Vec<(String, String)> = control
        .query(
            "SELECT resource_id, action FROM audit_logs WHERE resource_id = ANY($1) ORDER BY id",
            &[&vec![stuck_create.to_string(), stuck_delete.to_string()]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        actions.contains(&(
            stuck_create.to_string(),
            "database.reconcile_undo_create".into()
        )),
        "{actions:?}"
    );
    assert!(
        actions.contains(&(stuck_delete.to_string(), "database.delete".into())),
        "{actions:?}"
    );

    // What the API runs at start. Other tests' creates in flight hold their tenant's work lock,
    // so only rows nobody is working on are touched.
    let report = svc.reconcile(Duration::ZERO).await.unwrap();
    assert!(
        report.undone_provisions.contains(&format!("tenant_{s5}")),
        "{report:?}"
    );
    assert!(
        report.orphan_databases.contains(&format!("tenant_{s3}")),
        "{report:?}"
    );
    let left: i64 = control
        .query_one(
            "SELECT count(*) FROM databases WHERE id::text = $1",
            &[&fresh.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert!(database_exists(&format!("tenant_{s3}")).await);
    su.batch_execute(&format!("DROP DATABASE IF EXISTS tenant_{s3}"))
        .await
        .unwrap();
    su.batch_execute(&format!("DROP ROLE IF EXISTS user_{s4}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_an_orphan_and_leaves_it() {
    let _one_at_a_time = RECONCILER.lock().await;
    let su = superuser("postgres").await;
    let orphan = format!("tenant_{}", suffix());
    su.batch_execute(&format!("CREATE DATABASE {orphan}"))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(|| pgaas(&["doctor"]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("control DB:  reachable"), "{stdout}");
    assert!(stdout.contains("migrations:  "), "{stdout}");
    assert!(
        stdout.contains(&orphan) && stdout.contains("DROP DATABASE"),
        "{stdout}"
    );
    assert!(database_exists(&orphan).await, "doctor dropped an orphan");
    su.batch_execute(&format!("DROP DATABASE {orphan}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_knows_a_tenants_shadow_restored_kept_and_copied_databases() {
    let _one_at_a_time = RECONCILER.lock().await;
    let svc = platform().tenants();
    let ctx = AuditContext::cli();
    let a = create(&svc, "doctor-own", Some(3)).await;
    let (db, role) = (a.tenant.database_name.as_str(), a.tenant.username.as_str());
    let (_, shadow, _) = svc.create_shadow(a.tenant.id, &ctx).await.unwrap();
    // What restores leave: a point-in-time restore's new database and the copy an in-place one
    // keeps (both recorded), and a dump restored into a new name (owned by the tenant's role).
    let (restored, kept, copy) = (
        format!("{db}_before_drop"),
        format!("{db}_20260101000000"),
        format!("{db}_copy"),
    );
    let su = superuser("postgres").await;
    let control = superuser(&platform().settings.control_db.name).await;
    for (name, purpose) in [
        (&restored, Some("restore")),
        (&kept, Some("replaced")),
        (&copy, None),
    ] {
        su.batch_execute(&format!("CREATE DATABASE {name} OWNER {role}"))
            .await
            .unwrap();
        if let Some(purpose) = purpose {
            control
                .execute(
                    "INSERT INTO tenant_databases (name, database_id, purpose) VALUES ($1, $2::text::uuid, $3)",
                    &[name, &a.tenant.id.to_string(), &purpose],
                )
                .await
                .unwrap();
        }
    }
    let out = tokio::task::spawn_blocking(|| pgaas(&["doctor"]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [&shadow, &restored, &kept, &copy] {
        assert!(
            !stdout.contains(name.as_str()),
            "doctor calls {name} an orphan:\n{stdout}"
        );
        assert!(database_exists(name).await);
    }
    // The unrecorded copy is the operator's to drop before the tenant goes.
    su.batch_execute(&format!("DROP DATABASE {copy} WITH (FORCE)"))
        .await
        .unwrap();
    svc.delete(a.tenant.id, &ctx).await.unwrap();
}
