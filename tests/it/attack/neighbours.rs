//! One tenant against another. CONNECT privileges alone kept tenants apart, and a tenant can
//! grant them away (`GRANT CONNECT ON DATABASE a TO b`), or grant its whole role (PostgreSQL 15
//! lets a session user grant membership in itself). The access rules tie each role to the
//! database of its own name on both ports, so no grant opens a path, and an allow-list cannot
//! be lifted by a neighbour's grant.

use super::*;
use crate::allowlist::v4;

/// Everything tenant `a` can hand to tenant `b` from inside its own database. Grants the server
/// refuses (membership in itself, on PostgreSQL 16+) are fine: what matters is what `b` can do
/// afterwards. Returns what the server accepted.
async fn grant_everything(a: &Provisioned, b: &Provisioned) -> Vec<String> {
    let (a_db, b_role) = (a.tenant.database_name.as_str(), b.tenant.username.as_str());
    let a_role = a.tenant.username.as_str();
    let session = own_session(a).await;
    session
        .batch_execute(
            "CREATE TABLE secret (v text);
             INSERT INTO secret VALUES ('the data of tenant a');
             CREATE FUNCTION peek() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER
                 AS 'SELECT v FROM secret';",
        )
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for sql in [
        format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{a_db}\" TO \"{b_role}\""),
        format!("GRANT ALL ON DATABASE \"{a_db}\" TO PUBLIC"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO \"{b_role}\""),
        format!("GRANT ALL ON secret TO \"{b_role}\""),
        format!("GRANT EXECUTE ON FUNCTION peek() TO \"{b_role}\""),
        format!("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO \"{b_role}\""),
        format!("GRANT \"{a_role}\" TO \"{b_role}\""),
    ] {
        if session.batch_execute(&sql).await.is_ok() {
            accepted.push(sql);
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread")]
async fn no_grant_opens_a_path_into_a_neighbours_database_on_either_port() {
    let p = platform();
    let svc = p.tenants();
    let a = tenant(&svc, "granter").await;
    let b = tenant(&svc, "grantee").await;
    let accepted = grant_everything(&a, &b).await;
    assert!(
        accepted.len() >= 6,
        "the owner's own grants should all be accepted: {accepted:?}"
    );
    let (b_role, b_pw) = (b.tenant.username.as_str(), b.password.expose());
    for (port, name) in ports() {
        for source in [v4(1), v4(2)] {
            let r = login(port, source, b_role, b_pw, a.tenant.database_name.as_str()).await;
            refused_before_password(&r, &format!("{name}: grantee into the granter's database"));
        }
        // Nor the other way round, nor into anything else.
        for db in [b.tenant.database_name.as_str(), "postgres", "template1"] {
            let r = login(
                port,
                v4(1),
                a.tenant.username.as_str(),
                a.password.expose(),
                db,
            )
            .await;
            refused_before_password(&r, &format!("{name}: granter into {db}"));
        }
    }
    // The grantee's own database is where it lives; the granter's data is not reachable from it.
    let session = own_session(&b).await;
    let e = session
        .simple_query(&format!(
            "SELECT * FROM \"{}\".public.secret",
            a.tenant.database_name
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cross-database") || e.as_db_error().is_some());
    drop(session);
    remove(&svc, &b).await;
    remove(&svc, &a).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_neighbour_cannot_lift_an_allow_list_by_granting_its_role() {
    let p = platform();
    let svc = p.tenants();
    let ctx = AuditContext::cli();
    let open = tenant(&svc, "lifter").await;
    let listed = tenant(&svc, "listed").await;
    svc.allow(
        listed.tenant.id,
        pgaas::model::AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &ctx,
    )
    .await
    .unwrap();
    // An open tenant gives the listed one membership in its role (accepted on PostgreSQL 15,
    // where a session user may grant membership in itself).
    let session = own_session(&open).await;
    let granted = session
        .batch_execute(&format!(
            "GRANT \"{}\" TO \"{}\"",
            open.tenant.username, listed.tenant.username
        ))
        .await
        .is_ok();
    drop(session);
    let (user, pw, db) = (
        listed.tenant.username.as_str(),
        listed.password.expose(),
        listed.tenant.database_name.as_str(),
    );
    for (port, name) in ports() {
        let r = login(port, v4(3), user, pw, db).await;
        refused_before_password(
            &r,
            &format!(
                "{name}: listed tenant from an unlisted address (membership granted: {granted})"
            ),
        );
        login(port, v4(2), user, pw, db)
            .await
            .unwrap_or_else(|e| panic!("{name}: the listed address was refused: {e}"));
    }
    remove(&svc, &listed).await;
    remove(&svc, &open).await;
}

/// Who gets in, asked of both ports: for every tenant role, database, source and password the
/// two must agree, and agree with the policy (own database, allow-list, right password).
#[tokio::test(flavor = "multi_thread")]
async fn both_ports_decide_the_same_way() {
    let p = platform();
    let svc = p.tenants();
    let open = tenant(&svc, "matrix-open").await;
    let listed = tenant(&svc, "matrix-listed").await;
    svc.allow(
        listed.tenant.id,
        pgaas::model::AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    let control = p.settings.control_db.name.clone();
    let databases = [
        open.tenant.database_name.as_str(),
        listed.tenant.database_name.as_str(),
        "postgres",
        "template1",
        control.as_str(),
        "pgbouncer",
    ];
    for who in [&open, &listed] {
        let user = who.tenant.username.as_str();
        for db in databases {
            for source in [v4(2), v4(3)] {
                for (pw, right) in [(who.password.expose(), true), ("", false)] {
                    let own = db == who.tenant.database_name.as_str();
                    let allowed_here = who.tenant.id != listed.tenant.id || source == v4(2);
                    let expected = own && allowed_here && right;
                    let mut outcomes = Vec::new();
                    for (port, name) in ports() {
                        let ok = login(port, source, user, pw, db).await.is_ok();
                        outcomes.push((name, ok));
                    }
                    for (name, ok) in &outcomes {
                        assert_eq!(
                            *ok,
                            expected,
                            "{name}: {user} -> {db} from {source} with the {} password: {outcomes:?}",
                            if right { "right" } else { "empty" }
                        );
                    }
                }
            }
        }
    }
    remove(&svc, &listed).await;
    remove(&svc, &open).await;
}

/// Tenants made before roles were named after their databases (`user_<hex>` on
/// `tenant_<hex>`) keep working on both ports, and stay as isolated as the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_from_before_same_name_roles_still_connects_and_stays_isolated() {
    let p = platform();
    let svc = p.tenants();
    let neighbour = tenant(&svc, "legacy-neighbour").await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let (db, role) = (format!("tenant_{suffix}"), format!("user_{suffix}"));
    let id = uuid::Uuid::new_v4();
    let password = "legacy-password-0123456789abcdef";
    let verifier = pgaas::pg::scram::scram_sha256_verifier(password).unwrap();
    let api = &p.settings.control_db.user;
    let server = su("postgres").await;
    for sql in [
        "SET log_statement = 'none'".to_string(),
        format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT 5 PASSWORD '{verifier}' IN ROLE pgaas_tenants"
        ),
        format!("COMMENT ON ROLE {role} IS 'pgaas tenant {id}'"),
        format!("GRANT {role} TO \"{api}\""),
        format!("CREATE DATABASE {db} OWNER {role} CONNECTION LIMIT 5"),
        format!("COMMENT ON DATABASE {db} IS 'pgaas tenant {id}'"),
        format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"),
    ] {
        server.batch_execute(&sql).await.unwrap();
    }
    let control = su(&p.settings.control_db.name).await;
    control
        .execute(
            "INSERT INTO databases (id, database_name, username, owner_email, friendly_name, max_connections, status)
             VALUES ($1::text::uuid, $2, $3, 'legacy@attack.example.com', 'legacy', 5, 'active')",
            &[&id.to_string(), &db, &role],
        )
        .await
        .unwrap();
    let applier = svc.hba().unwrap();
    applier.sync(svc.pool()).await.unwrap();
    applier.refresh_pooler_users(svc.pool()).await.unwrap();

    for (port, name) in ports() {
        login(port, v4(1), &role, password, &db)
            .await
            .unwrap_or_else(|e| panic!("{name}: the legacy tenant was refused: {e}"));
        let r = login(
            port,
            v4(1),
            &role,
            password,
            neighbour.tenant.database_name.as_str(),
        )
        .await;
        refused_before_password(&r, &format!("{name}: legacy tenant into a neighbour"));
        let r = login(
            port,
            v4(1),
            neighbour.tenant.username.as_str(),
            neighbour.password.expose(),
            &db,
        )
        .await;
        refused_before_password(&r, &format!("{name}: neighbour into the legacy tenant"));
    }
    // Its own allow-list holds as well.
    let tid = pgaas::model::TenantId::from_uuid(id);
    svc.allow(
        tid,
        pgaas::model::AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    for (port, name) in ports() {
        refused_before_password(
            &login(port, v4(3), &role, password, &db).await,
            &format!("{name}: legacy tenant from an unlisted address"),
        );
        login(port, v4(2), &role, password, &db)
            .await
            .unwrap_or_else(|e| panic!("{name}: listed address refused: {e}"));
    }
    svc.delete(tid, &AuditContext::cli()).await.unwrap();
    remove(&svc, &neighbour).await;
}
