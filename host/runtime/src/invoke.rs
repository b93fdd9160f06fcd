//! The invocation tier: one call, one fresh instance.
//!
//! Every call takes a permit of its function (waits up to
//! `--queue-timeout-ms`, then [`InvokeError::Busy`]) and of the pool,
//! builds a fresh `Store` with the function's limits, instantiates from the
//! function's `InstancePre`, runs, and drops the store. Nothing survives the
//! call: an idle function holds no instance.
//!
//! Failures keep their kind all the way out: a timeout, a trap, a memory cap
//! hit, a guest-reported error and a host fault are different variants.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::capabilities::outbound::OutboundPolicy;
use crate::capabilities::publish::PublishContext;
use crate::engine::event_bindings::sluice::function::types::{CloudEvent, HandlerError};
use crate::engine::{InvocationStore, StoreSetup, Usage};
use crate::functions::{Function, Functions, Pre};
use crate::output::CappedOutput;
use crate::stream::GuestBody;
use crate::trace::TraceContext;
use sluice_router::trigger::DEFAULT_BROKER;

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No such function.
    #[error("function {0:?} not found")]
    NotFound(String),
    /// The function implements another world than the call needs.
    #[error("function {name:?} implements the {world} world; {hint}")]
    WrongWorld {
        /// The function.
        name: String,
        /// Its world.
        world: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The function's concurrency cap was reached and no slot freed in time.
    #[error("function {name:?} is at its concurrency limit of {limit}; retry later")]
    Busy {
        /// The function.
        name: String,
        /// Its cap.
        limit: u32,
    },
    /// Every instance slot of the pool is in use.
    #[error("the server is at its instance limit; retry later")]
    PoolExhausted,
    /// Running instances hold the server's whole memory budget.
    #[error(
        "the server's memory budget of {budget_mb} MiB is in use by running calls (this one needs {needed_mb} MiB); retry later"
    )]
    MemoryBudget {
        /// What the call needs (its memory limit).
        needed_mb: u64,
        /// `--memory-budget`.
        budget_mb: u64,
    },
    /// The function's memory limit alone is more than the whole budget (it
    /// was deployed under a larger one): it cannot run until one changes.
    #[error(
        "function {name:?} needs {needed_mb} MiB, more than the server's whole memory budget of {budget_mb} MiB; lower its memory_mb or raise --memory-budget"
    )]
    MemoryOverBudget {
        /// The function.
        name: String,
        /// What the call needs (its memory limit).
        needed_mb: u64,
        /// `--memory-budget`.
        budget_mb: u64,
    },
    /// The call ran past its deadline.
    #[error("function {name:?} did not finish within its timeout of {timeout_ms} ms")]
    Timeout {
        /// The function.
        name: String,
        /// Its timeout.
        timeout_ms: u64,
    },
    /// The call was cancelled (an asynchronous invocation's `DELETE`).
    #[error("the call to function {name:?} was cancelled")]
    Cancelled {
        /// The function.
        name: String,
    },
    /// The guest tried to grow memory past its cap.
    #[error("function {name:?} exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit {
        /// The function.
        name: String,
        /// Its cap.
        limit_mb: u64,
    },
    /// The guest trapped.
    #[error("function {name:?} trapped: {reason}")]
    Trap {
        /// The function.
        name: String,
        /// The trap, as wasmtime describes it.
        reason: String,
    },
    /// The guest failed without trapping (a host call it made failed fatally,
    /// or it returned without answering).
    #[error("function {name:?} failed: {reason}")]
    Failed {
        /// The function.
        name: String,
        /// What happened.
        reason: String,
    },
    /// The request body is over the function's cap.
    #[error("request body is larger than the limit of {limit} bytes")]
    RequestTooLarge {
        /// The cap.
        limit: u64,
    },
    /// The guest's response body is over the function's cap.
    #[error("function {name:?} produced a response body larger than the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The function.
        name: String,
        /// The cap.
        limit: u64,
    },
    /// A host-side fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// The HTTP status this failure answers with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            InvokeError::NotFound(_) => StatusCode::NOT_FOUND,
            InvokeError::WrongWorld { .. } => StatusCode::BAD_REQUEST,
            InvokeError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::PoolExhausted | InvokeError::MemoryBudget { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Cancelled { .. } => StatusCode::CONFLICT,
            InvokeError::MemoryLimit { .. }
            | InvokeError::MemoryOverBudget { .. }
            | InvokeError::Trap { .. }
            | InvokeError::Failed { .. }
            | InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::RequestTooLarge { .. } | InvokeError::ResponseTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
        }
    }

    /// The label used for metrics and logs (one of [`OUTCOMES`]).
    pub fn outcome(&self) -> &'static str {
        match self {
            InvokeError::NotFound(_) => "not_found",
            InvokeError::WrongWorld { .. } => "wrong_world",
            InvokeError::Busy { .. } => "busy",
            InvokeError::PoolExhausted => "pool_exhausted",
            InvokeError::MemoryBudget { .. } => "memory_budget",
            InvokeError::MemoryOverBudget { .. } => "memory_over_budget",
            InvokeError::Timeout { .. } => "timeout",
            InvokeError::Cancelled { .. } => "cancelled",
            InvokeError::MemoryLimit { .. } => "memory_limit",
            InvokeError::Trap { .. } => "trap",
            InvokeError::Failed { .. } => "failed",
            InvokeError::RequestTooLarge { .. } => "request_too_large",
            InvokeError::ResponseTooLarge { .. } => "response_too_large",
            InvokeError::Internal(_) => "internal",
        }
    }

    /// True for failures a later attempt may not repeat (the Knative retry
    /// classes: timeouts, traps, overload).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            InvokeError::NotFound(_)
                | InvokeError::WrongWorld { .. }
                | InvokeError::RequestTooLarge { .. }
                | InvokeError::MemoryOverBudget { .. }
                | InvokeError::Cancelled { .. }
        )
    }
}

