//! `/api/databases`: the original's tenant routes (create, list, get, stats, connection strings,
//! delete) in its envelope and field names, plus PATCH and password rotation. Handlers validate
//! input into the model's types (422 with the field named), call the tenant service with the
//! caller's audit context, and shape the answer; the service owns every effect and its audit row.

use axum::{
    Json,
    extract::State,
    http::{Method, StatusCode},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, Param, keyed},
    extract::{ApiJson, ApiQuery, Caller, TenantPath},
    urls::ConnectionUrls,
};
use crate::{
    model::{FriendlyName, OwnerEmail, QuotaState, TenantId, TenantStatus},
    tenant::{DEFAULT_PAGE, ListQuery, MAX_PAGE, NewTenant, Tenant, TenantPatch},
};

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

/// A tenant as the API shows it (never its password).
#[derive(Serialize)]
pub struct TenantView {
    pub id: TenantId,
    pub database_name: String,
    pub username: String,
    pub owner_email: String,
    pub friendly_name: String,
    pub max_connections: i32,
    /// Storage quota in MB; 0 = none.
    pub max_size_mb: i64,
    pub quota_state: QuotaState,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id,
            database_name: t.database_name.as_str().to_owned(),
            username: t.username.as_str().to_owned(),
            owner_email: t.owner_email.clone(),
            friendly_name: t.friendly_name.clone(),
            max_connections: t.max_connections,
            max_size_mb: t.max_size_mb,
            quota_state: t.quota_state,
            status: t.status,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A tenant with its freshly made password, shown this once.
#[derive(Serialize)]
struct WithPassword {
    #[serde(flatten)]
    tenant: TenantView,
    password: String,
    #[serde(flatten)]
    urls: ConnectionUrls,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateDatabase {
    friendly_name: Option<String>,
    owner_email: Option<String>,
    max_connections: Option<i64>,
    max_size_mb: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateDatabase {
    friendly_name: Option<String>,
    owner_email: Option<String>,
    max_connections: Option<i64>,
    max_size_mb: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListParams {
    limit: Option<u32>,
    offset: Option<u64>,
    cursor: Option<String>,
    status: Option<String>,
    owner_email: Option<String>,
}

fn max_connections(state: &AppState, n: Option<i64>) -> Result<Option<u32>, ApiError> {
    let cap = state.settings.tenants.max_connections_cap;
    match n {
        None => Ok(None),
        Some(n) if n >= 1 && n <= i64::from(cap) => Ok(Some(n as u32)),
        Some(_) => Err(ApiError::invalid(
            "maxConnections",
            format!("must be between 1 and {cap}"),
        )),
    }
}

fn max_size_mb(n: Option<i64>) -> Result<Option<u64>, ApiError> {
    match n {
        None => Ok(None),
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| ApiError::invalid("maxSizeMb", "must be a positive number of MB")),
    }
}

fn required(value: Option<String>, field: &'static str) -> Result<String, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, "is required"))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDatabase>,
) -> Answer {
    let new = NewTenant {
        friendly_name: FriendlyName::parse(&required(body.friendly_name, "friendlyName")?)?,
        owner_email: OwnerEmail::parse(&required(body.owner_email, "ownerEmail")?)?,
        max_connections: max_connections(&state, body.max_connections)?,
        max_size_mb: max_size_mb(body.max_size_mb)?,
    };
    let made = state.tenants.create(new, &caller.audit()).await?;
    let password = made.password.expose();
    let data = WithPassword {
        tenant: TenantView::from(&made.tenant),
        password: password.to_owned(),
        urls: ConnectionUrls::new(&state, &made.tenant, Some(password)),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "message": "Database created successfully", "data": data })),
    ))
}

