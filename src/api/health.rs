//! `GET /health`: the original's `{status, timestamp, environment}`, plus whether the control
//! database answers; 503 when it does not, so load balancers and systemd checks can act on it.

use axum::{
    Json,
    extract::State,
    http::{Method, StatusCode},
};
use serde_json::{Value, json};

use super::{
    AppState,
    endpoint::{Doc, Endpoint, public},
};

pub fn endpoints() -> Vec<Endpoint> {
    vec![public(
        Method::GET,
        "/health",
        health,
        Doc {
            operation_id: "health",
            tag: "service",
            summary: "Liveness and control-database reachability; 503 when the control DB does not answer.",
            ok: (200, "Health"),
            errors: &[503],
            ..Doc::DEFAULT
        },
    )]
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let reachable = crate::control_db::ping(&state.pool).await;
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if reachable { "ok" } else { "degraded" },
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "environment": state.settings.environment,
        "control_db": if reachable { "reachable" } else { "unreachable" },
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body))
}
