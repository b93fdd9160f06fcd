//! `/v1/brokers`: brokers as resources. Events may be posted to any broker
//! name; a stored broker adds a default `delivery` for its triggers that set
//! none. The list shows stored brokers and those triggers name.

use std::collections::BTreeMap;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use sluice_router::broker::Broker;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;
use crate::routes::triggers::json_body;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_brokers))
        .routes(routes!(get_broker, put_broker, delete_broker))
}

/// Every broker by name: stored ones, those triggers name, and `default`;
/// each with the number of its triggers.
pub(crate) fn all(state: &AppState) -> BTreeMap<String, Value> {
    let mut brokers: BTreeMap<String, Value> = BTreeMap::new();
    brokers.insert(
        sluice_router::trigger::DEFAULT_BROKER.to_string(),
        json!({"name": sluice_router::trigger::DEFAULT_BROKER, "stored": false, "dedupe": true}),
    );
    for broker in state.router.brokers() {
        let mut view = broker.to_json();
        view["stored"] = json!(true);
        brokers.insert(broker.name.clone(), view);
    }
    for trigger in state.router.triggers() {
        let view = brokers
            .entry(trigger.broker.clone())
            .or_insert_with(|| json!({"name": trigger.broker, "stored": false, "dedupe": true}));
        view["triggers"] = json!(view["triggers"].as_u64().unwrap_or(0) + 1);
    }
    for view in brokers.values_mut() {
        if view.get("triggers").is_none() {
            view["triggers"] = json!(0);
        }
    }
    brokers
}

fn broker_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "broker_not_found",
        format!("broker {name:?} is neither stored nor named by a trigger"),
    )
}

/// Every broker: stored ones (with their default `delivery`), the ones
/// triggers name, and `default`.
#[utoipa::path(get, path = "/v1/brokers", tag = "triggers", responses(
        (status = 200, description = "Brokers", body = crate::openapi::BrokerList),
        crate::openapi::AuthErrors))]
async fn list_brokers(State(state): State<AppState>) -> Response {
    let brokers: Vec<Value> = all(&state).into_values().collect();
    axum::Json(json!({"brokers": brokers})).into_response()
}

/// Broker `name`.
#[utoipa::path(get, path = "/v1/brokers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Broker name")),
    responses(
        (status = 200, description = "The broker", body = crate::openapi::Broker),
        crate::openapi::AuthErrors,
        (status = 404, description = "Neither stored nor named by a trigger", body = crate::openapi::Error)))]
async fn get_broker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = all(&state)
        .remove(&name)
        .ok_or_else(|| broker_not_found(&name))?;
    Ok(axum::Json(view).into_response())
}

/// Creates or replaces broker `name`: `{"delivery": {...}}` is the default
/// of its triggers that set no `delivery`, live.
#[utoipa::path(put, path = "/v1/brokers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Broker name")),
    request_body = crate::openapi::Broker,
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::Broker),
        (status = 201, description = "Created", body = crate::openapi::Broker),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors))]
async fn put_broker(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let broker = Broker::parse(&json_body(request).await?, Some(&name)).map_err(|error| {
        ApiError::bad_request(
            "invalid_broker",
            format!("invalid broker at {}: {}", error.path, error.reason),
        )
    })?;
    let replaced = state.router.put_broker(broker).await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let view = all(&state).remove(&name).unwrap_or_default();
    Ok((status, axum::Json(view)).into_response())
}

/// Deletes stored broker `name`: its triggers stay, and those that set no
/// `delivery` take Knative's defaults.
#[utoipa::path(delete, path = "/v1/brokers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "Broker name")),
    responses(
        (status = 200, description = "The deleted broker", body = crate::openapi::Broker),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such stored broker", body = crate::openapi::Error)))]
async fn delete_broker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let broker = state
        .router
        .broker(&name)
        .ok_or_else(|| broker_not_found(&name))?;
    state.router.delete_broker(&name).await?;
    Ok(axum::Json(broker.to_json()).into_response())
}