async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListParams>) -> Answer {
    // The original returned every database: a client that asks for no page gets them all (in
    // pages of MAX_PAGE read here), so it never sees a silently partial list.
    let everything = q.limit.is_none() && q.offset.is_none() && q.cursor.is_none();
    let limit = q
        .limit
        .unwrap_or(if everything { MAX_PAGE } else { DEFAULT_PAGE });
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    if q.cursor.is_some() && q.offset.is_some() {
        return Err(ApiError::invalid(
            "cursor",
            "give either cursor or offset, not both",
        ));
    }
    let query = ListQuery {
        status: q.status.as_deref().map(str::parse).transpose()?,
        owner_email: q
            .owner_email
            .as_deref()
            .map(|e| OwnerEmail::parse(e).map(String::from))
            .transpose()?,
        limit,
        offset: q.offset.unwrap_or(0),
        cursor: q.cursor,
    };
    let mut page = state.tenants.list(&query).await?;
    let mut data: Vec<TenantView> = page.items.iter().map(TenantView::from).collect();
    while everything && page.next_cursor.is_some() {
        let next = ListQuery {
            cursor: page.next_cursor.take(),
            ..query.clone()
        };
        page = state.tenants.list(&next).await?;
        data.extend(page.items.iter().map(TenantView::from));
    }
    let mut body = json!({ "success": true, "count": page.total, "data": data });
    if let Some(c) = page.next_cursor {
        body["next_cursor"] = json!(c);
    }
    Ok((StatusCode::OK, Json(body)))
}

async fn get_one(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    let tenant = state.tenants.get(id).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "data": TenantView::from(&tenant) })),
    ))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    ApiJson(body): ApiJson<UpdateDatabase>,
) -> Answer {
    let patch = TenantPatch {
        friendly_name: body
            .friendly_name
            .as_deref()
            .map(FriendlyName::parse)
            .transpose()?,
        owner_email: body
            .owner_email
            .as_deref()
            .map(OwnerEmail::parse)
            .transpose()?,
        max_connections: max_connections(&state, body.max_connections)?,
        max_size_mb: max_size_mb(body.max_size_mb)?,
    };
    if patch.is_empty() {
        // Still a 404 for an unknown id: the client's bigger mistake is the id.
        state.tenants.get(id).await?;
        return Err(ApiError::invalid(
            "body",
            "give at least one of friendlyName, ownerEmail, maxConnections, maxSizeMb",
        ));
    }
    let tenant = state.tenants.update(id, patch, &caller.audit()).await?;
    Ok((
        StatusCode::OK,
        Json(
            json!({ "success": true, "message": "Database updated successfully", "data": TenantView::from(&tenant) }),
        ),
    ))
}

async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Answer {
    state.tenants.delete(id, &caller.audit()).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "message": "Database deleted successfully" })),
    ))
}

async fn stats(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    let stats = state.tenants.stats(id).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "data": stats })),
    ))
}

async fn connection_strings(State(state): State<AppState>, TenantPath(id): TenantPath) -> Answer {
    let tenant = state.tenants.get(id).await?;
    let s = &state.settings;
    let urls = ConnectionUrls::new(&state, &tenant, None);
    let mut data = json!({
        "database_id": tenant.id,
        "database_name": tenant.database_name.as_str(),
        "username": tenant.username.as_str(),
        "host": s.public_host,
        "port": s.postgres.port,
        "sslmode": "require",
        "connection_string": urls.connection_string,
        "DIRECT_URL": urls.direct_url,
        "note": "The password was shown once, at creation; POST .../rotate-password issues a new one.",
    });
    // Absent rather than null when there is no pooler, as in the create response.
    if let Some(pooled) = urls.database_url {
        data["DATABASE_URL"] = json!(pooled);
    }
    if let Some(prisma) = urls.prisma_url {
        data["PRISMA_DATABASE_URL"] = json!(prisma);
    }
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "data": data })),
    ))
}

async fn rotate_password(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Answer {
    let (tenant, password) = state.tenants.rotate_password(id, &caller.audit()).await?;
    let data = WithPassword {
        tenant: TenantView::from(&tenant),
        password: password.expose().to_owned(),
        urls: ConnectionUrls::new(&state, &tenant, Some(password.expose())),
    };
    Ok((
        StatusCode::OK,
        Json(
            json!({ "success": true, "message": "Password rotated; the old one no longer works for new sessions", "data": data }),
        ),
    ))
}

/// The shadow database's answer: its name and its URL, password masked.
fn shadow_answer(
    state: &AppState,
    tenant: &crate::tenant::Tenant,
    name: &str,
) -> serde_json::Value {
    let s = &state.settings;
    json!({
        "database_id": tenant.id,
        "database_name": name,
        "SHADOW_DATABASE_URL": crate::api::urls::url_hosts(
            &crate::api::urls::hosts(s),
            s.postgres.port,
            tenant.username.as_str(),
            None,
            name,
        ),
    })
}

async fn create_shadow(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Answer {
    let (tenant, name, made) = state.tenants.create_shadow(id, &caller.audit()).await?;
    // 200 either way: asking again is how a client finds the one it has.
    let message = if made {
        "Shadow database created; use SHADOW_DATABASE_URL with the database's password"
    } else {
        "The database already has this shadow database"
    };
    Ok((
        StatusCode::OK,
        Json(
            json!({ "success": true, "message": message, "data": shadow_answer(&state, &tenant, &name) }),
        ),
    ))
}

async fn delete_shadow(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Answer {
    let dropped = state.tenants.drop_shadow(id, &caller.audit()).await?;
    let message = if dropped {
        "Shadow database dropped"
    } else {
        "The database has no shadow database"
    };
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "message": message })),
    ))
}

