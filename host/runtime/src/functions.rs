//! The function tier: state built once per deploy.
//!
//! [`Functions`] validates and compiles uploaded components, keeps each
//! compiled artifact on disk keyed by digest and engine (so a restart loads
//! instead of recompiling), and holds one [`Function`] per loaded function:
//! its `InstancePre`, resolved limits and concurrency permits. No instance
//! lives here: every call instantiates afresh (see `invoke.rs`). A function
//! idle past `--idle-unload-secs` is dropped from memory and reloaded from its
//! artifact on the next call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_store::{FunctionRecord, FunctionSettings, Store, StoreError, World, digest_of};
use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::capabilities::keyvalue::KvContext;
use crate::engine::event_bindings::EventHandlerPre;
use crate::engine::{InvocationState, Runtime};
use crate::limits::{FunctionLimits, InvalidSetting};
use crate::metrics::Metrics;

/// A function's pre-instantiated component, by world.
#[derive(Clone)]
pub enum Pre {
    /// A `wasi:http/proxy` component.
    Http(ProxyPre<InvocationState>),
    /// A `sluice:function/event-function` component.
    Event(EventHandlerPre<InvocationState>),
}

/// The largest initial linear memory among `component`'s modules, in bytes.
fn min_memory_bytes(component: &Component) -> u64 {
    component
        .resources_required()
        .and_then(|required| required.max_initial_memory_size)
        .unwrap_or(0)
        .saturating_mul(64 << 10)
}

/// A loaded function: everything a call needs except the instance.
pub struct Function {
    /// The stored record.
    pub record: FunctionRecord,
    /// Resolved limits.
    pub limits: FunctionLimits,
    /// The pre-instantiated component.
    pub pre: Pre,
    /// Environment variables (settings `env` and `secrets`), ready for the
    /// WASI context.
    pub env: Vec<(String, String)>,
    /// The same values for `wasi:config`.
    pub config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    /// What its invocations may do with key-value data.
    pub kv: Arc<KvContext>,
    /// One permit per instance that may run at once.
    pub permits: Arc<Semaphore>,
    /// The largest initial linear memory of the component's modules: a
    /// memory limit below it could never instantiate.
    pub min_memory_bytes: u64,
    last_used_ms: AtomicU64,
    /// True until the first invocation of this loaded copy.
    cold: std::sync::atomic::AtomicBool,
}

impl Function {
    /// True for the first invocation after the function was loaded (a cold
    /// start), false after.
    pub fn take_cold(&self) -> bool {
        self.cold.load(Ordering::Relaxed) && self.cold.swap(false, Ordering::Relaxed)
    }
}

/// One finished invocation, for the function's recent list.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentInvocation {
    /// Unix milliseconds when it ended.
    pub time_ms: u64,
    /// `ok`, `timeout`, `trap`, ...
    pub outcome: &'static str,
    /// Wall-clock time in microseconds.
    pub duration_us: u64,
    /// The most linear memory it held.
    pub memory_peak_bytes: u64,
    /// Whether it was a cold start.
    pub cold: bool,
}

/// Recent invocations kept per function (in memory, since start).
pub const RECENT_INVOCATIONS: usize = 50;

/// Wall-clock unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a deploy or settings change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The name is not a DNS label.
    #[error(
        "invalid function name {0:?}: use 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
    )]
    InvalidName(String),
    /// The bytes are not a usable component.
    #[error("invalid component: {0}")]
    InvalidComponent(String),
    /// A setting is out of range.
    #[error(transparent)]
    InvalidSetting(#[from] InvalidSetting),
    /// The component is larger than `--max-component-bytes`.
    #[error("component is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The server holds `--max-functions` functions already.
    #[error("the server already holds its limit of {limit} functions; delete one first")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// No such function (settings change, delete).
    #[error("function {0:?} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Checks that `name` is a DNS label: lowercase letters, digits and `-`, at
/// most 63 characters, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), DeployError> {
    if sluice_store::is_dns_label(name) {
        Ok(())
    } else {
        Err(DeployError::InvalidName(name.to_string()))
    }
}

