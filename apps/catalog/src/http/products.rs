//! The product API: `GET`/`PUT /products/{id}` and category listings.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{
    JsonRejection, PathRejection, QueryRejection, RawPathParamsRejection,
};
use axum::extract::{Path, Query, RawPathParams, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::params;
use crate::product::{Product, ProductPatch};

pub(super) async fn get_product(
    State(app): State<AppState>,
    path: Result<RawPathParams, RawPathParamsRejection>,
) -> Result<Response, ApiError> {
    let id = raw_id("product", path)?;
    match app.catalog.product(id).await? {
        Some(product) => Ok(json_response(&product)),
        None => Err(ApiError::not_found(format!("product {id} not found"))),
    }
}

/// The hot path's serialization: one buffer sized for a typical product,
/// no intermediate copies.
fn json_response(product: &Product) -> Response {
    let mut buf = Vec::with_capacity(384);
    match serde_json::to_writer(&mut buf, product) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The single `{id}` path parameter, already percent-decoded, as an id.
fn raw_id(
    what: &str,
    path: Result<RawPathParams, RawPathParamsRejection>,
) -> Result<i64, ApiError> {
    let params = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let raw = params.iter().next().map(|(_, v)| v).unwrap_or_default();
    params::id(what, raw)
}

pub(super) async fn put_product(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ProductPatch>, JsonRejection>,
) -> Result<Json<Product>, ApiError> {
    let id = product_id(path)?;
    // The body's own status: 400 malformed JSON, 415 not JSON, 413 too
    // large, 422 well-formed but wrong (unknown field, wrong type).
    let Json(patch) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    patch
        .validate()
        .map_err(|message| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, message))?;
    match app.catalog.update(id, &patch).await? {
        Some(product) => Ok(Json(product)),
        None => Err(ApiError::not_found(format!("product {id} not found"))),
    }
}

pub(super) async fn category_products(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<Product>>, ApiError> {
    let raw = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let category = params::id("category", &raw)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (page, limit) = params::paging(&query)?;
    match app.catalog.category_page(category, page, limit).await? {
        Some(products) => Ok(Json(products)),
        None => Err(ApiError::not_found(format!(
            "category {category} not found"
        ))),
    }
}

fn product_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    params::id("product", &raw)
}