const ID: Option<&str> = Some("The database's id (a UUID).");

const LIST_PARAMS: &[Param] = &[
    Param {
        name: "limit",
        ty: "integer",
        description: "Page size, 1 to 1000 (default 100). Without limit, offset and cursor the answer holds every database, as the original API's did.",
    },
    Param {
        name: "offset",
        ty: "integer",
        description: "Rows to skip; not with cursor.",
    },
    Param {
        name: "cursor",
        ty: "string",
        description: "next_cursor from the previous page; not with offset.",
    },
    Param {
        name: "status",
        ty: "string",
        description: "Only databases in this state: provisioning, active, suspended, deleting, failed.",
    },
    Param {
        name: "ownerEmail",
        ty: "string",
        description: "Only databases of this owner.",
    },
];

pub fn endpoints() -> Vec<Endpoint> {
    let tag = "databases";
    vec![
        keyed(
            Method::POST,
            "/api/databases",
            create,
            Doc {
                operation_id: "createDatabase",
                tag,
                summary: "Provision a database and its login role; the password is shown once.",
                body: Some("CreateDatabaseRequest"),
                ok: (201, "DatabaseCreated"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases",
            list,
            Doc {
                operation_id: "listDatabases",
                tag,
                summary: "List databases, newest first; count is the total matching the filters.",
                query: LIST_PARAMS,
                ok: (200, "DatabaseList"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}",
            get_one,
            Doc {
                operation_id: "getDatabase",
                tag,
                summary: "One database.",
                path_id: ID,
                ok: (200, "DatabaseEnvelope"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::PATCH,
            "/api/databases/{id}",
            update,
            Doc {
                operation_id: "updateDatabase",
                tag,
                summary: "Change the name, owner, connection limit (applied to the role, the database and the pooler; 409 past the host's connection budget) or storage quota.",
                path_id: ID,
                body: Some("UpdateDatabaseRequest"),
                ok: (200, "DatabaseUpdated"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::DELETE,
            "/api/databases/{id}",
            delete,
            Doc {
                operation_id: "deleteDatabase",
                tag,
                summary: "Drop the database (open sessions are ended) and its role.",
                path_id: ID,
                ok: (200, "Message"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/stats",
            stats,
            Doc {
                operation_id: "getDatabaseStats",
                tag,
                summary: "Size and connections, live.",
                path_id: ID,
                ok: (200, "DatabaseStatsEnvelope"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/databases/{id}/connection-strings",
            connection_strings,
            Doc {
                operation_id: "getConnectionStrings",
                tag,
                summary: "Connection URLs with the password masked.",
                path_id: ID,
                ok: (200, "ConnectionStringsEnvelope"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::POST,
            "/api/databases/{id}/rotate-password",
            rotate_password,
            Doc {
                operation_id: "rotatePassword",
                tag,
                summary: "Issue a new password, shown once; open sessions stay open.",
                path_id: ID,
                ok: (200, "DatabaseCreated"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::POST,
            "/api/databases/{id}/shadow",
            create_shadow,
            Doc {
                operation_id: "createShadowDatabase",
                tag,
                summary: "A shadow database for migration tools (Prisma's shadowDatabaseUrl): <name>_shadow, owned by the tenant, same password and allow-list, counted in its quota, dropped with it. Asking again answers the existing one.",
                path_id: ID,
                ok: (200, "ShadowDatabaseEnvelope"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::DELETE,
            "/api/databases/{id}/shadow",
            delete_shadow,
            Doc {
                operation_id: "deleteShadowDatabase",
                tag,
                summary: "Drop the shadow database (its sessions end); 200 when there is none.",
                path_id: ID,
                ok: (200, "Message"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
    ]
}
