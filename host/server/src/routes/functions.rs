//! `/v1/functions`: deploy, read, change, delete functions; their logs and
//! recent invocations.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;
use sluice_runtime::functions::{DeployError, Function};
use sluice_store::{FunctionRecord, StoreError};

use crate::body::{is_multipart, read_body};
use crate::error::ApiError;
use crate::settings;
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The routes of functions: deploys take bodies up to the largest
/// component (`component_limit`) and a little.
pub fn routes(component_limit: usize) -> OpenApiRouter<AppState> {
    let (schemas, paths, deploy) =
        routes!(get_function, put_function, patch_function, delete_function);
    let deploy = deploy.layer(DefaultBodyLimit::max(
        component_limit.saturating_add(1 << 20),
    ));
    OpenApiRouter::new()
        .routes((schemas, paths, deploy))
        .routes(routes!(list_functions))
        .routes(routes!(function_logs))
        .routes(routes!(function_invocations))
}

/// What the API shows instead of a secret's value.
pub const REDACTED: &str = "<redacted>";

/// The API view of a function record: secrets' values are never shown.
pub(crate) fn view(record: &FunctionRecord) -> serde_json::Value {
    let mut settings = record.settings.clone();
    for value in settings.secrets.values_mut() {
        *value = REDACTED.to_string();
    }
    json!({
        "name": record.name,
        "digest": record.digest,
        "version": record.version,
        "world": record.world,
        "settings": settings,
        "created": record.created,
        "updated": record.updated,
        "url": format!("/fn/{}/", record.name),
    })
}

/// Deploys (or replaces) function `name`. The body is the component
/// (`application/wasm`), or multipart with a `component` part and a
/// `config` JSON part; settings may also come as query parameters. A
/// replacement keeps every setting the request does not name (a `config`
/// key set to `null` resets one) and lists them in `kept`.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name"),
        crate::openapi::SettingsQuery),
    request_body(description = "The component, or a form with the component and its settings",
        content((crate::openapi::Component = "application/wasm"), (crate::openapi::DeployForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "Replaced (settings the request does not name are kept, listed in `kept`)", body = crate::openapi::Function),
        (status = 201, description = "Deployed", body = crate::openapi::Function),
        (status = 400, description = "Invalid name, settings or component (a core module, another world, imports Sluice does not provide)", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 409, description = "The server holds its limit of functions, or the function kept changing while the request ran", body = crate::openapi::Error),
        (status = 413, description = "Past `--max-component-bytes`", body = crate::openapi::Error)))]
async fn put_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.functions.runtime().limits().max_component_bytes;
    let query = request.uri().query().map(str::to_string);
    let (bytes, config) = if is_multipart(request.headers()) {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|error| ApiError::bad_request("bad_multipart", error.body_text()))?;
        let (mut component, mut config) = (None, None);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|error| ApiError::bad_request("bad_multipart", error.body_text()))?
        {
            let part = field.name().unwrap_or_default().to_string();
            let data = field.bytes().await.map_err(|error| {
                if let Some(refused) = crate::body::BodyRefused::find(&error) {
                    ApiError::body_refused(refused)
                } else if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large(limit)
                } else {
                    ApiError::bad_request("bad_multipart", error.body_text())
                }
            })?;
            match part.as_str() {
                "component" => component = Some(data),
                "config" => config = Some(data),
                other => {
                    return Err(ApiError::bad_request(
                        "bad_multipart",
                        format!(
                            "unknown part {other:?}; expected `component` and optionally `config`"
                        ),
                    ));
                }
            }
        }
        let component = component.ok_or_else(|| {
            ApiError::bad_request(
                "bad_multipart",
                "the multipart body has no `component` part",
            )
        })?;
        (component, config)
    } else {
        let (parts, body) = request.into_parts();
        (read_body(&parts.headers, body, limit).await?, None)
    };
    // Checked after the body is read, so the connection stays reusable.
    sluice_runtime::functions::validate_name(&name)?;
    let requested = settings::Requested { config, query };
    // Settings the request does not name are kept from the current version;
    // the write is conditional on that version, so a concurrent change is
    // never overwritten with stale settings (the read is repeated instead).
    let mut attempts = 0;
    let (record, kept, expected) = loop {
        let current = current_record(&state, &name).await?;
        let (settings, kept) = requested.over(current.as_ref().map(|r| &r.settings))?;
        let expected = current.map_or(0, |record| record.version);
        match state
            .functions
            .deploy(&name, bytes.to_vec(), settings, Some(expected))
            .await
        {
            Err(DeployError::Store(StoreError::Changed(_))) if attempts < MAX_ATTEMPTS => {
                attempts += 1;
            }
            result => break (result?, kept, expected),
        }
    };
    let status = if expected > 0 {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut body = view(&record);
    if expected > 0 {
        body["kept"] = json!(kept);
        body["changed"] = json!(record.version != expected);
    }
    Ok((status, axum::Json(body)).into_response())
}

