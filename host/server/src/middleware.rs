//! Around every request: its id (and a span for its log lines), the count
//! of requests in flight, the refusal of new ones once shutdown began, the
//! guard on its body; and the answers to unknown routes and methods.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::error::ApiError;
use crate::state::AppState;

/// The header carrying a request's id, echoed when the client sends one.
pub const REQUEST_ID: &str = "x-request-id";

/// The client's request id if it is a sane one, else a fresh one.
fn request_id(request: &Request) -> http::HeaderValue {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(given) = request.headers().get(REQUEST_ID)
        && !given.is_empty()
        && given.len() <= 128
        && given.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return given.clone();
    }
    let epoch = EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    http::HeaderValue::from_str(&format!("{epoch:x}-{n:x}")).expect("hex is a valid header")
}

/// Gives every response a request id (and every log line of the request a
/// span with it), counts requests in flight, and refuses new ones once
/// shutdown began.
pub async fn track(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request_id(&request);
    let span = tracing::info_span!("request", id = %id.to_str().unwrap_or_default(), method = %request.method(), path = %request.uri().path());
    let mut response =
        tracing::Instrument::instrument(serve_tracked(state, request, next), span).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

async fn serve_tracked(
    state: AppState,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if state.draining.load(Ordering::Acquire) && request.uri().path() != "/healthz" {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry shortly",
        )
        .into_response();
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("5"),
        );
        return response;
    }
    state.in_flight.fetch_add(1, Ordering::AcqRel);
    struct Done(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done(state.in_flight.clone());
    // The body's bytes count against the server's budget until the
    // response is ready.
    let held = crate::body::Held::default();
    let upload =
        request.method() == http::Method::PUT && request.uri().path().starts_with("/v1/functions/");
    let request = request.map(|body| state.bodies.guard(body, held.clone(), upload));
    let response = next.run(request).await;
    drop(held);
    // In flight until its body is done: a streamed response counts until
    // it ends, so a graceful shutdown waits for it.
    response.map(|body| {
        axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            let _ = &_done;
            frame
        }))
    })
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; GET /v1/openapi.json lists every route",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