/// Every loaded function, and the means to load more.
pub struct Functions {
    me: std::sync::Weak<Functions>,
    runtime: Arc<Runtime>,
    store: Store,
    metrics: Metrics,
    artifacts: PathBuf,
    loaded: RwLock<HashMap<String, Arc<Function>>>,
    /// One lock per function being loaded: a slow compile of one function
    /// never holds up loading another.
    loading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pool_permits: Arc<Semaphore>,
    /// One permit per MiB of `--memory-budget`: a running instance holds
    /// its memory limit's worth.
    memory: Arc<Semaphore>,
    memory_budget_mb: u64,
    started: Instant,
    router: std::sync::OnceLock<Arc<sluice_router::dispatch::Router>>,
    call_policy: std::sync::OnceLock<Arc<dyn crate::capabilities::outbound::CallPolicy>>,
    recent: std::sync::Mutex<HashMap<String, std::collections::VecDeque<RecentInvocation>>>,
    /// Cluster mode: the queue of guest output on its way to the cluster's
    /// logs stream (one task publishes it, in order).
    cluster_logs: std::sync::OnceLock<tokio::sync::mpsc::Sender<ToCluster>>,
}

/// What goes to the cluster after a call, in order, from one task.
pub(crate) enum ToCluster {
    /// A call's output.
    Logs(LogBatch),
    /// A finished call for its function's recent list: function, record.
    Call(String, Vec<u8>),
}

