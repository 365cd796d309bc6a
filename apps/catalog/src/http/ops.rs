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
                // Values served past their freshness, for either reason
                // below (kept from before the two were told apart).
                "stale_served": s.stale_hits + s.fail_safe_hits,
                // Served stale at once while one refresh ran.
                "stale_hits": s.stale_hits,
                // Served stale because the database failed or was slow.
                "fail_safe_hits": s.fail_safe_hits,
                "refreshes": s.refreshes,
                "load_waits": s.load_waits,
                "lease_waits": s.lease_waits,
                "fills_refused": s.fills_refused,
                "load_timeouts": s.load_timeouts,
                "load_errors": s.load_errors,
                "errors": s.load_errors + s.store_errors + s.invalid_entries,
                "hit_rate": s.hit_rate(),
                "invalidations_sent": s.invalidations_sent,
                "invalidations_received": s.invalidations_received,
                // Store calls an open circuit breaker skipped, and loads
                // that waited for the concurrent-load cap.
                "store_skipped": s.store_skipped,
                "load_permit_waits": s.load_permit_waits,
                "circuit": s.circuit.state.to_string(),
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
