//! What every HTTP handler shares. Imports no route: routes take their
//! `State` from here.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sluice_router::dispatch::Router;
use sluice_runtime::functions::Functions;

use crate::auth::Auth;

/// Shared state of the HTTP handlers: one `Arc`, because every request
/// clones it (each `State` extractor) and drops it again, and on two cores
/// the reference counts of six shared `Arc`s were a contended cache line.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<AppShared>);

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
    /// The server's limits.
    pub(crate) limits: crate::limits::ServerLimits,
    /// Cluster mode: whether this node's replica of functions and tokens
    /// is loaded.
    pub(crate) replica: Option<Arc<crate::replica::Synced>>,
}
