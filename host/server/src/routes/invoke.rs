//! Calling functions: `POST /v1/functions/{name}/invoke` and
//! `ANY /fn/{name}/{path...}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use sluice_router::binding;
use sluice_router::event::CloudEvent;
use sluice_runtime::engine::event_bindings::sluice::function::types::HandlerError;
use sluice_runtime::functions::Function;
use sluice_runtime::invoke::CallOptions;
use sluice_runtime::invoker::{from_wit, to_wit};
use tokio_util::sync::CancellationToken;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::body::read_body;
use crate::error::ApiError;
use crate::routes::functions::loaded;
use crate::state::AppState;

/// The routes of calling functions.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(invoke_function))
        .routes(routes!(call_function_root))
        .routes(routes!(call_function_slash))
        .routes(routes!(call_function))
}

/// Invokes function `name`: an event function takes one CloudEvent (any
/// mode) and answers its replies; an HTTP function gets the request at `/`.
/// With `?async=true`: 202 and an invocation id to poll.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke",
    params(("name" = String, Path, description = "Function name"),
        ("async" = Option<bool>, Query, description = "Run in the background")),
    request_body(description = "A CloudEvent (binary, structured) for an event function; any body for an HTTP one",
        content((Option<crate::openapi::AnyBody> = "*/*"))),
    responses(
        (status = 200, description = "The function's answer (`{\"replies\": [...]}` for an event function)"),
        (status = 202, description = "Queued (`?async=true`)", body = crate::openapi::InvocationAccepted),
        crate::openapi::CallErrors,
        (status = 422, description = "The event function failed permanently", body = crate::openapi::Error),
        (status = "default", description = "Whatever an HTTP function answers")),
    security((), ("bearer" = [])))]
async fn invoke_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut asynchronous = false;
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        if key == "async" {
            asynchronous = match value.as_ref() {
                "true" => true,
                "false" => false,
                other => {
                    // A typo must not run a long job in the foreground.
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("async={other:?}: use async=true or async=false"),
                    ));
                }
            };
        }
    }
    if asynchronous {
        return crate::invocations::enqueue(&state, &name, request).await;
    }
    run_invoke(&state, &name, request).await
}

/// One synchronous `invoke` of function `name`: an event function takes a
/// CloudEvent, an HTTP function gets the request at `/`.
pub(crate) async fn run_invoke(
    state: &AppState,
    name: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let function = loaded(state, name).await?;
    if function.record.world == sluice_store::World::Event {
        return invoke_event_function(state, &function, request).await;
    }
    let query = request
        .uri()
        .query()
        .map(|q| {
            let kept: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "async")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish();
            if encoded.is_empty() {
                String::new()
            } else {
                format!("?{encoded}")
            }
        })
        .unwrap_or_default();
    forward(state, &function, request, format!("/{query}")).await
}

/// Calls the function: the guest gets the request with the path after
/// `/fn/{name}` and the query; its response is the answer.
#[utoipa::path(method(get, post, put, delete, patch, head, options, trace), path = "/fn/{name}", tag = "invoke",
    params(("name" = String, Path, description = "Function name")),
    request_body(description = "Passed to the guest as is, as it arrives",
        content((Option<crate::openapi::AnyBody> = "*/*"))),
    responses(
        crate::openapi::CallErrors,
        (status = "default", description = "Whatever the function answers, streamed as it writes it")),
    security((), ("bearer" = [])))]
async fn call_function_root(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let function = loaded(&state, &name).await?;
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    forward(&state, &function, request, format!("/{query}")).await
}

/// Calls the function: the guest gets the request with the path after
/// `/fn/{name}` and the query; its response is the answer.
#[utoipa::path(method(get, post, put, delete, patch, head, options, trace), path = "/fn/{name}/", tag = "invoke",
    params(("name" = String, Path, description = "Function name")),
    request_body(description = "Passed to the guest as is, as it arrives",
        content((Option<crate::openapi::AnyBody> = "*/*"))),
    responses(
        crate::openapi::CallErrors,
        (status = "default", description = "Whatever the function answers, streamed as it writes it")),
    security((), ("bearer" = [])))]
