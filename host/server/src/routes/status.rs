//! Operations: liveness, readiness, metrics, the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The routes of operations.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = crate::openapi::Status)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// 200 once started, until shutdown begins or a disk write fails; in
/// cluster mode also only while NATS answers and this node has loaded the
/// cluster's triggers.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Status),
        (status = 503, description = "Starting, draining, the store failed, or (cluster mode) NATS unreachable or the catalog not loaded", body = crate::openapi::Error)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.functions.store().healthy() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failed",
            "a write to disk failed (full disk?); fix it and restart the server",
        )
        .into_response();
    }
    let cluster = state.router.cluster_readiness().and_then(|()| {
        state
            .replica
            .as_ref()
            .map_or(Ok(()), |replica| replica.readiness())
    });
    let cluster = match (cluster, state.router.cluster()) {
        // Connected is not enough: JetStream must answer (a quorum lost
        // leaves the connection up and every write failing).
        (Ok(()), Some(nats)) => nats.probe().await,
        (other, _) => other,
    };
    if let Err(reason) = cluster {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            reason,
        )
        .with_retry_after(1)
        .into_response();
    }
    if state.ready.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or stopping",
        )
        .into_response()
    }
}

/// Prometheus metrics (text exposition format); see docs/observability.md.
/// Needs a `metrics` or `admin` token unless the server runs with
/// `--public-metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = []), ()),
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String),
        crate::openapi::AuthErrors))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .functions
        .runtime()
        .observe_pool(state.functions.metrics());
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.functions.metrics().render(),
    )
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}
