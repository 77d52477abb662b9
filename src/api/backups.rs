//! `/api/databases/{id}/backups`: take a backup of one tenant now, and list its backups. The
//! dump runs as the API role through the local socket (see `crate::backup` for why), on a
//! blocking thread, and answers only once the dump is verified, checksummed and renamed into
//! place. Every POST leaves an audit row, success or failure; pg_dump's own words go to the log,
//! not to the client.

use axum::{
    Json,
    extract::State,
    http::{Method, StatusCode},
};
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, keyed},
    extract::{Caller, TenantPath},
};
use crate::{
    backup::{BackupError, Backups, Login},
    model::TenantStatus,
    tenant::{Tenant, audit},
};

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

fn backup_error(e: BackupError) -> ApiError {
    match e {
        BackupError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => ApiError::Unavailable(
            "The backup directory is not writable by the API's system user; ask the operator to fix paths.backup_dir".into(),
        ),
        BackupError::Binaries(_) => ApiError::Unavailable("PostgreSQL client tools are not installed on the API host".into()),
        e => ApiError::Internal(e.into()),
    }
}

async fn usable(state: &AppState, id: crate::model::TenantId) -> Result<Tenant, ApiError> {
    let tenant = state.tenants.get(id).await?;
    match tenant.status {
        TenantStatus::Active | TenantStatus::Suspended => Ok(tenant),
        s => Err(ApiError::Conflict(format!(
            "Database {id} is {s}; try again when it is active"
        ))),
    }
}

/// Whether an in-place point-in-time restore of the tenant is swapping its database (the job
/// runs and has closed the database): a dump then cannot connect, and asking again shortly
/// succeeds.
async fn swapping(state: &AppState, tenant: &Tenant) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM restore_jobs j
                        WHERE j.database_id = $1 AND j.status = 'running' AND j.into_name IS NULL)
            AND EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = $2 AND NOT d.datallowconn)",
    )
    .bind(tenant.id.as_uuid())
    .bind(tenant.database_name.as_str())
    .fetch_one(&state.pool)
    .await?)
}

fn busy_restoring(tenant: &Tenant) -> ApiError {
    ApiError::Busy(format!(
        "Database {} is being restored in place; try again in a moment",
        tenant.id
    ))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Answer {
    let tenant = usable(&state, id).await?;
    if swapping(&state, &tenant).await? {
        return Err(busy_restoring(&tenant));
    }
    let ctx = caller.audit();
    let resource = id.to_string();
    let database = tenant.database_name.as_str().to_owned();
    let settings = state.settings.clone();
    let result = tokio::task::spawn_blocking(move || {
        let password = settings
            .control_db_password()
            .map_err(|e| BackupError::Invalid(format!("reading the control DB password: {e}")))?
            .ok_or_else(|| {
                BackupError::Invalid("the API role has no password configured".into())
            })?;
        Backups::new(&settings)?.dump(&database, &Login::ApiRole(password))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let file = match result {
        Ok(f) => f,
        Err(_) if swapping(&state, &tenant).await? => return Err(busy_restoring(&tenant)),
        Err(e) => {
            tracing::error!(tenant = %id, error = %e, "API-triggered backup failed");
            let details =
                json!({ "database_name": tenant.database_name.as_str(), "reason": "dump_failed" });
            let Ok(mut conn) = state.pool.acquire().await else {
                return Err(backup_error(e));
            };
            audit::record_failure(
                &mut conn,
                &ctx,
                "database.backup",
                "database",
                Some(&resource),
                details,
            )
            .await;
            return Err(backup_error(e));
        }
    };
    let mut conn = state.pool.acquire().await?;
    let details = json!({ "file_name": file.file_name, "size_bytes": file.size_bytes, "sha256": file.sha256 });
    audit::record(
        &mut conn,
        &ctx,
        "database.backup",
        "database",
        Some(&resource),
        true,
        details,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "message": "Backup created and verified", "data": file })),
    ))
}

async fn list(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    let tenant = state.tenants.get(id).await?;
    let settings = state.settings.clone();
    let database = tenant.database_name.as_str().to_owned();
    // Lists from disk without re-reading dumps (checksum "unchecked"): cheap enough per request.
    let files =
        tokio::task::spawn_blocking(move || Backups::new(&settings)?.list(Some(&database), false))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(backup_error)?;
    let mut body = json!({ "success": true, "count": files.len(), "data": files });
    if state.settings.archive.enabled {
        body["point_in_time"] = point_in_time(&state, &tenant).await?;
    }
    Ok((StatusCode::OK, Json(body)))
}

/// This database's recoverable window, as pgBackRest last reported it and the archiver says now.
async fn point_in_time(state: &AppState, tenant: &Tenant) -> Result<Value, ApiError> {
    use crate::archive::status;
    let mut conn = state.pool.acquire().await?;
    let st = status::read(&mut conn, &state.settings).await?;
    let info = status::cached_info(&mut conn).await?;
    let earliest = info.as_ref().and_then(|i| {
        st.repositories
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| i.earliest_for(r.repo, tenant.created_at))
            .min()
    });
    let archiver = st.archiver.as_ref();
    Ok(json!({
        "enabled": true,
        "earliest": earliest,
        "latest": archiver.and_then(|a| a.last_archived_time),
        "archive_lag_seconds": archiver.and_then(|a| a.lag_seconds),
        "archiving_failing": archiver.is_some_and(|a| a.failing),
        "last_backup": st.last_backup(),
        "repositories": st.repositories,
    }))
}

const ID: Option<&str> = Some("The database's id (a UUID).");

pub fn endpoints() -> Vec<Endpoint> {
    let tag = "backups";
    vec![
        keyed(
            Method::POST,
            "/api/databases/{id}/backups",
            create,
            Doc {
                operation_id: "createBackup",
                tag,
                summary: "Back up the database now (pg_dump custom format); answers once the dump is verified and checksummed.",
                path_id: ID,
                ok: (201, "BackupCreated"),
                errors: &[409, 503],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/backups",
            list,
            Doc {
                operation_id: "listBackups",
                tag,
                summary: "The database's dumps on this host, newest first, and (point_in_time) the window it can be restored to with POST .../restore.",
                path_id: ID,
                ok: (200, "BackupList"),
                errors: &[503],
                ..Doc::DEFAULT
            },
        ),
    ]
}
