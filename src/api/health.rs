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
    let reachable = state.health.reachable().await;
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

/// The health check's own connection to the control DB, made on first use and remade after an
/// error; checks queue for it for at most a second, and a check takes at most two.
pub struct Probe {
    options: sqlx::postgres::PgConnectOptions,
    conn: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl Probe {
    pub fn new(options: sqlx::postgres::PgConnectOptions) -> Self {
        Self {
            options,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn reachable(&self) -> bool {
        use std::time::Duration;
        let Ok(mut slot) = tokio::time::timeout(Duration::from_secs(1), self.conn.lock()).await
        else {
            return false;
        };
        let check = async {
            if slot.is_none() {
                *slot = Some(sqlx::Connection::connect_with(&self.options).await?);
            }
            let conn = slot.as_mut().expect("connected above");
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(conn)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(_)) => true,
            _ => {
                *slot = None;
                false
            }
        }
    }
}
