//! The bare axum server the hot-GET benchmark compares the catalog with:
//! the same framework and runtime, a handler that returns a constant JSON
//! body of the same size, and nothing else.

use std::future::Future;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;

/// A JSON body of exactly `size` bytes (at least 16).
pub fn constant_body(size: usize) -> Bytes {
    const HEAD: &str = "{\"constant\":\"";
    const TAIL: &str = "\"}";
    let pad = size.saturating_sub(HEAD.len() + TAIL.len()).max(1);
    Bytes::from(format!("{HEAD}{}{TAIL}", "x".repeat(pad)))
}

/// Serves `GET /products/{id}` with `body`, plus a `/health` and `/stats`
/// the load generator can read, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    body: Bytes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let health = json!({"status": "ok", "products": 1, "categories": 1,
                        "database": "none", "cache": "constant"})
    .to_string();
    let stats = json!({"database_queries": 0, "database": "none", "cache": "constant",
                       "namespaces": {}})
    .to_string();
    let app = Router::new()
        .route(
            "/products/{id}",
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route("/health", get(move || async move { health }))
        .route("/stats", get(move || async move { stats }));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::constant_body;

    #[test]
    fn the_body_has_the_asked_size() {
        for size in [16, 200, 287, 1_000] {
            let body = constant_body(size);
            assert_eq!(body.len(), size);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
    }
}
