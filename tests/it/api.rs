//! The REST API over a real socket against the shared platform: the original README's flow with
//! its field names, every error status with proof that nothing changed, keys and scopes,
//! pagination, the audit trail, metrics and the committed OpenAPI document. Tests share one
//! cluster, so each works only with tenants it made (a unique ownerEmail per test).

use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{platform, psql};

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

fn api() -> Api {
    let p = platform();
    Api { client: reqwest::Client::new(), base: p.base_url.clone(), key: p.api_key.clone() }
}

/// An owner address no other test uses.
fn unique_email(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}-{}-{}@api-test.example.com", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Api {
    /// A request with this client's admin key.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let key = self.key.clone();
        self.call_with(method, path, Some(&key), body).await
    }

    async fn call_with(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.unwrap()).await
    }

    /// A request with a raw JSON body.
    async fn raw(&self, method: Method, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body);
        read(req.send().await.unwrap()).await
    }

    async fn create(&self, email: &str, name: &str) -> Value {
        let (status, body) = self
            .call(Method::POST, "/api/databases", Some(json!({ "friendlyName": name, "ownerEmail": email, "maxConnections": 5 })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// Databases owned by `email` (the total, from `count`).
    async fn count(&self, email: &str) -> i64 {
        let (status, body) = self.call(Method::GET, &format!("/api/databases?ownerEmail={}", enc(email)), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["count"].as_i64().unwrap()
    }

    async fn delete(&self, id: &str) {
        let (status, body) = self.call(Method::DELETE, &format!("/api/databases/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Make a key with these scopes; returns (id, key).
    async fn make_key(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let (status, body) = self.call(Method::POST, "/api/keys", Some(json!({ "name": name, "scopes": scopes }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["data"]["id"].as_str().unwrap().to_owned(), body["data"]["key"].as_str().unwrap().to_owned())
    }
}

async fn read(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B").replace('@', "%40")
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
}

const TENANT_FIELDS: [&str; 9] = [
    "id",
    "database_name",
    "username",
    "owner_email",
    "friendly_name",
    "max_connections",
    "status",
    "created_at",
    "updated_at",
];

#[tokio::test]
async fn the_original_readme_flow_create_get_list_stats_delete() {
    let api = api();
    let p = platform();
    let email = unique_email("readme");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/databases",
            Some(json!({ "friendlyName": "Test Database", "ownerEmail": email, "maxConnections": 10 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Database created successfully");
    let data = &body["data"];
    for f in TENANT_FIELDS.iter().chain(&["password", "connection_string", "DIRECT_URL"]) {
        assert!(!data[f].is_null(), "missing {f}: {data}");
    }
    assert_eq!(data["friendly_name"], "Test Database");
    assert_eq!(data["owner_email"], email.as_str());
    assert_eq!(data["max_connections"], 10);
    assert_eq!(data["status"], "active");
    let (id, db, user) = (data["id"].as_str().unwrap(), data["database_name"].as_str().unwrap(), data["username"].as_str().unwrap());
    let password = data["password"].as_str().unwrap();
    assert!(db.starts_with("tenant_") && user.starts_with("user_"));
    assert!(password.len() >= 24);
    let url = format!("postgresql://{user}:{password}@{}:{}/{db}?sslmode=require", p.settings.public_host, p.settings.postgres.port);
    assert_eq!(data["connection_string"], url.as_str());
    assert_eq!(data["DIRECT_URL"], url.as_str());
    // The returned string connects (over TLS), and the tenant can use its database.
    let (ok, out, err) = psql(&url, "CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('John Doe'); SELECT count(*) FROM users", &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().last(), Some("1"));

    let (status, got) = api.call(Method::GET, &format!("/api/databases/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    for f in TENANT_FIELDS {
        assert_eq!(got["data"][f], data[f], "{f}");
    }
    assert!(got["data"].get("password").is_none(), "the password is shown only once");

    let (status, list) = api.call(Method::GET, &format!("/api/databases?ownerEmail={}", enc(&email)), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);
    assert_eq!(list["data"][0]["id"], id);
    assert!(list["data"][0].get("password").is_none());

    let (status, stats) = api.call(Method::GET, &format!("/api/databases/{id}/stats"), None).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let s = &stats["data"];
    assert_eq!(s["database_id"], id);
    assert_eq!(s["database_name"], db);
    assert!(s["size_bytes"].as_i64().unwrap() > 0, "{s}");
    assert!(s["active_connections"].is_i64());
    assert_eq!(s["max_connections"], 10);
    assert!(s["size_pretty"].as_str().unwrap().ends_with("B"), "{s}");

    let (status, conn) = api.call(Method::GET, &format!("/api/databases/{id}/connection-strings"), None).await;
    assert_eq!(status, StatusCode::OK);
    let masked = conn["data"]["connection_string"].as_str().unwrap();
    assert_eq!(masked, url.replace(password, "********"));
    assert!(!conn.to_string().contains(password));

    let (status, del) = api.call(Method::DELETE, &format!("/api/databases/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{del}");
    assert_eq!(del, json!({ "success": true, "message": "Database deleted successfully" }));
    let (status, body) = api.call(Method::GET, &format!("/api/databases/{id}"), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(api.count(&email).await, 0);
    assert!(!psql(&url, "SELECT 1", &[]).0, "the deleted tenant's URL still connects");
}

#[tokio::test]
async fn patch_changes_fields_and_rotation_replaces_the_password() {
    let api = api();
    let email = unique_email("patch");
    let made = api.create(&email, "before").await;
    let id = made["id"].as_str().unwrap();
    let old_url = made["connection_string"].as_str().unwrap();

    let (status, body) = api
        .call(Method::PATCH, &format!("/api/databases/{id}"), Some(json!({ "friendlyName": "after", "maxConnections": 7 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["friendly_name"], "after");
    assert_eq!(body["data"]["max_connections"], 7);
    assert_eq!(body["data"]["owner_email"], email.as_str());

    let (status, body) = api.call(Method::POST, &format!("/api/databases/{id}/rotate-password"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_url = body["data"]["connection_string"].as_str().unwrap();
    assert_ne!(new_url, old_url);
    assert!(new_url.contains(body["data"]["password"].as_str().unwrap()));
    assert!(psql(new_url, "SELECT 1", &[]).0, "the new password works");
    assert!(!psql(old_url, "SELECT 1", &[]).0, "the old password still works");
    api.delete(id).await;
}

#[tokio::test]
async fn malformed_json_wrong_types_and_unknown_fields_are_400_and_change_nothing() {
    let api = api();
    let email = unique_email("badjson");
    let made = api.create(&email, "keep").await;
    let id = made["id"].as_str().unwrap();
    let bodies = [
        "{\"friendlyName\": \"x\", ".to_owned(),
        "not json".to_owned(),
        format!("{{\"friendlyName\": \"x\", \"ownerEmail\": \"{email}\", \"maxConnections\": \"ten\"}}"),
        format!("{{\"friendlyName\": \"x\", \"ownerEmail\": \"{email}\", \"isAdmin\": true}}"),
        "[1, 2]".to_owned(),
    ];
    for b in &bodies {
        let (status, body) = api.raw(Method::POST, "/api/databases", b.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        let (status, body) = api.raw(Method::PATCH, &format!("/api/databases/{id}"), b.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, body) = api.raw(Method::POST, "/api/keys", r#"{"name": "x", "role": "root"}"#).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(api.count(&email).await, 1);
    let (_, got) = api.call(Method::GET, &format!("/api/databases/{id}"), None).await;
    assert_eq!(got["data"]["friendly_name"], "keep");
    api.delete(id).await;
}

#[tokio::test]
async fn an_oversized_body_is_413_and_changes_nothing() {
    let api = api();
    let email = unique_email("big");
    let big = json!({ "friendlyName": "x".repeat(70 * 1024), "ownerEmail": email }).to_string();
    let (status, body) = api.raw(Method::POST, "/api/databases", big).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(api.count(&email).await, 0);
}

#[tokio::test]
async fn invalid_values_are_422_naming_the_field_and_change_nothing() {
    let api = api();
    let email = unique_email("invalid");
    let cap = platform().settings.tenants.max_connections_cap;
    let cases = [
        (json!({ "friendlyName": "x", "ownerEmail": "not-an-email" }), "ownerEmail"),
        (json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": 0 }), "maxConnections"),
        (json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": -1 }), "maxConnections"),
        (json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": cap + 1 }), "maxConnections"),
        (json!({ "friendlyName": "x".repeat(101), "ownerEmail": email }), "friendlyName"),
        (json!({ "friendlyName": "a\nb", "ownerEmail": email }), "friendlyName"),
        (json!({ "ownerEmail": email }), "friendlyName"),
    ];
    for (b, field) in &cases {
        let (status, body) = api.call(Method::POST, "/api/databases", Some(b.clone())).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(body["field"], *field, "{body}");
    }
    assert_eq!(api.count(&email).await, 0);

    let made = api.create(&email, "stays").await;
    let id = made["id"].as_str().unwrap();
    for b in [json!({}), json!({ "maxConnections": 0 }), json!({ "ownerEmail": "@x" }), json!({ "friendlyName": "" })] {
        let (status, body) = api.call(Method::PATCH, &format!("/api/databases/{id}"), Some(b)).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    let (_, got) = api.call(Method::GET, &format!("/api/databases/{id}"), None).await;
    assert_eq!(got["data"]["max_connections"], 5);
    assert_eq!(got["data"]["friendly_name"], "stays");
    api.delete(id).await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_on_every_route() {
    let api = api();
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "42", "1%27%20OR%201%3D1"] {
        let routes = [
            (Method::GET, format!("/api/databases/{id}"), None),
            (Method::PATCH, format!("/api/databases/{id}"), Some(json!({ "friendlyName": "x" }))),
            (Method::PATCH, format!("/api/databases/{id}"), Some(json!({}))),
            (Method::DELETE, format!("/api/databases/{id}"), None),
            (Method::GET, format!("/api/databases/{id}/stats"), None),
            (Method::GET, format!("/api/databases/{id}/connection-strings"), None),
            (Method::POST, format!("/api/databases/{id}/rotate-password"), None),
            (Method::DELETE, format!("/api/keys/{id}"), None),
        ];
        for (method, path, body) in routes {
            let (status, b) = api.call(method.clone(), &path, body).await;
            assert_error(status, &b, StatusCode::NOT_FOUND, "not_found");
            if id == unknown {
                assert!(b["message"].as_str().unwrap().contains(&unknown), "{method} {path}: {b}");
            }
        }
    }
}

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
    for key in [None, Some(""), Some("your-secret-api-key-here"), Some(wrong_secret.as_str())] {
        for (method, path) in [(Method::POST, "/api/databases"), (Method::GET, "/api/databases"), (Method::GET, "/api/keys")] {
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
    let res = api.client.get(format!("{}/api/databases?limit=1", api.base)).bearer_auth(&api.key).send().await.unwrap();
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
    let (status, body) = api.call_with(Method::POST, "/api/databases", Some(&read_key), Some(create)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(api.count(&email).await, 0);
    let (status, _) = api.call_with(Method::GET, "/api/databases?limit=1", Some(&read_key), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call_with(Method::POST, "/api/keys", Some(&write_key), Some(json!({ "name": "escalate", "scopes": ["admin"] }))).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = api.call_with(Method::GET, "/api/keys", Some(&write_key), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (_, keys) = api.call(Method::GET, "/api/keys", None).await;
    assert!(!keys.to_string().contains("escalate"));
}

#[tokio::test]
async fn a_key_made_through_the_api_works_until_revoked() {
    let api = api();
    let (id, key) = api.make_key("short-lived", &["write"]).await;
    assert!(key.starts_with("pgaas_"));
    let (status, _) = api.call_with(Method::GET, "/api/databases?limit=1", Some(&key), None).await;
    assert_eq!(status, StatusCode::OK);

    // last_used_at is written off the request path; give it a moment.
    let mut listed = Value::Null;
    for _ in 0..40 {
        let (status, keys) = api.call(Method::GET, "/api/keys", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!keys.to_string().contains(&key), "a listing shows a key");
        listed = keys["data"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
        if listed["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed["scopes"], json!(["write"]));
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(listed["revoked_at"].is_null());

    let (status, body) = api.call(Method::DELETE, &format!("/api/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.call_with(Method::GET, "/api/databases?limit=1", Some(&key), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = api.call(Method::DELETE, &format!("/api/keys/{id}"), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let (_, log) = api.call(Method::GET, "/api/audit-logs?action=api_key.create&limit=1000", None).await;
    let row = log["data"].as_array().unwrap().iter().find(|r| r["resource_id"] == id.as_str()).unwrap().clone();
    assert!(!row.to_string().contains(&key[6..]), "the audit row holds the key");
}

/// One page of `email`'s databases: (count, ids, next_cursor).
async fn page(api: &Api, email: &str, q: &str) -> (i64, Vec<String>, Option<String>) {
    let (status, body) = api.call(Method::GET, &format!("/api/databases?ownerEmail={}&{q}", enc(email)), None).await;
    assert_eq!(status, StatusCode::OK, "{q}: {body}");
    let ids = body["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    (body["count"].as_i64().unwrap(), ids, body["next_cursor"].as_str().map(String::from))
}

#[tokio::test]
async fn pagination_counts_the_total_and_filters_by_status_and_owner() {
    let api = api();
    let email = unique_email("page");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(api.create(&email, &format!("page {i}")).await["id"].as_str().unwrap().to_owned());
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let (count, first, cursor) = page(&api, &email, "limit=2").await;
    assert_eq!((count, first), (3, newest_first[..2].to_vec()));
    let (count, second, next) = page(&api, &email, &format!("limit=2&cursor={}", cursor.expect("a next page"))).await;
    assert_eq!((count, second, next), (3, newest_first[2..].to_vec(), None));
    let (_, by_offset, _) = page(&api, &email, "limit=2&offset=2").await;
    assert_eq!(by_offset, newest_first[2..].to_vec());
    assert_eq!(page(&api, &email, "status=active").await.0, 3);
    assert_eq!(page(&api, &email, "status=suspended").await.0, 0);

    for (q, want) in [
        ("limit=1001", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("status=gone", StatusCode::UNPROCESSABLE_ENTITY),
        ("cursor=garbage", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=ten", StatusCode::BAD_REQUEST),
        ("page=2", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = api.call(Method::GET, &format!("/api/databases?{q}"), None).await;
        assert_eq!(status, want, "{q}: {body}");
        assert_eq!(body["success"], false);
    }
    for id in &ids {
        api.delete(id).await;
    }
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
    let key_id = keys["data"].as_array().unwrap().iter().find(|k| k["key_prefix"] == prefix).unwrap()["id"].clone();

    let (status, log) = api.call(Method::GET, &format!("/api/audit-logs?databaseId={id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["count"], 2, "{log}");
    let actions: Vec<&str> = log["data"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["database.delete", "database.create"], "newest first");
    for row in log["data"].as_array().unwrap() {
        assert_eq!(row["api_key_id"], key_id, "{row}");
        assert_eq!(row["ip_address"], "127.0.0.1", "{row}");
        assert_eq!(row["outcome"], "success");
    }
    assert!(!log.to_string().contains(&password), "an audit row holds the password");

    let q = format!("/api/audit-logs?databaseId={id}&action=database.create&since={}", enc(&since.to_rfc3339()));
    let (_, filtered) = api.call(Method::GET, &q.replace('+', "%2B"), None).await;
    assert_eq!(filtered["count"], 1, "{filtered}");
    let (_, none) = api.call(Method::GET, &format!("/api/audit-logs?databaseId={id}&until={}", enc(&since.to_rfc3339())), None).await;
    assert_eq!(none["count"], 0, "{none}");
    for q in ["since=yesterday", "databaseId=nope", "limit=5000"] {
        let (status, body) = api.call(Method::GET, &format!("/api/audit-logs?{q}"), None).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
}

#[tokio::test]
async fn the_served_openapi_document_matches_the_committed_file() {
    let api = api();
    let res = api.client.get(format!("{}/openapi.json", api.base)).send().await.unwrap();
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
    let res = api.client.get(format!("{}/metrics", api.base)).bearer_auth(&api.key).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"pgaas_http_requests_total{method="GET",route="/api/databases",status="200"}"#))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1);
    let refused = text.lines().find(|l| l.starts_with(r#"pgaas_auth_refused_total{reason="missing"}"#)).unwrap();
    assert!(refused.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1, "{refused}");
    assert!(text.contains(r#"route="/metrics",status="401""#), "refused requests are counted too");
    assert!(!text.contains(&api.key));
}

#[tokio::test]
async fn pooled_url_is_offered_only_when_the_pooler_runs() {
    use tower::ServiceExt;
    let p = platform();
    let api = api();
    let made = api.create(&unique_email("pooler"), "pooled").await;
    let id = made["id"].as_str().unwrap();
    let password = p.settings.control_db_password().unwrap();
    let pool = pgaas::control_db::pool(pgaas::control_db::connect_options(&p.settings, password.as_ref()), 1);
    for available in [false, true] {
        let state = pgaas::api::AppState::new(pool.clone(), std::sync::Arc::new(p.settings.clone())).with_pooler_available(available);
        let req = axum::http::Request::get(format!("/api/databases/{id}/connection-strings"))
            .header("X-API-Key", &p.api_key)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = pgaas::api::app(state).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let bytes = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let pooled = &v["data"]["DATABASE_URL"];
        if available && p.settings.pgbouncer.enabled {
            let port = format!(":{}/", p.settings.pgbouncer.port);
            assert!(pooled.as_str().unwrap().contains(&port), "{v}");
            assert!(pooled.as_str().unwrap().contains(":********@"), "{v}");
        } else {
            assert!(pooled.is_null(), "{v}");
        }
    }
    api.delete(id).await;
}
