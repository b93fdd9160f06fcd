//! `/v1/invocations`: the asynchronous invocations, listed, read and
//! cancelled (see `invocations.rs` for the queue and its workers).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::StatusCode;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, Query};
use crate::invocations::{Record, b64, readable};
use crate::state::AppState;

/// The routes of asynchronous invocations.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(get_invocation, cancel_invocation))
        .routes(utoipa_axum::routes!(list_invocations))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invocation_not_found",
        format!("invocation {id:?} not found (results are kept for a bounded time)"),
    )
}

/// The record of `id` if `caller` may read it (someone else's invocation
/// does not exist, as far as this caller can tell).
async fn readable_record(state: &AppState, caller: &Caller, id: &str) -> Result<Record, ApiError> {
    let record = crate::invocations::read(state, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if !readable(caller, &record) {
        return Err(not_found(id));
    }
    Ok(record)
}

/// The API view of `record`, with its response when `response`.
fn view(record: &Record, response: bool) -> Value {
    let mut view = json!({
        "id": record.id,
        "function": record.function,
        "status": record.status,
        "created": record.created,
        "finished": record.finished,
    });
    if response {
        view["response"] = match &record.response {
            None => Value::Null,
            Some(stored) => {
                let bytes = b64().decode(&stored.body).unwrap_or_default();
                let mut answer = json!({"status": stored.status, "headers": stored.headers});
                match String::from_utf8(bytes) {
                    Ok(text) => answer["body"] = Value::String(text),
                    Err(_) => answer["body_base64"] = Value::String(stored.body.clone()),
                }
                answer
            }
        };
    } else {
        view["response_status"] = json!(record.response.as_ref().map(|r| r.status));
    }
    view
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
    let record = readable_record(&state, &caller, &id).await?;
    Ok(axum::Json(view(&record, true)).into_response())
}

/// Cancels asynchronous invocation `id`: a queued one never runs; a
/// running one is interrupted at the guest's next epoch tick. Answers the
/// invocation as it ends (`cancelled`, or how it finished if the cancel
/// came too late); 409 if it had finished already.
#[utoipa::path(delete, path = "/v1/invocations/{id}", tag = "invoke",
    params(("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, description = "The invocation after the cancel", body = crate::openapi::Invocation),
        crate::openapi::AuthErrors,
        (status = 404, description = "Unknown, or past its retention", body = crate::openapi::Error),
        (status = 409, description = "It had finished already", body = crate::openapi::Error)))]
pub async fn cancel_invocation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let before = readable_record(&state, &caller, &id).await?;
    if before.status.is_finished() {
        return Err(finished(&before));
    }
    match crate::invocations::cancel(&state, &id).await? {
        None => Err(not_found(&id)),
        Some(record) => Ok(axum::Json(view(&record, true)).into_response()),
    }
}

fn finished(record: &Record) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invocation_finished",
        format!(
            "invocation {:?} has finished already ({}); nothing to cancel",
            record.id,
            serde_json::to_value(record.status)
                .unwrap_or_default()
                .as_str()
                .unwrap_or_default()
        ),
    )
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this function's.
    function: Option<String>,
    /// At most this many, newest first (100 by default, at most 1000).
    limit: Option<usize>,
}

/// The asynchronous invocations the caller's token made (an admin token:
/// all), newest first, without their responses (`response_status` is the
/// function's status code once finished).
#[utoipa::path(get, path = "/v1/invocations", tag = "invoke",
    params(ListQuery),
    responses(
        (status = 200, description = "Invocations", body = crate::openapi::InvocationList),
        (status = 400, description = "A query that does not parse", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
pub async fn list_invocations(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let views = crate::invocations::list(&state, &caller, query.function, limit).await?;
    Ok(axum::Json(json!({"invocations": views})).into_response())
}
