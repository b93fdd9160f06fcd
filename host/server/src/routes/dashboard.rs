//! The dashboard (`/ui`), the live event stream it reads, and the server
//! status it and `sluice status` show.
//!
//! The page is static HTML, CSS and JavaScript compiled into the binary (no
//! CDN, no build step). It asks for a token once, keeps it in the browser's
//! local storage, and calls the same API as the CLI with it.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;
use crate::state::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The dashboard's routes, the event stream and the status.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ui_redirect))
        .routes(routes!(ui_index))
        .routes(routes!(ui_script))
        .routes(routes!(ui_style))
        .routes(routes!(event_stream))
        .routes(routes!(status))
}

/// The dashboard: redirects to `/ui/`.
#[utoipa::path(get, path = "/ui", tag = "operations", security(()),
    responses((status = 308, description = "To /ui/")))]
async fn ui_redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// The dashboard page (anonymous; it asks for a token).
#[utoipa::path(get, path = "/ui/", tag = "operations", security(()),
    responses((status = 200, description = "HTML", content_type = "text/html")))]
async fn ui_index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/ui/app.js", tag = "operations", security(()),
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
async fn ui_script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/ui/app.css", tag = "operations", security(()),
    responses((status = 200, description = "CSS", content_type = "text/css")))]
async fn ui_style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (http::header::CONTENT_TYPE, content_type),
            (http::header::CACHE_CONTROL, "no-cache"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Server-sent events: every accepted event (`event: accepted`) and every
/// delivery outcome (`delivered`, `retrying`, `dead_lettered`) as JSON, live.
/// Lossy: a reader too slow to keep up gets `event: lagged` with how many
/// entries it missed. Ends when the server begins to shut down.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    responses(
        (status = 200, description = "A text/event-stream", content_type = "text/event-stream"),
        crate::openapi::AuthErrors))]
async fn event_stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.router.subscribe();
    let stream = futures::stream::unfold((receiver, state), |(mut receiver, state)| async move {
        loop {
            if state.draining.load(Ordering::Acquire) {
                return None;
            }
            let next = tokio::time::timeout(Duration::from_secs(1), receiver.recv()).await;
            let event = match next {
                Err(_) => continue, // look at `draining` again
                Ok(Ok(entry)) => Event::default()
                    .event(entry.kind)
                    .json_data(&entry)
                    .unwrap_or_default(),
                Ok(Err(RecvError::Lagged(missed))) => Event::default()
                    .event("lagged")
                    .data(json!({"missed": missed}).to_string()),
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok(event), (receiver, state)));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The server at a glance.
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "Status", body = crate::openapi::ServerStatus),
        crate::openapi::AuthErrors))]
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.functions.store();
    let mut deliveries_pending = json!(state.router.pending());
    // In cluster mode the cluster's, read within the request budget (the
    // node's own count, 0, if the cluster does not answer).
    let dead_letters = match state.functions.cluster() {
        None => store.dead_letter_count(),
        Some(cluster) => {
            let budget = cluster.options().request_timeout;
            match tokio::time::timeout(budget, state.router.dead_letter_count()).await {
                Ok(Ok(count)) => count,
                _ => store.dead_letter_count(),
            }
        }
    };
    // Cluster mode: this node, the live ones, JetStream, and the cluster's
    // backlog from the consumers' counts.
    let cluster = match state.functions.cluster() {
        None => None,
        Some(cluster) => {
            // Bounded as a whole: the page must answer while NATS does not.
            let budget = cluster.options().request_timeout;
            let both = tokio::time::timeout(budget, async {
                tokio::join!(cluster.live_nodes(), cluster.jetstream_status())
            })
            .await;
            let (nodes, jetstream) = match both {
                Ok((nodes, jetstream)) => (nodes, json!(jetstream)),
                Err(_) => (
                    Err(sluice_store::StoreError::Unavailable(
                        "no answer".to_owned(),
                    )),
                    json!({"healthy": false, "reason": format!("JetStream did not answer within {budget:?}")}),
                ),
            };
            if let Some(backlog) = jetstream.get("backlog") {
                let count = |field: &str| backlog[field].as_u64().unwrap_or(0);
                deliveries_pending = json!(count("deliveries_waiting") + count("deliveries_held"));
            }
            let mut status = json!({
                "node": cluster.options().name,
                "node_id": cluster.node_id(),
                "jetstream": jetstream,
                "trace_records_dropped": cluster.trace_records_dropped(),
            });
            match nodes {
                Ok(nodes) => status["nodes"] = json!(nodes),
                Err(error) => {
                    status["nodes"] = json!([]);
                    status["nodes_error"] = json!(error.to_string());
                }
            }
            Some(status)
        }
    };
    // Ready as /readyz says it, by the same checks (its one JetStream
    // probe, not the fuller status read above).
    let not_ready = if !store.healthy() {
        Some("a write to disk failed (full disk?); fix it and restart the server".to_owned())
    } else if !state.ready.load(Ordering::Acquire) {
        Some("starting or shutting down".to_owned())
    } else {
        let node = state
            .router
            .cluster_readiness()
            .and_then(|()| (state.replica.as_ref()).map_or(Ok(()), |replica| replica.readiness()));
        let node = match (node, state.router.cluster()) {
            (Ok(()), Some(nats)) => nats.probe().await,
            (other, _) => other,
        };
        node.err()
    };
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.functions.uptime().as_secs(),
        "ready": not_ready.is_none(),
        "store_healthy": store.healthy(),
        "functions": store.function_count(),
        "functions_loaded": state.functions.loaded_count(),
        // The router's triggers: in cluster mode the cluster's, not this
        // node's store.
        "triggers": state.router.triggers().len(),
        "deliveries_pending": deliveries_pending,
        "dead_letters": dead_letters,
        "requests_in_flight": state.in_flight.load(Ordering::Acquire),
    });
    if let Some(reason) = not_ready {
        body["not_ready"] = json!(reason);
    }
    if let Some(cluster) = cluster {
        body["cluster"] = cluster;
    }
    Ok(axum::Json(body).into_response())
}
