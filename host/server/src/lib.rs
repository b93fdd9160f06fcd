//! `sluice-server`: the HTTP server of Sluice.
//!
//! - `state.rs`: what every handler shares ([`state::AppState`]); it imports
//!   no route.
//! - `routes/`: one module per resource (functions, invoke, invocations,
//!   triggers, events, dead letters, tokens, status, dashboard), each taking
//!   its state from `state.rs`.
//! - `error.rs`: the one place errors become responses (the `From` impls for
//!   the runtime's, the router's and the store's errors live there).
//! - `auth.rs`: tokens, scopes, and the credential that never goes further.
//! - `listener.rs` and `body.rs`: what a client connection and a request
//!   body may hold; `middleware.rs`: request ids, the drain at shutdown.
//! - `openapi.rs`: the OpenAPI document, by construction from the routes.
//! - `limits.rs`: the server's limits as plain data.
//!
//! May import `sluice-runtime`, `sluice-router` and `sluice-store`, never
//! the client or the CLI.

pub mod auth;
pub mod body;
pub mod error;
pub mod invocations;
pub mod limits;
pub mod listener;
pub mod middleware;
pub mod migrate;
pub mod openapi;
pub mod replica;
pub mod routes;
pub mod settings;
pub mod sinks;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router as Routes;
use sluice_runtime::functions::Functions;
use sluice_runtime::invoker::HostInvoker;
use sluice_runtime::metrics::Metrics;
use sluice_runtime::{Limits, Runtime};
use sluice_store::{FunctionSettings, Store};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
pub use crate::limits::ServerLimits;
use crate::state::{AppShared, AppState};
use sluice_router::dispatch::{DispatchLimits, Router};

/// Cluster mode: bytes of the traces stream per `--trace-max-events`.
const TRACE_BYTES_PER_EVENT: u64 = 4 * 1024;
pub use sluice_store::cluster::ClusterOptions;

/// `N pending deliveries (M of trigger a, ...)`, and how to end those
/// that can never succeed, for a refusal to leave embedded mode.
pub(crate) fn pending_by_trigger(store: &Store) -> String {
    let count = store.delivery_count();
    let deliveries = if count == 1 { "delivery" } else { "deliveries" };
    // What opening the store read already (no second scan of the journal).
    let records = match store.recovered_deliveries() {
        Ok(records) => records,
        Err(error) => {
            return format!("{count} pending {deliveries} (which triggers', not read: {error})");
        }
    };
    let mut by_trigger = std::collections::BTreeMap::<String, usize>::new();
    for record in records {
        *by_trigger.entry(record.trigger.to_string()).or_default() += 1;
    }
    let mut named: Vec<(usize, String)> = by_trigger.into_iter().map(|(t, n)| (n, t)).collect();
    // Most first, then by name.
    named.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let shown: Vec<String> = named
        .iter()
        .take(5)
        .map(
            |(n, trigger)| match trigger.strip_prefix(sluice_router::schedule::DIRECT_PREFIX) {
                Some(schedule) => format!("{n} of schedule {schedule}"),
                None => format!("{n} of trigger {trigger}"),
            },
        )
        .collect();
    let more = if named.len() > 5 { ", ..." } else { "" };
    format!(
        "{count} pending {deliveries} ({}{more}; deleting a trigger or schedule whose deliveries cannot succeed dead-letters them)",
        shown.join(", ")
    )
}

