//! Event ingress: `POST /v1/events` and `POST /v1/brokers/{broker}/events`
//! answer 202 only once every matching delivery is on disk; a store that
//! cannot flush, or a backlog at its bound, makes them answer 503, never
//! 202. `POST /v1/brokers/{broker}/explain` says what ingress would do with
//! an event, and does none of it.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
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
        .routes(routes!(trace_event))
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
) -> Result<axum::Json<Value>, ApiError> {
    check_broker_name(&broker)?;
    let events = read_events(&state, request).await?;
    let explained: Vec<Value> = events
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

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TraceQuery {
    /// Only the event of this `source` (without it, one trace per source
    /// that posted this id).
    source: Option<String>,
}

/// What became of recent events `id` of broker `broker` (kept for
/// `--trace-retention`; in cluster mode, from every node): when each was accepted, every trigger of
/// the broker with whether it matched (and why not, against the triggers
/// as they are now), every delivery attempt, its dead letters, and the ids
/// of the events it caused.
#[utoipa::path(get, path = "/v1/brokers/{broker}/events/{id}", tag = "events",
    params(("broker" = String, Path, description = "Broker name"),
        ("id" = String, Path, description = "The event's `id`"),
        TraceQuery),
    responses(
        (status = 200, description = "The traces of the events with this id, newest first", body = crate::openapi::EventTraces),
        (status = 400, description = "Not a broker name", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 404, description = "No trace of such an event (never accepted, older than the retention, or traces are off)", body = crate::openapi::Error),
        (status = 503, description = "Cluster mode: the cluster did not answer", body = crate::openapi::Error)))]
async fn trace_event(
    State(state): State<AppState>,
    Path((broker, id)): Path<(String, String)>,
    crate::error::Query(query): crate::error::Query<TraceQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    // A schedule's function or URL sink has a broker of its own.
    match broker.strip_prefix(sluice_router::schedule::DIRECT_PREFIX) {
        Some(schedule) if sluice_store::is_dns_label(schedule) => {}
        _ => check_broker_name(&broker)?,
    }
    if !state.router.traces_kept() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "trace_not_found",
            format!(
                "no trace of event {id:?} in broker {broker:?}: traces are off (--trace-retention 0s)"
            ),
        ));
    }
    // `?source=` (empty) is no source given: no CloudEvent has an empty one.
    let source = query.source.as_deref().filter(|s| !s.is_empty());
    let found = state.router.trace(&broker, &id, source).await?;
    if found.is_empty() {
        let source = match source {
            Some(source) => format!(" from source {source:?}"),
            None => String::new(),
        };
        // In cluster mode a trace starts at the event's fan-out.
        let yet = match state.router.cluster() {
            Some(_) => ", or not fanned out by a node yet",
            None => "",
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "trace_not_found",
            format!(
                "no trace of event {id:?}{source} in broker {broker:?}: never accepted there{yet}, or accepted longer ago than the traces are kept (--trace-retention, --trace-max-events)"
            ),
        ));
    }
    // Milliseconds always shown, so times line up.
    let rfc3339 = |ms: u64| {
        jiff::Timestamp::from_millisecond(ms as i64).map_or(Value::Null, |t| {
            json!(t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        })
    };
    let traces: Vec<Value> = (found.into_iter())
        .map(|(trace, others)| {
            let mut triggers: Vec<Value> = (trace.matched.iter())
                .map(|name| json!({"name": name, "matched": true}))
                .collect();
            for (name, why) in others {
                let reason = why.unwrap_or_else(|| {
                    "not recorded (the trace did not keep an event this large)".into()
                });
                triggers.push(json!({"name": name, "matched": false, "reason": reason}));
            }
            let mut view = serde_json::to_value(&trace).expect("JSON");
            view["accepted"] = rfc3339(trace.accepted_ms);
            view["triggers"] = json!(triggers);
            for (attempt, shown) in trace.attempts.iter().zip(
                view["attempts"]
                    .as_array_mut()
                    .expect("attempts")
                    .iter_mut(),
            ) {
                shown["start"] = rfc3339(attempt.start_ms);
            }
            view
        })
        .collect();
    Ok(axum::Json(
        json!({"broker": broker, "id": id, "traces": traces}),
    ))
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
