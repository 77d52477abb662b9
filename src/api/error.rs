//! One error type for every handler. Each variant names its HTTP status; the body is always
//! `{success: false, error, message, code}` (plus `field` for a validation failure), and database
//! detail is logged, never sent. The tenant layer's errors are mapped here and nowhere else, so a
//! new `TenantError` variant cannot reach a client unmapped.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{model::ValidationError, tenant::TenantError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid or missing API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A field that failed validation; the body also names the field.
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// 409 with `Retry-After`: the resource is busy, the same request may succeed shortly.
    #[error("{0}")]
    Busy(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) | ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unprocessable(_) | ApiError::Invalid(_) => "validation_failed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy(_) => "busy",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid(ValidationError::new(field, message))
    }

    /// Seconds a client should wait before trying again, for the errors that say so.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::Busy(_) => Some(2),
            ApiError::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    /// Classified as the tenant layer does: a busy, restarting or read-only server is the
    /// client's to retry, anything else is internal.
    fn from(e: sqlx::Error) -> Self {
        TenantError::from(e).into()
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::NotFound(id) => ApiError::NotFound(format!("Database {id} not found")),
            TenantError::EntryNotFound(id) => {
                ApiError::NotFound(format!("Allow-list entry {id} not found"))
            }
            TenantError::Validation(v) => ApiError::Invalid(v),
            TenantError::Conflict(m) | TenantError::State(m) => ApiError::Conflict(m),
            TenantError::Busy(m) => ApiError::Busy(m),
            TenantError::Unavailable(m) => ApiError::Unavailable(m),
            TenantError::Db(e) => ApiError::Internal(e.into()),
            e @ (TenantError::Apply(_)
            | TenantError::Quote(_)
            | TenantError::Row(_)
            | TenantError::Hash(_)) => ApiError::Internal(e.into()),
            TenantError::Internal(m) => ApiError::Internal(anyhow::anyhow!(m)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let error = status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "success": false,
            "error": error,
            "message": self.to_string(),
            "code": self.code(),
        });
        if let ApiError::Invalid(v) = &self {
            body["field"] = json!(v.field);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantId;

    #[test]
    fn tenant_errors_map_to_their_statuses() {
        let id = TenantId::new_random();
        let cases = [
            (TenantError::NotFound(id), 404),
            (
                TenantError::Validation(ValidationError::new("ownerEmail", "bad")),
                422,
            ),
            (TenantError::Conflict("taken".into()), 409),
            (TenantError::State("provisioning".into()), 409),
            (TenantError::Db(sqlx::Error::RowNotFound), 500),
            (TenantError::Busy("locked".into()), 409),
            (TenantError::Unavailable("full".into()), 503),
            (TenantError::from(sqlx::Error::PoolTimedOut), 503),
            (TenantError::Internal("boom".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status().as_u16(), status);
        }
    }

    #[test]
    fn database_detail_never_reaches_the_body() {
        let e = ApiError::from(TenantError::Db(sqlx::Error::Protocol(
            "relation \"secret_table\"".into(),
        )));
        assert_eq!(e.to_string(), "internal error");
        let v = ApiError::from(TenantError::Validation(ValidationError::new(
            "maxConnections",
            "too big",
        )));
        assert_eq!(v.to_string(), "maxConnections: too big");
    }
}