/// Function `name` (secrets redacted).
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "The function", body = crate::openapi::Function),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn get_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = state
        .functions
        .store()
        .function(&name)?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    Ok(axum::Json(view(&record)).into_response())
}

/// Every function.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses(
        (status = 200, description = "Functions", body = crate::openapi::FunctionList),
        crate::openapi::AuthErrors))]
async fn list_functions(State(state): State<AppState>) -> Result<Response, ApiError> {
    let records = state.functions.store().functions()?;
    let views: Vec<_> = records.iter().map(view).collect();
    Ok(axum::Json(json!({"functions": views})).into_response())
}

/// Changes settings: a JSON merge patch body and/or query parameters.
#[utoipa::path(patch, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name"),
        crate::openapi::SettingsQuery),
    request_body(content = crate::openapi::FunctionSettings, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Changed", body = crate::openapi::Function),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error),
        (status = 409, description = "The function kept changing while the request ran", body = crate::openapi::Error)))]
async fn patch_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = request.uri().query().map(str::to_string);
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, 1 << 20).await?;
    let mut attempts = 0;
    let record = loop {
        let record = current_record(&state, &name)
            .await?
            .ok_or_else(|| ApiError::function_not_found(&name))?;
        let mut settings = if body.is_empty() {
            record.settings.clone()
        } else {
            settings::merge_patch(&record.settings, &body)?
        };
        settings::apply_query(&mut settings, query.as_deref())?;
        match state
            .functions
            .update_settings(&name, settings, Some(record.version))
            .await
        {
            Err(DeployError::Store(StoreError::Changed(_))) if attempts < MAX_ATTEMPTS => {
                attempts += 1;
            }
            result => break result?,
        }
    };
    Ok(axum::Json(view(&record)).into_response())
}

/// The record a write is conditional on: in cluster mode the cluster's,
/// not this node's replica (which its watcher updates a moment later).
async fn current_record(state: &AppState, name: &str) -> Result<Option<FunctionRecord>, ApiError> {
    Ok(match state.functions.cluster() {
        Some(cluster) => cluster.function(name).await?,
        None => state.functions.store().function(name)?,
    })
}

/// How often a settings change re-reads a function that another request
/// changed meanwhile before answering 409.
const MAX_ATTEMPTS: u32 = 3;

#[derive(serde::Deserialize)]
struct LogQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// Most log lines one request returns.
const MAX_LOG_PAGE: usize = 1000;

/// What the function's guests wrote to stdout and stderr, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "functions",
    params(("name" = String, Path, description = "Function name"),
        ("since" = Option<u64>, Query, description = "Lines after this `seq`"),
        ("limit" = Option<u64>, Query, description = "At most this many (1000 at most)")),
    responses(
        (status = 200, description = "A page of lines", body = crate::openapi::LogPage),
        (status = 400, description = "A query that does not parse", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn function_logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    crate::error::Query(query): crate::error::Query<LogQuery>,
) -> Result<Response, ApiError> {
    if state.functions.store().function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    let since = query.since.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).min(MAX_LOG_PAGE);
    let lines = match state.functions.cluster() {
        Some(cluster) => cluster.logs(&name, since, limit).await?,
        None => state.functions.store().logs(&name, since, limit)?,
    };
    let next = lines.last().map_or(since, |line| line.seq);
    Ok(axum::Json(json!({"logs": lines, "next": next})).into_response())
}

/// The function's recent invocations, newest first: the last 50, kept in
/// memory since start (in cluster mode the cluster's, each naming its node).
#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "functions", params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Recent invocations", body = crate::openapi::RecentInvocations),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn function_invocations(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if state.functions.store().function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    if let Some(cluster) = state.functions.cluster() {
        // The node's own calls when the cluster's list cannot be read.
        match cluster.recent_calls(&name).await {
            Ok(records) => {
                let recent: Vec<serde_json::Value> = (records.iter())
                    .filter_map(|record| serde_json::from_slice(record).ok())
                    .collect();
                return Ok(axum::Json(json!({"invocations": recent})).into_response());
            }
            Err(error) => {
                tracing::debug!(function = %name, %error, "the cluster's recent calls not read; this node's own listed");
            }
        }
    }
    let recent = state.functions.recent(&name);
    Ok(axum::Json(json!({"invocations": recent})).into_response())
}

/// Deletes function `name`.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "The deleted function", body = crate::openapi::Function),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn delete_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.functions.delete(&name).await?;
    Ok(axum::Json(view(&record)).into_response())
}

pub(crate) async fn loaded(state: &AppState, name: &str) -> Result<Arc<Function>, ApiError> {
    state
        .functions
        .get(name)
        .await?
        .ok_or_else(|| ApiError::function_not_found(name))
}
