//! The platform `pgaas dev` brings up, checked from outside with real clients.

use std::path::Path;

use crate::harness::{platform, psql};

fn conninfo(host: &str, user: &str, db: &str, sslmode: &str) -> String {
    let p = platform();
    format!(
        "host={host} port={} user={user} dbname={db} sslmode={sslmode} sslrootcert={}",
        p.pg_port,
        p.ca_file.display()
    )
}

#[test]
fn health_reports_a_reachable_control_db() {
    let p = platform();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body): (u16, serde_json::Value) = rt.block_on(async {
        let r = reqwest::get(format!("{}/health", p.base_url))
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["control_db"], "reachable");
    assert_eq!(body["environment"], "development");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn health_is_503_when_the_control_db_is_down() {
    use tower::ServiceExt;
    let p = platform();
    let mut settings = p.settings.clone();
    settings.control_db.port = Some(crate::harness::free_port());
    let opts = pgaas::control_db::connect_options(&settings, None);
    let state = pgaas::api::AppState::new(
        pgaas::control_db::pool(opts, 1),
        std::sync::Arc::new(settings),
    );
    let res = pgaas::api::app(state)
        .oneshot(
            axum::http::Request::get("/health")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["control_db"], "unreachable");
}

#[test]
fn the_printed_psql_line_connects_with_verify_full() {
    let p = platform();
    for host in ["localhost", "127.0.0.1"] {
        let (ok, out, err) = psql(
            &conninfo(
                host,
                &p.settings.control_db.user,
                &p.settings.control_db.name,
                "verify-full",
            ),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[("PGPASSFILE", p.pgpass_file.as_path())],
        );
        assert!(ok, "{host}: {err}");
        assert_eq!(out, "t", "the session must be TLS");
    }
}

#[test]
fn a_wrong_ca_fails_verify_full() {
    let p = platform();
    let other = tempfile::tempdir().unwrap();
    let ca = pgaas::pg::tls::LocalCa::in_dir(other.path());
    ca.ensure().unwrap();
    let conn = format!(
        "host=localhost port={} user={} dbname={} sslmode=verify-full sslrootcert={}",
        p.pg_port,
        p.settings.control_db.user,
        p.settings.control_db.name,
        ca.cert_file.display()
    );
    let (ok, _, err) = psql(
        &conn,
        "SELECT 1",
        &[("PGPASSFILE", p.pgpass_file.as_path())],
    );
    assert!(!ok);
    assert!(err.contains("certificate verify failed"), "{err}");
}

#[test]
fn the_superuser_never_logs_in_over_tcp() {
    let p = platform();
    for (host, mode) in [
        ("127.0.0.1", "require"),
        ("localhost", "verify-full"),
        ("127.0.0.1", "disable"),
    ] {
        let (ok, _, err) = psql(
            &conninfo(host, &p.superuser, "postgres", mode),
            "SELECT 1",
            &[],
        );
        assert!(!ok, "superuser got in over TCP ({host}, {mode})");
        assert!(err.contains("pg_hba.conf"), "{err}");
    }
    // ...but does over the local socket, by peer.
    let local = format!(
        "host={} port={} user={} dbname=postgres",
        p.socket_dir.display(),
        p.pg_port,
        p.superuser
    );
    let (ok, out, err) = psql(&local, "SELECT current_user", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, p.superuser);
}

#[test]
fn plaintext_tcp_is_refused_for_everyone() {
    let p = platform();
    let (ok, _, err) = psql(
        &conninfo(
            "127.0.0.1",
            &p.settings.control_db.user,
            &p.settings.control_db.name,
            "disable",
        ),
        "SELECT 1",
        &[("PGPASSFILE", p.pgpass_file.as_path())],
    );
    assert!(!ok);
    assert!(
        err.contains("pg_hba.conf") && err.contains("no encryption"),
        "{err}"
    );
}

#[test]
fn the_api_role_is_not_a_superuser_and_its_password_is_not_logged() {
    let p = platform();
    let local = format!(
        "host={} port={} user={} dbname=postgres",
        p.socket_dir.display(),
        p.pg_port,
        p.superuser
    );
    let (ok, out, err) = psql(
        &local,
        &format!(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls \
             FROM pg_roles WHERE rolname = '{}'",
            p.settings.control_db.user
        ),
        &[],
    );
    assert!(ok, "{err}");
    // CREATEDB only: no CREATEROLE, which on PostgreSQL 15 grants any predefined role.
    assert_eq!(out, "f|t|f|f|f");
    let password =
        std::fs::read_to_string(p.settings.control_db.password_file.as_ref().unwrap()).unwrap();
    assert!(password.trim().len() >= 24);
    // Make the server log something with log_statement = 'all', then look for the password.
    let (ok, _, err) = psql(&local, "SELECT 'log-marker'", &[]);
    assert!(ok, "{err}");
    let log = std::fs::read_to_string(&p.log_file).unwrap();
    assert!(
        log.contains("log-marker"),
        "log_statement = 'all' must be in force for this test"
    );
    assert!(
        !log.contains(password.trim()),
        "the API role's password reached the server log"
    );
}

#[test]
fn secrets_and_keys_have_private_modes() {
    use std::os::unix::fs::PermissionsExt;
    let p = platform();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.settings.tls.key_file), 0o600);
    assert_eq!(
        mode(p.settings.control_db.password_file.as_ref().unwrap()),
        0o600
    );
    assert_eq!(mode(&p.pgpass_file), 0o600);
    assert_eq!(mode(&p.state_dir.join("secrets")), 0o700);
}

#[test]
fn the_first_api_key_is_stored_only_as_a_hash() {
    let p = platform();
    assert!(p.api_key.starts_with("pgaas_"));
    let local = format!(
        "host={} port={} user={} dbname={}",
        p.socket_dir.display(),
        p.pg_port,
        p.superuser,
        p.settings.control_db.name
    );
    let prefix = &p.api_key[6..14];
    let (ok, out, err) = psql(
        &local,
        &format!(
            "SELECT key_prefix, encode(key_hash, 'hex'), permissions::text FROM api_keys WHERE key_prefix = '{prefix}'"
        ),
        &[],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(&p.api_key), "plaintext key stored");
    assert!(out.starts_with(prefix), "{out}");
    assert!(out.ends_with("[\"admin\"]"), "{out}");
    // The hash is SHA-256 of the whole key; nothing else about the secret part is kept.
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(p.api_key.as_bytes()));
    assert!(out.contains(&expected), "{out}");
}
