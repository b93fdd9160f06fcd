//! Prometheus metrics of the host, defined in one place and named
//! `sluice_<noun>_<verb>_total` for counters.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the host exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Components compiled from bytes (deploys, and loads without a cached artifact).
    pub components_compiled: IntCounter,
    /// Components loaded from an on-disk compiled artifact instead of compiled.
    pub artifacts_loaded: IntCounter,
    /// Invocations by function and outcome (`ok`, `timeout`, `trap`, ...).
    pub invocations: IntCounterVec,
    /// Wall-clock duration of invocations, by function.
    pub invocation_seconds: HistogramVec,
    /// Time to instantiate a fresh instance from its `InstancePre`.
    pub instantiate_seconds: Histogram,
    /// Cold starts by function: the first invocation after the function was
    /// compiled or loaded into memory (the others are warm).
    pub cold_starts: IntCounterVec,
    /// The most linear memory one invocation of the function held.
    pub memory_peak_bytes: IntGaugeVec,
    /// Time invocations spent being polled on a host thread, by function.
    pub busy_seconds: CounterVec,
    /// Bytes of freed pool slots (linear memories and tables) kept resident
    /// for the next instance (`--pool-keep-resident-kib`), read at scrape.
    pub pool_resident_bytes: IntGauge,
    /// Freed pool slots (memories and tables) that hold pages of an earlier
    /// instance, read at scrape.
    pub pool_warm_slots: IntGauge,
    /// Calls past their first CPU slice, on the long-call pool now (see
    /// `cpu.rs`), read at scrape.
    pub long_calls_running: IntGauge,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let components_compiled = IntCounter::new(
            "sluice_components_compiled_total",
            "Components compiled to native code.",
        )
        .unwrap();
        let artifacts_loaded = IntCounter::new(
            "sluice_artifacts_loaded_total",
            "Components loaded from a cached compiled artifact instead of compiled.",
        )
        .unwrap();
        let invocations = IntCounterVec::new(
            Opts::new(
                "sluice_function_invocations_total",
                "Function invocations by outcome.",
            ),
            &["function", "outcome"],
        )
        .unwrap();
        let invocation_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_function_duration_seconds",
                "Wall-clock time of invocations.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["function"],
        )
        .unwrap();
        let instantiate_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_instantiate_seconds",
                "Time to instantiate a fresh instance.",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01,
            ]),
        )
        .unwrap();
        // Per-function series cost memory for as long as the server runs, so
        // these are the cheap kinds: a counter and a gauge.
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "sluice_function_cold_starts_total",
                "Invocations that were the first after the function was compiled or loaded.",
            ),
            &["function"],
        )
        .unwrap();
        let memory_peak_bytes = IntGaugeVec::new(
            Opts::new(
                "sluice_function_memory_peak_bytes",
                "The most linear memory one invocation of the function held.",
            ),
            &["function"],
        )
        .unwrap();
        let busy_seconds = CounterVec::new(
            Opts::new(
                "sluice_function_busy_seconds_total",
                "Time invocations spent running on a host thread (each poll's wall time: CPU time unless the OS preempted the thread).",
            ),
            &["function"],
        )
        .unwrap();
        let pool_resident_bytes = IntGauge::new(
            "sluice_pool_resident_bytes",
            "Bytes of freed instance slots (memories and tables) kept resident for the next instance.",
        )
        .unwrap();
        let pool_warm_slots = IntGauge::new(
            "sluice_pool_warm_slots",
            "Freed instance slots (memories and tables) holding pages of an earlier instance.",
        )
        .unwrap();
        let long_calls_running = IntGauge::new(
            "sluice_long_calls_running",
            "Calls past their first CPU slice, running on the lower-priority long-call pool.",
        )
        .unwrap();
        for metric in [
            Box::new(components_compiled.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(long_calls_running.clone()),
            Box::new(artifacts_loaded.clone()),
            Box::new(invocations.clone()),
            Box::new(invocation_seconds.clone()),
            Box::new(instantiate_seconds.clone()),
            Box::new(cold_starts.clone()),
            Box::new(memory_peak_bytes.clone()),
            Box::new(busy_seconds.clone()),
            Box::new(pool_resident_bytes.clone()),
            Box::new(pool_warm_slots.clone()),
        ] {
            registry.register(metric).unwrap();
        }
        Metrics {
            registry,
            components_compiled,
            artifacts_loaded,
            invocations,
            invocation_seconds,
            instantiate_seconds,
            cold_starts,
            memory_peak_bytes,
            busy_seconds,
            pool_resident_bytes,
            pool_warm_slots,
            long_calls_running,
        }
    }

    /// Drops every series of function `name` (it was deleted).
    pub fn forget_function(&self, name: &str) {
        for outcome in crate::invoke::OUTCOMES {
            let _ = self.invocations.remove_label_values(&[name, outcome]);
        }
        let _ = self.invocation_seconds.remove_label_values(&[name]);
        let _ = self.cold_starts.remove_label_values(&[name]);
        let _ = self.memory_peak_bytes.remove_label_values(&[name]);
        let _ = self.busy_seconds.remove_label_values(&[name]);
    }

    /// The registry, for other crates' metrics (the router's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
