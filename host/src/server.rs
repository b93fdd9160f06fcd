//! The HTTP server: management API, function routes, health and metrics.
//!
//! Routes (see DESIGN.md): `PUT/GET/PATCH/DELETE /v1/functions/{name}`,
//! `GET /v1/functions`, `POST /v1/functions/{name}/invoke`,
//! `ANY /fn/{name}/{path...}`, `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router as Routes;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use sluice_store::{FunctionRecord, FunctionSettings, Store};
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::events::HostInvoker;
use crate::functions::{Function, Functions};
use crate::invoke::CallOptions;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::settings;
use sluice_router::dispatch::{DispatchLimits, Router};

/// What `sluice serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data directory (store, compiled artifacts).
    pub data_dir: PathBuf,
    /// Server-wide limits.
    pub limits: Limits,
    /// Deploy every `NAME.wasm` in this folder at start, unless a function
    /// of that name already runs the same bytes.
    pub examples: Option<PathBuf>,
    /// An admin token to accept instead of creating one (`SLUICE_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Brokers that accept events without a token.
    pub public_brokers: Vec<String>,
    /// Open a damaged delivery journal by dropping what cannot be read.
    pub salvage_journal: bool,
    /// Serve `/metrics` without a token.
    pub public_metrics: bool,
}

/// Shared state of the HTTP handlers: one `Arc`, because every request
/// clones it (each `State` extractor) and drops it again, and on two cores
/// the reference counts of six shared `Arc`s were a contended cache line.
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppShared {
    pub(crate) functions: Arc<Functions>,
    pub(crate) router: Arc<Router>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) auth: Arc<Auth>,
    /// Set once shutdown began: new requests get 503.
    pub(crate) draining: Arc<AtomicBool>,
    /// Requests being served now.
    pub(crate) in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Asynchronous invocations.
    pub(crate) invocations: Arc<crate::invocations::Invocations>,
    /// The bounds of request bodies.
    pub(crate) bodies: crate::body::BodyBudget,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    private_files();
    let store = Store::open_with(
        &options.data_dir,
        &sluice_store::OpenOptions {
            salvage_journal: options.salvage_journal,
        },
    )?;
    let runtime = Arc::new(Runtime::new(&options.limits)?);
    let metrics = Metrics::new();
    let functions = Functions::new(
        runtime,
        store.clone(),
        metrics.clone(),
        &options.data_dir.join("artifacts"),
    )?;
    let limits = DispatchLimits {
        max_in_flight: options.limits.max_deliveries_in_flight,
        max_in_flight_per_trigger: options.limits.max_deliveries_per_trigger,
        max_hops: options.limits.max_event_hops,
        max_pending: options.limits.max_pending_deliveries,
        max_pending_per_broker: options.limits.max_pending_per_broker,
        ..DispatchLimits::default()
    };
    let invoker = Arc::new(HostInvoker::new(functions.clone()));
    let event_router = Router::new(store.clone(), invoker, limits, metrics.registry())?;
    for broker in &options.public_brokers {
        event_router.declare_broker(broker);
    }
    functions.set_router(event_router.clone());
    if let Some(dir) = &options.examples {
        deploy_examples(&functions, dir).await?;
    }

    let auth = Auth::init(
        store.clone(),
        &options.data_dir,
        options.admin_token.clone(),
        options.public_brokers.clone(),
        options.public_metrics,
    )
    .await?;
    functions.set_call_policy(Arc::new(crate::auth::ScrubOwnTokens(auth.clone())));
    let state = AppState(Arc::new(AppShared {
        functions: functions.clone(),
        router: event_router.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        auth,
        draining: Arc::new(AtomicBool::new(false)),
        in_flight: Arc::default(),
        invocations: crate::invocations::Invocations::new(options.limits.max_async_invocations),
        bodies: crate::body::BodyBudget::new(body_limits(&options.limits)),
    }));
    let dispatcher = tokio::spawn(event_router.run());
    let invocations = crate::invocations::start(state.clone(), options.limits.async_workers)?;
    let app = router(state.clone());
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %options.data_dir.display(), "sluice listening");
    // Tests and scripts read this line to learn the port.
    println!("sluice listening on http://{addr}");

    let idle = Duration::from_secs(options.limits.idle_unload_secs);
    // Once calls stop (a second without any ending), the pages of freed
    // slots still waiting for their decommit batch go back to the kernel.
    let releaser = {
        let functions = functions.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let (mut seen, mut waiting) = (0, false);
            loop {
                every.tick().await;
                let ended = functions.runtime().ended();
                if ended != seen {
                    (seen, waiting) = (ended, true);
                    continue;
                }
                if std::mem::take(&mut waiting) {
                    let functions = functions.clone();
                    let released = tokio::task::spawn_blocking(move || {
                        functions.runtime().release_waiting_slots()
                    })
                    .await;
                    if let Ok(Err(error)) = released {
                        tracing::warn!(%error, "could not release freed instance slots");
                    }
                }
            }
        })
    };
    let reaper = {
        let functions = functions.clone();
        tokio::spawn(async move {
            let mut every =
                tokio::time::interval(idle.clamp(Duration::from_secs(1), Duration::from_secs(60)));
            loop {
                every.tick().await;
                let dropped = functions.unload_idle(idle);
                if dropped > 0 {
                    crate::memory::release_freed();
                    tracing::debug!(dropped, "unloaded idle functions");
                }
            }
        })
    };

    state.ready.store(true, Ordering::Release);
    let drain = Duration::from_secs(options.limits.shutdown_timeout_secs);
    let draining = {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            state.draining.store(true, Ordering::Release);
            state.ready.store(false, Ordering::Release);
            // New requests now get 503 with Retry-After; wait for the ones
            // already running and for deliveries in flight.
            let deadline = tokio::time::Instant::now() + drain;
            let requests = async {
                while state.in_flight.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let drained = tokio::time::timeout_at(deadline, async {
                tokio::join!(requests, state.router.stop())
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    in_flight = state.in_flight.load(Ordering::Acquire),
                    "shutdown deadline passed with work in flight; unfinished deliveries resume at the next start"
                );
            }
        }
    };
    let connections = crate::listener::ConnectionLimits {
        header_read_timeout: Duration::from_secs(options.limits.header_read_timeout_secs.max(1)),
        keepalive_timeout: Duration::from_secs(options.limits.keepalive_timeout_secs.max(1)),
        max_connections: crate::listener::connections_that_fit(options.limits.max_connections),
    };
    crate::listener::serve(listener, app, connections, draining, Duration::from_secs(1)).await;
    reaper.abort();
    releaser.abort();
    dispatcher.abort();
    invocations.abort();
    store.flush_all().await?;
    tracing::info!("sluice stopped");
    Ok(())
}

