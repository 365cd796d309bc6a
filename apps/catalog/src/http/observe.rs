//! Request counters per route and status.
//!
//! Every series is registered once, when the router is built: the hot path
//! is then a few string comparisons and one atomic increment, with no label
//! formatting or registry lookup per request. There is deliberately no
//! per-request duration histogram: recording one cost about a tenth of the
//! hot GET's throughput (README, "Figures"); request latency is measured by
//! the load generator, and the source's by `cachette_load_duration_seconds`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::Counter;

/// Statuses the catalog answers with; anything else is counted as `other`.
const STATUSES: [(u16, &str); 9] = [
    (200, "200"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (500, "500"),
    (503, "503"),
];

struct RouteSeries {
    route: &'static str,
    by_status: Vec<Counter>,
    other_status: Counter,
}

impl RouteSeries {
    fn new(route: &'static str) -> RouteSeries {
        RouteSeries {
            route,
            by_status: STATUSES
                .iter()
                .map(|(_, s)| {
                    metrics::counter!("catalog_http_requests_total", "route" => route, "status" => *s)
                })
                .collect(),
            other_status: metrics::counter!("catalog_http_requests_total", "route" => route, "status" => "other"),
        }
    }

    fn record(&self, status: u16) {
        match STATUSES.iter().position(|(code, _)| *code == status) {
            Some(i) => self.by_status[i].increment(1),
            None => self.other_status.increment(1),
        }
    }
}

/// The series of every route.
pub(super) struct HttpMetrics {
    routes: Vec<RouteSeries>,
    unmatched: RouteSeries,
}

impl HttpMetrics {
    pub(super) fn new(routes: &[&'static str]) -> Arc<HttpMetrics> {
        Arc::new(HttpMetrics {
            routes: routes.iter().map(|r| RouteSeries::new(r)).collect(),
            unmatched: RouteSeries::new("unmatched"),
        })
    }
}

/// The middleware.
pub(super) async fn count_requests(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let series = matched
        .and_then(|m| metrics.routes.iter().find(|s| s.route == m))
        .unwrap_or(&metrics.unmatched);
    let response = next.run(request).await;
    series.record(response.status().as_u16());
    response
}
