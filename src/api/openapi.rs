//! The OpenAPI 3.1 document, built from the route table (paths, methods, scopes, parameters,
//! statuses) and the schemas below. `GET /openapi.json` serves it and the same bytes are committed
//! as `openapi.json` at the repository root; an integration test fails when the two differ
//! (`UPDATE_OPENAPI=1` rewrites the file). It does not depend on settings, so every host serves
//! the same document.

use std::{collections::BTreeMap, sync::OnceLock};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use super::endpoint::{Doc, Endpoint};
use crate::model::Scope;

/// The document as served, pretty-printed with a trailing newline (the committed file's form).
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(&document(&super::endpoints()))
            .expect("a JSON value serialises");
        s.push('\n');
        s
    })
}

pub async fn handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

pub fn document(endpoints: &[Endpoint]) -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for e in endpoints {
        paths
            .entry(e.path)
            .or_default()
            .insert(e.method.as_str().to_lowercase(), operation(&e.doc, e.scope));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pgaas",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted PostgreSQL as a service: isolated tenant databases, their \
                connection strings, usage numbers, the audit trail and API keys. Send a key in \
                X-API-Key or Authorization: Bearer. Scopes nest: admin includes write includes read. \
                Errors are {success: false, error, message, code} (plus field for 422).",
        },
        "components": {
            "securitySchemes": {
                "ApiKeyHeader": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "BearerAuth": { "type": "http", "scheme": "bearer" },
            },
            "schemas": super::openapi_schemas::schemas(),
        },
        "paths": paths,
    })
}

fn operation(doc: &Doc, scope: Option<Scope>) -> Value {
    let mut op = json!({
        "operationId": doc.operation_id,
        "tags": [doc.tag],
        "summary": doc.summary,
    });
    let mut params: Vec<Value> = Vec::new();
    if let Some(d) = doc.path_id {
        params.push(json!({
            "name": "id", "in": "path", "required": true, "description": d,
            "schema": { "type": "string", "format": "uuid" },
        }));
    }
    for p in doc.path_params {
        params.push(json!({ "name": p.name, "in": "path", "required": true, "description": p.description, "schema": schema_of(p.ty) }));
    }
    for p in doc.query {
        params.push(json!({ "name": p.name, "in": "query", "required": false, "description": p.description, "schema": schema_of(p.ty) }));
    }
    if !params.is_empty() {
        op["parameters"] = json!(params);
    }
    if let Some(body) = doc.body {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": reference(body) } },
        });
    }
    if let Some(s) = scope {
        op["security"] = json!([{ "ApiKeyHeader": [] }, { "BearerAuth": [] }]);
        op["x-required-scope"] = json!(s.as_str());
    } else {
        op["security"] = json!([]);
    }
    let mut responses = Map::new();
    for status in doc.statuses(scope) {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = if status == doc.ok.0 {
            match doc.ok.1 {
                "text" => {
                    json!({ "description": reason, "content": { "text/plain": { "schema": { "type": "string" } } } })
                }
                name => {
                    json!({ "description": reason, "content": { "application/json": { "schema": reference(name) } } })
                }
            }
        } else {
            json!({ "description": reason, "content": { "application/json": { "schema": reference("Error") } } })
        };
        responses.insert(status.to_string(), body);
    }
    op["responses"] = Value::Object(responses);
    op
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn schema_of(ty: &str) -> Value {
    match ty.split_once(':') {
        Some((t, format)) => json!({ "type": t, "format": format }),
        None => json!({ "type": ty }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_scope_and_errors() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        for e in super::super::endpoints() {
            let op = &doc["paths"][e.path][e.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {} missing", e.method, e.path);
            match e.scope {
                Some(s) => {
                    assert_eq!(op["x-required-scope"], s.as_str());
                    assert!(op["responses"]["401"].is_object());
                }
                None => assert_eq!(op["security"], json!([])),
            }
            if e.path.contains("{id}") {
                assert!(op["responses"]["404"].is_object(), "{}", e.path);
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let text = document_json();
        let doc: Value = serde_json::from_str(text).unwrap();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(doc["components"]["schemas"][&name].is_object(), "{name}");
        }
    }
}