/// Every outcome label of `sluice_function_invocations_total`.
pub const OUTCOMES: [&str; 16] = [
    "ok",
    "guest_error",
    "not_found",
    "wrong_world",
    "busy",
    "pool_exhausted",
    "memory_budget",
    "memory_over_budget",
    "timeout",
    "cancelled",
    "memory_limit",
    "trap",
    "failed",
    "request_too_large",
    "response_too_large",
    "internal",
];

/// Per-call options beyond the request itself.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Wall-clock limit instead of the function's (a trigger's `timeout`).
    pub timeout: Option<Duration>,
    /// The broker published events go to (`default` when `None`).
    pub broker: Option<String>,
    /// The event being delivered, if this call is a delivery.
    pub cause: Option<Arc<sluice_router::event::CloudEvent>>,
    /// The delivery attempt, from 1, exposed as `SLUICE_DELIVERY_ATTEMPT`.
    pub attempt: Option<u32>,
    /// How many function-to-function calls led to this one (0 from outside).
    pub depth: u32,
    /// The invocation id (a fresh one when `None`).
    pub invocation: Option<String>,
    /// The invocation's span (a new trace when `None`): see [`crate::trace`].
    pub trace: Option<TraceContext>,
    /// Run an event function on the caller's task instead of a task of its
    /// own: one task fewer per call, but the guest is cancelled if the
    /// caller's future is dropped. For callers that always finish the call
    /// (the router's deliveries).
    pub inline: bool,
    /// Wait for the memory budget as long as it takes instead of up to
    /// `--queue-timeout-ms` (a delivery waits in the queue rather than
    /// failing an attempt).
    pub wait_for_memory: bool,
    /// Cancelling it ends the call at the guest's next epoch tick (or
    /// while it waits for a place), with [`InvokeError::Cancelled`].
    pub cancel: Option<CancellationToken>,
}

/// Stops an invocation's task when dropped, unless [`taken`](Self::taken)
/// (its future was dropped: the caller went away).
struct StopUnlessTaken(Option<tokio::task::AbortHandle>);

impl StopUnlessTaken {
    fn taken(&mut self) {
        self.0 = None;
    }
}

impl Drop for StopUnlessTaken {
    fn drop(&mut self) {
        if let Some(abort) = self.0.take() {
            abort.abort();
        }
    }
}

