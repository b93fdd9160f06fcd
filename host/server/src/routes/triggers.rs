//! `/v1/triggers`: Knative-shaped triggers, with readiness and counts.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use sluice_router::trigger::Trigger;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::body::read_body;
use crate::error::ApiError;
use crate::state::AppState;

/// The routes of triggers.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(get_trigger, put_trigger, delete_trigger))
}

pub(crate) fn trigger_view(state: &AppState, trigger: &Trigger) -> Value {
    let mut view = trigger.to_json();
    view["status"] = match state.router.readiness(trigger) {
        Ok(()) => json!({"ready": true}),
        Err(reason) => json!({"ready": false, "reason": reason}),
    };
    // The delivery in force: its own, or its broker's default.
    view["status"]["delivery"] = trigger.delivery.to_json();
    view["stats"] = json!(state.router.trigger_stats(&trigger.name));
    view
}

pub(crate) async fn json_body(request: Request) -> Result<Value, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, 1 << 20).await?;
    sluice_router::event::check_depth(&bytes)?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request("malformed_json", format!("invalid JSON body: {error}"))
    })
}

/// Every trigger, with readiness and counts.
#[utoipa::path(get, path = "/v1/triggers", tag = "triggers", responses(
        (status = 200, description = "Triggers", body = crate::openapi::TriggerList),
        crate::openapi::AuthErrors))]
async fn list_triggers(State(state): State<AppState>) -> Response {
    let triggers: Vec<Value> = state
        .router
        .triggers()
        .iter()
        .map(|t| trigger_view(&state, t))
        .collect();
    axum::Json(json!({"triggers": triggers})).into_response()
}

/// Creates a trigger (409 if the name exists).
#[utoipa::path(post, path = "/v1/triggers", tag = "triggers",
    request_body = crate::openapi::Trigger,
    responses(
        (status = 201, description = "Created", body = crate::openapi::Trigger),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 409, description = "The name exists, or the server holds its limit of triggers", body = crate::openapi::Error)))]
async fn create_trigger(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let trigger = Trigger::parse(&json_body(request).await?, None)?;
    if state.router.trigger(&trigger.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "trigger_exists",
            format!(
                "trigger {:?} exists; PUT /v1/triggers/{} replaces it",
                trigger.name, trigger.name
            ),
        ));
    }
    check_trigger_count(&state, &trigger.name)?;
    state.router.put_trigger(trigger.clone()).await?;
    // As the router holds it: with its broker's delivery when it sets none.
    let trigger = state
        .router
        .trigger(&trigger.name)
        .unwrap_or(trigger.into());
    Ok((
        StatusCode::CREATED,
        axum::Json(trigger_view(&state, &trigger)),
    )
        .into_response())
}

/// Creates or replaces trigger `name`.
#[utoipa::path(put, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Trigger name")),
    request_body = crate::openapi::Trigger,
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::Trigger),
        (status = 201, description = "Created", body = crate::openapi::Trigger),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
async fn put_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let trigger = Trigger::parse(&json_body(request).await?, Some(&name))?;
    check_trigger_count(&state, &trigger.name)?;
    let replaced = state.router.put_trigger(trigger.clone()).await?;
    let trigger = state
        .router
        .trigger(&trigger.name)
        .unwrap_or(trigger.into());
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(trigger_view(&state, &trigger))).into_response())
}

/// Refuses a new trigger past `--max-triggers` (replacing one is fine).
pub(crate) fn check_trigger_count(state: &AppState, name: &str) -> Result<(), ApiError> {
    let max = state.limits.max_triggers;
    if state.router.trigger(name).is_none() && state.router.store().trigger_count() >= max {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_triggers",
            format!("the server already holds its limit of {max} triggers; delete one first"),
        ));
    }
    Ok(())
}

fn trigger_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "trigger_not_found",
        format!("trigger {name:?} not found"),
    )
}

/// Trigger `name`, with readiness and counts.
#[utoipa::path(get, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Trigger name")),
    responses(
        (status = 200, description = "The trigger", body = crate::openapi::Trigger),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such trigger", body = crate::openapi::Error)))]
async fn get_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // A schedule's own trigger (its function or URL sink) is the
    // schedule's: not one of the triggers.
    let trigger = (state.router.trigger(&name))
        .filter(|_| !name.starts_with(sluice_router::schedule::DIRECT_PREFIX))
        .ok_or_else(|| trigger_not_found(&name))?;
    Ok(axum::Json(trigger_view(&state, &trigger)).into_response())
}

/// Deletes trigger `name`; its pending deliveries are dead-lettered.
#[utoipa::path(delete, path = "/v1/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Trigger name")),
    responses(
        (status = 200, description = "The deleted trigger", body = crate::openapi::Trigger),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such trigger", body = crate::openapi::Error)))]
async fn delete_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // A schedule's own trigger (its function or URL sink) is the
    // schedule's: not one of the triggers.
    let trigger = (state.router.trigger(&name))
        .filter(|_| !name.starts_with(sluice_router::schedule::DIRECT_PREFIX))
        .ok_or_else(|| trigger_not_found(&name))?;
    state.router.delete_trigger(&name).await?;
    Ok(axum::Json(trigger.to_json()).into_response())
}
