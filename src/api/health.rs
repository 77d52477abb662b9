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
    let in_recovery = state.health.in_recovery().await;
    let reachable = in_recovery.is_some();
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if reachable { "ok" } else { "degraded" },
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "environment": state.settings.environment,
        "control_db": if reachable { "reachable" } else { "unreachable" },
        "version": env!("CARGO_PKG_VERSION"),
    });
    let cl = &state.settings.cluster;
    if let (Some(name), Some(node)) = (&cl.name, &cl.node) {
        // Which node answered, and what its database is: writes go to the primary.
        body["cluster"] = json!({
            "name": name,
            "node": node,
            "role": match in_recovery {
                Some(false) => "primary",
                Some(true) => "standby",
                None => "unknown",
            },
        });
    }
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
        self.in_recovery().await.is_some()
    }

    /// Whether the control DB's server is in recovery (a standby), or `None` when it does not
    /// answer.
    pub async fn in_recovery(&self) -> Option<bool> {
        use std::time::Duration;
        let Ok(mut slot) = tokio::time::timeout(Duration::from_secs(1), self.conn.lock()).await
        else {
            return None;
        };
        let check = async {
            if slot.is_none() {
                *slot = Some(sqlx::Connection::connect_with(&self.options).await?);
            }
            let conn = slot.as_mut().expect("connected above");
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(conn)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(standby)) => Some(standby),
            _ => {
                *slot = None;
                None
            }
        }
    }
}
