//! The allow-list routes: the original's shapes, strict validation that says what would be
//! valid, 404/409 where they belong, every refusal leaving pg_hba.conf byte-for-byte unchanged,
//! and an accepted entry in force (a connection from an unlisted address is refused).

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{api, unique_email};
use crate::{
    allowlist::{Creds, connect_from, v4},
    harness::platform,
};

/// The lines of pg_hba.conf that mention `name` (other tests change other tenants' lines
/// concurrently; the byte-for-byte check runs on a private platform in `allowlist_faults`).
fn hba_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(platform().state_dir.join("pgdata/pg_hba.conf"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(name))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn entries_are_added_listed_enforced_and_removed_in_the_original_shapes() {
    let a = api();
    let p = platform();
    let db = a.create(&unique_email("wl"), "whitelist").await;
    let id = db["id"].as_str().unwrap();
    let path = format!("/api/databases/{id}/whitelist");

    let (status, body) = a
        .call(
            Method::POST,
            &path,
            Some(json!({ "ipAddress": "127.0.0.2", "description": "Office Network" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    let entry = &body["data"];
    assert_eq!(entry["ip_address"], "127.0.0.2/32");
    assert_eq!(entry["database_id"], id);
    assert_eq!(entry["description"], "Office Network");
    assert!(entry["added_at"].is_string() && entry["id"].is_string());

    let (status, list) = a.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);
    assert_eq!(list["data"][0]["id"], entry["id"]);

    // In force when the response arrived.
    let creds = Creds {
        user: db["username"].as_str().unwrap().into(),
        password: db["password"].as_str().unwrap().into(),
        database: db["database_name"].as_str().unwrap().into(),
    };
    connect_from(v4(2), p.pg_port, &creds, true).await.unwrap();
    assert!(connect_from(v4(3), p.pg_port, &creds, true).await.is_err());

    let (status, body) = a
        .call(
            Method::DELETE,
            &format!("{path}/{}", entry["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("any address"),
        "{body}"
    );
    connect_from(v4(3), p.pg_port, &creds, true).await.unwrap();
    a.delete(id).await;
}

#[tokio::test]
async fn invalid_duplicate_and_unknown_are_refused_and_change_nothing() {
    let a = api();
    let db = a
        .create(&unique_email("wl-bad"), "whitelist refusals")
        .await;
    let id = db["id"].as_str().unwrap();
    let path = format!("/api/databases/{id}/whitelist");
    let (status, _) = a
        .call(
            Method::POST,
            &path,
            Some(json!({ "ipAddress": "10.20.0.0/16" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let name = db["database_name"].as_str().unwrap();
    let before = hba_lines(name);
    assert!(!before.is_empty());

    for (input, hint) in [
        ("192.168.1.5/24", "192.168.1.0/24"),
        ("10.0.0.0/33", "between 1 and 32"),
        ("::/129", "between 1 and 128"),
        ("0.0.0.0/0", "empty allow-list"),
        ("010.0.0.1", "not an IP address"),
        ("fe80::1%eth0", "zone id"),
        ("not-an-ip", "not an IP address"),
        ("1.2.3.4/24\nhost all all 0.0.0.0/0 trust", "prefix"),
    ] {
        let (status, body) = a
            .call(Method::POST, &path, Some(json!({ "ipAddress": input })))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input}: {body}");
        assert_eq!(body["code"], "validation_failed");
        assert!(
            body["message"].as_str().unwrap().contains(hint),
            "{input}: {body}"
        );
    }
    let (status, body) = a
        .call(
            Method::POST,
            &path,
            Some(json!({ "ipAddress": "10.20.0.0/16" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = a
        .call(
            Method::POST,
            &path,
            Some(json!({ "ipAddress": "10.30.0.0/16", "extra": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = a
        .call(
            Method::POST,
            &path,
            Some(json!({ "description": "no address" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let unknown = uuid::Uuid::new_v4();
    for (method, p) in [
        (Method::POST, format!("/api/databases/{unknown}/whitelist")),
        (Method::GET, format!("/api/databases/{unknown}/whitelist")),
        (
            Method::DELETE,
            format!(
                "/api/databases/{unknown}/whitelist/{}",
                uuid::Uuid::new_v4()
            ),
        ),
        (Method::DELETE, format!("{path}/{}", uuid::Uuid::new_v4())),
        (Method::DELETE, format!("{path}/not-a-uuid")),
        (
            Method::GET,
            "/api/databases/not-a-uuid/whitelist".to_string(),
        ),
    ] {
        let body = (method == Method::POST).then(|| json!({ "ipAddress": "10.40.0.0/16" }));
        let (status, resp) = a.call(method.clone(), &p, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {p}: {resp}");
    }

    assert_eq!(
        hba_lines(name),
        before,
        "a refused request changed pg_hba.conf"
    );
    let (_, list) = a.call(Method::GET, &path, None).await;
    assert_eq!(list["count"], 1);
    a.delete(id).await;
}
