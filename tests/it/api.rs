//! The REST API over a real socket against the shared platform: the original README's flow with
//! its field names, every error status with proof that nothing changed, keys and scopes,
//! pagination, the audit trail, metrics and the committed OpenAPI document. Tests share one
//! cluster, so each works only with tenants it made (a unique ownerEmail per test).

use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{platform, psql};

mod access;
mod errors;
mod schemas;
mod whitelist;

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

fn api() -> Api {
    let p = platform();
    Api {
        client: reqwest::Client::new(),
        base: p.base_url.clone(),
        key: p.api_key.clone(),
    }
}

/// An owner address no other test uses.
fn unique_email(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}@api-test.example.com",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Api {
    /// A request with this client's admin key.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let key = self.key.clone();
        self.call_with(method, path, Some(&key), body).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
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
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
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
            .call(
                Method::POST,
                "/api/databases",
                Some(json!({ "friendlyName": name, "ownerEmail": email, "maxConnections": 5 })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// Databases owned by `email` (the total, from `count`).
    async fn count(&self, email: &str) -> i64 {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/databases?ownerEmail={}", enc(email)),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["count"].as_i64().unwrap()
    }

    async fn delete(&self, id: &str) {
        let (status, body) = self
            .call(Method::DELETE, &format!("/api/databases/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Make a key with these scopes; returns (id, key).
    async fn make_key(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/keys",
                Some(json!({ "name": name, "scopes": scopes })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["data"]["id"].as_str().unwrap().to_owned(),
            body["data"]["key"].as_str().unwrap().to_owned(),
        )
    }
}

async fn read(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B").replace('@', "%40")
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
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
    for f in TENANT_FIELDS
        .iter()
        .chain(&["password", "connection_string", "DIRECT_URL"])
    {
        assert!(!data[f].is_null(), "missing {f}: {data}");
    }
    assert_eq!(data["friendly_name"], "Test Database");
    assert_eq!(data["owner_email"], email.as_str());
    assert_eq!(data["max_connections"], 10);
    assert_eq!(data["status"], "active");
    let (id, db, user) = (
        data["id"].as_str().unwrap(),
        data["database_name"].as_str().unwrap(),
        data["username"].as_str().unwrap(),
    );
    let password = data["password"].as_str().unwrap();
    // The role is named after its database: that ties it to it in pg_hba.conf (`sameuser`).
    assert!(db.starts_with("tenant_") && user == db);
    assert!(password.len() >= 24);
    let url = format!(
        "postgresql://{user}:{password}@{}:{}/{db}?sslmode=require",
        p.settings.public_host, p.settings.postgres.port
    );
    assert_eq!(data["connection_string"], url.as_str());
    assert_eq!(data["DIRECT_URL"], url.as_str());
    // The returned string connects (over TLS), and the tenant can use its database.
    let (ok, out, err) = psql(
        &url,
        "CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('John Doe'); SELECT count(*) FROM users",
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().last(), Some("1"));

    let (status, got) = api
        .call(Method::GET, &format!("/api/databases/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    for f in TENANT_FIELDS {
        assert_eq!(got["data"][f], data[f], "{f}");
    }
    assert!(
        got["data"].get("password").is_none(),
        "the password is shown only once"
    );

    let (status, list) = api
        .call(
            Method::GET,
            &format!("/api/databases?ownerEmail={}", enc(&email)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);
    assert_eq!(list["data"][0]["id"], id);
    assert!(list["data"][0].get("password").is_none());

    let (status, stats) = api
        .call(Method::GET, &format!("/api/databases/{id}/stats"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let s = &stats["data"];
    assert_eq!(s["database_id"], id);
    assert_eq!(s["database_name"], db);
    assert!(s["size_bytes"].as_i64().unwrap() > 0, "{s}");
    assert!(s["active_connections"].is_i64());
    assert_eq!(s["max_connections"], 10);
    assert!(s["size_pretty"].as_str().unwrap().ends_with("B"), "{s}");

    let (status, conn) = api
        .call(
            Method::GET,
            &format!("/api/databases/{id}/connection-strings"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let masked = conn["data"]["connection_string"].as_str().unwrap();
    assert_eq!(masked, url.replace(password, "********"));
    assert!(!conn.to_string().contains(password));

    let (status, del) = api
        .call(Method::DELETE, &format!("/api/databases/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{del}");
    assert_eq!(
        del,
        json!({ "success": true, "message": "Database deleted successfully" })
    );
    let (status, body) = api
        .call(Method::GET, &format!("/api/databases/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(api.count(&email).await, 0);
    assert!(
        !psql(&url, "SELECT 1", &[]).0,
        "the deleted tenant's URL still connects"
    );
}

#[tokio::test]
async fn patch_changes_fields_and_rotation_replaces_the_password() {
    let api = api();
    let email = unique_email("patch");
    let made = api.create(&email, "before").await;
    let id = made["id"].as_str().unwrap();
    let old_url = made["connection_string"].as_str().unwrap();

    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/api/databases/{id}"),
            Some(json!({ "friendlyName": "after", "maxConnections": 7 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["friendly_name"], "after");
    assert_eq!(body["data"]["max_connections"], 7);
    assert_eq!(body["data"]["owner_email"], email.as_str());

    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/databases/{id}/rotate-password"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_url = body["data"]["connection_string"].as_str().unwrap();
    assert_ne!(new_url, old_url);
    assert!(new_url.contains(body["data"]["password"].as_str().unwrap()));
    assert!(psql(new_url, "SELECT 1", &[]).0, "the new password works");
    assert!(
        !psql(old_url, "SELECT 1", &[]).0,
        "the old password still works"
    );
    api.delete(id).await;
}

/// One page of `email`'s databases: (count, ids, next_cursor).
async fn page(api: &Api, email: &str, q: &str) -> (i64, Vec<String>, Option<String>) {
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/api/databases?ownerEmail={}&{q}", enc(email)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{q}: {body}");
    let ids = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    (
        body["count"].as_i64().unwrap(),
        ids,
        body["next_cursor"].as_str().map(String::from),
    )
}

#[tokio::test]
async fn pagination_counts_the_total_and_filters_by_status_and_owner() {
    let api = api();
    let email = unique_email("page");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            api.create(&email, &format!("page {i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let (count, first, cursor) = page(&api, &email, "limit=2").await;
    assert_eq!((count, first), (3, newest_first[..2].to_vec()));
    let (count, second, next) = page(
        &api,
        &email,
        &format!("limit=2&cursor={}", cursor.expect("a next page")),
    )
    .await;
    assert_eq!((count, second, next), (3, newest_first[2..].to_vec(), None));
    // No paging parameter: every database, as the original answered (no cursor to miss).
    let (count, all, next) = page(&api, &email, "").await;
    assert_eq!((count, all, next), (3, newest_first.clone(), None));
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
        let (status, body) = api
            .call(Method::GET, &format!("/api/databases?{q}"), None)
            .await;
        assert_eq!(status, want, "{q}: {body}");
        assert_eq!(body["success"], false);
    }
    for id in &ids {
        api.delete(id).await;
    }
}

#[tokio::test]
async fn pooled_url_is_offered_only_when_the_pooler_runs() {
    use tower::ServiceExt;
    let p = platform();
    let api = api();
    let made = api.create(&unique_email("pooler"), "pooled").await;
    let id = made["id"].as_str().unwrap();
    let password = p.settings.control_db_password().unwrap();
    let pool = pgaas::control_db::pool(
        pgaas::control_db::connect_options(&p.settings, password.as_ref()),
        1,
    );
    for available in [false, true] {
        let state =
            pgaas::api::AppState::new(pool.clone(), std::sync::Arc::new(p.settings.clone()))
                .with_pooler_available(available);
        let req = axum::http::Request::get(format!("/api/databases/{id}/connection-strings"))
            .header("X-API-Key", &p.api_key)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = pgaas::api::app(state).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let bytes = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let pooled = &v["data"]["DATABASE_URL"];
        if available && p.settings.pgbouncer.enabled {
            let port = format!(":{}/", p.settings.pgbouncer.port);
            assert!(pooled.as_str().unwrap().contains(&port), "{v}");
            assert!(pooled.as_str().unwrap().contains(":********@"), "{v}");
            // Prisma's own field: behind transaction pooling it must not prepare statements.
            assert_eq!(
                v["data"]["PRISMA_DATABASE_URL"],
                format!("{}&pgbouncer=true", pooled.as_str().unwrap()),
                "{v}"
            );
        } else {
            assert!(v["data"].get("DATABASE_URL").is_none(), "{v}");
            assert!(v["data"].get("PRISMA_DATABASE_URL").is_none(), "{v}");
        }
    }
    api.delete(id).await;
}

/// `POST /api/databases/{id}/shadow`: the URL names the shadow database with the tenant's user
/// and a masked password, asking again answers the same one, and `DELETE` drops it (twice is
/// fine); both leave audit rows.
#[tokio::test]
async fn a_shadow_database_through_the_api() {
    let api = api();
    let made = api.create(&unique_email("shadow"), "shadowed").await;
    let (id, db, user) = (
        made["id"].as_str().unwrap(),
        made["database_name"].as_str().unwrap(),
        made["username"].as_str().unwrap(),
    );
    let path = format!("/api/databases/{id}/shadow");
    let (status, body) = api.call(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shadow = format!("{db}_shadow");
    assert_eq!(body["data"]["database_name"], shadow.as_str(), "{body}");
    let url = body["data"]["SHADOW_DATABASE_URL"].as_str().unwrap();
    assert!(
        url.contains(&format!("{user}:********@"))
            && url.contains(&format!("/{shadow}?sslmode=require")),
        "{url}"
    );
    assert!(
        !url.contains(&format!("/{db}?")),
        "the shadow URL names the real database: {url}"
    );
    let (status, again) = api.call(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["data"]["database_name"], shadow.as_str());
    assert!(
        again["message"].as_str().unwrap().contains("already"),
        "{again}"
    );
    let (status, body) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Shadow database dropped");
    let (status, body) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no shadow"),
        "{body}"
    );
    let (_, audit) = api
        .call(
            Method::GET,
            &format!("/api/audit-logs?databaseId={id}"),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"database.shadow.create") && actions.contains(&"database.shadow.delete"),
        "{actions:?}"
    );
    // Unknown tenants are 404, as everywhere.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/databases/{}/shadow", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.delete(id).await;
}
