//! The API role's session as an attacker's: whatever reaches it (a bug in the API, a stolen
//! password file) must not become more than the API role. On PostgreSQL 15 a role with
//! CREATEROLE may grant itself any predefined role, `pg_execute_server_program` among them, a
//! shell as the server's OS user; the API role holds no CREATEROLE, and the `pgaas_priv`
//! functions it calls instead touch only tenant roles. `pgaas status` and `pgaas doctor` notice
//! an API role given too much.

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use super::{remove, tenant};
use crate::harness::platform;

const SENTINEL: &str = "pgaas_attack_sentinel";
const MIDDLE: &str = "pgaas_attack_middle";

async fn api_session() -> PgConnection {
    let p = platform();
    let password = p.settings.control_db_password().unwrap();
    PgConnection::connect_with(&pgaas::control_db::connect_options(
        &p.settings,
        password.as_ref(),
    ))
    .await
    .expect("the API role logs in")
}

fn admin_options() -> PgConnectOptions {
    let p = platform();
    PgConnectOptions::new()
        .socket(&p.socket_dir)
        .port(p.pg_port)
        .username(&p.superuser)
}

async fn superuser_session() -> PgConnection {
    PgConnection::connect_with(&admin_options().database(&platform().settings.control_db.name))
        .await
        .unwrap()
}

/// Run `sql` (with text parameters) as `conn`; it must be refused.
async fn refused(conn: &mut PgConnection, sql: &str, args: &[Option<&str>], what: &str) {
    let mut q = sqlx::query(sql);
    for a in args {
        q = q.bind(*a);
    }
    if let Ok(r) = q.execute(&mut *conn).await {
        panic!("{what}: allowed ({} rows)", r.rows_affected());
    }
}

/// What an attack through the functions could change: these roles' attributes, passwords,
/// limits, marks, memberships and settings.
async fn snapshot(su: &mut PgConnection, roles: &[&str]) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT concat_ws(' ', a.rolname, a.rolsuper, a.rolcreaterole, a.rolcreatedb,
                          a.rolreplication, a.rolbypassrls, a.rolcanlogin, a.rolconnlimit,
                          a.rolpassword, shobj_description(a.oid, 'pg_authid'),
                          (SELECT string_agg(g.rolname || '/' || m.admin_option, ',' ORDER BY g.rolname)
                           FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid),
                          (SELECT string_agg(array_to_string(s.setconfig, ','), ';' ORDER BY s.setdatabase)
                           FROM pg_db_role_setting s WHERE s.setrole = a.oid))
         FROM pg_authid a WHERE a.rolname = ANY($1) ORDER BY a.rolname",
    )
    .bind(roles)
    .fetch_all(su)
    .await
    .unwrap()
}