/// One call's output for the cluster's logs: function, invocation, and
/// (stream, line) pairs.
pub(crate) type LogBatch = (String, String, Vec<(&'static str, String)>);

/// Calls' outputs queued for the cluster at most: past it, output is
/// dropped (a guest that prints without end cannot fill the host's memory
/// or hold up its neighbours' logs for long).
const CLUSTER_LOG_QUEUE: usize = 64;

impl Functions {
    /// A registry over `store`, keeping compiled artifacts under `artifacts_root`.
    pub fn new(
        runtime: Arc<Runtime>,
        store: Store,
        metrics: Metrics,
        artifacts_root: &Path,
    ) -> anyhow::Result<Arc<Functions>> {
        let artifacts = artifacts_root.join(runtime.engine_hash());
        std::fs::create_dir_all(&artifacts)?;
        let pool = runtime.limits().pool_instances as usize;
        let memory_budget_mb = runtime
            .limits()
            .memory_budget
            .mebibytes(crate::limits::machine_memory())
            .min(u64::from(u32::MAX >> 3));
        tracing::info!(memory_budget_mb, "memory budget of running instances");
        // A function deployed under a larger budget than this start's fails
        // every call and delivery at once: say so now, not per call.
        for record in store.functions().unwrap_or_default() {
            let needed_mb = runtime.limits().resolve(&record.settings).memory_bytes >> 20;
            if needed_mb > memory_budget_mb {
                tracing::warn!(
                    function = %record.name,
                    needed_mb,
                    memory_budget_mb,
                    "this function's memory_mb passes the memory budget: every call and delivery to it fails (500 memory_over_budget) until --memory-budget is raised or memory_mb lowered"
                );
            }
        }
        Ok(Arc::new_cyclic(|me| Functions {
            me: me.clone(),
            runtime,
            store,
            metrics,
            artifacts,
            loaded: RwLock::new(HashMap::new()),
            loading: std::sync::Mutex::default(),
            pool_permits: Arc::new(Semaphore::new(pool)),
            memory: Arc::new(Semaphore::new(memory_budget_mb as usize)),
            memory_budget_mb,
            started: Instant::now(),
            router: std::sync::OnceLock::new(),
            call_policy: std::sync::OnceLock::new(),
            recent: std::sync::Mutex::new(HashMap::new()),
            cluster_logs: std::sync::OnceLock::new(),
        }))
    }

    /// Cluster mode: queues a call's output for the cluster's logs (or a
    /// finished call for its recent list), false when the queue is full (it
    /// is dropped).
    pub(crate) fn send_to_cluster(
        &self,
        cluster: &sluice_store::cluster::Cluster,
        item: ToCluster,
    ) -> bool {
        let sender = self.cluster_logs.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<ToCluster>(CLUSTER_LOG_QUEUE);
            let cluster = cluster.clone();
            tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    let (function, result) = match item {
                        ToCluster::Logs((function, invocation, lines)) => {
                            let rows: Vec<(&str, &str, &str)> = lines
                                .iter()
                                .map(|(stream, line)| (invocation.as_str(), *stream, line.as_str()))
                                .collect();
                            let result = cluster.append_logs(&function, &rows).await;
                            (function, result)
                        }
                        ToCluster::Call(function, record) => {
                            let result = cluster.append_call(&function, record).await;
                            (function, result)
                        }
                    };
                    if let Err(error) = result {
                        // Once per call while NATS is away: not a warning each.
                        tracing::debug!(%function, %error, "could not keep a call's output or record");
                    }
                }
            });
            tx
        });
        sender.try_send(item).is_ok()
    }

    /// Keeps `invocation` in `function`'s recent list (in cluster mode
    /// also the cluster's, with this node's name).
    pub(crate) fn remember(&self, function: &str, invocation: RecentInvocation) {
        if let Some(cluster) = self.cluster() {
            let mut record = serde_json::to_value(&invocation).expect("JSON");
            record["node"] = cluster.options().name.clone().into();
            let record = serde_json::to_vec(&record).expect("JSON");
            if !self.send_to_cluster(&cluster, ToCluster::Call(function.to_owned(), record)) {
                tracing::debug!(%function, "a call's record dropped: the queue to the cluster is full");
            }
        }
        let mut recent = self.recent.lock().unwrap();
        let list = match recent.get_mut(function) {
            Some(list) => list,
            None => recent.entry(function.to_string()).or_default(),
        };
        if list.len() == RECENT_INVOCATIONS {
            list.pop_front();
        }
        list.push_back(invocation);
    }

    /// `function`'s recent invocations, newest first.
    pub fn recent(&self, function: &str) -> Vec<RecentInvocation> {
        self.recent
            .lock()
            .unwrap()
            .get(function)
            .map(|list| list.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// A handle on this registry, for calls that outlive a borrow of it
    /// (function-to-function calls).
    pub(crate) fn handle(&self) -> std::sync::Weak<Functions> {
        self.me.clone()
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Connects the router, so guests can publish events.
    pub fn set_router(&self, router: Arc<sluice_router::dispatch::Router>) {
        let _ = self.router.set(router);
    }

    /// Sets the server's policy for function-to-function calls.
    pub fn set_call_policy(&self, policy: Arc<dyn crate::capabilities::outbound::CallPolicy>) {
        let _ = self.call_policy.set(policy);
    }

    /// The policy for function-to-function calls, once set.
    pub(crate) fn call_policy(
        &self,
    ) -> Option<&Arc<dyn crate::capabilities::outbound::CallPolicy>> {
        self.call_policy.get()
    }

    /// The router, once connected.
    pub fn router(&self) -> Option<Arc<sluice_router::dispatch::Router>> {
        self.router.get().cloned()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The memory budget: one permit per MiB.
    pub(crate) fn memory_permits(&self) -> &Arc<Semaphore> {
        &self.memory
    }

    /// `--memory-budget` in MiB.
    pub fn memory_budget_mb(&self) -> u64 {
        self.memory_budget_mb
    }

    /// Refuses settings whose memory limit is below what the component
    /// needs to start (such a function could never run).
    fn check_floor(&self, settings: &FunctionSettings, min_bytes: u64) -> Result<(), DeployError> {
        let limit = self.runtime.limits().resolve(settings).memory_bytes;
        if limit < min_bytes {
            return Err(DeployError::InvalidSetting(InvalidSetting {
                setting: "memory_mb",
                reason: format!(
                    "{} MiB is less than the {} MiB of linear memory the component needs to start",
                    limit >> 20,
                    min_bytes.div_ceil(1 << 20)
                ),
            }));
        }
        Ok(())
    }

    /// Refuses settings whose memory limit alone passes the budget (such a
    /// function could never run).
    fn check_budget(&self, settings: &FunctionSettings) -> Result<(), DeployError> {
        let mb = self.runtime.limits().resolve(settings).memory_bytes >> 20;
        if mb > self.memory_budget_mb {
            return Err(DeployError::InvalidSetting(InvalidSetting {
                setting: "memory_mb",
                reason: format!(
                    "{mb} MiB is more than the server's memory budget of {} MiB (--memory-budget)",
                    self.memory_budget_mb
                ),
            }));
        }
        Ok(())
    }

    /// Permits for instances across all functions (the pool's size).
    pub(crate) fn pool_permits(&self) -> &Arc<Semaphore> {
        &self.pool_permits
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.artifacts.join(format!("{hex}.cwasm"))
    }

    /// Validates, compiles and stores `bytes` as function `name`.
    ///
    /// `expected_version` as for [`sluice_store::Store::deploy_function`]:
    /// with it, a function changed meanwhile is
    /// [`StoreError::Changed`](sluice_store::StoreError::Changed).
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<FunctionRecord, DeployError> {
        validate_name(name)?;
        let limit = self.runtime.limits().max_component_bytes;
        if bytes.len() as u64 > limit {
            return Err(DeployError::TooLarge { limit });
        }
        self.runtime.limits().validate(&settings)?;
        self.check_budget(&settings)?;
        let max = self.runtime.limits().max_functions;
        if self.store.function(name)?.is_none() && self.store.function_count() >= max {
            return Err(DeployError::TooMany { limit: max });
        }
        sluice_store::check_component_bytes(&bytes).map_err(DeployError::InvalidComponent)?;
        let digest = digest_of(&bytes);
        let (component, bytes) = match self.load_artifact(&digest).await {
            Some(component) => (component, bytes),
            None => {
                let (component, bytes) = self.compile(bytes).await?;
                self.write_artifact(&digest, &component).await;
                (component, bytes)
            }
        };
        let (world, pre) = self.prepare(&component)?;
        let min_memory = min_memory_bytes(&component);
        self.check_floor(&settings, min_memory)?;
        let record = match self.cluster() {
            Some(cluster) => {
                let record = cluster
                    .deploy_function(name, &bytes, world, settings, expected_version)
                    .await?;
                self.keep_replica(&record, Some(&bytes)).await?;
                record
            }
            None => {
                self.store
                    .deploy_function(name, &bytes, world, settings, expected_version)
                    .await?
            }
        };
        if self
            .cached(name)
            .is_some_and(|loaded| loaded.record == record)
        {
            // The same code and settings again: the loaded function (its
            // concurrency count with it) stays.
            return Ok(record);
        }
        let function = self.build(record.clone(), pre, min_memory);
        self.loaded
            .write()
            .unwrap()
            .insert(name.to_string(), Arc::new(function));
        tracing::info!(function = %name, version = record.version, world = world.as_str(), digest = %record.digest, "deployed");
        Ok(record)
    }

    /// Replaces the settings of function `name` (if still at
    /// `expected_version`, when given).
    pub async fn update_settings(
        &self,
        name: &str,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<FunctionRecord, DeployError> {
        self.runtime.limits().validate(&settings)?;
        self.check_budget(&settings)?;
        // A component that no longer loads can still have its settings
        // changed (the floor is checked when it can be).
        let before = match self.get(name).await {
            Ok(Some(function)) => {
                self.check_floor(&settings, function.min_memory_bytes)?;
                Some(function.record.version)
            }
            Ok(None) | Err(_) => None,
        };
        let record = match self.cluster() {
            Some(cluster) => {
                let record = cluster
                    .update_function_settings(name, settings, expected_version)
                    .await?
                    .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
                self.keep_replica(&record, None).await?;
                record
            }
            None => self
                .store
                .update_function_settings(name, settings, expected_version)
                .await?
                .ok_or_else(|| DeployError::NotFound(name.to_string()))?,
        };
        if before != Some(record.version) {
            // The next call reloads with the new settings (from the artifact).
            self.loaded.write().unwrap().remove(name);
            tracing::info!(function = %name, version = record.version, "settings changed");
        }
        Ok(record)
    }

    /// Deletes function `name`, and its artifact when no function uses it.
    pub async fn delete(&self, name: &str) -> Result<FunctionRecord, DeployError> {
        if let Some(cluster) = self.cluster() {
            let record = cluster
                .delete_function(name)
                .await?
                .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
            // Here, by the node the delete came through, not by each node as
            // it sees the delete: a node seeing it late must not purge the
            // lines of a function made again under the same name.
            if let Err(error) = cluster.delete_logs(name).await {
                tracing::warn!(function = %name, %error, "could not remove the function's logs from the cluster");
            }
            self.forget(name).await?;
            return Ok(record);
        }
        let record = self
            .store
            .delete_function(name)
            .await?
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        self.unload(&record).await?;
        Ok(record)
    }

    /// The cluster, in cluster mode (the router's).
    pub fn cluster(&self) -> Option<sluice_store::cluster::Cluster> {
        self.router.get().and_then(|r| r.cluster().cloned())
    }

    /// Makes the local store (this node's replica of the cluster's catalog)
    /// hold `record`, with its bytes from `bytes`, the local store, or the
    /// cluster's object store (checked against the digest). A loaded
    /// function of another version is unloaded: the next call loads this
    /// one.
    pub async fn keep_replica(
        &self,
        record: &FunctionRecord,
        bytes: Option<&[u8]>,
    ) -> Result<(), DeployError> {
        if self.store.function(&record.name)?.as_ref() == Some(record) {
            return Ok(());
        }
        let fetched;
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => match self.store.blob(&record.digest)? {
                Some(local) => {
                    fetched = local;
                    &fetched
                }
                None => {
                    let cluster = self.cluster().ok_or_else(|| {
                        DeployError::Internal("replicating outside cluster mode".into())
                    })?;
                    fetched = cluster.blob(&record.digest).await?.ok_or_else(|| {
                        DeployError::Internal(format!(
                            "component bytes {} of {:?} are in no node's store",
                            record.digest, record.name
                        ))
                    })?;
                    &fetched
                }
            },
        };
        self.store.replicate_function(record, bytes).await?;
        if !self
            .cached(&record.name)
            .is_some_and(|loaded| loaded.record == *record)
        {
            self.loaded.write().unwrap().remove(&record.name);
        }
        Ok(())
    }

    /// Takes function `name` out of this node (its replica deleted in the
    /// cluster): the local record, the loaded function, its logs.
    pub async fn forget(&self, name: &str) -> Result<(), DeployError> {
        if let Some(record) = self.store.delete_function(name).await? {
            self.unload(&record).await?;
        }
        Ok(())
    }

    /// What follows a function's record leaving the local store.
    async fn unload(&self, record: &FunctionRecord) -> Result<(), DeployError> {
        let name = record.name.as_str();
        self.loaded.write().unwrap().remove(name);
        self.recent.lock().unwrap().remove(name);
        self.metrics.forget_function(name);
        self.store.delete_logs(name)?;
        if self.store.blob(&record.digest)?.is_none() {
            let _ = tokio::fs::remove_file(self.artifact_path(&record.digest)).await;
        }
        tracing::info!(function = %name, "deleted");
        Ok(())
    }

    /// The loaded function `name`, loading it from the store if needed.
    /// `None` if no such function is deployed.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Function>>, DeployError> {
        if let Some(function) = self.cached(name) {
            return Ok(Some(function));
        }
        let lock = self
            .loading
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone();
        let loaded = {
            let _loading = lock.lock().await;
            self.load(name).await
        };
        // The last loader out removes the lock (the map holds one, each
        // waiter one more).
        let mut locks = self.loading.lock().unwrap();
        if locks.get(name).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(name);
        }
        loaded
    }

    /// Loads function `name` (under its loading lock).
    async fn load(&self, name: &str) -> Result<Option<Arc<Function>>, DeployError> {
        if let Some(function) = self.cached(name) {
            return Ok(Some(function));
        }
        let Some(record) = self.store.function(name)? else {
            return Ok(None);
        };
        let component = match self.load_artifact(&record.digest).await {
            Some(component) => component,
            None => {
                let bytes = self.store.blob(&record.digest)?.ok_or_else(|| {
                    DeployError::Internal(format!(
                        "component bytes {} of {name:?} are missing",
                        record.digest
                    ))
                })?;
                let (component, _) = self.compile(bytes).await?;
                self.write_artifact(&record.digest, &component).await;
                component
            }
        };
        let (_, pre) = self.prepare(&component)?;
        let function = Arc::new(self.build(record, pre, min_memory_bytes(&component)));
        self.loaded
            .write()
            .unwrap()
            .insert(name.to_string(), function.clone());
        Ok(Some(function))
    }

    /// Who may invoke function `name`: from the loaded function when it is
    /// in memory (no store read on the hot path), else from its stored
    /// record. Never loads a component, so an anonymous caller cannot make
    /// the server compile or load anything. `None` if there is no such
    /// function.
    pub fn visibility(&self, name: &str) -> Option<sluice_store::Visibility> {
        if let Some(function) = self.loaded.read().unwrap().get(name) {
            return Some(function.record.settings.visibility);
        }
        self.store
            .function(name)
            .ok()
            .flatten()
            .map(|record| record.settings.visibility)
    }

    fn cached(&self, name: &str) -> Option<Arc<Function>> {
        let function = self.loaded.read().unwrap().get(name).cloned()?;
        function
            .last_used_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        Some(function)
    }

    /// Time since the registry (the server) started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Number of functions whose compiled code is in memory.
    pub fn loaded_count(&self) -> usize {
        self.loaded.read().unwrap().len()
    }

    /// Drops functions idle longer than `idle` and not running, so their
    /// compiled code leaves memory. Returns how many were dropped.
    pub fn unload_idle(&self, idle: Duration) -> usize {
        let now = self.started.elapsed().as_millis() as u64;
        let idle = idle.as_millis() as u64;
        let mut loaded = self.loaded.write().unwrap();
        let before = loaded.len();
        loaded.retain(|_, function| {
            let idle_for = now.saturating_sub(function.last_used_ms.load(Ordering::Relaxed));
            idle_for < idle || Arc::strong_count(function) > 1
        });
        before - loaded.len()
    }

    fn build(&self, record: FunctionRecord, pre: Pre, min_memory_bytes: u64) -> Function {
        let limits = self.runtime.limits().resolve(&record.settings);
        let env: Vec<(String, String)> = record
            .settings
            .env
            .iter()
            .chain(&record.settings.secrets)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let limits_all = self.runtime.limits();
        let kv = Arc::new(KvContext {
            store: match self.cluster() {
                Some(cluster) => {
                    sluice_store::GuestKv::Cluster(sluice_store::cluster::GuestKv::new(cluster))
                }
                None => sluice_store::GuestKv::Local(Box::new(self.store.clone())),
            },
            function: record.name.clone(),
            shared: record.settings.kv_buckets.clone(),
            max_key_bytes: limits_all.kv_max_key_bytes,
            max_value_bytes: limits_all.kv_max_value_bytes,
            max_keys: limits_all.kv_max_keys,
        });
        Function {
            config: Arc::new(env.iter().cloned().collect()),
            kv,
            env,
            permits: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
            min_memory_bytes,
            limits,
            pre,
            record,
            last_used_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            cold: std::sync::atomic::AtomicBool::new(true),
        }
    }

    async fn compile(&self, bytes: Vec<u8>) -> Result<(Component, Vec<u8>), DeployError> {
        let engine = self.runtime.engine().clone();
        let started = Instant::now();
        let (component, bytes) = tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &bytes);
            (component, bytes)
        })
        .await
        .map_err(|error| DeployError::Internal(error.to_string()))?;
        let component =
            component.map_err(|error| DeployError::InvalidComponent(format!("{error:#}")))?;
        self.metrics.components_compiled.inc();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        Ok((component, bytes))
    }

    async fn load_artifact(&self, digest: &str) -> Option<Component> {
        let path = self.artifact_path(digest);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return None;
        }
        let engine = self.runtime.engine().clone();
        let loaded = tokio::task::spawn_blocking(move || {
            // SAFETY: the file was written by `write_artifact` from
            // `Component::serialize` of an engine with the same compatibility
            // hash (it names the directory), in the data directory that only
            // this process writes while it holds the store lock. wasmtime also
            // checks the artifact's header and refuses incompatible ones.
            #[allow(unsafe_code)]
            unsafe {
                Component::deserialize_file(&engine, &path)
            }
        })
        .await;
        match loaded {
            Ok(Ok(component)) => {
                self.metrics.artifacts_loaded.inc();
                Some(component)
            }
            Ok(Err(error)) => {
                tracing::warn!(%digest, error = %format!("{error:#}"), "cached artifact unusable; recompiling");
                None
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "loading cached artifact failed; recompiling");
                None
            }
        }
    }

    /// Writes the compiled artifact (best effort: without it the next start
    /// recompiles, which is slower but correct).
    async fn write_artifact(&self, digest: &str, component: &Component) {
        let path = self.artifact_path(digest);
        let result = async {
            let bytes = component.serialize()?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%digest, error = %format!("{error:#}"), "could not cache compiled artifact");
        }
    }

    /// Finds the component's world and pre-instantiates it with the linker,
    /// which checks that every import is one Sluice provides.
    fn prepare(&self, component: &Component) -> Result<(World, Pre), DeployError> {
        let engine = self.runtime.engine();
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let world = if exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2"))
        {
            World::Http
        } else if exports
            .iter()
            .any(|e| e.starts_with("sluice:function/handler@0.1"))
        {
            World::Event
        } else {
            return Err(DeployError::InvalidComponent(format!(
                "the component exports neither `wasi:http/incoming-handler@0.2.x` (an HTTP function) nor `sluice:function/handler@0.1.0` (an event function); it exports: [{}]",
                exports.join(", ")
            )));
        };
        let instance_pre = self
            .runtime
            .linker()
            .instantiate_pre(component)
            .map_err(|error| DeployError::InvalidComponent(format!("{error:#}")))?;
        let pre = match world {
            World::Http => Pre::Http(
                ProxyPre::new(instance_pre)
                    .map_err(|error| DeployError::InvalidComponent(format!("{error:#}")))?,
            ),
            World::Event => Pre::Event(
                EventHandlerPre::new(instance_pre)
                    .map_err(|error| DeployError::InvalidComponent(format!("{error:#}")))?,
            ),
        };
        Ok((world, pre))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "hello", "order-processor", "a1", &"x".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "Hello",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "ä",
            &"x".repeat(64),
            "a b",
            "../x",
        ] {
            assert!(
                matches!(validate_name(bad), Err(DeployError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