/// What `sluice serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data directory (store, compiled artifacts).
    pub data_dir: PathBuf,
    /// The runtime's limits.
    pub limits: Limits,
    /// The server's limits.
    pub server_limits: ServerLimits,
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
    /// Cluster mode: run as one of several identical nodes on NATS
    /// JetStream (see docs/cluster.md). `None`: the embedded store only.
    pub cluster: Option<ClusterOptions>,
    /// How long a client's repeat of an event is a duplicate (zero: off).
    pub dedupe_window: Duration,
    /// How long the trace of an event is kept (zero: none).
    pub trace_retention: Duration,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    if options.server_limits.dedupe_max_events == 0 && !options.dedupe_window.is_zero() {
        anyhow::bail!(
            "--dedupe-max-events must be at least 1 (to turn de-duplication off, use --dedupe-window 0s)"
        );
    }
    private_files();
    let store = Store::open_with(
        &options.data_dir,
        &sluice_store::OpenOptions {
            salvage_journal: options.salvage_journal,
            // In cluster mode JetStream keeps the window.
            dedupe_window: (!options.dedupe_window.is_zero() && options.cluster.is_none())
                .then_some(options.dedupe_window),
            dedupe_max_events: options.server_limits.dedupe_max_events,
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
        max_in_flight: options.server_limits.max_deliveries_in_flight,
        max_in_flight_per_trigger: options.server_limits.max_deliveries_per_trigger,
        max_hops: options.server_limits.max_event_hops,
        max_pending: options.server_limits.max_pending_deliveries,
        max_pending_per_broker: options.server_limits.max_pending_per_broker,
        dedupe: !options.dedupe_window.is_zero(),
        trace_retention: options.trace_retention,
        trace_max_events: options.server_limits.trace_max_events,
        ..DispatchLimits::default()
    };
    let invoker = Arc::new(HostInvoker::new(
        functions.clone(),
        Arc::new(sinks::HttpSinks::default()),
    ));
    let unfinished = match &options.cluster {
        Some(_) => invocations::unfinished(&store)?,
        None => 0,
    };
    if unfinished > 0 {
        anyhow::bail!(
            "this data directory holds {unfinished} queued or running asynchronous invocations accepted without --nats; cluster mode would never run them: run it once without --nats until they are finished, or start cluster mode on another --data-dir"
        );
    }
    let cluster = match &options.cluster {
        Some(_) if store.delivery_count() > 0 => {
            anyhow::bail!(
                "this data directory holds {} of events accepted without --nats; cluster mode would never deliver them: run it once without --nats until they are delivered (sluice_deliveries_pending 0), or start cluster mode on another --data-dir",
                pending_by_trigger(&store)
            );
        }
        Some(cluster) => {
            let mut cluster = cluster.clone();
            cluster.log_lines = options.limits.log_lines_per_function;
            let server_limits = &options.server_limits;
            // The bucket expires a record from its last write, queued and
            // running ones too: never sooner than ten minutes.
            cluster.invocation_retention =
                Duration::from_secs(server_limits.invocation_retention_secs.max(600));
            cluster.max_invocations = server_limits.max_async_invocations;
            cluster.max_invocation_bytes = server_limits.max_async_invocation_bytes;
            // Records of a few hundred bytes, several per event: 4 KiB an
            // event keeps about --trace-max-events typical traces.
            cluster.trace_retention = options.trace_retention;
            cluster.trace_max_bytes =
                (server_limits.trace_max_events as u64).saturating_mul(TRACE_BYTES_PER_EVENT);
            if !options.dedupe_window.is_zero() {
                cluster.dedupe_window = options.dedupe_window;
            }
            let cluster = sluice_store::cluster::Cluster::connect(cluster).await?;
            tracing::info!(nats = %cluster.options().urls.join(","), "cluster mode: state on NATS JetStream");
            Some(cluster)
        }
        None => None,
    };
    let event_router = match &cluster {
        Some(cluster) => Router::clustered(
            store.clone(),
            cluster.clone(),
            invoker,
            limits,
            metrics.registry(),
        ),
        None => Router::new(store.clone(), invoker, limits, metrics.registry())?,
    };
    for broker in &options.public_brokers {
        event_router.declare_broker(broker);
    }
    functions.set_router(event_router.clone());
    if cluster.is_none()
        && let Some(dir) = &options.examples
    {
        deploy_examples(&functions, dir).await?;
    }

    let synced = cluster
        .as_ref()
        .map(|_| Arc::new(replica::Synced::default()));
    let auth = Auth::init(
        store.clone(),
        &options.data_dir,
        options.admin_token.clone(),
        options.public_brokers.clone(),
        options.public_metrics,
        cluster.clone().zip(synced.clone()),
    )
    .await?;
    let replicas = cluster
        .as_ref()
        .zip(synced.clone())
        .map(|(cluster, synced)| {
            replica::start(
                cluster.clone(),
                functions.clone(),
                auth.clone(),
                options.examples.clone(),
                synced,
            )
        });
    functions.set_call_policy(Arc::new(auth::ScrubOwnTokens(auth.clone())));
    let state = AppState(Arc::new(AppShared {
        functions: functions.clone(),
        router: event_router.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        auth,
        draining: Arc::new(AtomicBool::new(false)),
        in_flight: Arc::default(),
        invocations: invocations::Invocations::new(
            options.server_limits.max_async_invocations,
            options.server_limits.max_async_invocation_bytes,
        ),
        bodies: body::BodyBudget::new(body_limits(&options.limits, &options.server_limits)),
        limits: options.server_limits.clone(),
        replica: synced,
    }));
    let dispatcher = tokio::spawn(event_router.run());
    let invocations = invocations::start(state.clone(), options.server_limits.async_workers)?;
    let app = router(state.clone());
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    if let Some(cluster) = &cluster {
        // Held until the process ends; then it lapses.
        drop(cluster.hold_lease(sluice_store::cluster::NodeInfo {
            id: cluster.node_id().to_owned(),
            name: cluster.options().name.clone(),
            listen: addr.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: sluice_store::now_rfc3339(),
        }));
    }
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
                    sluice_runtime::memory::release_freed();
                    tracing::debug!(dropped, "unloaded idle functions");
                }
            }
        })
    };

    state.ready.store(true, Ordering::Release);
    let drain = Duration::from_secs(options.server_limits.shutdown_timeout_secs);
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
    let connections = listener::ConnectionLimits {
        header_read_timeout: Duration::from_secs(
            options.server_limits.header_read_timeout_secs.max(1),
        ),
        keepalive_timeout: Duration::from_secs(options.server_limits.keepalive_timeout_secs.max(1)),
        send_timeout: Duration::from_secs(options.server_limits.send_timeout_secs.max(1)),
        max_connections: listener::connections_that_fit(options.server_limits.max_connections),
    };
    listener::serve(listener, app, connections, draining, Duration::from_secs(1)).await;
    reaper.abort();
    releaser.abort();
    for task in replicas.into_iter().flatten() {
        task.abort();
    }
    dispatcher.abort();
    invocations.abort();
    store.flush_all().await?;
    tracing::info!("sluice stopped");
    Ok(())
}