/// Resolves when `cancel` is cancelled; never without one.
async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(cancel) => cancel.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Why an invocation whose task panicked failed.
pub(crate) const TASK_FAILED: &str = "the invocation task ended abnormally";

/// How the invocation task ended.
pub(crate) enum TaskEnd<R> {
    Done(R),
    TimedOut,
    Cancelled,
    Failed(wasmtime::Error),
}

/// A running invocation.
struct Running<R> {
    task: tokio::task::JoinHandle<TaskEnd<R>>,
    deadline: tokio::time::Instant,
    usage: Arc<Usage>,
}

impl Functions {
    /// A fresh invocation id: 128 random bits, so that one caller cannot
    /// guess another's (an asynchronous invocation is read by its id).
    pub fn new_invocation_id(&self) -> String {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        hex::encode(bytes)
    }

    /// Writes an invocation's captured output to its function's log ring.
    fn keep_output(
        &self,
        function: &str,
        invocation: &str,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
    ) {
        let max_line = 4096;
        let mut lines = Vec::new();
        for (stream, output) in [("stdout", stdout), ("stderr", stderr)] {
            let (bytes, dropped) = output.take();
            for line in crate::output::lines(&bytes, dropped, max_line) {
                lines.push((stream, line));
            }
        }
        if lines.is_empty() {
            return;
        }
        tracing::debug!(%function, %invocation, lines = lines.len(), "guest output");
        if let Some(cluster) = self.cluster() {
            // Cluster mode: the cluster's ring, through any node, sent in
            // order by one task; the call does not wait for it. Only the
            // lines the ring would keep are sent.
            let keep = self.runtime().limits().log_lines_per_function.max(1);
            let lines = lines.split_off(lines.len().saturating_sub(keep));
            let batch = (function.to_owned(), invocation.to_owned(), lines);
            if !self.send_to_cluster(&cluster, crate::functions::ToCluster::Logs(batch)) {
                tracing::debug!(%function, "guest output dropped: the queue to the cluster is full");
            }
            return;
        }
        let rows: Vec<(&str, &str, &str)> = lines
            .iter()
            .map(|(s, l)| (invocation, *s, l.as_str()))
            .collect();
        if let Err(error) = self.store().append_logs(
            function,
            &rows,
            self.runtime().limits().log_lines_per_function,
        ) {
            tracing::warn!(%function, %error, "could not keep guest output");
        }
    }

