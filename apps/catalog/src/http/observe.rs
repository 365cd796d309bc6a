//! Request counters per route and status.
//!
//! Every series is registered once, when the router is built: the hot path
//! is then a few string comparisons and one atomic increment, with no label
//! formatting or registry lookup per request. There is deliberately no
//! per-request duration histogram: recording one cost about a tenth of the
//! hot GET's throughput (README, "Figures"); request latency is measured by
//! the load generator, and the source's by `cachette_load_duration_seconds`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::response::Response;
use metrics::Counter;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

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

/// Counts each response of the service it wraps.
///
/// A hand-written tower layer rather than `axum::middleware::from_fn`: that
/// one clones a boxed service and boxes a future per request, which cost
/// a few points of the hot GET's throughput; this one adds neither.
#[derive(Clone)]
pub(super) struct CountRequestsLayer {
    metrics: Arc<HttpMetrics>,
}

impl CountRequestsLayer {
    pub(super) fn new(metrics: Arc<HttpMetrics>) -> CountRequestsLayer {
        CountRequestsLayer { metrics }
    }
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`CountRequestsLayer`] makes.
#[derive(Clone)]
pub(super) struct CountRequests<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B> Service<Request<B>> for CountRequests<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let matched = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let series = matched.and_then(|m| self.metrics.routes.iter().position(|s| s.route == m));
        Counted {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            series,
        }
    }
}

pin_project! {
    /// The wrapped service's future; counts the response when it is ready.
    pub(super) struct Counted<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        series: Option<usize>,
    }
}

impl<F, E> Future for Counted<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let series = this
                .series
                .and_then(|i| this.metrics.routes.get(i))
                .unwrap_or(&this.metrics.unmatched);
            series.record(response.status().as_u16());
        }
        Poll::Ready(result)
    }
}
