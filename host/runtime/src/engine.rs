//! The runtime tier: state built once per process (`sluice_runtime::engine`).
//!
//! One wasmtime [`Engine`] with the pooling allocator (instances come from
//! pre-reserved slots, so a fresh instance per call costs microseconds),
//! copy-on-write memory images and epoch interruption; one [`Linker`] with
//! WASI, `wasi:http` and the Sluice imports; and the epoch ticker thread.
//!
//! [`InvocationState`] is the invocation tier: the data of one `Store`, built
//! per call and dropped when the call ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities;
use crate::capabilities::outbound::OutboundPolicy;
use crate::limits::Limits;
use crate::output::CappedOutput;

/// How often the epoch advances. A guest's deadline is checked, and a busy
/// guest yields to other tasks (see `cpu.rs`), once per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Bindings of the `sluice:function/event-function` world.
pub mod event_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "event-handler",
        imports: { default: async | trappable },
        exports: { default: async },
        require_store_data_send: true,
    });
}

/// Once-per-process wasmtime state.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    limits: Limits,
    stop_ticker: Arc<AtomicBool>,
    /// A core module with one page of memory that its start function
    /// writes: instantiated and dropped to push wasmtime's decommit queues
    /// over their batch size (see [`Runtime::release_waiting_slots`]).
    /// Compiled at its first use, so an idle server never pages in the
    /// compiler for it.
    releaser: std::sync::OnceLock<wasmtime::Module>,
    /// Invocations that ended, for the idle release of waiting slots.
    ended: AtomicU64,
    /// Where long calls run (see `cpu.rs`).
    long_calls: crate::cpu::LongCallPool,
}

/// `(module (memory 1) (func $s (i32.store8 (i32.const 0) (i32.const 1))) (start $s))`
const RELEASER_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: func () -> ()
    0x03, 0x02, 0x01, 0x00, // function 0 has type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1 page
    0x08, 0x01, 0x00, // start: function 0
    0x0a, 0x0b, 0x01, 0x09, 0x00, 0x41, 0x00, 0x41, 0x01, 0x3a, 0x00, 0x00, 0x0b, // code
];

impl Runtime {
    /// Builds the engine and linker for `limits`, and starts the epoch ticker.
    pub fn new(limits: &Limits) -> anyhow::Result<Runtime> {
        let n = limits.pool_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // A Rust component has a few core instances (its module plus
            // adapter shims); componentize-py ones have a dozen or more.
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(usize::try_from(limits.max_memory_mb << 20)?)
            .table_elements(limits.max_table_elements)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            // Pages kept resident in a freed slot are reset in place (only
            // the dirty ones, with PAGEMAP_SCAN) instead of released and
            // faulted in again; they are also what an idle function costs.
            .linear_memory_keep_resident(usize::try_from(limits.pool_keep_resident_kib << 10)?)
            .table_keep_resident(usize::try_from(limits.pool_keep_resident_kib << 10)?)
            .decommit_batch_size(limits.pool_decommit_batch.max(1))
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .max_wasm_stack(limits.max_wasm_stack)
            .async_stack_size(limits.max_wasm_stack + (1 << 20))
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        capabilities::publish::add_to_linker(&mut linker, |state: &mut InvocationState| {
            capabilities::publish::PublishView(&mut state.publish)
        })?;
        capabilities::keyvalue::add_to_linker(&mut linker, |state: &mut InvocationState| {
            capabilities::keyvalue::KvView {
                context: state.kv.as_ref(),
                table: &mut state.table,
            }
        })?;
        capabilities::config::add_to_linker(&mut linker, |state: &mut InvocationState| {
            capabilities::config::WasiConfig::new(&state.config)
        })?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?;
        }

