//! Who may call what: missing and invalid keys (401), scopes (403), keys made and revoked through
//! the API, the audit trail they leave, metrics, and the committed OpenAPI document.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{api, assert_error, enc, unique_email};

#[tokio::test]
async fn missing_or_invalid_keys_are_401_and_change_nothing() {
    let api = api();
    let email = unique_email("noauth");
    let create = json!({ "friendlyName": "x", "ownerEmail": email });
    // Same shape as a real key, with the admin key's prefix and a different secret.
    let mut wrong_secret = api.key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    let expected = json!({
        "success": false,
        "error": "Unauthorized",
        "message": "Invalid or missing API key",
        "code": "unauthorized",
    });
    for key in [
        None,
        Some(""),
        Some("your-secret-api-key-here"),
        Some(wrong_secret.as_str()),
    ] {
        for (method, path) in [
            (Method::POST, "/api/databases"),
            (Method::GET, "/api/databases"),
            (Method::GET, "/api/keys"),
        ] {
            let body = (method == Method::POST).then(|| create.clone());
            let (status, b) = api.call_with(method, path, key, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?} {path}");
            assert_eq!(b, expected);
            assert!(!b.to_string().contains(&api.key));
        }
    }
    let res = api
        .client
        .get(format!("{}/api/databases", api.base))
        .header("Authorization", format!("Basic {}", api.key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The same key as a bearer token works.
    let res = api
        .client
        .get(format!("{}/api/databases?limit=1", api.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.count(&email).await, 0);
}

#[tokio::test]
async fn scopes_are_enforced_with_403_and_change_nothing() {
    let api = api();
    let email = unique_email("scope");
    let (_, read_key) = api.make_key("read only", &["read"]).await;
    let (_, write_key) = api.make_key("writer", &["write"]).await;
    let create = json!({ "friendlyName": "x", "ownerEmail": email });
    let (status, body) = api
        .call_with(
            Method::POST,
            "/api/databases",
            Some(&read_key),
            Some(create),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(api.count(&email).await, 0);
    let (status, _) = api
        .call_with(Method::GET, "/api/databases?limit=1", Some(&read_key), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call_with(
            Method::POST,
            "/api/keys",
            Some(&write_key),
            Some(json!({ "name": "escalate", "scopes": ["admin"] })),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = api
        .call_with(Method::GET, "/api/keys", Some(&write_key), None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (_, keys) = api.call(Method::GET, "/api/keys", None).await;
    assert!(!keys.to_string().contains("escalate"));
}

#[tokio::test]
async fn a_key_made_through_the_api_works_until_revoked() {
    let api = api();
    let (id, key) = api.make_key("short-lived", &["write"]).await;
    assert!(key.starts_with("pgaas_"));
    let (status, _) = api
        .call_with(Method::GET, "/api/databases?limit=1", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // last_used_at is written off the request path; give it a moment.
    let mut listed = Value::Null;
    for _ in 0..40 {
        let (status, keys) = api.call(Method::GET, "/api/keys", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!keys.to_string().contains(&key), "a listing shows a key");
        listed = keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap()
            .clone();
        if listed["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed["scopes"], json!(["write"]));
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(listed["revoked_at"].is_null());

    let (status, body) = api
        .call(Method::DELETE, &format!("/api/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call_with(Method::GET, "/api/databases?limit=1", Some(&key), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = api
        .call(Method::DELETE, &format!("/api/keys/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let (_, log) = api
        .call(
            Method::GET,
            "/api/audit-logs?action=api_key.create&limit=1000",
            None,
        )
        .await;
    let row = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource_id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(
        !row.to_string().contains(&key[6..]),
        "the audit row holds the key"
    );
}

/// Verified keys are cached in the API process; a key revoked by another process (another API
/// instance, or straight in the control DB) stops working within a second all the same.
#[tokio::test]
async fn a_key_revoked_elsewhere_is_refused_within_a_second() {
    let api = api();
    let (id, key) = api.make_key("revoked-elsewhere", &["read"]).await;
    for _ in 0..3 {
        let (status, _) = api
            .call_with(Method::GET, "/api/databases?limit=1", Some(&key), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let p = crate::harness::platform();
    let (ok, _, err) = crate::harness::psql(
        &format!(
            "host={} port={} user={} dbname={}",
            p.socket_dir.display(),
            p.pg_port,
            p.superuser,
            p.settings.control_db.name
        ),
        &format!("UPDATE api_keys SET revoked_at = now() WHERE id = '{id}'"),
        &[],
    );
    assert!(ok, "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = api
        .call_with(Method::GET, "/api/databases?limit=1", Some(&key), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // A wrong secret with the right prefix is refused, cached key or not.
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    let (status, _) = api
        .call_with(Method::GET, "/api/databases?limit=1", Some(&wrong), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn audit_rows_name_the_key_and_client_address_and_hold_no_password() {
    let api = api();
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let made = api.create(&unique_email("audit"), "audited").await;
    let id = made["id"].as_str().unwrap();
    let password = made["password"].as_str().unwrap().to_owned();
    api.delete(id).await;

    let (_, keys) = api.call(Method::GET, "/api/keys", None).await;
    let prefix = &api.key[6..14];
    let key_id = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_prefix"] == prefix)
        .unwrap()["id"]
        .clone();

    let (status, log) = api
        .call(
            Method::GET,
            &format!("/api/audit-logs?databaseId={id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["count"], 2, "{log}");
    let actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["database.delete", "database.create"],
        "newest first"
    );
    for row in log["data"].as_array().unwrap() {
        assert_eq!(row["api_key_id"], key_id, "{row}");
        assert_eq!(row["ip_address"], "127.0.0.1", "{row}");
        assert_eq!(row["outcome"], "success");
    }
    assert!(
        !log.to_string().contains(&password),
        "an audit row holds the password"
    );

    let q = format!(
        "/api/audit-logs?databaseId={id}&action=database.create&since={}",
        enc(&since.to_rfc3339())
    );
    let (_, filtered) = api.call(Method::GET, &q.replace('+', "%2B"), None).await;
    assert_eq!(filtered["count"], 1, "{filtered}");
    let (_, none) = api
        .call(
            Method::GET,
            &format!(
                "/api/audit-logs?databaseId={id}&until={}",
                enc(&since.to_rfc3339())
            ),
            None,
        )
        .await;
    assert_eq!(none["count"], 0, "{none}");
    for q in ["since=yesterday", "databaseId=nope", "limit=5000"] {
        let (status, body) = api
            .call(Method::GET, &format!("/api/audit-logs?{q}"), None)
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
}

#[tokio::test]
async fn the_served_openapi_document_matches_the_committed_file() {
    let api = api();
    let res = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let served = res.text().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        served == committed,
        "openapi.json differs from the document the API serves; run `UPDATE_OPENAPI=1 cargo test --test it api::the_served_openapi` and review the diff"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_refusals_by_reason() {
    let api = api();
    let (status, _) = api.call_with(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "metrics need a key");
    let (status, _) = api.call(Method::GET, "/api/databases?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    let res = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(
                r#"pgaas_http_requests_total{method="GET",route="/api/databases",status="200"}"#,
            )
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1);
    let refused = text
        .lines()
        .find(|l| l.starts_with(r#"pgaas_auth_refused_total{reason="missing"}"#))
        .unwrap();
    assert!(
        refused.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1,
        "{refused}"
    );
    assert!(
        text.contains(r#"route="/metrics",status="401""#),
        "refused requests are counted too"
    );
    assert!(!text.contains(&api.key));
}
