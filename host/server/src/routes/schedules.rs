//! `/v1/schedules`: cron schedules that post an event into a broker at each
//! instant (Knative's `PingSource`; see `sluice_router::schedule`). A view
//! adds `next` (the next instant), `lastFired` and `status` (whether its
//! sink can take events now, as a trigger's).

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use jiff::Timestamp;
use serde_json::{Value, json};
use sluice_router::dispatch::Mark;
use sluice_router::schedule::Schedule;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;
use crate::routes::triggers::json_body;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule, put_schedule, delete_schedule))
}

/// A schedule as the API shows it.
pub(crate) fn view(state: &AppState, schedule: &Schedule, mark: &Mark) -> Value {
    let mut view = schedule.to_json();
    // A function or URL sink is reached as a trigger's subscriber is; a
    // broker always takes events.
    let readiness = schedule
        .direct_trigger()
        .map_or(Ok(()), |trigger| state.router.readiness(&trigger));
    view["status"] = match readiness {
        Ok(()) => json!({"ready": true}),
        Err(reason) => json!({"ready": false, "reason": reason}),
    };
    view["next"] = match schedule.next_after(Timestamp::now()) {
        Some(next) => json!(next.to_string()),
        None => Value::Null,
    };
    view["lastFired"] = match mark.last_fired() {
        Some(fired) => json!(fired.to_string()),
        None => Value::Null,
    };
    view
}

fn schedule_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "schedule_not_found",
        format!("no schedule {name:?}"),
    )
}

/// Every schedule, by name, with its next instant.
#[utoipa::path(get, path = "/v1/schedules", tag = "events", responses(
        (status = 200, description = "Schedules", body = crate::openapi::ScheduleList),
        crate::openapi::AuthErrors))]
async fn list_schedules(State(state): State<AppState>) -> Response {
    let schedules: Vec<Value> = (state.router.schedules().iter())
        .map(|(schedule, mark)| view(&state, schedule, mark))
        .collect();
    axum::Json(json!({"schedules": schedules})).into_response()
}

/// Schedule `name`.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "events",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = crate::openapi::Schedule),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such schedule", body = crate::openapi::Error)))]
async fn get_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (schedule, mark) =
        (state.router.schedule(&name)).ok_or_else(|| schedule_not_found(&name))?;
    Ok(axum::Json(view(&state, &schedule, &mark)).into_response())
}

/// Creates or replaces schedule `name`: from its next instant on, each
/// instant of `schedule` posts a `dev.knative.sources.ping` event into the
/// broker `sink` names.
#[utoipa::path(put, path = "/v1/schedules/{name}", tag = "events",
    params(("name" = String, Path, description = "Schedule name")),
    request_body = crate::openapi::Schedule,
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::Schedule),
        (status = 201, description = "Created", body = crate::openapi::Schedule),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 409, description = "Past `--max-schedules`", body = crate::openapi::Error)))]
async fn put_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let schedule =
        Schedule::parse_new(&json_body(request).await?, Some(&name)).map_err(|error| {
            ApiError::bad_request(
                "invalid_schedule",
                format!("invalid schedule at {}: {}", error.path, error.reason),
            )
        })?;
    let max = state.limits.max_schedules;
    if state.router.schedule(&name).is_none() && state.router.schedules().len() >= max {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_schedules",
            format!(
                "the server already holds its limit of {max} schedules (--max-schedules); delete one first"
            ),
        ));
    }
    let replaced = state.router.put_schedule(schedule).await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let (schedule, mark) =
        (state.router.schedule(&name)).ok_or_else(|| schedule_not_found(&name))?;
    Ok((status, axum::Json(view(&state, &schedule, &mark))).into_response())
}

/// Deletes schedule `name`: it fires no more.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "events",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The deleted schedule", body = crate::openapi::Schedule),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such schedule", body = crate::openapi::Error)))]
async fn delete_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (schedule, mark) =
        (state.router.schedule(&name)).ok_or_else(|| schedule_not_found(&name))?;
    state.router.delete_schedule(&name).await?;
    Ok(axum::Json(view(&state, &schedule, &mark)).into_response())
}
