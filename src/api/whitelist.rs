//! `/api/databases/{id}/whitelist`: the original's per-database IP allow-list routes. Entries
//! are validated and normalised by the model (`AllowEntry`, 422 with what would be valid), and the
//! tenant service answers only once the compiled pg_hba.conf and PgBouncer's are in force.

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{Method, StatusCode, request::Parts},
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, Param, keyed},
    extract::{ApiJson, Caller, TenantPath},
};
use crate::{model::AllowEntry, tenant::parse_description};

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddEntry {
    ip_address: Option<String>,
    description: Option<String>,
}

/// The `{whitelistId}` segment; a malformed one names no entry, so it is a 404.
pub struct EntryPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for EntryPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|Path(p)| p.get("whitelistId").cloned())
            .unwrap_or_default();
        Uuid::try_parse(&raw).map(Self).map_err(|_| {
            let shown: String = raw.chars().take(64).collect();
            ApiError::NotFound(format!(
                "Allow-list entry {shown} not found (ids are UUIDs)"
            ))
        })
    }
}

async fn add(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    ApiJson(body): ApiJson<AddEntry>,
) -> Answer {
    let raw = body
        .ip_address
        .ok_or_else(|| ApiError::invalid("ipAddress", "is required"))?;
    let entry = AllowEntry::parse(&raw)?;
    let description = parse_description(body.description.as_deref())?;
    let row = state
        .tenants
        .allow(id, entry, description, &caller.audit())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "success": true, "message": "IP address added to the allow-list", "data": row }),
        ),
    ))
}

async fn list(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    let rows = state.tenants.list_allowed(id).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "count": rows.len(), "data": rows })),
    ))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    EntryPath(entry): EntryPath,
) -> Answer {
    let row = state.tenants.disallow(id, entry, &caller.audit()).await?;
    let remaining = state.tenants.list_allowed(id).await?.len();
    let message = if remaining == 0 {
        format!(
            "{} removed; the allow-list is empty, so the database accepts TLS connections from any address",
            row.ip_address
        )
    } else {
        format!("{} removed from the allow-list", row.ip_address)
    };
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "message": message })),
    ))
}

const ID: Option<&str> = Some("The database's id (a UUID).");
const ENTRY: &[Param] = &[Param {
    name: "whitelistId",
    ty: "string:uuid",
    description: "The allow-list entry's id.",
}];

pub fn endpoints() -> Vec<Endpoint> {
    let tag = "whitelist";
    vec![
        keyed(
            Method::POST,
            "/api/databases/{id}/whitelist",
            add,
            Doc {
                operation_id: "addWhitelistEntry",
                tag,
                summary: "Allow an address or network; the first entry restricts the database to its list. Answers once the rule is in force.",
                path_id: ID,
                body: Some("AddWhitelistRequest"),
                ok: (201, "WhitelistEntryCreated"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/whitelist",
            list,
            Doc {
                operation_id: "listWhitelist",
                tag,
                summary: "The database's allow-list; empty means any address (TLS only).",
                path_id: ID,
                ok: (200, "WhitelistList"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::DELETE,
            "/api/databases/{id}/whitelist/{whitelistId}",
            remove,
            Doc {
                operation_id: "removeWhitelistEntry",
                tag,
                summary: "Remove an entry; removing the last one opens the database to any address again (TLS only).",
                path_id: ID,
                path_params: ENTRY,
                ok: (200, "Message"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
    ]
}
