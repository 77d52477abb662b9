//! The REST API (axum): shared state, the router that merges one router per resource, and the
//! error type every handler returns. Only this module knows HTTP.

mod error;
mod health;

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;

pub use error::ApiError;

use crate::{settings::Settings, tenant::TenantService};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub tenants: TenantService,
}

impl AppState {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        let tenants = TenantService::new(pool.clone(), settings.clone());
        Self { pool, settings, tenants }
    }
}

/// The whole API. Tests drive it with `tower::ServiceExt::oneshot`; `serve` binds it to a socket.
pub fn app(state: AppState) -> Router {
    let limit = state.settings.api.max_body_bytes;
    Router::new()
        .merge(health::router())
        .layer(RequestBodyLimitLayer::new(limit))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
