//! Extractors that turn every way a request can be malformed into an [`ApiError`] in the standard
//! shape: JSON bodies (syntax, types, unknown fields: 400; over the size limit: 413), query
//! strings (400), ids in paths (a non-UUID is as unknown as an unknown UUID: 404), and the
//! authenticated caller the auth layer left in the request.

use std::{collections::HashMap, net::IpAddr};

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::ApiError;
use crate::{model::Scope, model::TenantId, tenant::AuditContext};

/// `axum::Json` with this API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "Send the body as JSON with Content-Type: application/json".into(),
            )),
            // axum answers type errors with 422; here they are malformed requests (400), and 422
            // is kept for values that parse but are not acceptable.
            Err(r) => Err(ApiError::BadRequest(r.body_text())),
        }
    }
}

/// `axum::extract::Query` with this API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Every value, decoded, before any reaches a typed field or SQL: no control characters
        // (a NUL is not even valid in a PostgreSQL string), nothing absurdly long.
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::BadRequest(r.body_text()))?;
        for (name, value) in &pairs {
            let shown_name = shown(name);
            if name.chars().chain(value.chars()).any(char::is_control) {
                return Err(ApiError::Unprocessable(format!(
                    "query parameter {shown_name}: must not contain control characters"
                )));
            }
            if value.len() > MAX_QUERY_VALUE_BYTES {
                return Err(ApiError::Unprocessable(format!(
                    "query parameter {shown_name}: at most {MAX_QUERY_VALUE_BYTES} bytes"
                )));
            }
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|r| ApiError::BadRequest(r.body_text()))
    }
}

/// The longest query parameter value accepted (a cursor is under 60 bytes, an email under 255).
const MAX_QUERY_VALUE_BYTES: usize = 1024;

/// The raw `{id}` segment. Read from a map so routes with more parameters (the whitelist's
/// `{whitelistId}`) can use the same extractors.
async fn raw_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Option<String> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .ok()?;
    params.get("id").cloned()
}

fn shown(raw: &str) -> String {
    // The id is echoed so the client sees what it sent; bounded so the echo stays small.
    let mut s: String = raw.chars().take(64).collect();
    if s.len() < raw.len() {
        s.push('…');
    }
    s
}

/// The tenant id in the path. A malformed id names no database, so it is a 404 like an unknown one.
pub struct TenantPath(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = raw_id(parts, state).await.unwrap_or_default();
        raw.parse::<TenantId>().map(Self).map_err(|_| {
            ApiError::NotFound(format!(
                "Database {} not found (ids are UUIDs)",
                shown(&raw)
            ))
        })
    }
}

/// An API key id in the path; same rule as [`TenantPath`].
pub struct KeyPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = raw_id(parts, state).await.unwrap_or_default();
        Uuid::try_parse(&raw).map(Self).map_err(|_| {
            ApiError::NotFound(format!("API key {} not found (ids are UUIDs)", shown(&raw)))
        })
    }
}

/// Who is calling: set by the auth layer on every keyed route.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None` for the bootstrap key from settings (`api.api_key`), which has no row.
    pub key_id: Option<Uuid>,
    pub scopes: Vec<Scope>,
    /// The peer address of the connection; `None` when the server runs without connect info.
    pub client_ip: Option<IpAddr>,
}

impl Caller {
    pub fn audit(&self) -> AuditContext {
        AuditContext {
            api_key_id: self.key_id,
            client_ip: self.client_ip,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Absent only if a handler that needs a caller was mounted as a public route: a bug, and
        // refusing is the safe answer.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}
