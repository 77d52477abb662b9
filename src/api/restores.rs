//! `/api/databases/{id}/restore`: point-in-time recovery of one database, as a job. The API
//! checks the request (the instant against the recoverable window pgBackRest last reported, the
//! name `into` makes) and queues it; the worker, which runs as root or as the cluster's OS user,
//! carries it out (the API's own user can neither read the repository nor run a server). The
//! answer is 202 with the job; `GET .../restore/{jobId}` follows it to `succeeded` or `failed`.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{Method, StatusCode, request::Parts},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, Param, keyed},
    extract::{ApiJson, Caller, TenantPath},
};
use crate::{
    archive::{self, ArchiveError, jobs},
    tenant::audit,
};

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreRequest {
    target_time: Option<String>,
    into: Option<String>,
}

/// The `{jobId}` segment; a malformed one names no job, so it is a 404.
pub struct JobPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|Path(p)| p.get("jobId").cloned())
            .unwrap_or_default();
        Uuid::try_parse(&raw).map(Self).map_err(|_| {
            let shown: String = raw.chars().take(64).collect();
            ApiError::NotFound(format!("Restore job {shown} not found (ids are UUIDs)"))
        })
    }
}

fn archive_error(e: ArchiveError, field: &'static str) -> ApiError {
    match e {
        ArchiveError::Disabled | ArchiveError::NotInstalled(_) => {
            ApiError::Unavailable(e.to_string())
        }
        ArchiveError::OutsideWindow(m) => ApiError::invalid("targetTime", m),
        ArchiveError::Invalid(m) => ApiError::invalid(field, m),
        ArchiveError::NotFound(m) => ApiError::NotFound(m),
        ArchiveError::Busy(m) => ApiError::Conflict(m),
        ArchiveError::Tenant(t) => t.into(),
        // A standby's read-only control DB, a failover under way: 503 and Retry-After, as for
        // every other write.
        ArchiveError::Sql(e) => crate::tenant::TenantError::from(e).into(),
        e => ApiError::Internal(e.into()),
    }
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    ApiJson(body): ApiJson<RestoreRequest>,
) -> Answer {
    if !state.settings.archive.enabled {
        return Err(archive_error(ArchiveError::Disabled, "targetTime"));
    }
    // The body is checked before the database is asked anything.
    let raw = body
        .target_time
        .ok_or_else(|| ApiError::invalid("targetTime", "is required"))?;
    let time = archive::parse_time(&raw).map_err(|e| archive_error(e, "targetTime"))?;
    state.tenants.get(id).await?;
    if let Some(into) = &body.into {
        if into.len() > 63 || into.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "into",
                "must be at most 63 printable characters",
            ));
        }
    }
    let repos = state.settings.archive_repos();
    let mut conn = state.pool.acquire().await?;
    let into = archive::restore::check_request(
        &mut conn,
        *id.as_uuid(),
        time,
        body.into.as_deref(),
        &repos,
    )
    .await
    .map_err(|e| archive_error(e, "into"))?;
    let job = jobs::enqueue(&mut conn, *id.as_uuid(), time, into.as_deref())
        .await
        .map_err(|e| archive_error(e, "into"))?;
    let mut details = json!({ "job": job.id, "target_time": job.target_time, "queued": true });
    if let Some(n) = &job.into_name {
        details["into"] = json!(n);
    }
    audit::record(
        &mut conn,
        &caller.audit(),
        "database.restore_requested",
        "database",
        Some(&id.to_string()),
        true,
        details,
    )
    .await?;
    let message = match &job.into_name {
        Some(n) => format!(
            "Restore queued: the data as of {} will be in the new database {n}",
            job.target_time
        ),
        None => format!(
            "Restore queued: the database will be replaced by its data as of {} (sessions are ended; the current data is kept under a dated name)",
            job.target_time
        ),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "success": true, "message": message, "data": job })),
    ))
}

/// A job as a client sees it: why it failed, classified; the raw detail (paths, tool output,
/// text the tenant's own functions raise) is the operator's, in the log and the audit row.
fn public(mut job: jobs::RestoreJob) -> jobs::RestoreJob {
    job.error = job.error.as_deref().map(jobs::public_error);
    job
}

async fn list(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    state.tenants.get(id).await?;
    let mut conn = state.pool.acquire().await?;
    let rows: Vec<_> = jobs::list(&mut conn, *id.as_uuid())
        .await
        .map_err(|e| archive_error(e, "id"))?
        .into_iter()
        .map(public)
        .collect();
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "count": rows.len(), "data": rows })),
    ))
}

async fn get(
    State(state): State<AppState>,
    TenantPath(id): TenantPath,
    JobPath(job): JobPath,
) -> Answer {
    let mut conn = state.pool.acquire().await?;
    let row = jobs::get(&mut conn, job)
        .await
        .map_err(|e| archive_error(e, "jobId"))?;
    if row.database_id != Some(*id.as_uuid()) {
        return Err(ApiError::NotFound(format!(
            "Restore job {job} not found for database {id}"
        )));
    }
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "data": public(row) })),
    ))
}

const ID: Option<&str> = Some("The database's id (a UUID).");
const JOB: &[Param] = &[Param {
    name: "jobId",
    ty: "string:uuid",
    description: "The restore job's id.",
}];

pub fn endpoints() -> Vec<Endpoint> {
    let tag = "backups";
    vec![
        keyed(
            Method::POST,
            "/api/databases/{id}/restore",
            create,
            Doc {
                operation_id: "restoreDatabase",
                tag,
                summary: "Point-in-time recovery of this database, as a job: into a new database (`into`) or in place (its sessions end; the current data is kept under a dated name). 422 with the recoverable window when the instant is outside it.",
                path_id: ID,
                body: Some("RestoreRequest"),
                ok: (202, "RestoreJobAccepted"),
                errors: &[409, 503],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/restore",
            list,
            Doc {
                operation_id: "listRestores",
                tag,
                summary: "This database's restore jobs, newest first.",
                path_id: ID,
                ok: (200, "RestoreJobList"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/restore/{jobId}",
            get,
            Doc {
                operation_id: "getRestore",
                tag,
                summary: "One restore job: queued, running (with its current step), succeeded or failed (with why).",
                path_id: ID,
                path_params: JOB,
                ok: (200, "RestoreJobEnvelope"),
                ..Doc::DEFAULT
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// A restore instant with multibyte characters panicked the time parser (a byte index
    /// inside "é"); it is answered 422 naming the field, before any database is asked (the
    /// pool here points at no server).
    #[tokio::test]
    async fn a_target_time_with_multibyte_characters_is_a_422() {
        let key = "0123456789abcdef0123456789abcdef-restores-test";
        let mut settings = crate::settings::Settings::default();
        settings.api.api_key = Some(crate::settings::Secret::new(key));
        settings.archive.enabled = true;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("192.0.2.1")
            .port(1);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(200))
            .connect_lazy_with(options);
        let app = crate::api::app(AppState::new(pool, Arc::new(settings)));
        for time in ["éé", "2026-11-29 14:32:00+é", "😀"] {
            let request = Request::post(format!("/api/databases/{}/restore", Uuid::nil()))
                .header("X-API-Key", key)
                .header("content-type", "application/json")
                .body(Body::from(json!({ "targetTime": time }).to_string()))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{time}: {body}");
            assert_eq!(body["field"], "targetTime", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains("is not a time with its offset"), "{body}");
        }
    }
}
