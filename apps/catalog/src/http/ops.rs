//! Operational endpoints: `/health`, `/stats`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;

pub(super) async fn health(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "database": app.catalog.database().kind().name(),
        "cache": app.cache_kind,
        "products": app.catalog.product_count(),
        "categories": app.catalog.category_count(),
    }))
}

/// Counters since start: per cache namespace, and the database's queries.
pub(super) async fn stats(State(app): State<AppState>) -> Json<Value> {
    let mut namespaces = Map::new();
    for s in app.catalog.stats() {
        namespaces.insert(
            s.namespace.clone(),
            json!({
                "hits": s.hits,
                "l1_hits": s.l1_hits,
                "misses": s.misses,
                "loads": s.loads,
                // Stale-while-revalidate is not in cachette yet: nothing is
                // ever served stale, and the field is kept so clients can
                // rely on it.
                "stale_served": 0,
                "errors": s.load_errors + s.store_errors + s.invalid_entries,
                "hit_rate": s.hit_rate(),
                "invalidations_sent": s.invalidations_sent,
                "invalidations_received": s.invalidations_received,
            }),
        );
    }
    Json(json!({
        "cache": app.cache_kind,
        "database": app.catalog.database().kind().name(),
        "database_queries": app.catalog.database().queries(),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "namespaces": namespaces,
    }))
}

pub(super) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = &app.metrics else {
        return Err(ApiError::not_found(
            "no metrics exporter in this process (it is installed by the catalog binary)",
        ));
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
