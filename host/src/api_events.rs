//! HTTP routes of the event router: triggers, event ingress, dead letters.
//!
//! `POST /v1/events` and `POST /v1/brokers/{broker}/events` answer 202 only
//! once every matching delivery is on disk; a store that cannot flush makes
//! them answer 503, never 202.

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use sluice_router::binding;
use sluice_router::event::{CloudEvent, EventError};
use sluice_router::trigger::{DEFAULT_BROKER, Trigger, TriggerError};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;
use crate::events::{from_wit, to_wit};
use crate::functions::Function;
use crate::invoke::CallOptions;
use crate::runtime::event_bindings::sluice::function::types::HandlerError;
use crate::server::{AppState, read_body};

/// The router's routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(get_trigger, put_trigger, delete_trigger))
        .routes(routes!(post_default_events))
        .routes(routes!(post_broker_events))
        .routes(routes!(list_dead_letters))
        .routes(routes!(delete_dead_letter))
        .routes(routes!(replay_dead_letter))
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> ApiError {
        ApiError::bad_request(error.code(), error.to_string())
    }
}

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> ApiError {
        ApiError::bad_request("invalid_trigger", error.to_string())
    }
}

fn trigger_view(state: &AppState, trigger: &Trigger) -> Value {
    let mut view = trigger.to_json();
    view["status"] = match state.router.readiness(trigger) {
        Ok(()) => json!({"ready": true}),
        Err(reason) => json!({"ready": false, "reason": reason}),
    };
    view["stats"] = json!(state.router.trigger_stats(&trigger.name));
    view
}

async fn json_body(request: Request) -> Result<Value, ApiError> {
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
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(trigger_view(&state, &trigger))).into_response())
}

/// Refuses a new trigger past `--max-triggers` (replacing one is fine).
fn check_trigger_count(state: &AppState, name: &str) -> Result<(), ApiError> {
    let max = state.functions.runtime().limits().max_triggers;
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
    let trigger = state
        .router
        .trigger(&name)
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
    let trigger = state
        .router
        .trigger(&name)
        .ok_or_else(|| trigger_not_found(&name))?;
    state.router.delete_trigger(&name).await?;
    Ok(axum::Json(trigger.to_json()).into_response())
}

/// Posts CloudEvents (binary, structured or batch mode) to the `default`
/// broker; 202 once they are on disk.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = String, description = "A CloudEvent in binary mode (`ce-*` headers), structured mode (`application/cloudevents+json`) or batch mode (`application/cloudevents-batch+json`)"),
    responses(
        (status = 202, description = "Accepted: durable", body = crate::openapi::Accepted),
        crate::openapi::IngestErrors))]
async fn post_default_events(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    ingest(&state, DEFAULT_BROKER, request).await
}

/// Posts CloudEvents to broker `broker`.
#[utoipa::path(post, path = "/v1/brokers/{broker}/events", tag = "events",
    params(("broker" = String, Path, description = "Broker name")),
    request_body(content = String, description = "A CloudEvent in binary, structured or batch mode"),
    responses(
        (status = 202, description = "Accepted: durable", body = crate::openapi::Accepted),
        crate::openapi::IngestErrors))]
async fn post_broker_events(
    State(state): State<AppState>,
    Path(broker): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    if !sluice_store::is_dns_label(&broker) {
        return Err(ApiError::bad_request(
            "invalid_broker",
            format!("{broker:?} is not a broker name (lowercase letters, digits, `-`)"),
        ));
    }
    ingest(&state, &broker, request).await
}

/// Reads, validates and durably accepts the events of one request; a
/// refusal is counted by its error code.
async fn ingest(state: &AppState, broker: &str, request: Request) -> Result<Response, ApiError> {
    let result = ingest_checked(state, broker, request).await;
    if let Err(error) = &result {
        state.router.reject(broker, error.code, 1);
    }
    result
}

async fn ingest_checked(
    state: &AppState,
    broker: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.functions.runtime().limits().max_event_bytes;
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let events = binding::parse_request(&parts.headers, &body)?;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    state.router.accept(broker, events).await.map_err(|error| {
        if error.is_backlog() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog_full",
                error.to_string(),
            )
            .with_retry_after(1);
        }
        tracing::error!(%error, "events not accepted");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "events could not be stored; retry later",
        )
        .with_retry_after(1)
    })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": ids.len(), "ids": ids})),
    )
        .into_response())
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
        crate::openapi::AuthErrors))]
async fn list_dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let letters: Vec<Value> = state
        .router
        .store()
        .dead_letters()?
        .into_iter()
        .filter(|l| query.trigger.as_ref().is_none_or(|t| *t == l.trigger))
        .map(|l| {
            json!({
                "id": l.id.to_string(),
                "broker": l.broker,
                "trigger": l.trigger,
                "attempts": l.attempts,
                "reason": l.reason,
                "time": l.time,
                "event": serde_json::from_str::<Value>(&l.event).unwrap_or(Value::String(l.event.clone())),
            })
        })
        .collect();
    Ok(axum::Json(json!({"deadletters": letters})).into_response())
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
    if !state
        .router
        .store()
        .delete_dead_letter(parse_id(&id)?)
        .await?
    {
        return Err(dead_letter_not_found(&id));
    }
    Ok(axum::Json(json!({"deleted": id})).into_response())
}

/// `POST /v1/functions/{name}/invoke` of an event function: the body is a
/// CloudEvent in any mode; the answer lists the replies (not routed).
pub async fn invoke_event_function(
    state: &AppState,
    function: &std::sync::Arc<Function>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.functions.runtime().limits().max_event_bytes;
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let mut events = binding::parse_request(&parts.headers, &body)?;
    if events.len() != 1 {
        return Err(ApiError::bad_request(
            "one_event",
            "invoke takes exactly one event; post batches to /v1/events",
        ));
    }
    let event = events.remove(0);
    let incoming = event
        .extensions
        .get(crate::trace::TRACEPARENT)
        .map(String::as_str)
        .or_else(|| {
            parts
                .headers
                .get(crate::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
        });
    let trace = crate::trace::TraceContext::for_invocation(incoming);
    let answer = state
        .functions
        .call_event(
            function,
            to_wit(&event),
            &CallOptions {
                cause: Some(std::sync::Arc::new(event.clone())),
                trace: Some(trace),
                ..CallOptions::default()
            },
        )
        .await?;
    match answer {
        Ok(replies) => {
            let replies: Vec<Value> = replies
                .into_iter()
                .map(|reply| match from_wit(reply) {
                    Ok(reply) => reply_json(&reply),
                    Err(error) => json!({"invalid": error.to_string()}),
                })
                .collect();
            Ok(axum::Json(json!({"replies": replies})).into_response())
        }
        Err(HandlerError::Retryable(reason)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "guest_error",
            format!("the function failed (retryable): {reason}"),
        )),
        Err(HandlerError::Permanent(reason)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "guest_error",
            format!("the function failed (permanent): {reason}"),
        )),
    }
}

fn reply_json(event: &CloudEvent) -> Value {
    serde_json::from_str(&event.to_json()).unwrap_or(Value::Null)
}
