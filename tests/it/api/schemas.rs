//! The served OpenAPI document describes what the API really answers: every body below, from a
//! real request, is checked against the schema the document gives for that route and status. A
//! field the code sends and the document does not name (or the other way round) fails here, so
//! the two cannot drift.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{api, unique_email};

/// The schema the document gives for `method path` answering `status`, `$ref`s resolved lazily.
fn response_schema(doc: &Value, method: &Method, path: &str, status: StatusCode) -> Value {
    let op = &doc["paths"][path][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let schema = &op["responses"][status.as_str()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} answered {status}, which the document does not list"
    );
    schema.clone()
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Every way `v` departs from `schema` (the subset of JSON Schema the document uses).
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema["allOf"].as_array() {
        // One object made of several: their properties and requirements together.
        let mut merged = json!({ "type": "object", "properties": {}, "required": [] });
        for part in all {
            let part = resolve(doc, part);
            if let Some(p) = part["properties"].as_object() {
                merged["properties"]
                    .as_object_mut()
                    .unwrap()
                    .extend(p.clone());
            }
            if let Some(r) = part["required"].as_array() {
                merged["required"].as_array_mut().unwrap().extend(r.clone());
            }
        }
        return check(doc, &merged, v, at, problems);
    }
    match &schema["type"] {
        Value::String(t) if !type_matches(t, v) => problems.push(format!("{at}: not {t}: {v}")),
        Value::Array(ts) if !ts.iter().any(|t| type_matches(t.as_str().unwrap_or(""), v)) => {
            problems.push(format!("{at}: not one of {ts:?}: {v}"))
        }
        _ => {}
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            problems.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(v) {
            problems.push(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                problems.push(format!("{at}: required field {r} is missing"));
            }
        }
        for (k, value) in obj {
            match props.get(k) {
                Some(s) => check(doc, s, value, &format!("{at}.{k}"), problems),
                None if schema["additionalProperties"] != json!(true) => {
                    problems.push(format!("{at}.{k}: sent, but not in the document"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), problems);
        }
    }
}

#[tokio::test]
async fn every_answer_matches_the_documented_schema() {
    let a = api();
    let (status, doc) = a.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let email = unique_email("schemas");
    let mut problems = Vec::new();
    let mut seen = |method: Method, route: &str, status: StatusCode, body: &Value| {
        let schema = response_schema(&doc, &method, route, status);
        check(
            &doc,
            &schema,
            body,
            &format!("{method} {route} {status}"),
            &mut problems,
        );
    };

    let create = json!({ "friendlyName": "schemas", "ownerEmail": email, "maxConnections": 3 });
    let (s, body) = a
        .call(Method::POST, "/api/databases", Some(create.clone()))
        .await;
    seen(Method::POST, "/api/databases", s, &body);
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let one = format!("/api/databases/{id}");
    for (method, path, route, body) in [
        (Method::GET, one.clone(), "/api/databases/{id}", None),
        (
            Method::GET,
            "/api/databases?limit=2".into(),
            "/api/databases",
            None,
        ),
        (
            Method::GET,
            format!("{one}/stats"),
            "/api/databases/{id}/stats",
            None,
        ),
        (
            Method::GET,
            format!("{one}/connection-strings"),
            "/api/databases/{id}/connection-strings",
            None,
        ),
        (
            Method::PATCH,
            one.clone(),
            "/api/databases/{id}",
            Some(json!({ "friendlyName": "schemas 2", "maxSizeMb": 50 })),
        ),
        (
            Method::POST,
            format!("{one}/rotate-password"),
            "/api/databases/{id}/rotate-password",
            None,
        ),
        (
            Method::POST,
            format!("{one}/whitelist"),
            "/api/databases/{id}/whitelist",
            Some(json!({ "ipAddress": "192.0.2.0/24", "description": "office" })),
        ),
        (
            Method::GET,
            format!("{one}/whitelist"),
            "/api/databases/{id}/whitelist",
            None,
        ),
        (
            Method::GET,
            format!("{one}/backups"),
            "/api/databases/{id}/backups",
            None,
        ),
        (
            Method::GET,
            format!("/api/audit-logs?databaseId={id}"),
            "/api/audit-logs",
            None,
        ),
        (
            Method::POST,
            format!("{one}/shadow"),
            "/api/databases/{id}/shadow",
            None,
        ),
        (
            Method::DELETE,
            format!("{one}/shadow"),
            "/api/databases/{id}/shadow",
            None,
        ),
        (Method::GET, "/api/keys".into(), "/api/keys", None),
        (Method::GET, "/health".into(), "/health", None),
        // Errors, in the standard shape.
        (
            Method::GET,
            format!("/api/databases/{}", uuid::Uuid::new_v4()),
            "/api/databases/{id}",
            None,
        ),
        (
            Method::PATCH,
            one.clone(),
            "/api/databases/{id}",
            Some(json!({ "maxConnections": 0 })),
        ),
        (
            Method::POST,
            format!("{one}/whitelist"),
            "/api/databases/{id}/whitelist",
            Some(json!({ "ipAddress": "192.0.2.0/24" })),
        ),
    ] {
        let (s, body) = a.call(method.clone(), &path, body).await;
        seen(method, route, s, &body);
    }
    let (s, body) = a.call(Method::DELETE, &one, None).await;
    seen(Method::DELETE, "/api/databases/{id}", s, &body);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