    /// Takes what a call needs before it may run: a place under its
    /// function's concurrency cap (first, so calls queued behind a busy
    /// function hold no memory that other functions could run in), its
    /// share of the memory budget, and an instance slot of the pool. A
    /// delivery (`wait_for_memory`) takes memory first, waiting as long as
    /// it takes while holding nothing, then its place within the queue
    /// timeout.
    async fn acquire(
        &self,
        function: &Function,
        wait_for_memory: bool,
    ) -> Result<[OwnedSemaphorePermit; 3], InvokeError> {
        let wait = Duration::from_millis(self.runtime().limits().queue_timeout_ms);
        let needed_mb = (function.limits.memory_bytes >> 20).max(1);
        let budget_mb = self.memory_budget_mb();
        // A function deployed under a larger budget than this start's could
        // never run: refused at once, not waited for.
        if needed_mb > budget_mb {
            return Err(InvokeError::MemoryOverBudget {
                name: function.record.name.clone(),
                needed_mb,
                budget_mb,
            });
        }
        let own = || async {
            tokio::time::timeout(wait, function.permits.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| InvokeError::Busy {
                    name: function.record.name.clone(),
                    limit: function.limits.max_concurrency,
                })
        };
        let memory = self
            .memory_permits()
            .clone()
            .acquire_many_owned(u32::try_from(needed_mb).unwrap_or(u32::MAX));
        let over = || InvokeError::MemoryBudget {
            needed_mb,
            budget_mb,
        };
        let (memory, own) = if wait_for_memory {
            // A delivery waits for memory as long as it takes, holding
            // nothing (not its function's places, which calls need), then
            // for a place as a call does.
            let memory = memory.await.map_err(|_| over())?;
            (memory, own().await?)
        } else {
            let own = own().await?;
            let memory = tokio::time::timeout(wait, memory)
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(over)?;
            (memory, own)
        };
        let pool = tokio::time::timeout(wait, self.pool_permits().clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(InvokeError::PoolExhausted)?;
        Ok([memory, own, pool])
    }

    /// Spawns the invocation on a task of its own: see [`Functions::invocation`].
    async fn spawn<R, F, Fut>(
        &self,
        function: &Function,
        options: &CallOptions,
        usage: &Arc<Usage>,
        body: F,
    ) -> Result<Running<R>, InvokeError>
    where
        R: Send + 'static,
        F: FnOnce(InvocationStore) -> Fut + Send + 'static,
        Fut: Future<Output = wasmtime::Result<R>> + Send + 'static,
    {
        let (run, deadline, usage) = self.invocation(function, options, usage, body).await?;
        Ok(Running {
            task: tokio::spawn(run),
            deadline,
            usage,
        })
    }

    /// The invocation as a future: takes the permits, builds a fresh store,
    /// and returns `body` run on it, bounded by the function's deadline, with
    /// the guest's output kept when it ends.
    async fn invocation<R, F, Fut>(
        &self,
        function: &Function,
        options: &CallOptions,
        usage: &Arc<Usage>,
        body: F,
    ) -> Result<
        (
            impl Future<Output = TaskEnd<R>> + Send + 'static,
            tokio::time::Instant,
            Arc<Usage>,
        ),
        InvokeError,
    >
    where
        R: Send + 'static,
        F: FnOnce(InvocationStore) -> Fut + Send + 'static,
        Fut: Future<Output = wasmtime::Result<R>> + Send + 'static,
    {
        let permits = tokio::select! {
            permits = self.acquire(function, options.wait_for_memory) => permits?,
            () = cancelled(options.cancel.as_ref()) => {
                return Err(InvokeError::Cancelled {
                    name: function.record.name.clone(),
                });
            }
        };
        let warnings = Arc::new(crate::guest_log::GuestWarnings::default());
        let extra_env: Vec<(String, String)> = options
            .attempt
            .map(|attempt| ("SLUICE_DELIVERY_ATTEMPT".to_string(), attempt.to_string()))
            .into_iter()
            .collect();
        let trace = options.trace.unwrap_or_else(TraceContext::root);
        let publish = self.router().map(|router| PublishContext {
            trace,
            router,
            broker: options
                .broker
                .clone()
                .unwrap_or_else(|| DEFAULT_BROKER.to_string()),
            cause: options.cause.clone(),
        });
        let invocation = self.runtime().new_store(StoreSetup {
            env: &function.env,
            extra_env: &extra_env,
            memory_bytes: function.limits.memory_bytes,
            timeout: options.timeout.unwrap_or(function.limits.timeout),
            outbound: OutboundPolicy {
                function: function.record.name.clone(),
                allow: function.record.settings.allow_outbound.clone(),
                functions: self.handle(),
                nested: CallOptions {
                    timeout: None,
                    broker: options.broker.clone(),
                    cause: options.cause.clone(),
                    attempt: None,
                    depth: options.depth + 1,
                    invocation: None,
                    trace: None,
                    inline: false,
                    wait_for_memory: false,
                    // A call made by a cancelled one ends with it (its
                    // future is dropped when the caller's instance goes).
                    cancel: None,
                },
                trace,
                max_depth: self.runtime().limits().max_call_depth,
                warnings: warnings.clone(),
            },
            publish,
            kv: Some(function.kv.clone()),
            config: function.config.clone(),
            usage: usage.clone(),
        });
        let deadline = tokio::time::Instant::from_std(invocation.deadline);
        let usage = invocation.usage.clone();
        let cpu = invocation.cpu.clone();
        let long_calls = Some(self.runtime().long_calls().clone());
        let (stdout, stderr) = (invocation.stdout.clone(), invocation.stderr.clone());
        let name = function.record.name.clone();
        let invocation_id = options
            .invocation
            .clone()
            .unwrap_or_else(|| self.new_invocation_id());
        let functions = self.handle();
        let cancel = options.cancel.clone();
        let running_usage = usage.clone();
        let span = tracing::info_span!("invocation", function = %name, id = %invocation_id, trace_id = %trace.trace_id_hex());
        let run = tracing::Instrument::instrument(
            async move {
                // The guest's output reaches its log however the call ends,
                // also when its task is stopped (a cut stream, a caller gone).
                struct KeepOutput {
                    functions: std::sync::Weak<Functions>,
                    name: String,
                    invocation: String,
                    stdout: CappedOutput,
                    stderr: CappedOutput,
                    warnings: Arc<crate::guest_log::GuestWarnings>,
                }
                impl Drop for KeepOutput {
                    fn drop(&mut self) {
                        if let Some(functions) = self.functions.upgrade() {
                            functions.keep_output(
                                &self.name,
                                &self.invocation,
                                &self.stdout,
                                &self.stderr,
                            );
                        }
                        self.warnings.finish(&self.name, &self.invocation);
                    }
                }
                let _output = KeepOutput {
                    functions,
                    name,
                    invocation: invocation_id,
                    stdout,
                    stderr,
                    warnings,
                };
                // The permits live in the future that owns the store, so they
                // are given back only once the instance is gone, wherever it
                // ran (a timed-out long call ends on its pool's thread).
                let guest = async move {
                    let _permits = permits;
                    body(invocation).await
                };
                let timed = crate::cpu::Migrating::new(guest, usage.clone(), cpu, long_calls);
                // A guest yields at every epoch tick: dropping its future
                // there (timeout, cancel) ends it, wherever it runs.
                let end = tokio::select! {
                    end = tokio::time::timeout_at(deadline, timed) => match end {
                        Ok(Ok(value)) => TaskEnd::Done(value),
                        Ok(Err(error)) => TaskEnd::Failed(error),
                        Err(_) => TaskEnd::TimedOut,
                    },
                    () = cancelled(cancel.as_ref()) => TaskEnd::Cancelled,
                };
                end
            },
            span,
        );
        Ok((run, deadline, running_usage))
    }

    /// Turns a failed or timed-out invocation into its error.
    pub(crate) fn classify<R>(
        &self,
        function: &Function,
        timeout_ms: u64,
        end: Result<TaskEnd<R>, &'static str>,
        memory_exceeded: bool,
    ) -> InvokeError {
        let name = function.record.name.clone();
        let timeout = || InvokeError::Timeout {
            name: name.clone(),
            timeout_ms,
        };
        let error = match end {
            Ok(TaskEnd::Done(_)) => {
                return InvokeError::Failed {
                    name,
                    reason: "the guest returned without sending a response".into(),
                };
            }
            Ok(TaskEnd::TimedOut) => return timeout(),
            Ok(TaskEnd::Cancelled) => return InvokeError::Cancelled { name },
            Ok(TaskEnd::Failed(error)) => error,
            Err(reason) => return InvokeError::Internal(reason.to_string()),
        };
        if memory_exceeded {
            return InvokeError::MemoryLimit {
                name,
                limit_mb: function.limits.memory_bytes >> 20,
            };
        }
        if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return InvokeError::PoolExhausted;
        }
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            tracing::warn!(function = %name, error = ?error, "guest trapped");
            return match trap {
                wasmtime::Trap::Interrupt => timeout(),
                wasmtime::Trap::StackOverflow => InvokeError::Trap {
                    name,
                    reason: format!("{trap} (unbounded recursion?)"),
                },
                _ => InvokeError::Trap {
                    name,
                    reason: trap.to_string(),
                },
            };
        }
        tracing::warn!(function = %name, error = ?error, "guest failed");
        // The root cause says what happened; the wasm backtrace stays in the log.
        InvokeError::Failed {
            name,
            reason: error.root_cause().to_string(),
        }
    }

    pub(crate) fn record(
        &self,
        function: &Function,
        started: Instant,
        outcome: &'static str,
        usage: &Usage,
    ) {
        self.runtime().note_ended();
        let name = function.record.name.as_str();
        let metrics = self.metrics();
        let elapsed = started.elapsed();
        metrics
            .invocations
            .with_label_values(&[name, outcome])
            .inc();
        metrics
            .invocation_seconds
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
        let cold = function.take_cold();
        if cold {
            metrics.cold_starts.with_label_values(&[name]).inc();
        }
        let peak = usage.memory_peak.load(Ordering::Relaxed);
        if peak > 0 {
            let gauge = metrics.memory_peak_bytes.with_label_values(&[name]);
            if gauge.get() < peak as i64 {
                gauge.set(peak as i64);
            }
        }
        let busy_ns = usage.busy_ns.load(Ordering::Relaxed);
        metrics
            .busy_seconds
            .with_label_values(&[name])
            .inc_by(busy_ns as f64 / 1e9);
        self.remember(
            name,
            crate::functions::RecentInvocation {
                time_ms: crate::functions::unix_ms(),
                outcome,
                duration_us: elapsed.as_micros() as u64,
                memory_peak_bytes: peak as u64,
                cold,
            },
        );
    }

    /// Calls a `wasi:http` function with `request` and collects its response.
    pub async fn call_http(
        &self,
        function: &Arc<Function>,
        request: http::Request<Bytes>,
        options: &CallOptions,
    ) -> Result<http::Response<Bytes>, InvokeError> {
        if request.body().len() as u64 > function.limits.max_request_bytes {
            let error = InvokeError::RequestTooLarge {
                limit: function.limits.max_request_bytes,
            };
            self.record(function, Instant::now(), error.outcome(), &Usage::default());
            return Err(error);
        }
        let request = request.map(|body| Full::new(body).map_err(|never| match never {}));
        let response = self.call_http_stream(function, request, options).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }

    /// Calls a `wasi:http` function with `request`, whose body streams into
    /// the guest as it arrives (past the function's `max_request_bytes`
    /// the guest's read fails). Answers once the guest has sent its
    /// response head; the body streams as the guest writes it (see
    /// [`GuestBody`] for the bounds that still hold).
    pub async fn call_http_stream<B>(
        &self,
        function: &Arc<Function>,
        request: http::Request<B>,
        options: &CallOptions,
    ) -> Result<http::Response<GuestBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let started = Instant::now();
        let usage = Arc::default();
        /// Counts the call `cancelled` if its caller goes away before the
        /// head (the guard in `call_http_head` stops the guest).
        struct Counted<'a>(Option<(&'a Functions, &'a Function, Instant, &'a Usage)>);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                if let Some((functions, function, started, usage)) = self.0.take() {
                    functions.record(function, started, "cancelled", usage);
                }
            }
        }
        let mut counted = Counted(Some((self, function, started, &usage)));
        let head = self
            .call_http_head(function, request, options, &usage, started)
            .await;
        counted.0 = None;
        let mut response = match head {
            Ok(response) => response,
            Err(error) => {
                self.record(function, started, error.outcome(), &usage);
                return Err(error);
            }
        };
        // From here the body records how the call ended.
        response.body_mut().prime().await?;
        Ok(response)
    }

    async fn call_http_head<B>(
        &self,
        function: &Arc<Function>,
        request: http::Request<B>,
        options: &CallOptions,
        usage: &Arc<Usage>,
        started: Instant,
    ) -> Result<http::Response<GuestBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let Pre::Http(pre) = &function.pre else {
            return Err(InvokeError::WrongWorld {
                name: function.record.name.clone(),
                world: "event",
                hint: "send it events through a trigger, or POST a CloudEvent to /v1/functions/{name}/invoke",
            });
        };
        let limit = function.limits.max_request_bytes;
        // Known to be too large already (a declared length): refused unread.
        if request.body().size_hint().lower() > limit {
            return Err(InvokeError::RequestTooLarge { limit });
        }
        let request = request.map(|body| crate::stream::RequestBody::new(body, limit));
        let pre = pre.clone();
        let (sender, receiver) = oneshot::channel();
        let metrics = self.metrics().clone();
        let running = self
            .spawn(function, options, usage, move |mut invocation| async move {
                let store = &mut invocation.store;
                let request = store
                    .data_mut()
                    .http()
                    .new_incoming_request(Scheme::Http, request)?;
                let out = store.data_mut().http().new_response_outparam(sender)?;
                let instantiating = Instant::now();
                let proxy = pre.instantiate_async(&mut *store).await?;
                metrics
                    .instantiate_seconds
                    .observe(instantiating.elapsed().as_secs_f64());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut *store, request, out)
                    .await
            })
            .await?;
        let Running {
            task,
            deadline,
            usage,
        } = running;
        let memory_exceeded = || usage.memory_exceeded.load(Ordering::Relaxed);
        let abort = task.abort_handle();
        // A caller that goes away before the head stops the guest.
        let mut guard = StopUnlessTaken(Some(abort.clone()));
        let timeout_ms = options
            .timeout
            .unwrap_or(function.limits.timeout)
            .as_millis() as u64;
        let head = match tokio::time::timeout_at(deadline, receiver).await {
            Err(_) => {
                abort.abort();
                return Err(InvokeError::Timeout {
                    name: function.record.name.clone(),
                    timeout_ms,
                });
            }
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => {
                abort.abort();
                return Err(InvokeError::Failed {
                    name: function.record.name.clone(),
                    reason: crate::guest_log::guest_text(&format!(
                        "the guest answered with error {code:?}"
                    )),
                });
            }
            Ok(Err(_)) => {
                let end = task.await.map_err(|_| TASK_FAILED);
                return Err(self.classify(function, timeout_ms, end, memory_exceeded()));
            }
        };
        let (parts, body) = head.into_parts();
        let cap = function.limits.max_response_bytes;
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length > cap)
        {
            abort.abort();
            return Err(InvokeError::ResponseTooLarge {
                name: function.record.name.clone(),
                limit: cap,
            });
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        guard.taken();
        let body = GuestBody::new(
            body,
            self.handle(),
            function.clone(),
            started,
            usage,
            task,
            deadline,
            timeout_ms,
            declared,
        );
        Ok(http::Response::from_parts(parts, body))
    }

    /// Calls an event function with `event`. The outer error is the
    /// invocation failing; the inner one is the guest's own answer.
    pub async fn call_event(
        &self,
        function: &Arc<Function>,
        event: CloudEvent,
        options: &CallOptions,
    ) -> Result<Result<Vec<CloudEvent>, HandlerError>, InvokeError> {
        let started = Instant::now();
        let usage = Arc::default();
        let result = self
            .call_event_inner(function, event, options, &usage)
            .await;
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "guest_error",
            Err(error) => error.outcome(),
        };
        self.record(function, started, outcome, &usage);
        result
    }

    async fn call_event_inner(
        &self,
        function: &Arc<Function>,
        event: CloudEvent,
        options: &CallOptions,
        usage: &Arc<Usage>,
    ) -> Result<Result<Vec<CloudEvent>, HandlerError>, InvokeError> {
        let Pre::Event(pre) = &function.pre else {
            return Err(InvokeError::WrongWorld {
                name: function.record.name.clone(),
                world: "http",
                hint: "call it over HTTP at /fn/{name}/",
            });
        };
        let pre = pre.clone();
        let metrics = self.metrics().clone();
        let body = move |mut invocation: InvocationStore| async move {
            let store = &mut invocation.store;
            let instantiating = Instant::now();
            let instance = pre.instantiate_async(&mut *store).await?;
            metrics
                .instantiate_seconds
                .observe(instantiating.elapsed().as_secs_f64());
            instance
                .sluice_function_handler()
                .call_handle(&mut *store, &event)
                .await
        };
        let timeout_ms = options
            .timeout
            .unwrap_or(function.limits.timeout)
            .as_millis() as u64;
        let (end, usage) = if options.inline {
            let (run, _, usage) = self.invocation(function, options, usage, body).await?;
            // A panic in the host while running the guest fails this call
            // only, as it would end the invocation's own task.
            let end = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run))
                .await
                .map_err(|_| "the invocation panicked");
            (end, usage)
        } else {
            let running = self.spawn(function, options, usage, body).await?;
            let end = running.task.await.map_err(|_| TASK_FAILED);
            (end, running.usage)
        };
        let memory_exceeded = usage.memory_exceeded.load(Ordering::Relaxed);
        match end {
            Ok(TaskEnd::Done(answer)) => Ok(answer),
            end => Err(self.classify(function, timeout_ms, end, memory_exceeded)),
        }
    }
}
