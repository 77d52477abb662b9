//! `GET /api/audit-logs`: the audit trail, newest first, filtered by database, action and time
//! window, paged by limit/offset, with `count` the total matching. Reading it needs only `read`:
//! rows name key ids and client addresses, never a secret.

use axum::{
    Json,
    extract::State,
    http::{Method, StatusCode},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, Param, keyed},
    extract::ApiQuery,
};
use crate::tenant::{AuditFilter, DEFAULT_PAGE, MAX_PAGE, audit};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditParams {
    database_id: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

fn instant(value: Option<&str>, field: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(
                        field,
                        "must be an RFC 3339 time such as 2025-01-31T12:00:00Z",
                    )
                })
        })
        .transpose()
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let database_id = q
        .database_id
        .as_deref()
        .map(|s| {
            uuid::Uuid::try_parse(s).map_err(|_| ApiError::invalid("databaseId", "must be a UUID"))
        })
        .transpose()?;
    let filter = AuditFilter {
        database_id,
        action: q.action,
        since: instant(q.since.as_deref(), "since")?,
        until: instant(q.until.as_deref(), "until")?,
        limit,
        offset: q.offset.unwrap_or(0),
    };
    let (rows, total) = audit::list(&state.pool, &filter).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "count": total, "data": rows })),
    ))
}

const PARAMS: &[Param] = &[
    Param {
        name: "databaseId",
        ty: "string:uuid",
        description: "Only entries about this database.",
    },
    Param {
        name: "action",
        ty: "string",
        description: "Only this action, e.g. database.create.",
    },
    Param {
        name: "since",
        ty: "string:date-time",
        description: "Entries at or after this time (RFC 3339).",
    },
    Param {
        name: "until",
        ty: "string:date-time",
        description: "Entries before this time (RFC 3339).",
    },
    Param {
        name: "limit",
        ty: "integer",
        description: "Page size, 1 to 1000 (default 100).",
    },
    Param {
        name: "offset",
        ty: "integer",
        description: "Entries to skip.",
    },
];

pub fn endpoints() -> Vec<Endpoint> {
    vec![keyed(
        Method::GET,
        "/api/audit-logs",
        list,
        Doc {
            operation_id: "listAuditLogs",
            tag: "audit",
            summary: "The audit trail, newest first; count is the total matching the filters.",
            query: PARAMS,
            ok: (200, "AuditLogList"),
            ..Doc::DEFAULT
        },
    )]
}
