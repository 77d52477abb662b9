//! Hostile input. Every query parameter is checked before it reaches SQL (a cursor with a time
//! PostgreSQL cannot hold, or a NUL byte, used to answer 500), and an allow-list cannot add up
//! to the whole internet (`/0` was refused, `0.0.0.0/1` + `128.0.0.0/1` were not).

use reqwest::StatusCode;
use serde_json::Value;

use super::*;

async fn get(path_and_query: &str) -> (StatusCode, Value) {
    let p = platform();
    let r = reqwest::Client::new()
        .get(format!("{}{path_and_query}", p.base_url))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{path_and_query}: not JSON ({status}): {text}"));
    (status, body)
}

/// Values an attacker or a broken client sends, percent-encoded as they would arrive.
const HOSTILE: &[&str] = &[
    "%00",
    "a%00b",
    "%0A",
    "%1B%5B31m",
    "%E2%80%AE",
    "%FF%FE",
    "-1",
    "-6000000000000000000",
    "99999999999999999999999",
    "1e999",
    "NaN",
    "'%20OR%201=1--",
    "%22%3B%20DROP%20TABLE%20databases%3B--",
    "-6000000000000000000_00000000-0000-4000-8000-000000000000",
    "9223372036854775807_00000000-0000-4000-8000-000000000000",
    "1_not-a-uuid",
    "_",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
    "2026-13-45T99:99:99Z",
];

#[tokio::test(flavor = "multi_thread")]
async fn no_query_string_reaches_sql_unchecked() {
    let svc = platform().tenants();
    let t = tenant(&svc, "queries").await;
    let id = t.tenant.id.to_string();
    let routes: [(String, &[&str]); 4] = [
        (
            "/api/databases".into(),
            &[
                "limit",
                "offset",
                "cursor",
                "status",
                "ownerEmail",
                "owner_email",
            ],
        ),
        (
            "/api/audit-logs".into(),
            &["databaseId", "action", "since", "until", "limit", "offset"],
        ),
        (format!("/api/databases/{id}/backups"), &["limit"]),
        (format!("/api/databases/{id}/whitelist"), &["x"]),
    ];
    for (route, params) in &routes {
        for param in params.iter() {
            for value in HOSTILE {
                let query = format!("{route}?{param}={value}");
                let (status, body) = get(&query).await;
                assert!(
                    status.is_success() || status.is_client_error(),
                    "{query}: {status} {body}"
                );
                if !status.is_success() {
                    assert_eq!(body["success"], false, "{query}: {body}");
                    assert!(body["code"].is_string(), "{query}: {body}");
                }
                let decoded_control =
                    value.contains("%00") || value.contains("%0A") || value.contains("%1B");
                // Routes that read query parameters refuse them; the others ignore them.
                let reads_query = !route.ends_with("whitelist") && !route.ends_with("backups");
                if decoded_control && reads_query {
                    assert_eq!(status, 422, "{query}: {body}");
                }
            }
        }
    }
    // The two found in review, by name.
    let (status, body) =
        get("/api/databases?cursor=-6000000000000000000_00000000-0000-4000-8000-000000000000")
            .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "cursor");
    let (status, _) = get("/api/audit-logs?action=%00").await;
    assert_eq!(status, 422);
    remove(&svc, &t).await;
}

async fn whitelist(id: &str, ip: &str) -> (StatusCode, Value) {
    let p = platform();
    let r = reqwest::Client::new()
        .post(format!("{}/api/databases/{id}/whitelist", p.base_url))
        .header("X-API-Key", &p.api_key)
        .json(&serde_json::json!({ "ipAddress": ip }))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_cannot_add_up_to_everyone() {
    let p = platform();
    let svc = p.tenants();
    let t = tenant(&svc, "wide").await;
    let id = t.tenant.id.to_string();
    for wide in [
        "0.0.0.0/1",
        "128.0.0.0/1",
        "0.0.0.0/7",
        "::/1",
        "8000::/1",
        "2000::/3",
        "::ffff:0.0.0.0/96",
        "::ffff:203.0.113.0/120",
        "::ffff:203.0.113.5",
    ] {
        let (status, body) = whitelist(&id, wide).await;
        assert_eq!(status, 422, "{wide}: {body}");
        assert_eq!(body["field"], "ipAddress", "{wide}: {body}");
    }
    assert!(svc.list_allowed(t.tenant.id).await.unwrap().is_empty());
    // Still open to any address over TLS: nothing was applied.
    for (port, name) in ports() {
        login(
            port,
            v4(3),
            t.tenant.username.as_str(),
            t.password.expose(),
            t.tenant.database_name.as_str(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // The widest allowed, then the list fills up: the entry after the last allowed is refused.
    let max = p.settings.tenants.allow_max_entries;
    let (status, body) = whitelist(&id, "10.0.0.0/8").await;
    assert_eq!(status, 201, "{body}");
    for i in 1..max {
        let (status, body) = whitelist(&id, &format!("11.{}.{}.0/24", i / 256, i % 256)).await;
        assert_eq!(status, 201, "entry {i}: {body}");
    }
    let (status, body) = whitelist(&id, "12.0.0.0/8").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("allow_max_entries")
    );
    assert_eq!(
        svc.list_allowed(t.tenant.id).await.unwrap().len(),
        max as usize
    );
    remove(&svc, &t).await;
}
