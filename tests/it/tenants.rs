//! The tenant service against the real cluster: what provisioning, changes and deletion leave in
//! PostgreSQL's catalogs, and that a failure undoes only what its own request made.

use std::{path::PathBuf, sync::Arc, time::Duration};

use pgaas::{
    dev::{DevOptions, DevPlatform},
    model::{FriendlyName, OwnerEmail, TenantStatus},
    tenant::{AuditContext, ListQuery, NewTenant, TenantError, TenantPatch, TenantService},
};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::harness::{free_port, platform, temp_state_dir, test_settings};

fn service() -> TenantService {
    let p = platform();
    let password = p.settings.control_db_password().unwrap();
    let pool = pgaas::control_db::pool(
        pgaas::control_db::connect_options(&p.settings, password.as_ref()),
        4,
    );
    TenantService::new(pool, Arc::new(p.settings.clone()))
}

fn new_tenant(email: &str, max: Option<u32>) -> NewTenant {
    NewTenant {
        friendly_name: FriendlyName::parse("Customer XYZ Database").unwrap(),
        owner_email: OwnerEmail::parse(email).unwrap(),
        max_connections: max,
        max_size_mb: None,
    }
}

async fn superuser(socket: &std::path::Path, port: u16, user: &str, db: &str) -> PgConnection {
    PgConnection::connect_with(
        &PgConnectOptions::new()
            .socket(socket)
            .port(port)
            .username(user)
            .database(db),
    )
    .await
    .unwrap()
}

async fn admin() -> PgConnection {
    let p = platform();
    superuser(&p.socket_dir, p.pg_port, &p.superuser, "postgres").await
}

#[tokio::test]
async fn create_sets_up_role_and_database_as_designed_and_delete_removes_them() {
    let svc = service();
    let ctx = AuditContext::cli();
    let made = svc
        .create(new_tenant("catalog@example.com", Some(7)), &ctx)
        .await
        .unwrap();
    let t = &made.tenant;
    assert_eq!(t.status, TenantStatus::Active);
    assert!(made.password.expose().len() >= 24);
    assert_eq!(t.database_name.suffix(), t.username.suffix());
    assert_eq!(t.database_name.suffix().len(), 16, "64 random bits");

    let mut su = admin().await;
    let (connlimit, verifier, comment): (i32, String, Option<String>) = sqlx::query_as(
        "SELECT rolconnlimit, rolpassword, shobj_description(oid, 'pg_authid') FROM pg_authid WHERE rolname = $1",
    )
    .bind(t.username.as_str())
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(connlimit, 7);
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
    assert!(pgaas::pg::scram::verify_password(
        &verifier,
        made.password.expose()
    ));
    assert_eq!(comment.unwrap(), format!("pgaas tenant {}", t.id));

    let (owner, datconnlimit, public_connect): (String, i32, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba), datconnlimit, has_database_privilege('public', datname, 'CONNECT')
         FROM pg_database WHERE datname = $1",
    )
    .bind(t.database_name.as_str())
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(owner, t.username.as_str());
    assert_eq!(datconnlimit, 7);
    assert!(!public_connect, "CONNECT must be revoked from PUBLIC");
    let in_group: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'pgaas_tenants', 'MEMBER')")
        .bind(t.username.as_str())
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(in_group);

    // The bcrypt hash is what the original kept; it matches the shown password.
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM databases WHERE id = $1")
        .bind(t.id.as_uuid())
        .fetch_one(svc.pool())
        .await
        .unwrap();
    assert!(bcrypt::verify(made.password.expose(), &hash).unwrap());

    svc.delete(t.id, &ctx).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM pg_database WHERE datname = $2)",
    )
    .bind(t.username.as_str())
    .bind(t.database_name.as_str())
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(left, 0);
    assert!(matches!(svc.get(t.id).await, Err(TenantError::NotFound(_))));
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs WHERE resource_id = $1 ORDER BY id")
            .bind(t.id.to_string())
            .fetch_all(svc.pool())
            .await
            .unwrap();
    assert_eq!(
        audit,
        ["database.create", "database.delete"],
        "the audit rows outlive the database"
    );
}

