//! The shadow database beside what else a tenant may have: a shadow its tenant marked as a
//! template still drops, and a restored database under the shadow's name is never taken for a
//! leftover and dropped.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_marked_as_a_template_by_its_tenant_still_drops() {
    let svc = platform().tenants();
    let ctx = AuditContext::cli();
    let a = create(&svc, "shadow-tpl", Some(3)).await;
    let (_, name, _) = svc.create_shadow(a.tenant.id, &ctx).await.unwrap();
    let c = connect(a.tenant.username.as_str(), a.password.expose(), &name)
        .await
        .unwrap();
    c.batch_execute(&format!("ALTER DATABASE {name} IS_TEMPLATE true"))
        .await
        .unwrap();
    drop(c);
    assert!(svc.drop_shadow(a.tenant.id, &ctx).await.unwrap());
    assert!(!database_exists(&name).await, "the shadow database is gone");
    assert_eq!(svc.shadow_of(a.tenant.id).await.unwrap(), None);
    svc.delete(a.tenant.id, &ctx).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_database_under_the_shadow_name_is_refused_not_dropped() {
    let svc = platform().tenants();
    let ctx = AuditContext::cli();
    let a = create(&svc, "shadow-taken", Some(3)).await;
    let name = format!("{}_shadow", a.tenant.database_name.as_str());
    // What an older release's `restore --into shadow` left: a database of the tenant's, with
    // data, recorded as a restore.
    let su = superuser("postgres").await;
    su.batch_execute(&format!(
        "CREATE DATABASE {name} OWNER {}",
        a.tenant.username.as_str()
    ))
    .await
    .unwrap();
    let control = superuser(&platform().settings.control_db.name).await;
    control
        .execute(
            "INSERT INTO tenant_databases (name, database_id, purpose) VALUES ($1, $2::text::uuid, 'restore')",
            &[&name, &a.tenant.id.to_string()],
        )
        .await
        .unwrap();
    let err = svc.create_shadow(a.tenant.id, &ctx).await.unwrap_err();
    assert!(
        matches!(err, pgaas::tenant::TenantError::Conflict(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains(&name), "{err}");
    assert!(database_exists(&name).await, "the restored data stays");
    svc.delete(a.tenant.id, &ctx).await.unwrap();
    assert!(!database_exists(&name).await, "and goes with its tenant");
}
