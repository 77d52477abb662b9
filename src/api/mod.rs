//! The REST API (axum): shared state, the route table every router, auth layer and OpenAPI
//! document is built from, and the error type every handler returns. Only this module knows HTTP.
//!
//! Layers, outermost first: tracing, metrics (so refused requests are counted), the body limit
//! (read by [`extract::ApiJson`], so an oversized body is a 413 in the standard shape), and, on
//! each keyed route, authentication with that route's scope. `/health` and `/openapi.json` are
//! open; `/metrics` needs a `read` key (Prometheus sends one with `authorization.credentials`).

mod audit_logs;
mod auth;
mod backups;
mod databases;
mod endpoint;
mod error;
mod extract;
mod health;
mod keys;
mod metrics;
mod openapi;
mod openapi_schemas;
mod restores;
pub(crate) mod urls;
mod whitelist;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    middleware,
};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use endpoint::{Endpoint, scope_for};
pub use error::ApiError;
pub use extract::{ApiJson, ApiQuery, Caller, TenantPath};
pub use openapi::document_json as openapi_json;

use crate::{
    settings::Settings,
    tenant::{StatsCollector, TenantService},
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// One connection of its own for `/health`, so a busy request pool never makes the API look
    /// down.
    pub health: Arc<health::Probe>,
    pub settings: Arc<Settings>,
    pub tenants: TenantService,
    pub metrics: Arc<metrics::Metrics>,
    /// The running stats collector, whose snapshot `/metrics` reports per tenant.
    pub stats: Option<StatsCollector>,
    /// Whether PgBouncer actually runs for this platform; `DATABASE_URL` is offered only then
    /// (and only when `pgbouncer.enabled`).
    pub pooler_available: bool,
    touches: Arc<auth::Touches>,
    /// Keys verified recently (see `auth::KeyCache`).
    keys: Arc<auth::KeyCache>,
}

impl AppState {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        let tenants = TenantService::new(pool.clone(), settings.clone());
        let health = Arc::new(health::Probe::new(pool.connect_options().as_ref().clone()));
        Self {
            pool,
            health,
            settings,
            tenants,
            metrics: Arc::default(),
            stats: None,
            pooler_available: false,
            touches: Arc::default(),
            keys: Arc::default(),
        }
    }

    pub fn with_stats(mut self, collector: StatsCollector) -> Self {
        self.stats = Some(collector);
        self
    }

    pub fn with_pooler_available(mut self, available: bool) -> Self {
        self.pooler_available = available;
        self
    }
}

/// Every route, in one table.
pub fn endpoints() -> Vec<Endpoint> {
    let mut all = health::endpoints();
    all.extend(databases::endpoints());
    all.extend(audit_logs::endpoints());
    all.extend(keys::endpoints());
    all.extend(whitelist::endpoints());
    all.extend(backups::endpoints());
    all.extend(restores::endpoints());
    all.push(endpoint::keyed(
        Method::GET,
        "/metrics",
        metrics::handler,
        endpoint::Doc {
            operation_id: "metrics",
            tag: "service",
            summary: "Prometheus text format: requests by route and status, refused authentications, per-tenant usage.",
            ..endpoint::Doc::DEFAULT
        },
    ));
    all.push(endpoint::public(
        Method::GET,
        "/openapi.json",
        openapi::handler,
        endpoint::Doc {
            operation_id: "openapi",
            tag: "service",
            summary: "This document.",
            ok: (200, "text"),
            ..endpoint::Doc::DEFAULT
        },
    ));
    all
}

/// The whole API. Tests drive it with `tower::ServiceExt::oneshot`; `serve` binds it to a socket.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for e in endpoints() {
        let handler = match e.scope {
            Some(scope) => e.handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), scope),
                auth::require,
            )),
            None => e.handler,
        };
        router = router.route(e.path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.api.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("No route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
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
