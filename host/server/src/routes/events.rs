//! Event ingress: `POST /v1/events` and `POST /v1/brokers/{broker}/events`
//! answer 202 only once every matching delivery is on disk; a store that
//! cannot flush, or a backlog at its bound, makes them answer 503, never
//! 202. `POST /v1/brokers/{broker}/explain` says what ingress would do with
//! an event, and does none of it.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;
use sluice_router::binding;
use sluice_router::trigger::DEFAULT_BROKER;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::body::read_body;
use crate::error::ApiError;
use crate::state::AppState;

/// The routes of event ingress.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_default_events))
        .routes(routes!(post_broker_events))
        .routes(routes!(explain_events))
}

/// Posts CloudEvents (binary, structured or batch mode) to the `default`
/// broker; 202 once they are on disk.
#[utoipa::path(post, path = "/v1/events", tag = "events",
params(("ce-specversion" = Option<String>, Header, description = "Binary mode: `1.0`"),
        ("ce-id" = Option<String>, Header, description = "Binary mode"),
        ("ce-source" = Option<String>, Header, description = "Binary mode"),
        ("ce-type" = Option<String>, Header, description = "Binary mode")),
    request_body(description = "A CloudEvent in binary mode (`ce-*` headers, the data as the body), structured mode or batch mode",
        content((crate::openapi::CloudEvent = "application/cloudevents+json"),
            (Vec<crate::openapi::CloudEvent> = "application/cloudevents-batch+json"),
            (crate::openapi::AnyBody = "*/*"))),
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
params(("broker" = String, Path, description = "Broker name"),
        ("ce-specversion" = Option<String>, Header, description = "Binary mode: `1.0`"),
        ("ce-id" = Option<String>, Header, description = "Binary mode"),
        ("ce-source" = Option<String>, Header, description = "Binary mode"),
        ("ce-type" = Option<String>, Header, description = "Binary mode")),
    request_body(description = "A CloudEvent in binary mode (`ce-*` headers, the data as the body), structured mode or batch mode",
        content((crate::openapi::CloudEvent = "application/cloudevents+json"),
            (Vec<crate::openapi::CloudEvent> = "application/cloudevents-batch+json"),
            (crate::openapi::AnyBody = "*/*"))),
    security(("bearer" = []), ()),
    responses(
        (status = 202, description = "Accepted: durable", body = crate::openapi::Accepted),
        crate::openapi::IngestErrors))]
async fn post_broker_events(
    State(state): State<AppState>,
    Path(broker): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    check_broker_name(&broker)?;
    ingest(&state, &broker, request).await
}

fn check_broker_name(broker: &str) -> Result<(), ApiError> {
    if sluice_store::is_dns_label(broker) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_broker",
        format!("{broker:?} is not a broker name (lowercase letters, digits, `-`)"),
    ))
}

/// Explains what broker `broker` would do with CloudEvents (any mode, as
/// ingress takes them): for each event, every trigger of the broker, by
/// name, matched or not, and for a miss the first condition that failed.
/// Nothing is stored or delivered.
#[utoipa::path(post, path = "/v1/brokers/{broker}/explain", tag = "events",
params(("broker" = String, Path, description = "Broker name")),
    request_body(description = "CloudEvents as `POST /v1/brokers/{broker}/events` takes them",
        content((crate::openapi::CloudEvent = "application/cloudevents+json"),
            (Vec<crate::openapi::CloudEvent> = "application/cloudevents-batch+json"),
            (crate::openapi::AnyBody = "*/*"))),
    responses(
        (status = 200, description = "What each event would match", body = crate::openapi::Explanation),
        (status = 400, description = "Not a valid CloudEvent (the code names the rule)", body = crate::openapi::Error),
        (status = 413, description = "Body past `--max-event-bytes`", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
async fn explain_events(
    State(state): State<AppState>,
    Path(broker): Path<String>,
    request: Request,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    check_broker_name(&broker)?;
    let events = read_events(&state, request).await?;
    let explained: Vec<serde_json::Value> = events
        .iter()
        .map(|event| {
            let mut matched = Vec::new();
            let mut triggers = Vec::new();
            for (trigger, why) in state.router.explain(&broker, event) {
                let mut entry = json!({
                    "name": trigger.name,
                    "matched": why.is_none(),
                    "subscriber": trigger.subscriber.to_json(),
                });
                match why {
                    None => matched.push(trigger.name.clone()),
                    Some(reason) => entry["reason"] = reason.into(),
                }
                triggers.push(entry);
            }
            json!({
                "id": event.id,
                "source": event.source,
                "type": event.ty,
                "matched": matched,
                "triggers": triggers,
            })
        })
        .collect();
    Ok(axum::Json(json!({"broker": broker, "events": explained})))
}

/// The CloudEvents of a request (any mode), read within
/// `--max-event-bytes` and validated.
async fn read_events(
    state: &AppState,
    request: Request,
) -> Result<Vec<sluice_router::event::CloudEvent>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.limits.max_event_bytes).await?;
    Ok(binding::parse_request(&parts.headers, &body)?)
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
    let events = read_events(state, request).await?;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let accepted = state.router.accept(broker, events).await.map_err(|error| {
        if error.is_too_many() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_deliveries",
                error.to_string(),
            );
        }
        if error.is_backlog() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog_full",
                error.to_string(),
            )
            .with_retry_after(1);
        }
        match error {
            // Cluster mode: the reason (NATS unreachable, no quorum) is
            // the answer's, and an event too large for NATS is a 413.
            sluice_router::dispatch::PublishError::Store(
                store @ (sluice_store::StoreError::Unavailable(_)
                | sluice_store::StoreError::TooLarge(_)),
            ) => ApiError::from(store),
            error => {
                tracing::error!(%error, "events not accepted");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "events could not be stored; retry later",
                )
                .with_retry_after(1)
            }
        }
    })?;
    let duplicate = !ids.is_empty() && accepted.duplicates.len() == ids.len();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": ids.len(),
            "ids": ids,
            "duplicate": duplicate,
            "duplicates": accepted.duplicates,
        })),
    )
        .into_response())
}