async fn call_function_slash(
    state: State<AppState>,
    name: Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    call_function_root(state, name, request).await
}

/// Calls the function: the guest gets the request with the path after
/// `/fn/{name}` and the query; its response is the answer.
#[utoipa::path(method(get, post, put, delete, patch, head, options, trace), path = "/fn/{name}/{*path}", tag = "invoke",
    params(("name" = String, Path, description = "Function name"),
        ("path" = String, Path, description = "The rest of the path, given to the guest")),
    request_body(description = "Passed to the guest as is, as it arrives",
        content((Option<crate::openapi::AnyBody> = "*/*"))),
    responses(
        crate::openapi::CallErrors,
        (status = "default", description = "Whatever the function answers, streamed as it writes it")),
    security((), ("bearer" = [])))]
async fn call_function(
    State(state): State<AppState>,
    Path((name, _path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let function = loaded(&state, &name).await?;
    // The guest sees the raw (still percent-encoded) path after `/fn/{name}`.
    let raw = request.uri().path();
    let prefix_len = "/fn/".len() + name.len();
    let path = raw.get(prefix_len..).unwrap_or("/").to_string();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    forward(&state, &function, request, format!("{path}{query}")).await
}

/// Sends `request` to `function` as a request for `path_and_query`: the
/// request body streams into the guest as it arrives, and the response
/// streams back as the guest writes it.
async fn forward(
    state: &AppState,
    function: &Arc<Function>,
    request: Request,
    path_and_query: String,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let limit = function.limits.max_request_bytes;
    if parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > limit)
    {
        return Err(ApiError::body_too_large(limit));
    }
    let (body, cut) = crate::body::Watched::new(body, limit);
    let method = parts.method.clone();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(host.as_str())
        .path_and_query(path_and_query.as_str())
        .build()
        .map_err(|error| {
            ApiError::bad_request("bad_uri", format!("cannot forward this URI: {error}"))
        })?;
    let trace = sluice_runtime::trace::TraceContext::for_invocation(
        parts
            .headers
            .get(sluice_runtime::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let options = CallOptions {
        trace: Some(trace),
        cancel: parts.extensions.get::<CancellationToken>().cloned(),
        ..CallOptions::default()
    };
    let response = state
        .functions
        .call_http_stream(function, http::Request::from_parts(parts, body), &options)
        .await;
    // A request body cut for its sender's sake is answered as such, however
    // the guest took its failed read.
    let cut = *cut.lock().unwrap();
    match cut {
        Some(crate::body::Cut::Refused(refused)) => return Err(ApiError::body_refused(refused)),
        Some(crate::body::Cut::TooLarge(limit)) => return Err(ApiError::body_too_large(limit)),
        None => {}
    }
    let (parts, body) = response?.into_parts();
    if method == http::Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        // No body goes out: the call ends here, counted as it ends.
        use http_body_util::BodyExt;
        body.collect().await?;
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// `POST /v1/functions/{name}/invoke` of an event function: the body is a
/// CloudEvent in any mode; the answer lists the replies (not routed).
async fn invoke_event_function(
    state: &AppState,
    function: &Arc<Function>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.limits.max_event_bytes;
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
        .get(sluice_runtime::trace::TRACEPARENT)
        .map(String::as_str)
        .or_else(|| {
            parts
                .headers
                .get(sluice_runtime::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
        });
    let trace = sluice_runtime::trace::TraceContext::for_invocation(incoming);
    let answer = state
        .functions
        .call_event(
            function,
            to_wit(&event),
            &CallOptions {
                cause: Some(Arc::new(event.clone())),
                trace: Some(trace),
                cancel: parts.extensions.get::<CancellationToken>().cloned(),
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
