//! Asynchronous invocations: `POST /v1/functions/{name}/invoke?async=true`.
//!
//! The request is stored (flushed) before the 202, then run like a
//! synchronous invoke; its response is stored. Queued and running
//! invocations are run again after a restart (at least once). Finished
//! ones are kept for `--invocation-retention-secs`, then removed.
//! Status: `queued`, `running`, `succeeded` (the function answered below
//! 400), `failed` (it answered 400 or more, or could not run).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::server::{AppState, read_body, run_invoke};

/// How often a call refused as busy is tried again, at most.
const BUSY_RETRIES: u32 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    function: String,
    status: Status,
    method: String,
    path_and_query: String,
    request_headers: Vec<(String, String)>,
    request_body: String,
    response: Option<Stored>,
    created: String,
    finished: Option<String>,
    finished_ms: Option<u64>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn save(state: &AppState, record: &Record) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(record).expect("records serialize");
    state
        .functions
        .store()
        .put_invocation(&record.id, &bytes)
        .await?;
    Ok(())
}

/// Stores the request as a queued invocation, starts it, answers 202.
pub async fn enqueue(state: &AppState, name: &str, request: Request) -> Result<Response, ApiError> {
    let function = crate::server::loaded(state, name).await?;
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, function.limits.max_request_bytes).await?;
    let record = Record {
        id: state.functions.new_invocation_id(),
        function: name.to_string(),
        status: Status::Queued,
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        request_headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        request_body: b64().encode(&body),
        response: None,
        created: sluice_store::now_rfc3339(),
        finished: None,
        finished_ms: None,
    };
    save(state, &record).await?;
    tokio::spawn(run(state.clone(), record.clone()));
    let url = format!("/v1/invocations/{}", record.id);
    Ok((
        StatusCode::ACCEPTED,
        [(http::header::LOCATION, url.clone())],
        axum::Json(json!({"id": record.id, "status": "queued", "url": url})),
    )
        .into_response())
}

fn rebuild(record: &Record) -> Result<Request, String> {
    let mut request = http::Request::builder()
        .method(record.method.as_str())
        .uri(record.path_and_query.as_str());
    for (k, v) in &record.request_headers {
        request = request.header(k, v);
    }
    let body = b64()
        .decode(&record.request_body)
        .map_err(|e| e.to_string())?;
    request.body(Body::from(body)).map_err(|e| e.to_string())
}

async fn run(state: AppState, mut record: Record) {
    record.status = Status::Running;
    if let Err(error) = save(&state, &record).await {
        tracing::error!(id = %record.id, ?error, "could not mark an invocation running; it stays queued");
        return;
    }
    let mut tries = 0;
    let response = loop {
        let response = match rebuild(&record) {
            Ok(request) => match run_invoke(&state, &record.function, request).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            },
            Err(reason) => ApiError::internal(reason).into_response(),
        };
        let busy = matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && response.headers().contains_key(http::header::RETRY_AFTER);
        tries += 1;
        if !busy || tries >= BUSY_RETRIES {
            break response;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    record.status = if parts.status.as_u16() < 400 {
        Status::Succeeded
    } else {
        Status::Failed
    };
    record.response = Some(Stored {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: b64().encode(&body),
    });
    record.finished = Some(sluice_store::now_rfc3339());
    record.finished_ms = Some(unix_ms());
    if let Err(error) = save(&state, &record).await {
        tracing::error!(id = %record.id, ?error, "could not store an invocation's result");
    }
}

/// Resumes unfinished invocations and starts the retention reaper.
pub fn start(state: AppState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let retention = state.functions.runtime().limits().invocation_retention_secs * 1000;
    for raw in state.functions.store().invocations()? {
        let Ok(record) = serde_json::from_slice::<Record>(&raw) else {
            continue;
        };
        if matches!(record.status, Status::Queued | Status::Running) {
            tracing::info!(id = %record.id, function = %record.function, "resuming invocation");
            tokio::spawn(run(state.clone(), record));
        }
    }
    Ok(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            let store = state.functions.store();
            let Ok(all) = store.invocations() else {
                continue;
            };
            for raw in all {
                let Ok(record) = serde_json::from_slice::<Record>(&raw) else {
                    continue;
                };
                if record
                    .finished_ms
                    .is_some_and(|at| unix_ms().saturating_sub(at) > retention)
                {
                    let _ = store.delete_invocation(&record.id);
                }
            }
        }
    }))
}

/// `GET /v1/invocations/{id}`.
/// The state and, once finished, the response of asynchronous invocation `id`.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invoke",
    params(("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, description = "The invocation", body = crate::openapi::Invocation),
        crate::openapi::AuthErrors,
        (status = 404, description = "Unknown, or past its retention", body = crate::openapi::Error)))]
pub async fn get_invocation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let raw = state.functions.store().invocation(&id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation_not_found",
            format!("invocation {id:?} not found (results are kept for a bounded time)"),
        )
    })?;
    let record: Record = serde_json::from_slice(&raw).map_err(ApiError::internal)?;
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