/// The bounds of request bodies: the budget is at least the largest single
/// body a route accepts.
fn body_limits(limits: &Limits, server: &ServerLimits) -> body::BodyLimits {
    let largest = limits.max_request_bytes.max(server.max_event_bytes);
    let budget = server.max_buffered_request_bytes.max(largest);
    if budget > server.max_buffered_request_bytes {
        tracing::info!(
            budget,
            "--max-buffered-request-bytes raised to the largest request or event body allowed"
        );
    }
    body::BodyLimits {
        grace: Duration::from_secs(server.body_grace_secs.max(1)),
        min_rate: server.min_body_rate,
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
        let current = functions.store().function(&name)?;
        if current
            .as_ref()
            .is_some_and(|record| record.digest == digest)
        {
            continue;
        }
        // New code for an example already here keeps its settings (an
        // operator may have changed them); a new example is public.
        let (settings, expected) = match current {
            Some(record) => (record.settings, record.version),
            None => (
                FunctionSettings {
                    visibility: sluice_store::Visibility::Public,
                    ..FunctionSettings::default()
                },
                0,
            ),
        };
        match functions
            .deploy(&name, bytes, settings, Some(expected))
            .await
        {
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
    let (routes, openapi) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::functions::routes(component_limit))
        .merge(routes::invoke::routes())
        .merge(routes::invocations::routes())
        .merge(routes::triggers::routes())
        .merge(routes::brokers::routes())
        .merge(routes::schedules::routes())
        .merge(routes::apply::routes())
        .merge(routes::events::routes())
        .merge(routes::dead_letters::routes())
        .merge(routes::tokens::routes())
        .merge(routes::status::routes())
        .merge(routes::dashboard::routes())
        .split_for_parts();
    openapi::publish(openapi::finish(openapi));
    routes
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::track,
        ))
        .with_state(state)
}
