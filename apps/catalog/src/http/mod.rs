//! The HTTP API (see the README for the contract).

mod error;
mod observe;
mod ops;
mod params;
mod products;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;
pub use params::{DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE};

use crate::catalog::Catalog;
use observe::{CountRequestsLayer, HttpMetrics};

/// Largest request body accepted (a product patch is far smaller).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler sees. One `Arc`, so extracting it is one increment.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Shared>,
}

/// The state behind [`AppState`].
pub struct Shared {
    pub catalog: Catalog,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    /// `embedded`, `redis` or `none`.
    pub cache_kind: &'static str,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("catalog", &self.catalog)
            .field("cache_kind", &self.cache_kind)
            .finish()
    }
}

impl AppState {
    pub fn new(
        catalog: Catalog,
        metrics: Option<PrometheusHandle>,
        cache_kind: &'static str,
    ) -> AppState {
        AppState {
            inner: Arc::new(Shared {
                catalog,
                metrics,
                started: Instant::now(),
                cache_kind,
            }),
        }
    }
}

/// The catalog's routes.
pub fn router(state: AppState) -> Router {
    const PRODUCT: &str = "/products/{id}";
    const LISTING: &str = "/categories/{id}/products";
    let observed = HttpMetrics::new(&[PRODUCT, LISTING, "/health", "/stats", "/metrics"]);
    Router::new()
        .route(
            PRODUCT,
            get(products::get_product).put(products::put_product),
        )
        .route(LISTING, get(products::category_products))
        .route("/health", get(ops::health))
        .route("/stats", get(ops::stats))
        .route("/metrics", get(ops::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CountRequestsLayer::new(observed))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