#[tokio::test]
async fn update_changes_limits_in_the_catalog_and_refuses_bad_values_without_change() {
    let svc = service();
    let ctx = AuditContext::cli();
    let t = svc
        .create(new_tenant("update@example.com", Some(3)), &ctx)
        .await
        .unwrap()
        .tenant;
    let cap = platform().settings.tenants.max_connections_cap;
    for bad in [0, cap + 1] {
        let err = svc
            .update(
                t.id,
                TenantPatch {
                    max_connections: Some(bad),
                    ..Default::default()
                },
                &ctx,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TenantError::Validation(_)), "{err}");
    }
    assert_eq!(svc.get(t.id).await.unwrap().max_connections, 3);

    let patch = TenantPatch {
        max_connections: Some(9),
        friendly_name: Some(FriendlyName::parse("Renamed").unwrap()),
        ..Default::default()
    };
    let after = svc.update(t.id, patch, &ctx).await.unwrap();
    assert_eq!(after.max_connections, 9);
    assert_eq!(after.friendly_name, "Renamed");
    let mut su = admin().await;
    let (r, d): (i32, i32) = sqlx::query_as(
        "SELECT (SELECT rolconnlimit FROM pg_roles WHERE rolname = $1), (SELECT datconnlimit FROM pg_database WHERE datname = $2)",
    )
    .bind(t.username.as_str())
    .bind(t.database_name.as_str())
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!((r, d), (9, 9));
    svc.delete(t.id, &ctx).await.unwrap();
}

#[tokio::test]
async fn a_half_done_delete_is_finished_by_a_retry_or_the_reconciler() {
    let svc = service();
    let ctx = AuditContext::cli();
    let a = svc
        .create(new_tenant("state-a@example.com", None), &ctx)
        .await
        .unwrap()
        .tenant;
    let b = svc
        .create(new_tenant("state-b@example.com", None), &ctx)
        .await
        .unwrap()
        .tenant;
    // As if a delete had committed `deleting` and then failed.
    sqlx::query("UPDATE databases SET status = 'deleting' WHERE id = ANY($1)")
        .bind(vec![*a.id.as_uuid(), *b.id.as_uuid()])
        .execute(svc.pool())
        .await
        .unwrap();
    assert!(matches!(
        svc.rotate_password(a.id, &ctx).await,
        Err(TenantError::State(_))
    ));
    assert!(matches!(
        svc.update(
            a.id,
            TenantPatch {
                max_connections: Some(2),
                ..Default::default()
            },
            &ctx
        )
        .await,
        Err(TenantError::State(_))
    ));
    // Asking again finishes it.
    svc.delete(a.id, &ctx).await.unwrap();
    assert!(matches!(svc.get(a.id).await, Err(TenantError::NotFound(_))));
    // The reconciler finishes the other.
    let report = svc.reconcile(Duration::ZERO).await.unwrap();
    assert!(
        report
            .finished_deletions
            .contains(&b.database_name.as_str().to_string()),
        "{report:?}"
    );
    assert!(matches!(svc.get(b.id).await, Err(TenantError::NotFound(_))));
    let mut su = admin().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = ANY($1)")
        .bind(vec![
            a.database_name.as_str().to_string(),
            b.database_name.as_str().to_string(),
        ])
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn listing_pages_by_cursor_and_offset_and_counts_the_total() {
    let svc = service();
    let ctx = AuditContext::cli();
    let email = "paging@example.com";
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            svc.create(new_tenant(email, Some(1)), &ctx)
                .await
                .unwrap()
                .tenant
                .id,
        );
    }
    ids.reverse(); // newest first
    let q = |cursor: Option<String>, offset: u64| ListQuery {
        owner_email: Some(email.into()),
        limit: 2,
        offset,
        cursor,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = svc.list(&q(cursor, 0)).await.unwrap();
        assert_eq!(page.total, 5);
        seen.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let by_offset = svc.list(&q(None, 4)).await.unwrap();
    assert_eq!(
        by_offset.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4]]
    );
    assert!(matches!(
        svc.list(&q(Some("garbage".into()), 0)).await,
        Err(TenantError::Validation(_))
    ));
    for id in ids {
        svc.delete(id, &ctx).await.unwrap();
    }
}