/// The bounds of request bodies: the budget is at least the largest single
/// body a route accepts.
fn body_limits(limits: &Limits) -> crate::body::BodyLimits {
    let largest = limits.max_request_bytes.max(limits.max_event_bytes);
    let budget = limits.max_buffered_request_bytes.max(largest);
    if budget > limits.max_buffered_request_bytes {
        tracing::info!(
            budget,
            "--max-buffered-request-bytes raised to the largest request or event body allowed"
        );
    }
    crate::body::BodyLimits {
        grace: Duration::from_secs(limits.body_grace_secs.max(1)),
        min_rate: limits.min_body_rate,
        budget_bytes: usize::try_from(budget).unwrap_or(usize::MAX),
        upload_budget_bytes: usize::try_from(limits.max_component_bytes.saturating_add(1 << 20))
            .unwrap_or(usize::MAX),
    }
}

/// Makes every file and directory the server creates from here on private
/// to its owner (the data directory holds secrets): umask `077`.
fn private_files() {
    #[allow(unsafe_code)]
    // SAFETY: `umask` only sets the process's file mode creation mask; it
    // takes no pointers and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: refusing new requests, finishing in-flight ones");
}

async fn deploy_examples(functions: &Functions, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "wasm") {
            continue;
        }
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .replace('_', "-");
        let bytes = std::fs::read(&path)?;
        let digest = sluice_store::digest_of(&bytes);
        if functions
            .store()
            .function(&name)?
            .is_some_and(|record| record.digest == digest)
        {
            continue;
        }
        let settings = FunctionSettings {
            visibility: sluice_store::Visibility::Public,
            ..FunctionSettings::default()
        };
        match functions.deploy(&name, bytes, settings).await {
            Ok(record) => tracing::info!(function = %record.name, "example deployed"),
            Err(error) => tracing::warn!(function = %name, %error, "example not deployed"),
        }
    }
    Ok(())
}

