//! PgBouncer as an outsider sees it. PgBouncer accepts a SCRAM login against an empty secret,
//! so an auth-file entry `"pgaas" ""` plus a TCP rule that let the name through opened the admin
//! console (SHOW, DISABLE, `SET auth_type = 'trust'`) to anyone who could reach the port.

use super::*;

/// Every name a console could answer to, and every password an attacker would try.
const CONSOLE_NAMES: &[&str] = &[
    "pgbouncer",
    "postgres",
    "pgaas",
    "pgaas_api",
    "admin",
    "stats",
    "root",
];
const PASSWORDS: &[&str] = &["", "pgbouncer", "postgres", "password", "admin"];

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_closed_to_every_user_and_password_over_tcp() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "console").await;
    let mut names: Vec<String> = CONSOLE_NAMES.iter().map(|s| s.to_string()).collect();
    names.push(p.superuser.clone());
    names.push(p.settings.control_db.user.clone());
    names.push(p.settings.api.system_user.clone());
    names.push(t.tenant.username.to_string());
    let mut passwords: Vec<&str> = PASSWORDS.to_vec();
    passwords.push(t.password.expose());
    for source in [v4(1), v4(2)] {
        for user in &names {
            for pw in &passwords {
                let r = login(p.pgbouncer_port, source, user, pw, "pgbouncer").await;
                refused_before_password(&r, &format!("console as {user:?}/{pw:?} from {source}"));
            }
        }
    }
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn console_users_and_server_roles_never_pass_the_pooler_over_tcp() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "pooler-admins").await;
    let control = p.settings.control_db.name.clone();
    let databases = [
        "postgres",
        "template1",
        control.as_str(),
        t.tenant.database_name.as_str(),
        "pgbouncer",
        "nonexistent",
    ];
    let admins = [
        p.superuser.as_str(),
        p.settings.api.system_user.as_str(),
        p.settings.control_db.user.as_str(),
    ];
    for user in admins {
        for db in databases.iter().chain(std::iter::once(&user)) {
            for pw in ["", "wrong"] {
                let r = login(p.pgbouncer_port, v4(1), user, pw, db).await;
                refused_before_password(&r, &format!("{user} -> {db} through the pooler"));
            }
        }
    }
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_file_holds_only_tenants_and_never_an_empty_secret() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "authfile").await;
    let file = p.settings.pgbouncer.config_dir.join("userlist.txt");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut users = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('"')) {
        let fields: Vec<&str> = line.split('"').collect();
        let (user, secret) = (fields[1], fields[3]);
        assert!(
            pgaas::pg::userlist::is_scram_verifier(secret),
            "{user} has no SCRAM verifier in the auth file: {line}"
        );
        users.push(user.to_string());
    }
    assert!(
        users.contains(&t.tenant.username.to_string()),
        "the new tenant is missing:\n{text}"
    );
    assert!(
        !users.contains(&p.settings.control_db.user),
        "the API role's verifier is in the pooler's auth file:\n{text}"
    );
    // The console's users are there only so peer logins find them; their secrets match no
    // password anyone knows, the empty one included.
    for admin in [&p.superuser, &p.settings.api.system_user] {
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with(&format!("\"{admin}\"")))
        {
            let secret = line.split('"').nth(3).unwrap();
            for pw in PASSWORDS {
                assert!(
                    !pgaas::pg::scram::verify_password(secret, pw),
                    "{admin}'s auth-file secret is the password {pw:?}"
                );
            }
        }
    }
    remove(&svc, &t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_and_guessed_passwords_get_nowhere_on_either_port() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "guess").await;
    let (user, db) = (t.tenant.username.as_str(), t.tenant.database_name.as_str());
    for (port, name) in ports() {
        for pw in ["", "password", user, &t.password.expose()[..10]] {
            let e = login(port, v4(1), user, pw, db)
                .await
                .err()
                .unwrap_or_else(|| panic!("{name}: {user} logged in with {pw:?}"));
            assert!(
                e.contains("password authentication failed")
                    || e.contains("SASL authentication failed"),
                "{name}: {e}"
            );
        }
        // Roles that do not exist, with an empty password.
        for ghost in ["tenant_0000000000000000", "user_0000000000000000", "nobody"] {
            assert!(
                login(port, v4(1), ghost, "", ghost).await.is_err(),
                "{name}: {ghost} logged in"
            );
        }
        login(port, v4(1), user, t.password.expose(), db)
            .await
            .unwrap_or_else(|e| panic!("{name}: the right password failed: {e}"));
    }
    // A deleted tenant stays out through the pooler too, even with an empty password: PgBouncer
    // keeps users it has loaded, with an empty password, after they leave its auth file, so the
    // file keeps them with an unusable secret while that PgBouncer runs. (Were the empty
    // password accepted, the client would then wait for a server that never answers.)
    let (user, pw, db) = (
        user.to_string(),
        t.password.expose().to_string(),
        db.to_string(),
    );
    login(p.pgbouncer_port, v4(1), &user, &pw, &db)
        .await
        .unwrap();
    remove(&svc, &t).await;
    for (port, name) in ports() {
        for pw in ["", pw.as_str()] {
            let e = login(port, v4(1), &user, pw, &db)
                .await
                .err()
                .unwrap_or_else(|| panic!("{name}: the deleted tenant logged in with {pw:?}"));
            assert!(
                e.contains("password authentication failed")
                    || e.contains("SASL authentication failed")
                    || e.contains("pg_hba.conf rejects"),
                "{name}: the deleted tenant with {pw:?} was not refused at login: {e}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_tenant_learns_nothing_about_its_password_from_other_databases() {
    // PostgreSQL refuses a role outside its own database before the password; the pooler must
    // too, or it answers "wrong password" / "right password" for databases it would refuse.
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "oracle").await;
    svc.allow(
        t.tenant.id,
        pgaas::model::AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &AuditContext::cli(),
    )
    .await
    .unwrap();
    let user = t.tenant.username.as_str();
    let control = p.settings.control_db.name.clone();
    for (port, name) in ports() {
        for db in ["postgres", "template1", control.as_str(), "pgbouncer"] {
            for pw in [t.password.expose(), "wrong"] {
                let r = login(port, v4(2), user, pw, db).await;
                refused_before_password(&r, &format!("{name}: {user} -> {db}"));
            }
        }
    }
    remove(&svc, &t).await;
}