/// A platform of its own, for tests that change cluster-wide privileges.
async fn private_platform(tag: &str) -> (DevPlatform, PathBuf) {
    let dir = temp_state_dir(tag);
    let opts = DevOptions {
        state_dir: dir.clone(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        pg_port: free_port(),
        pgbouncer_port: free_port(),
    };
    (DevPlatform::up(test_settings(), &opts).await.unwrap(), dir)
}

#[tokio::test]
async fn a_failed_create_undoes_only_what_it_made() {
    let (platform, _dir) = private_platform("undo").await;
    let svc = TenantService::new(platform.pool.clone(), Arc::new(platform.settings.clone()));
    let ctx = AuditContext::cli();
    let mut su = platform.cluster.admin_connect("postgres").await.unwrap();
    // An unrelated role that merely looks like a tenant's must survive any cleanup.
    sqlx::query("CREATE ROLE user_00000000deadbeef")
        .execute(&mut su)
        .await
        .unwrap();
    // Make CREATE DATABASE fail after the role was made.
    sqlx::query("ALTER ROLE pgaas_api NOCREATEDB")
        .execute(&mut su)
        .await
        .unwrap();
    let err = svc
        .create(new_tenant("undo@example.com", None), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, TenantError::Db(_)), "{err}");
    sqlx::query("ALTER ROLE pgaas_api CREATEDB")
        .execute(&mut su)
        .await
        .unwrap();

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM databases")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the row of the failed create is gone");
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT rolname FROM pg_roles WHERE rolname LIKE 'user\\_%' ORDER BY 1")
            .fetch_all(&mut su)
            .await
            .unwrap();
    assert_eq!(
        roles,
        ["user_00000000deadbeef"],
        "only the failed request's own role was dropped"
    );
    let failure: String =
        sqlx::query_scalar("SELECT outcome FROM audit_logs WHERE action = 'database.create'")
            .fetch_one(&platform.pool)
            .await
            .unwrap();
    assert_eq!(failure, "failure");
    let report = svc.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!(
        report.orphan_roles,
        ["user_00000000deadbeef"],
        "reported, not dropped"
    );
    platform.pool.close().await;
    platform.down().unwrap();
}

#[tokio::test]
async fn the_reconciler_leaves_rows_that_a_live_request_is_working_on() {
    let (platform, _dir) = private_platform("reconcile-lock").await;
    let svc = TenantService::new(platform.pool.clone(), Arc::new(platform.settings.clone()));
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO databases (id, database_name, username, owner_email, friendly_name, status)
         VALUES ($1, 'tenant_00000000000000ab', 'user_00000000000000ab', 'lock@example.com', 'lock', 'provisioning')",
    )
    .bind(id)
    .execute(&platform.pool)
    .await
    .unwrap();
    // A request holds the tenant's work lock (first 8 bytes of its id, as the service takes it).
    let key = i64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap());
    let mut holder = platform
        .cluster
        .admin_connect(&platform.settings.control_db.name)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut holder)
        .await
        .unwrap();
    let report = svc.reconcile(Duration::ZERO).await.unwrap();
    assert!(report.undone_provisions.is_empty(), "{report:?}");
    assert!(
        svc.get(pgaas::model::TenantId::from_uuid(id)).await.is_ok(),
        "an in-flight create was undone"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut holder)
        .await
        .unwrap();
    let report = svc.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!(
        report.undone_provisions,
        ["tenant_00000000000000ab"],
        "{report:?}"
    );
    drop(holder);
    platform.pool.close().await;
    platform.down().unwrap();
}

#[tokio::test]
async fn the_collector_records_usage_and_metrics_report_it() {
    let p = platform();
    let svc = service();
    let ctx = AuditContext::cli();
    let made = svc
        .create(new_tenant("collector@example.com", Some(5)), &ctx)
        .await
        .unwrap();
    let t = &made.tenant;
    // A live session, so the connection count is not zero.
    let mut session = superuser(
        &p.socket_dir,
        p.pg_port,
        &p.superuser,
        t.database_name.as_str(),
    )
    .await;
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (size, conns): (i64, i32) = loop {
        let row: Option<(i64, i32)> = sqlx::query_as(
            "SELECT size_bytes, active_connections FROM database_stats WHERE database_id = $1 AND active_connections > 0
             ORDER BY recorded_at DESC LIMIT 1",
        )
        .bind(t.id.as_uuid())
        .fetch_optional(svc.pool())
        .await
        .unwrap();
        if let Some(r) = row {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no database_stats row for the tenant"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(size > 1_000_000, "size {size}");
    assert!(conns >= 1);

    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", p.base_url))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "pgaas_tenant_size_bytes{{database=\"{}\"}}",
        t.database_name.as_str()
    );
    assert!(metrics.contains(&line), "{line} missing from /metrics");
    drop(session);
    svc.delete(t.id, &ctx).await.unwrap();
}
