//! Every error status the API gives for a bad request (400, 413, 422, 404), each with proof that
//! nothing changed.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{api, assert_error, unique_email};
use crate::harness::platform;

#[tokio::test]
async fn malformed_json_wrong_types_and_unknown_fields_are_400_and_change_nothing() {
    let api = api();
    let email = unique_email("badjson");
    let made = api.create(&email, "keep").await;
    let id = made["id"].as_str().unwrap();
    let bodies = [
        "{\"friendlyName\": \"x\", ".to_owned(),
        "not json".to_owned(),
        format!(
            "{{\"friendlyName\": \"x\", \"ownerEmail\": \"{email}\", \"maxConnections\": \"ten\"}}"
        ),
        format!("{{\"friendlyName\": \"x\", \"ownerEmail\": \"{email}\", \"isAdmin\": true}}"),
        "[1, 2]".to_owned(),
    ];
    for b in &bodies {
        let (status, body) = api.raw(Method::POST, "/api/databases", b.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        let (status, body) = api
            .raw(Method::PATCH, &format!("/api/databases/{id}"), b.clone())
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, body) = api
        .raw(
            Method::POST,
            "/api/keys",
            r#"{"name": "x", "role": "root"}"#,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(api.count(&email).await, 1);
    let (_, got) = api
        .call(Method::GET, &format!("/api/databases/{id}"), None)
        .await;
    assert_eq!(got["data"]["friendly_name"], "keep");
    api.delete(id).await;
}

#[tokio::test]
async fn an_oversized_body_is_413_and_changes_nothing() {
    let api = api();
    let email = unique_email("big");
    let big = json!({ "friendlyName": "x".repeat(70 * 1024), "ownerEmail": email }).to_string();
    let (status, body) = api.raw(Method::POST, "/api/databases", big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(api.count(&email).await, 0);
}

#[tokio::test]
async fn invalid_values_are_422_naming_the_field_and_change_nothing() {
    let api = api();
    let email = unique_email("invalid");
    let cap = platform().settings.tenants.max_connections_cap;
    let cases = [
        (
            json!({ "friendlyName": "x", "ownerEmail": "not-an-email" }),
            "ownerEmail",
        ),
        (
            json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": 0 }),
            "maxConnections",
        ),
        (
            json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": -1 }),
            "maxConnections",
        ),
        (
            json!({ "friendlyName": "x", "ownerEmail": email, "maxConnections": cap + 1 }),
            "maxConnections",
        ),
        (
            json!({ "friendlyName": "x".repeat(101), "ownerEmail": email }),
            "friendlyName",
        ),
        (
            json!({ "friendlyName": "a\nb", "ownerEmail": email }),
            "friendlyName",
        ),
        (json!({ "ownerEmail": email }), "friendlyName"),
    ];
    for (b, field) in &cases {
        let (status, body) = api
            .call(Method::POST, "/api/databases", Some(b.clone()))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["field"], *field, "{body}");
    }
    assert_eq!(api.count(&email).await, 0);

    let made = api.create(&email, "stays").await;
    let id = made["id"].as_str().unwrap();
    for b in [
        json!({}),
        json!({ "maxConnections": 0 }),
        json!({ "ownerEmail": "@x" }),
        json!({ "friendlyName": "" }),
    ] {
        let (status, body) = api
            .call(Method::PATCH, &format!("/api/databases/{id}"), Some(b))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let (_, got) = api
        .call(Method::GET, &format!("/api/databases/{id}"), None)
        .await;
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
            (
                Method::PATCH,
                format!("/api/databases/{id}"),
                Some(json!({ "friendlyName": "x" })),
            ),
            (
                Method::PATCH,
                format!("/api/databases/{id}"),
                Some(json!({})),
            ),
            (Method::DELETE, format!("/api/databases/{id}"), None),
            (Method::GET, format!("/api/databases/{id}/stats"), None),
            (
                Method::GET,
                format!("/api/databases/{id}/connection-strings"),
                None,
            ),
            (
                Method::POST,
                format!("/api/databases/{id}/rotate-password"),
                None,
            ),
            (Method::DELETE, format!("/api/keys/{id}"), None),
        ];
        for (method, path, body) in routes {
            let (status, b) = api.call(method.clone(), &path, body).await;
            assert_error(status, &b, StatusCode::NOT_FOUND, "not_found");
            if id == unknown {
                assert!(
                    b["message"].as_str().unwrap().contains(&unknown),
                    "{method} {path}: {b}"
                );
            }
        }
    }
}