async fn role_exists(su: &mut PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(su)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_role_cannot_make_itself_more_and_status_and_doctor_notice_if_it_is() {
    let p = platform();
    let api = p.settings.control_db.user.as_str();
    let superuser = p.superuser.as_str();
    let mut su = superuser_session().await;
    for sql in [
        format!("DROP ROLE IF EXISTS {SENTINEL}"),
        format!("CREATE ROLE {SENTINEL} NOLOGIN"),
    ] {
        sqlx::query(&sql).execute(&mut su).await.unwrap();
    }
    let mut conn = api_session().await;

    // Every predefined role, granted to itself.
    let predefined: Vec<String> = sqlx::query_scalar(
        r"SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'pg\_%' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(predefined.iter().any(|r| r == "pg_execute_server_program"));
    for role in &predefined {
        refused(
            &mut conn,
            &format!("GRANT \"{role}\" TO CURRENT_USER"),
            &[],
            &format!("GRANT {role} to the API role"),
        )
        .await;
    }
    for (sql, what) in [
        ("CREATE ROLE pgaas_attack_su SUPERUSER LOGIN", "a superuser"),
        (
            "CREATE ROLE pgaas_attack_cr CREATEROLE LOGIN",
            "a CREATEROLE role",
        ),
        ("CREATE ROLE pgaas_attack_plain LOGIN", "any role"),
        (
            "ALTER ROLE CURRENT_USER CREATEROLE",
            "CREATEROLE for itself",
        ),
        ("ALTER ROLE CURRENT_USER SUPERUSER", "SUPERUSER for itself"),
        (
            "ALTER ROLE CURRENT_USER REPLICATION",
            "REPLICATION for itself",
        ),
        ("ALTER ROLE CURRENT_USER BYPASSRLS", "BYPASSRLS for itself"),
        ("COPY (SELECT 1) TO PROGRAM 'id'", "COPY TO PROGRAM"),
        (
            "COPY (SELECT 1) TO '/tmp/pgaas-attack-api-role'",
            "COPY TO a server file",
        ),
        (
            "SELECT pgaas_priv.check_tenant_name('x')",
            "a private helper",
        ),
    ] {
        refused(&mut conn, sql, &[], what).await;
    }
    for role in ["pgaas_attack_su", "pgaas_attack_cr", "pgaas_attack_plain"] {
        assert!(!role_exists(&mut su, role).await, "{role} was made");
    }

    // The functions, with hostile input: each refused, nothing changed.
    let victim = tenant(&p.tenants(), "api-role").await;
    let victim_role = victim.tenant.username.as_str();
    let watched = [
        superuser,
        api,
        victim_role,
        SENTINEL,
        pgaas::model::TENANT_GROUP,
    ];
    let before = snapshot(&mut su, &watched).await;
    let verifier = pgaas::pg::scram::scram_sha256_verifier("a-password-0123456789").unwrap();
    let fresh = format!(
        "tenant_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let injection = format!("tenant_0123456789abcdef\"; DROP ROLE {SENTINEL}; --");
    let comment = format!("pgaas tenant {}", uuid::Uuid::new_v4());
    let bad_verifier = format!("{verifier}'; DROP ROLE {SENTINEL}; --");
    let bad_setting = format!("search_path; DROP ROLE {SENTINEL}");
    let other_comment = format!("pgaas tenant {}", uuid::Uuid::new_v4());
    let create = "SELECT pgaas_priv.create_tenant_role($1, $2, 5, $3)";
    let limit = "SELECT pgaas_priv.set_tenant_connection_limit($1, $2::text::int)";
    let password = "SELECT pgaas_priv.set_tenant_password($1, $2)";
    let reset = "SELECT pgaas_priv.reset_tenant_setting($1, $2, $3)";
    let drop = "SELECT pgaas_priv.drop_tenant_role($1, $2)";
    let v = Some(verifier.as_str());
    let c = Some(comment.as_str());
    let calls: Vec<(&str, Vec<Option<&str>>, &str)> = vec![
        (
            create,
            vec![Some(superuser), v, c],
            "create as the superuser's name",
        ),
        (
            create,
            vec![Some(api), v, c],
            "create as the API role's name",
        ),
        (
            create,
            vec![Some(SENTINEL), v, c],
            "create a non-tenant name",
        ),
        (
            create,
            vec![Some(&injection), v, c],
            "create with an injected name",
        ),
        (
            create,
            vec![Some(victim_role), v, c],
            "create over an existing tenant",
        ),
        (
            create,
            vec![Some(&fresh), Some("plaintext-password"), c],
            "create with a plaintext password",
        ),
        (
            create,
            vec![Some(&fresh), Some("SCRAM-SHA-256$plaintext"), c],
            "create with a fake verifier",
        ),
        (
            create,
            vec![Some(&fresh), Some(&bad_verifier), c],
            "create with an injected verifier",
        ),
        (
            create,
            vec![Some(&fresh), None, c],
            "create without a password",
        ),
        (
            create,
            vec![
                Some(&fresh),
                v,
                Some("pgaas tenant x'; DROP ROLE pgaas_attack_sentinel; --"),
            ],
            "create with an injected mark",
        ),
        (
            "SELECT pgaas_priv.create_tenant_role($1, $2, -1, $3)",
            vec![Some(&fresh), v, c],
            "create without a connection limit",
        ),
        (
            limit,
            vec![Some(superuser), Some("5")],
            "limit the superuser",
        ),
        (limit, vec![Some(api), Some("-1")], "unlimit the API role"),
        (
            limit,
            vec![Some(pgaas::model::TENANT_GROUP), Some("5")],
            "limit the tenant group",
        ),
        (
            limit,
            vec![Some(&injection), Some("5")],
            "limit an injected name",
        ),
        (
            limit,
            vec![Some(victim_role), Some("-1")],
            "unlimit a tenant",
        ),
        (limit, vec![Some(victim_role), Some("0")], "close a tenant"),
        (
            password,
            vec![Some(superuser), v],
            "the superuser's password",
        ),
        (password, vec![Some(api), v], "the API role's password"),
        (
            password,
            vec![Some(SENTINEL), v],
            "a non-tenant role's password",
        ),
        (
            password,
            vec![Some(&injection), v],
            "an injected name's password",
        ),
        (
            password,
            vec![Some(victim_role), Some("plaintext-password")],
            "a plaintext password",
        ),
        (
            password,
            vec![Some(victim_role), Some("SCRAM-SHA-256$4096:abc")],
            "a truncated verifier",
        ),
        (
            password,
            vec![
                Some(victim_role),
                Some("md5d41d8cd98f00b204e9800998ecf8427e"),
            ],
            "an md5 hash",
        ),
        (
            reset,
            vec![Some(superuser), None, Some("search_path")],
            "reset the superuser's setting",
        ),
        (
            reset,
            vec![Some(api), None, Some("statement_timeout")],
            "reset the API role's setting",
        ),
        (
            reset,
            vec![Some(victim_role), None, Some(&bad_setting)],
            "reset an injected setting",
        ),
        (
            reset,
            vec![Some(&injection), None, Some("work_mem")],
            "reset an injected name's setting",
        ),
        (drop, vec![Some(superuser), c], "drop the superuser"),
        (drop, vec![Some(api), c], "drop the API role"),
        (drop, vec![Some(SENTINEL), c], "drop a non-tenant role"),
        (
            drop,
            vec![Some(pgaas::model::TENANT_GROUP), c],
            "drop the tenant group",
        ),
        (drop, vec![Some(&injection), c], "drop an injected name"),
        (
            drop,
            vec![Some(victim_role), Some(&other_comment)],
            "drop a tenant with another's mark",
        ),
        (
            drop,
            vec![Some(victim_role), None],
            "drop a tenant without a mark",
        ),
    ];
    for (sql, args, what) in &calls {
        refused(&mut conn, sql, args, what).await;
    }
    assert!(
        !role_exists(&mut su, &fresh).await,
        "a refused create left {fresh}"
    );
    assert!(
        role_exists(&mut su, SENTINEL).await,
        "the sentinel was dropped"
    );
    assert_eq!(
        snapshot(&mut su, &watched).await,
        before,
        "a refused call changed a role"
    );
    // The victim still logs in with its own password.
    still_logs_in(&victim).await;
    remove(&p.tenants(), &victim).await;

    // What status and doctor run finds nothing on this platform ...
    let checked = pgaas::control_db::api_role::check(&mut conn, api)
        .await
        .unwrap();
    assert_eq!(checked, vec![], "the API role holds more than it needs");
    // ... and catches a membership that is too much, directly or through another role.
    for sql in [
        format!("DROP ROLE IF EXISTS {MIDDLE}"),
        format!("CREATE ROLE {MIDDLE} NOLOGIN"),
        format!("GRANT pg_write_server_files TO {MIDDLE}"),
        format!("GRANT {MIDDLE} TO \"{api}\""),
        format!("GRANT pg_execute_server_program TO \"{api}\""),
    ] {
        sqlx::query(&sql).execute(&mut su).await.unwrap();
    }
    let found = pgaas::control_db::api_role::check(&mut conn, api).await;
    let mut st_conn = PgConnection::connect_with(&admin_options().database("postgres"))
        .await
        .unwrap();
    let as_superuser = pgaas::control_db::api_role::check(&mut st_conn, api).await;
    let status = pgaas::install::status::gather(
        &p.settings,
        &pgaas::system::fake::FakeSystem::new(&[]),
        admin_options(),
    )
    .await;
    // `pgaas doctor` runs the reconciler too: one at a time with the tests that stage crashes.
    let doctor = {
        let _one_at_a_time = crate::isolation::crash::RECONCILER.lock().await;
        tokio::task::spawn_blocking(|| crate::isolation::cli::pgaas(&["doctor"]))
            .await
            .unwrap()
    };
    for sql in [
        format!("REVOKE pg_execute_server_program FROM \"{api}\""),
        format!("DROP ROLE {MIDDLE}"),
        format!("DROP ROLE {SENTINEL}"),
    ] {
        sqlx::query(&sql).execute(&mut su).await.unwrap();
    }
    let found = found.unwrap();
    for role in ["pg_execute_server_program", MIDDLE, "pg_write_server_files"] {
        assert!(
            found
                .iter()
                .any(|p| p.what.contains(&format!("role {role} "))),
            "the check missed {role}: {found:?}"
        );
        assert!(found.iter().all(|p| p.todo.contains("REVOKE")), "{found:?}");
    }
    assert_eq!(
        as_superuser.unwrap(),
        found,
        "as the superuser, status sees the same"
    );
    assert!(status.failed(), "pgaas status does not fail: {status:?}");
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(
        doctor.status.code(),
        Some(1),
        "pgaas doctor passed: {stdout}"
    );
    assert!(
        stdout.contains("SECURITY: the API role")
            && stdout.contains("pg_execute_server_program")
            && stdout.contains("REVOKE"),
        "{stdout}"
    );
    let text = pgaas::install::status::render(&status);
    assert!(
        text.contains("API role: FAILED") && text.contains("pg_execute_server_program"),
        "{text}"
    );
    assert_eq!(
        pgaas::control_db::api_role::check(&mut conn, api)
            .await
            .unwrap(),
        vec![],
        "revoked again, the check passes"
    );

    // An install made by an earlier release (CREATEROLE, ADMIN on the tenant group): the check
    // names both, and bootstrap run again takes them back.
    for sql in [
        format!("ALTER ROLE \"{api}\" CREATEROLE"),
        format!("GRANT pgaas_tenants TO \"{api}\" WITH ADMIN OPTION"),
    ] {
        sqlx::query(&sql).execute(&mut su).await.unwrap();
    }
    let old = pgaas::control_db::api_role::check(&mut conn, api).await;
    let password = p.settings.control_db_password().unwrap().unwrap();
    let again = pgaas::control_db::bootstrap(&admin_options(), &p.settings, &password).await;
    let after = pgaas::control_db::api_role::check(&mut conn, api).await;
    let createrole: bool =
        sqlx::query_scalar("SELECT rolcreaterole FROM pg_roles WHERE rolname = $1")
            .bind(api)
            .fetch_one(&mut su)
            .await
            .unwrap();
    if createrole {
        sqlx::query(&format!("ALTER ROLE \"{api}\" NOCREATEROLE"))
            .execute(&mut su)
            .await
            .unwrap();
    }
    let old = old.unwrap();
    assert!(
        old.iter().any(|p| p.what.contains("CREATEROLE"))
            && old
                .iter()
                .any(|p| p.what.contains("ADMIN OPTION on role pgaas_tenants")),
        "{old:?}"
    );
    again.expect("bootstrap runs again on an existing install");
    assert!(!createrole, "bootstrap left CREATEROLE");
    assert_eq!(
        after.unwrap(),
        vec![],
        "bootstrap left the API role too much"
    );
    // And tenants are still made, changed and deleted through the functions.
    let svc = p.tenants();
    let t = tenant(&svc, "api-role-after").await;
    svc.rotate_password(t.tenant.id, &pgaas::tenant::AuditContext::cli())
        .await
        .unwrap();
    remove(&svc, &t).await;
}

/// The tenant the hostile calls aimed at still works as before.
async fn still_logs_in(t: &pgaas::tenant::Provisioned) {
    let session = super::own_session(t).await;
    session.simple_query("SELECT 1").await.unwrap();
}
