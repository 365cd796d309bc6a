//! Every error the API returns: a status and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::catalog::CatalogError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<CatalogError> for ApiError {
    /// The database or the cache failed: the client's request was fine, so
    /// this is a 503 (try again), and the detail goes to the log, not to the
    /// client.
    fn from(err: CatalogError) -> ApiError {
        tracing::error!(error = %err, source = ?std::error::Error::source(&err), "request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalog is temporarily unavailable; retry shortly",
        )
    }
}