/// The router with every route. Every route goes through an
/// [`OpenApiRouter`], so each is in the OpenAPI document by construction.
pub fn router(state: AppState) -> Routes {
    let component_limit = usize::try_from(state.functions.runtime().limits().max_component_bytes)
        .unwrap_or(usize::MAX);
    let (deploy_schemas, deploy_paths, deploy) =
        routes!(get_function, put_function, patch_function, delete_function);
    let deploy = deploy.layer(DefaultBodyLimit::max(
        component_limit.saturating_add(1 << 20),
    ));
    let (routes, openapi) = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes((deploy_schemas, deploy_paths, deploy))
        .routes(routes!(list_functions))
        .routes(routes!(invoke_function))
        .routes(routes!(function_logs))
        .routes(routes!(function_invocations))
        .routes(routes!(crate::invocations::get_invocation))
        .routes(routes!(call_function_root))
        .routes(routes!(call_function_slash))
        .routes(routes!(call_function))
        .merge(crate::api_events::routes())
        .merge(crate::api_tokens::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .merge(crate::dashboard::routes())
        .split_for_parts();
    crate::openapi::publish(crate::openapi::finish(openapi));
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

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
async fn track(
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
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; GET /v1/openapi.json lists every route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = crate::openapi::Status)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// 200 once started, until shutdown begins or a disk write fails.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Status),
        (status = 503, description = "Starting, draining, or the store failed", body = crate::openapi::Error)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.functions.store().healthy() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failed",
            "a write to disk failed (full disk?); fix it and restart the server",
        )
        .into_response();
    }
    if state.ready.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or stopping",
        )
        .into_response()
    }
}

/// Prometheus metrics (text exposition format); see docs/observability.md.
/// Needs a `metrics` or `admin` token unless the server runs with
/// `--public-metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = []), ()),
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String),
        crate::openapi::AuthErrors))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .functions
        .runtime()
        .observe_pool(state.functions.metrics());
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.functions.metrics().render(),
    )
}

/// What the API shows instead of a secret's value.
pub const REDACTED: &str = "<redacted>";

/// The API view of a function record: secrets' values are never shown.
fn view(record: &FunctionRecord) -> serde_json::Value {
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

/// Reads a body up to `limit` bytes; 413 past it (before reading it all
/// when `Content-Length` says so).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    // Copied into one buffer as the chunks arrive, each dropped at once: the
    // memory a body holds is the bytes that arrived (what the body budget
    // counts), not those plus the chunks' buffers, nor twice that at the end.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = Limited::new(body, limit);
    let capacity = declared.map_or(0, |len| usize::try_from(len).unwrap_or(0).min(limit));
    let mut buffer = bytes::BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    buffer.extend_from_slice(data);
                }
            }
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(ApiError::body_too_large(limit as u64));
            }
            Err(error) => return Err(ApiError::body_error(&*error)),
        }
    }
    Ok(buffer.freeze())
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Deploys (or replaces) function `name`. The body is the component
/// (`application/wasm`), or multipart with a `component` part and a
/// `settings` JSON part; settings may also come as query parameters.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name"),
        crate::openapi::SettingsQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::Function),
        (status = 201, description = "Deployed", body = crate::openapi::Function),
        (status = 400, description = "Invalid name, settings or component (a core module, another world, imports Sluice does not provide)", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 409, description = "The server holds its limit of functions", body = crate::openapi::Error),
        (status = 413, description = "Past `--max-component-bytes`", body = crate::openapi::Error)))]