        Ok(Runtime {
            engine,
            linker,
            limits: limits.clone(),
            stop_ticker,
            releaser: std::sync::OnceLock::new(),
            ended: AtomicU64::new(0),
            long_calls: crate::cpu::LongCallPool::start(limits.long_call_threads)?,
        })
    }

    /// Counts an ended invocation (its instance went back to the pool).
    pub(crate) fn note_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations ended since start.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Releases to the kernel the pages of freed pool slots still waiting
    /// for their decommit batch (`--pool-decommit-batch`) to fill, so that
    /// memory an idle server holds does not depend on what ran last.
    /// Blocking: run it off the async workers.
    ///
    /// wasmtime 48 has no call for this. Its queues are sharded by thread
    /// (a thread takes the next shard at its first use of the pool, round
    /// robin, one shard per CPU up to 16) and a queue is released when a
    /// freed slot brings it to the batch size. So: fresh threads, twice as
    /// many as there are shards (each takes the next shard, covering all
    /// even if other threads start meanwhile), each instantiating and
    /// dropping a one-page module batch-size times.
    pub fn release_waiting_slots(&self) -> anyhow::Result<()> {
        let batch = self.limits.pool_decommit_batch;
        if batch <= 1 {
            return Ok(());
        }
        let module = match self.releaser.get() {
            Some(module) => module.clone(),
            None => {
                let module = wasmtime::Module::new(&self.engine, RELEASER_WASM)?;
                self.releaser.get_or_init(|| module).clone()
            }
        };
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
        for _ in 0..2 * shards {
            let engine = self.engine.clone();
            let module = module.clone();
            std::thread::Builder::new()
                .name("sluice-release".into())
                .spawn(move || -> anyhow::Result<()> {
                    for _ in 0..batch {
                        let mut store = Store::new(&engine, ());
                        // Epoch interruption is on: give the start function
                        // a deadline it cannot reach (it is one store).
                        store.set_epoch_deadline(u64::MAX / 2);
                        wasmtime::Instance::new(&mut store, &module, &[])?;
                    }
                    Ok(())
                })?
                .join()
                .map_err(|_| anyhow::anyhow!("the slot release thread panicked"))??;
        }
        Ok(())
    }

    /// Sets the gauges of `metrics` read at scrape: the pooling allocator's
    /// and the long calls'.
    pub fn observe_pool(&self, metrics: &crate::metrics::Metrics) {
        if let Some(pool) = self.engine.pooling_allocator_metrics() {
            let bytes = pool.unused_memory_bytes_resident() + pool.unused_table_bytes_resident();
            let slots = pool.unused_warm_memories() + pool.unused_warm_tables();
            metrics.pool_resident_bytes.set(bytes as i64);
            metrics.pool_warm_slots.set(i64::from(slots));
        }
        metrics
            .long_calls_running
            .set(self.long_calls.running() as i64);
    }

    /// Where long calls run.
    pub fn long_calls(&self) -> &crate::cpu::LongCallPool {
        &self.long_calls
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker every function is instantiated with.
    pub fn linker(&self) -> &Linker<InvocationState> {
        &self.linker
    }

    /// Server-wide limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A hex string naming this engine's compiled-code format: artifacts from
    /// an engine with another hash cannot be loaded by this one.
    pub fn engine_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// A fresh store for one invocation, set up by `setup`.
    pub fn new_store(&self, setup: StoreSetup<'_>) -> InvocationStore {
        let stdout = CappedOutput::new(self.limits.max_output_bytes);
        let stderr = CappedOutput::new(self.limits.max_output_bytes);
        let mut wasi = WasiCtx::builder();
        wasi.envs(setup.env)
            .envs(setup.extra_env)
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.limits.max_resources);
        let state = InvocationState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table,
            limiter: GuestLimiter {
                memory_bytes: usize::try_from(setup.memory_bytes).unwrap_or(usize::MAX),
                table_elements: self.limits.max_table_elements,
                usage: setup.usage.clone(),
            },
            outbound: setup.outbound,
            publish: capabilities::publish::PublishState::new(
                setup.publish,
                self.limits.max_publish_per_call,
            ),
            kv: setup.kv,
            config: setup.config,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(self.limits.hostcall_fuel);
        let deadline = Instant::now() + setup.timeout;
        let cpu = crate::cpu::CpuSlot::new();
        store.set_epoch_deadline(1);
        let slot = cpu.clone();
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield so a guest that computes without pause does not hold
                // a tokio worker thread (see `cpu.rs`).
                Ok(UpdateDeadline::YieldCustom(1, slot.on_tick()))
            }
        });
        InvocationStore {
            store,
            deadline,
            stdout,
            stderr,
            usage: setup.usage,
            cpu,
        }
    }
}

/// What one invocation's store is built from.
pub struct StoreSetup<'a> {
    /// The function's environment variables.
    pub env: &'a [(String, String)],
    /// Variables of this call only (such as the delivery attempt).
    pub extra_env: &'a [(String, String)],
    /// Linear-memory cap.
    pub memory_bytes: u64,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// What outbound HTTP may reach.
    pub outbound: OutboundPolicy,
    /// Where events the guest publishes go.
    pub publish: Option<capabilities::publish::PublishContext>,
    /// Key-value access.
    pub kv: Option<Arc<capabilities::keyvalue::KvContext>>,
    /// `wasi:config` values (the function's env and secrets).
    pub config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    /// Where the invocation's usage is counted.
    pub usage: Arc<Usage>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A store for one invocation, with what the host reads after the call.
pub struct InvocationStore {
    /// The wasmtime store.
    pub store: Store<InvocationState>,
    /// When the invocation's time is up.
    pub deadline: Instant,
    /// Captured guest stdout (bounded).
    pub stdout: CappedOutput,
    /// Captured guest stderr (bounded).
    pub stderr: CappedOutput,
    /// What the invocation used.
    pub usage: Arc<Usage>,
    /// Its share of the CPU.
    pub cpu: Arc<crate::cpu::CpuSlot>,
}

/// What one invocation used, read after it ends.
#[derive(Debug, Default)]
pub struct Usage {
    /// Set when the guest tried to grow memory past its cap.
    pub memory_exceeded: AtomicBool,
    /// Linear memory the instance holds now, in bytes.
    memory_bytes: AtomicUsize,
    /// The most linear memory the instance held at once, in bytes.
    pub memory_peak: AtomicUsize,
    /// Time the invocation's task spent being polled, in nanoseconds.
    pub busy_ns: AtomicU64,
}

/// The data of one invocation's `Store`.
pub struct InvocationState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    outbound: OutboundPolicy,
    publish: capabilities::publish::PublishState,
    kv: Option<Arc<capabilities::keyvalue::KvContext>>,
    config: Arc<capabilities::config::WasiConfigVariables>,
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps memory and table growth of one instance, and remembers whether the
/// memory cap was hit so the failure can be reported as such.
struct GuestLimiter {
    memory_bytes: usize,
    table_elements: usize,
    usage: Arc<Usage>,
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.usage.memory_exceeded.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let grown = desired.saturating_sub(current);
        let now = self.usage.memory_bytes.fetch_add(grown, Ordering::Relaxed) + grown;
        self.usage.memory_peak.fetch_max(now, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}
