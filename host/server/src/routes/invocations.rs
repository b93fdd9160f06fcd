//! `GET /v1/invocations/{id}`: the state and result of an asynchronous
//! invocation (see `invocations.rs` for the queue and its workers).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::StatusCode;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::invocations::{Record, b64};
use crate::state::AppState;

/// The routes of asynchronous invocations.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(get_invocation))
}

/// `GET /v1/invocations/{id}`.
/// The state and, once finished, the response of asynchronous invocation
/// `id`: for admin tokens and the token that made it (anyone with the id if
/// it was made without a token).
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invoke",
    params(("id" = String, Path, description = "Invocation id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The invocation", body = crate::openapi::Invocation),
        crate::openapi::AuthErrors,
        (status = 404, description = "Unknown, or past its retention", body = crate::openapi::Error)))]
pub async fn get_invocation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation_not_found",
            format!("invocation {id:?} not found (results are kept for a bounded time)"),
        )
    };
    let raw = state
        .functions
        .store()
        .invocation(&id)?
        .ok_or_else(not_found)?;
    let record: Record = serde_json::from_slice(&raw).map_err(ApiError::internal)?;
    // Someone else's invocation does not exist, as far as this caller can tell.
    let readable = match &record.owner {
        None => true,
        Some(owner) => caller.is_admin() || caller.token_id() == Some(owner.as_str()),
    };
    if !readable {
        return Err(not_found());
    }
    let response = record.response.as_ref().map(|stored| {
        let bytes = b64().decode(&stored.body).unwrap_or_default();
        let mut view = json!({"status": stored.status, "headers": stored.headers});
        match String::from_utf8(bytes) {
            Ok(text) => view["body"] = Value::String(text),
            Err(_) => view["body_base64"] = Value::String(stored.body.clone()),
        }
        view
    });
    Ok(axum::Json(json!({
        "id": record.id,
        "function": record.function,
        "status": record.status,
        "created": record.created,
        "finished": record.finished,
        "response": response,
    }))
    .into_response())
}