async fn put_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.functions.runtime().limits().max_component_bytes;
    let query = request.uri().query().map(str::to_string);
    let (bytes, mut settings) = if is_multipart(request.headers()) {
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
                "config" => config = Some(settings::from_json(&data)?),
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
        (component, config.unwrap_or_default())
    } else {
        let (parts, body) = request.into_parts();
        (
            read_body(&parts.headers, body, limit).await?,
            FunctionSettings::default(),
        )
    };
    // Checked after the body is read, so the connection stays reusable.
    crate::functions::validate_name(&name)?;
    settings::apply_query(&mut settings, query.as_deref())?;
    let record = state
        .functions
        .deploy(&name, bytes.to_vec(), settings)
        .await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view(&record))).into_response())
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
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn patch_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let record = state
        .functions
        .store()
        .function(&name)?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let query = request.uri().query().map(str::to_string);
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, 1 << 20).await?;
    let mut settings = if body.is_empty() {
        record.settings.clone()
    } else {
        settings::merge_patch(&record.settings, &body)?
    };
    settings::apply_query(&mut settings, query.as_deref())?;
    let record = state.functions.update_settings(&name, settings).await?;
    Ok(axum::Json(view(&record)).into_response())
}

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
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error)))]
async fn function_logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<LogQuery>,
) -> Result<Response, ApiError> {
    if state.functions.store().function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    let since = query.since.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).min(MAX_LOG_PAGE);
    let lines = state.functions.store().logs(&name, since, limit)?;
    let next = lines.last().map_or(since, |line| line.seq);
    Ok(axum::Json(json!({"logs": lines, "next": next})).into_response())
}

/// The function's recent invocations (kept in memory since start), newest first.
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

/// Invokes function `name`: an event function takes one CloudEvent (any
/// mode) and answers its replies; an HTTP function gets the request at `/`.
/// With `?async=true`: 202 and an invocation id to poll.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke",
    params(("name" = String, Path, description = "Function name"),
        ("async" = Option<bool>, Query, description = "Run in the background")),
    request_body(content = String, description = "A CloudEvent for an event function; any body for an HTTP one"),
    responses(
        (status = 200, description = "The function's answer (`{\"replies\": [...]}` for an event function)"),
        (status = 202, description = "Queued (`?async=true`)", body = crate::openapi::Invocation),
        (status = 400, description = "Invalid input", body = crate::openapi::Error),
        crate::openapi::AuthErrors,
        (status = 404, description = "No such function", body = crate::openapi::Error),
        (status = 422, description = "The event function failed permanently", body = crate::openapi::Error),
        (status = 500, description = "The function failed", body = crate::openapi::Error)),
    security((), ("bearer" = [])))]
async fn invoke_function(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let asynchronous = request.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "async" && v == "true")
    });
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
        return crate::api_events::invoke_event_function(state, &function, request).await;
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
    request_body(content = String, description = "Passed to the guest as is"),
    responses(
        (status = 200, description = "Whatever the function answers"),
        crate::openapi::CallErrors),
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
    request_body(content = String, description = "Passed to the guest as is"),
    responses(
        (status = 200, description = "Whatever the function answers"),
        crate::openapi::CallErrors),
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
    request_body(content = String, description = "Passed to the guest as is"),
    responses(
        (status = 200, description = "Whatever the function answers"),
        crate::openapi::CallErrors),
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

/// Sends `request` to `function` as a request for `path_and_query`.
async fn forward(
    state: &AppState,
    function: &Arc<Function>,
    request: Request,
    path_and_query: String,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, function.limits.max_request_bytes).await?;
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
    let trace = crate::trace::TraceContext::for_invocation(
        parts
            .headers
            .get(crate::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let options = CallOptions {
        trace: Some(trace),
        ..CallOptions::default()
    };
    let response = state
        .functions
        .call_http(function, http::Request::from_parts(parts, body), &options)
        .await?;
    let (mut parts, body) = response.into_parts();
    // The body is complete: let the server frame it.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(body)))
}
