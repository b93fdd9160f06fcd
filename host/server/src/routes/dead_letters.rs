//! `/v1/deadletters`: inspect, redeliver and discard dead letters.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, Query};
use crate::state::AppState;

/// The routes of dead letters.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, delete_dead_letter))
        .routes(routes!(replay_dead_letter))
}

#[derive(serde::Deserialize)]
struct DeadLetterQuery {
    trigger: Option<String>,
}

/// Dead letters, optionally of one trigger.
#[utoipa::path(get, path = "/v1/deadletters", tag = "deadletters",
    params(("trigger" = Option<String>, Query, description = "Only this trigger's")),
    responses(
        (status = 200, description = "Dead letters", body = crate::openapi::DeadLetterList),
        (status = 400, description = "A query that does not parse", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
async fn list_dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let letters: Vec<Value> = state
        .router
        .dead_letters()
        .await?
        .into_iter()
        .filter(|l| query.trigger.as_ref().is_none_or(|t| *t == l.trigger))
        .map(|l| view(&l))
        .collect();
    Ok(axum::Json(json!({"deadletters": letters})).into_response())
}

/// A dead letter as the API shows it.
fn view(l: &sluice_store::DeadLetterRecord) -> Value {
    json!({
        "id": l.id.to_string(),
        "broker": l.broker,
        "trigger": l.trigger,
        "attempts": l.attempts,
        "reason": l.reason,
        "time": l.time,
        "event": serde_json::from_str::<Value>(&l.event).unwrap_or(Value::String(l.event.clone())),
    })
}

/// Dead letter `id`.
#[utoipa::path(get, path = "/v1/deadletters/{id}", tag = "deadletters",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The dead letter", body = crate::openapi::DeadLetter),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such dead letter", body = crate::openapi::Error)))]
async fn get_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let letter = (state.router.dead_letter(parse_id(&id)?).await?)
        .ok_or_else(|| dead_letter_not_found(&id))?;
    Ok(axum::Json(view(&letter)).into_response())
}

fn dead_letter_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
        format!("dead letter {id:?} not found"),
    )
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| dead_letter_not_found(id))
}

/// Delivers dead letter `id` to its trigger again.
#[utoipa::path(post, path = "/v1/deadletters/{id}/replay", tag = "deadletters",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 202, description = "Queued for delivery", body = crate::openapi::Replayed),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such dead letter", body = crate::openapi::Error)))]
async fn replay_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !state.router.replay(parse_id(&id)?).await? {
        return Err(dead_letter_not_found(&id));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"replayed": id}))).into_response())
}

/// Discards dead letter `id`.
#[utoipa::path(delete, path = "/v1/deadletters/{id}", tag = "deadletters",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Deleted", body = crate::openapi::Deleted),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such dead letter", body = crate::openapi::Error)))]
async fn delete_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !state.router.delete_dead_letter(parse_id(&id)?).await? {
        return Err(dead_letter_not_found(&id));
    }
    Ok(axum::Json(json!({"deleted": id})).into_response())
}
