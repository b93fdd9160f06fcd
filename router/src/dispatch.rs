//! The dispatcher: durable fan-out, retries with backoff, dead letters,
//! replies.
//!
//! [`Router::publish`] matches each event against the broker's triggers and
//! writes one [`DeliveryRecord`] per match; it returns (and the API answers
//! 202) only after a grouped flush has put them on disk. On start, every
//! pending record is loaded again: delivery is at-least-once across crashes.
//!
//! A worker pops due deliveries and runs each in its own task, bounded by a
//! global and a per-trigger limit on deliveries in flight. A delivery that
//! finds its trigger at the limit is parked with the trigger, without using
//! up an attempt and without being looked at again, until one of the
//! trigger's deliveries ends; so a slow function holds events in the queue
//! instead of burning retries. Outcomes: delivered (replies re-enter the
//! broker, one hop further), retried after the trigger's backoff, or
//! dead-lettered after the last attempt or at once on a permanent failure.
//! A dead letter that cannot be stored (full disk) stays queued and is
//! tried again every [`DEAD_LETTER_RETRY`]: the delivery stays pending,
//! never lost and never attempted again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sluice_store::cluster::Bucket;
use sluice_store::{DeadLetterRecord, DeliveryRecord, Store, StoreError};
use tokio::sync::{Notify, Semaphore, broadcast};

use crate::broker::Broker;
use crate::event::CloudEvent;
use crate::index::TriggerIndex;
use crate::trigger::{Destination, Trigger};

/// Extension carrying how many reply or publish steps led to an event.
pub const HOPS_EXTENSION: &str = "sluicehops";
/// Extension carrying the id of the event that caused a reply or publish.
pub const CAUSE_EXTENSION: &str = "sluicecause";
/// The `broker` label of refusals at a broker nothing knows.
pub const UNKNOWN_BROKER: &str = "_unknown";
/// Longest `knativeerrordata` kept on a dead letter, in bytes.
pub const MAX_ERROR_DATA: usize = 1024;
/// How long a delivery whose dead letter could not be stored waits before
/// the dead letter is tried again.
pub const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// Attempts at handing a dead letter to the dead-letter sink.
const SINK_ATTEMPTS: u32 = 3;

/// Knative's retry rule for HTTP statuses: 404, 408, 409, 429 and 5xx are
/// retried; every other failure status is not.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 404 | 408 | 409 | 429) || (500..600).contains(&status)
}

/// A boxed future, as the [`Invoker`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one delivery attempt needs besides the event.
#[derive(Clone, Debug)]
pub struct DeliveryContext {
    /// The broker the event belongs to.
    pub broker: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The trigger's per-attempt timeout, if it sets one.
    pub timeout: Option<Duration>,
}

/// How a delivery attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// The subscriber took the event, answering with zero or more replies.
    Delivered(Vec<CloudEvent>),
    /// The subscriber failed.
    Failed {
        /// Whether a later attempt may succeed (Knative: 404, 408, 409, 429,
        /// 5xx, timeouts and traps are retried; other 4xx are not).
        retryable: bool,
        /// The HTTP status, or the status the failure maps to.
        code: Option<u16>,
        /// What happened.
        reason: String,
    },
}

/// How the router reaches subscribers. `host/` implements it.
pub trait Invoker: Send + Sync + 'static {
    /// Delivers `event` to `destination`.
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        event: &'a Arc<CloudEvent>,
        context: DeliveryContext,
    ) -> BoxFuture<'a, Outcome>;

    /// `Err(reason)` if `destination` cannot receive events now (for a
    /// trigger's readiness).
    fn check(&self, destination: &Destination) -> Result<(), String>;
}

/// Limits of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatchLimits {
    /// Deliveries in flight at once, across all triggers.
    pub max_in_flight: usize,
    /// Deliveries in flight at once for one trigger.
    pub max_in_flight_per_trigger: usize,
    /// Reply and publish steps an event may be from an outside event; past
    /// it, events are dropped and counted, so loops end.
    pub max_hops: u32,
    /// Pending deliveries past which ingress is refused (503): backpressure
    /// instead of a backlog that grows until the machine gives out.
    pub max_pending: usize,
    /// The same bound for one broker's deliveries (0: none but the global
    /// one).
    pub max_pending_per_broker: usize,
    /// Bytes of event JSON queued deliveries keep in memory; past it, a
    /// queued delivery keeps only its id and place, and its event is read
    /// back from the journal when it is due.
    pub max_resident_event_bytes: usize,
    /// Whether a client's repeat of an event is a duplicate at all (the
    /// store keeps the window; see [`Router::accept`]).
    pub dedupe: bool,
    /// How long the trace of an event is kept (zero: no traces; in
    /// cluster mode the cluster's options say). See [`Router::trace`].
    pub trace_retention: Duration,
    /// Traces kept at most (the oldest go first).
    pub trace_max_events: usize,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        DispatchLimits {
            max_in_flight: 256,
            max_in_flight_per_trigger: 32,
            max_hops: 255,
            max_pending: 1_000_000,
            max_pending_per_broker: 0,
            max_resident_event_bytes: 32 << 20,
            dedupe: true,
            trace_retention: Duration::from_secs(3600),
            trace_max_events: 10_000,
        }
    }
}

/// What ingress made of a client's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The ids of the events that repeat (broker, source, id) of an event
    /// accepted within the de-duplication window, or earlier in the same
    /// request: already durable, so not stored or delivered again.
    pub duplicates: Vec<String>,
}

/// The broker name the de-duplication keys (and traces) of `broker`'s
/// schedule firings are made with: apart from its clients' events (a
/// broker name holds no NUL).
pub(crate) fn schedule_key_space(broker: &str) -> String {
    format!("{broker}\0schedule")
}

/// Where events come from: how they are bounded and de-duplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Posted by a client: held to the backlog bound, de-duplicated as
    /// the broker says.
    Client,
    /// Fired by a schedule: as a client's, but always de-duplicated.
    Schedule,
    /// A function's reply or publish: held to twice the bound, never
    /// de-duplicated (a reply may keep its cause's id and source).
    Function,
}

/// Why events were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store could not make them durable: answer 503, never 202.
    #[error("events could not be stored: {0}")]
    Store(#[from] StoreError),
    /// The backlog of pending deliveries is at its bound: answer 503 with
    /// `Retry-After` (backpressure; nothing was stored).
    #[error("{pending} deliveries are pending{of}, the limit is {limit}; retry later")]
    Backlog {
        /// Pending now (of the broker, for a broker's bound).
        pending: usize,
        /// The bound.
        limit: usize,
        /// ` at broker "..."` for a broker's bound, else empty.
        of: String,
    },
    /// One request makes more deliveries than the bound allows pending at
    /// all: answer 413, it could never be accepted.
    #[error(
        "the events make {deliveries} deliveries, more than the {limit} allowed pending{of}; send fewer at once"
    )]
    TooManyDeliveries {
        /// Deliveries the events make.
        deliveries: usize,
        /// The bound.
        limit: usize,
        /// ` at broker "..."` for a broker's bound, else empty.
        of: String,
    },
}

impl PublishError {
    /// True when the backlog bound refused the events (retry later).
    pub fn is_backlog(&self) -> bool {
        matches!(self, PublishError::Backlog { .. })
    }

    /// True when one request's deliveries alone pass the bound.
    pub fn is_too_many(&self) -> bool {
        matches!(self, PublishError::TooManyDeliveries { .. })
    }
}

/// Router metrics, registered in the host's registry.
#[derive(Clone)]
struct Metrics {
    accepted: IntCounterVec,
    duplicates: IntCounterVec,
    schedule_firings: IntCounterVec,
    rejected: IntCounterVec,
    unmatched: IntCounterVec,
    dropped: IntCounterVec,
    events_delivered: IntCounterVec,
    events_dead_lettered: IntCounterVec,
    matched: IntCounterVec,
    delivered: IntCounterVec,
    retried: IntCounterVec,
    dead_lettered: IntCounterVec,
    replayed: IntCounterVec,
    trigger_in_flight: IntGaugeVec,
    in_flight: IntGauge,
    queue_depth: IntGauge,
    parked: IntGauge,
    dedupe_keys: IntGauge,
    dedupe_evicted: IntCounterVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Metrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap();
            registry.register(Box::new(g.clone())).unwrap();
            g
        };
        Metrics {
            accepted: counter(
                "sluice_events_accepted_total",
                "Events accepted (durable, answered 202).",
                &["broker"],
            ),
            duplicates: counter(
                "sluice_events_duplicate_total",
                "Events a client sent again within the de-duplication window: answered 202 as duplicates, not stored or delivered again.",
                &["broker"],
            ),
            schedule_firings: counter(
                "sluice_schedule_firings_total",
                "Instants a schedule fired: its event accepted into its broker (or found already accepted).",
                &["schedule"],
            ),
            rejected: counter(
                "sluice_events_rejected_total",
                "Events refused at ingress, by reason (the error code answered).",
                &["broker", "reason"],
            ),
            events_delivered: counter(
                "sluice_events_delivered_total",
                "Accepted events every matching trigger delivered.",
                &["broker"],
            ),
            events_dead_lettered: counter(
                "sluice_events_dead_lettered_total",
                "Accepted events at least one matching trigger dead-lettered.",
                &["broker"],
            ),
            unmatched: counter(
                "sluice_events_unmatched_total",
                "Accepted events no trigger matched.",
                &["broker"],
            ),
            dropped: counter(
                "sluice_events_dropped_total",
                "Events dropped, by reason.",
                &["broker", "reason"],
            ),
            matched: counter(
                "sluice_trigger_matched_total",
                "Events a trigger matched.",
                &["trigger"],
            ),
            delivered: counter(
                "sluice_trigger_delivered_total",
                "Deliveries that succeeded.",
                &["trigger"],
            ),
            retried: counter(
                "sluice_trigger_retried_total",
                "Failed attempts that will be retried.",
                &["trigger"],
            ),
            dead_lettered: counter(
                "sluice_trigger_dead_lettered_total",
                "Deliveries that failed for good.",
                &["trigger"],
            ),
            replayed: counter(
                "sluice_trigger_replayed_total",
                "Dead letters replayed to the trigger (each a new delivery).",
                &["trigger"],
            ),
            trigger_in_flight: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "sluice_trigger_in_flight",
                        "Deliveries of the trigger running now.",
                    ),
                    &["trigger"],
                )
                .unwrap();
                registry.register(Box::new(g.clone())).unwrap();
                g
            },
            in_flight: gauge("sluice_deliveries_in_flight", "Deliveries running now."),
            queue_depth: gauge(
                "sluice_deliveries_pending",
                "Deliveries waiting or running.",
            ),
            parked: gauge(
                "sluice_deliveries_parked",
                "Deliveries due but waiting for their trigger's in-flight limit.",
            ),
            dedupe_keys: gauge(
                "sluice_dedupe_keys",
                "Events in the de-duplication window (embedded mode).",
            ),
            dedupe_evicted: counter(
                "sluice_dedupe_evicted_total",
                "Events forgotten by the de-duplication window before their time because it held --dedupe-max-events (embedded mode).",
                &[],
            ),
        }
    }
}

/// The deliveries of one accepted event still to end, and whether one of
/// them was dead-lettered.
#[derive(Default)]
struct Group {
    remaining: u32,
    dead: bool,
}

/// Counts of one trigger since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TriggerStats {
    /// Events the trigger matched.
    pub matched: u64,
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    /// Deliveries that failed for good.
    pub dead_lettered: u64,
    /// Deliveries running now.
    pub in_flight: i64,
}

/// What the live event stream carries: an event accepted, or the end of
/// one delivery of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamEntry {
    /// `accepted`, `delivered`, `retrying` or `dead_lettered`.
    pub kind: &'static str,
    /// The broker.
    pub broker: String,
    /// The trigger, for delivery outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The event's `id`, `type` and `source`.
    pub id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub ty: String,
    /// The event's source.
    pub source: String,
    /// Triggers that matched, for `accepted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Vec<String>>,
    /// The delivery attempt, for outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Unix milliseconds.
    pub time_ms: u64,
}

/// A waiting delivery in the queue, ordered by when it is due (then by id):
/// the heap holds the deliveries themselves, no map beside it.
struct Waiting(Queued);

impl Waiting {
    fn key(&self) -> (u64, u64) {
        (self.0.record.not_before_ms, self.0.record.id)
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Waiting) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Waiting) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Waiting) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Deliveries waiting to run, the first due on top.
type Queue = BinaryHeap<Reverse<Waiting>>;

/// A queued delivery, with its event already parsed when the router has it
/// (shared by the deliveries of one event), so an attempt need not parse
/// the stored JSON.
struct Queued {
    record: DeliveryRecord,
    event: Option<Arc<CloudEvent>>,
    /// Set once the delivery failed for good but its dead letter could not
    /// be stored yet: what is left is storing it, not another attempt.
    failed: Option<Box<Failure>>,
    /// The place under its trigger's in-flight limit a delivery that ended
    /// handed to this parked one.
    admitted: Option<Box<Admitted>>,
    /// Its event's bytes, counted against the resident bound while it
    /// waits (counted off when its attempt starts).
    resident: u32,
}

impl Queued {
    fn new(record: DeliveryRecord, event: Option<Arc<CloudEvent>>) -> Queued {
        Queued {
            record,
            event,
            failed: None,
            admitted: None,
            resident: 0,
        }
    }
}

/// Why a delivery failed for good, for its dead letter.
#[derive(Clone)]
struct Failure {
    reason: String,
    /// The destination and status, for `knativeerrordest` and
    /// `knativeerrorcode` (none when the trigger was deleted or the stored
    /// event is unreadable).
    error: Option<(String, Option<u16>)>,
    /// The id of the dead letter's delivery to the dead-letter sink, once
    /// allocated: a retry of storing the dead letter reuses it.
    sink_id: Option<u64>,
}

/// The router: triggers, queue and workers of one server.
pub struct Router {
    store: Store,
    invoker: Arc<dyn Invoker>,
    limits: DispatchLimits,
    triggers: RwLock<BTreeMap<String, Arc<Trigger>>>,
    /// Stored brokers (their default deliveries).
    brokers: RwLock<BTreeMap<String, Arc<Broker>>>,
    broker_writes: tokio::sync::Mutex<()>,
    index: RwLock<Arc<TriggerIndex>>,
    queue: Mutex<Queue>,
    wake: Notify,
    in_flight: Arc<Semaphore>,
    per_trigger: Mutex<HashMap<String, Arc<TriggerSlot>>>,
    metrics: Metrics,
    clock: (tokio::time::Instant, u64),
    stopping: std::sync::atomic::AtomicBool,
    /// Open groups: accepted events whose deliveries have not all ended.
    groups: Mutex<HashMap<u64, Group>>,
    /// The live event stream (lossy: a slow reader misses entries).
    stream: broadcast::Sender<StreamEntry>,
    /// Brokers declared known besides those triggers name.
    declared: RwLock<std::collections::BTreeSet<String>>,
    /// Log lines of events dropped at the hop limit.
    hop_warnings: Throttle,
    /// Pending deliveries by broker (for `max_pending_per_broker`).
    pending_by_broker: Mutex<HashMap<Arc<str>, usize>>,
    /// Bytes of event JSON waiting deliveries keep in memory.
    resident: std::sync::atomic::AtomicUsize,
    /// What a delivery whose event is on disk holds instead.
    no_event: Arc<str>,
    /// One copy of each broker and trigger name in queued deliveries.
    names: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Cluster mode: events and deliveries on JetStream (see `cluster.rs`).
    cluster: Option<cluster::Link>,
    /// Schedules and how far each has fired (see `schedules.rs`).
    schedules: schedules::Schedules,
    /// What became of recent events (see `trace.rs`).
    traces: Arc<trace::Traces>,
}

/// At most one log line a second for a warning that something a guest
/// controls can repeat at will; the line says how many were not logged.
#[derive(Default)]
struct Throttle {
    last_ms: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// `Some(skipped since the last line)` when a line may be logged now.
    fn allow(&self, now_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_ms.load(Relaxed);
        if (last == 0 || now_ms >= last + 1000)
            && self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Relaxed));
        }
        self.skipped.fetch_add(1, Relaxed);
        None
    }
}

/// Wall-clock unix milliseconds, read once; the router's clock then runs
/// on tokio's monotonic time, so tests can pause it.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl StreamEntry {
    fn with_matched(mut self, matched: Vec<String>) -> StreamEntry {
        self.matched = Some(matched);
        self
    }
}

/// A trigger's deliveries in flight, and those parked until one ends.
#[derive(Default)]
struct Gate {
    running: usize,
    /// Its limit as of the last delivery started: the trigger's
    /// `maxConcurrency` under the server's per-trigger limit.
    limit: usize,
    parked: VecDeque<Queued>,
}

/// A delivery's place under its trigger's in-flight limit. When it ends,
/// the place goes straight to the first parked delivery of the trigger (in
/// the order they were parked; a fresh delivery cannot take it meanwhile).
struct Admitted {
    router: std::sync::Weak<Router>,
    slot: Arc<TriggerSlot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let next = {
            let mut gate = self.slot.gate.lock().unwrap();
            // Over a limit lowered meanwhile: the place is given up.
            let over = gate.running > gate.limit.max(1);
            let next = if over { None } else { gate.parked.pop_front() };
            match next {
                Some(mut next) => {
                    next.admitted = Some(Box::new(Admitted {
                        router: self.router.clone(),
                        slot: self.slot.clone(),
                    }));
                    Some(next)
                }
                None => {
                    gate.running -= 1;
                    None
                }
            }
        };
        if let (Some(next), Some(router)) = (next, self.router.upgrade()) {
            router.metrics.parked.dec();
            router.schedule_queued([next]);
        }
    }
}

/// What the dispatcher keeps per trigger while it exists: its in-flight
/// limiter and its metric series, looked up once per delivery (not hashed
/// per counter). A delivery holds the slot it started with, so one still
/// running when its trigger is deleted counts into the removed series and
/// recreates none.
struct TriggerSlot {
    gate: Mutex<Gate>,
    matched: IntCounter,
    delivered: IntCounter,
    retried: IntCounter,
    dead_lettered: IntCounter,
    replayed: IntCounter,
    in_flight: IntGauge,
}

/// The delivery of a trigger that sets none: its broker's default, or
/// Knative's defaults.
fn resolve_delivery(brokers: &BTreeMap<String, Arc<Broker>>, trigger: &mut Trigger) {
    if !trigger.own_delivery {
        trigger.delivery = brokers
            .get(&trigger.broker)
            .and_then(|broker| broker.delivery.clone())
            .unwrap_or_default();
    }
}

/// The event a dead letter holds as it was accepted: without the error
/// extensions (what a replay redelivers).
fn original_event(letter: String) -> String {
    match CloudEvent::from_json(letter.as_bytes()) {
        Ok(mut event) => {
            event
                .extensions
                .retain(|name, _| !name.starts_with("knativeerror"));
            event.to_json()
        }
        Err(_) => letter,
    }
}

/// What a router starts with: brokers, triggers and schedules (empty in
/// cluster mode, until the watches load them).
#[derive(Default)]
struct Catalog {
    brokers: BTreeMap<String, Arc<Broker>>,
    triggers: BTreeMap<String, Arc<Trigger>>,
    schedules: schedules::Schedules,
}

/// The catalog from the store's JSON, each trigger given its broker's
/// default delivery if it sets none.
fn load(store: &Store) -> Result<Catalog, StoreError> {
    let (raw_brokers, raw_triggers) = (store.brokers()?, store.triggers()?);
    let mut brokers = BTreeMap::new();
    for raw in raw_brokers {
        let value: serde_json::Value = serde_json::from_slice(&raw)?;
        let broker = Broker::parse(&value, None)
            .map_err(|error| StoreError::Corrupt(format!("stored broker is invalid: {error}")))?;
        brokers.insert(broker.name.clone(), Arc::new(broker));
    }
    let mut triggers = BTreeMap::new();
    for raw in raw_triggers {
        let value: serde_json::Value = serde_json::from_slice(&raw)?;
        match Trigger::parse(&value, None) {
            Ok(mut trigger) => {
                resolve_delivery(&brokers, &mut trigger);
                triggers.insert(trigger.name.clone(), Arc::new(trigger));
            }
            Err(error) => {
                return Err(StoreError::Corrupt(format!(
                    "stored trigger is invalid: {error}"
                )));
            }
        }
    }
    let schedules = schedules::Schedules::load(store.schedules()?);
    // A function or URL sink's trigger, before any delivery resumes.
    for mut trigger in schedules.direct_triggers() {
        resolve_delivery(&brokers, &mut trigger);
        triggers.insert(trigger.name.clone(), Arc::new(trigger));
    }
    Ok(Catalog {
        brokers,
        triggers,
        schedules,
    })
}

impl Router {
    /// Loads triggers and pending deliveries from `store`. Call
    /// [`Router::run`] to start delivering.
    pub fn new(
        store: Store,
        invoker: Arc<dyn Invoker>,
        limits: DispatchLimits,
        registry: &Registry,
    ) -> Result<Arc<Router>, StoreError> {
        let catalog = load(&store)?;
        let router = Router::assemble(store, invoker, limits, registry, catalog, None);
        let pending = router.store.recovered_deliveries()?;
        if !pending.is_empty() {
            tracing::info!(pending = pending.len(), "resuming pending deliveries");
        }
        for record in &pending {
            router.count_pending(&record.broker, 1);
        }
        router.open_groups(&pending);
        router.enqueue(pending);
        // Built in one go: no room left over from growing.
        router.queue.lock().unwrap().shrink_to_fit();
        Ok(router)
    }

    fn assemble(
        store: Store,
        invoker: Arc<dyn Invoker>,
        limits: DispatchLimits,
        registry: &Registry,
        catalog: Catalog,
        cluster: Option<cluster::Link>,
    ) -> Arc<Router> {
        let Catalog {
            brokers,
            triggers,
            schedules,
        } = catalog;
        let index = Arc::new(TriggerIndex::build(triggers.values().cloned()));
        let traces = Arc::new(match cluster {
            Some(_) => trace::Traces::new(Duration::ZERO, 0),
            None => trace::Traces::new(limits.trace_retention, limits.trace_max_events),
        });
        Arc::new(Router {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            store,
            invoker,
            limits,
            triggers: RwLock::new(triggers),
            brokers: RwLock::new(brokers),
            broker_writes: tokio::sync::Mutex::new(()),
            index: RwLock::new(index),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            per_trigger: Mutex::new(HashMap::new()),
            metrics: Metrics::new(registry),
            clock: (tokio::time::Instant::now(), unix_ms()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            groups: Mutex::new(HashMap::new()),
            stream: broadcast::channel(1024).0,
            declared: RwLock::default(),
            hop_warnings: Throttle::default(),
            pending_by_broker: Mutex::default(),
            resident: Default::default(),
            no_event: Arc::from(""),
            names: Mutex::default(),
            traces,
            cluster,
            schedules,
        })
    }

    /// Unix milliseconds on the router's clock.
    fn now_ms(&self) -> u64 {
        self.clock.1 + self.clock.0.elapsed().as_millis() as u64
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs the delivery loop until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        if self.cluster.is_some() {
            self.clone().start_cluster();
        }
        tokio::spawn(Router::schedule_loop(Arc::downgrade(&self)));
        loop {
            let next_due = {
                let queue = self.queue.lock().unwrap();
                queue
                    .peek()
                    .map(|Reverse(waiting)| waiting.0.record.not_before_ms)
            };
            match next_due {
                None => self.wake.notified().await,
                Some(at) if at > self.now_ms() => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(at.saturating_sub(self.now_ms()))) => {}
                        () = self.wake.notified() => {}
                    }
                }
                Some(_) => {
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let queued = self.queue.lock().unwrap().pop();
                    let Some(Reverse(Waiting(mut queued))) = queued else {
                        continue;
                    };
                    let found = self.trigger_slot(&queued.record.trigger);
                    // A place handed over by an ended delivery counts only
                    // in the slot it came from (not in one of a trigger
                    // deleted and made again meanwhile).
                    let mut admitted = queued.admitted.take().filter(|a| {
                        found
                            .as_ref()
                            .is_some_and(|(_, slot)| Arc::ptr_eq(slot, &a.slot))
                    });
                    if admitted.is_none()
                        && let Some((_, slot)) = &found
                    {
                        let mut gate = slot.gate.lock().unwrap();
                        gate.limit = found
                            .as_ref()
                            .and_then(|(trigger, _)| trigger.delivery.max_concurrency)
                            .map_or(self.limits.max_in_flight_per_trigger, |max| {
                                (max as usize).min(self.limits.max_in_flight_per_trigger)
                            });
                        if gate.running >= gate.limit || !gate.parked.is_empty() {
                            // At its limit: parked, no attempt used, until
                            // one of the trigger's deliveries ends.
                            gate.parked.push_back(queued);
                            self.metrics.parked.inc();
                            continue;
                        }
                        gate.running += 1;
                        drop(gate);
                        admitted = Some(Box::new(Admitted {
                            router: Arc::downgrade(&self),
                            slot: slot.clone(),
                        }));
                    }
                    let router = self.clone();
                    tokio::spawn(async move {
                        router.metrics.in_flight.inc();
                        router.attempt(queued, found, admitted).await;
                        router.metrics.in_flight.dec();
                        drop(permit);
                    });
                }
            }
        }
    }

    fn enqueue(&self, records: Vec<DeliveryRecord>) {
        self.schedule_queued(records.into_iter().map(|record| Queued::new(record, None)));
    }

    fn schedule_parsed(
        &self,
        queued: impl IntoIterator<Item = (DeliveryRecord, Option<Arc<CloudEvent>>)>,
    ) {
        self.schedule_queued(
            queued
                .into_iter()
                .map(|(record, event)| Queued::new(record, event)),
        );
    }

    fn schedule_queued(&self, queued: impl IntoIterator<Item = Queued>) {
        let mut any = false;
        {
            let mut queue = self.queue.lock().unwrap();
            for mut queued in queued {
                self.keep_or_drop_event(&mut queued);
                queue.push(Reverse(Waiting(queued)));
                any = true;
            }
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// Keeps a waiting delivery's event in memory while the waiting ones'
    /// events fit in `max_resident_event_bytes`; else lets go of it (it is
    /// read back from the journal when due).
    fn keep_or_drop_event(&self, queued: &mut Queued) {
        use std::sync::atomic::Ordering::Relaxed;
        // A parsed event (kept for a fresh delivery, so its attempt need not
        // parse the JSON) takes some three times its JSON again.
        let parsed = if queued.event.is_some() { 3 } else { 0 };
        let bytes = queued.record.event.len() * (1 + parsed);
        // A clustered delivery has no journal to read its event back from;
        // the node holds no more of them than its feed's capacity.
        if queued.resident > 0 || bytes == 0 || self.cluster.is_some() {
            return;
        }
        let kept = self
            .resident
            .fetch_update(Relaxed, Relaxed, |held| {
                (held + bytes <= self.limits.max_resident_event_bytes).then_some(held + bytes)
            })
            .is_ok();
        if kept {
            queued.resident = u32::try_from(bytes).unwrap_or(u32::MAX);
        } else {
            queued.record.event = self.no_event.clone();
            queued.event = None;
        }
    }

    /// The shared copy of `name`.
    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap();
        if let Some(known) = names.get(name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        names.insert(name.clone());
        name
    }

    /// Counts `delta` pending deliveries of `broker` (the gauge and the
    /// broker's count).
    fn count_pending(&self, broker: &str, delta: i64) {
        let mut by_broker = self.pending_by_broker.lock().unwrap();
        self.metrics.queue_depth.add(delta);
        match by_broker.get_mut(broker) {
            Some(count) => {
                *count = count.saturating_add_signed(delta as isize);
                if *count == 0 {
                    by_broker.remove(broker);
                }
            }
            None if delta > 0 => {
                by_broker.insert(self.intern(broker), delta as usize);
            }
            None => {}
        }
    }

    /// Counts `n` more pending deliveries of `broker` unless that would
    /// pass the bounds (times `scale`); the check and the count are one
    /// step under the lock every count takes.
    fn reserve_pending(&self, broker: &str, n: usize, scale: usize) -> Result<(), PublishError> {
        if n == 0 {
            return Ok(());
        }
        let mut by_broker = self.pending_by_broker.lock().unwrap();
        let total_limit = self.limits.max_pending.saturating_mul(scale);
        let broker_limit = self.limits.max_pending_per_broker.saturating_mul(scale);
        let at_broker = || format!(" at broker {broker:?}");
        if n > total_limit {
            return Err(PublishError::TooManyDeliveries {
                deliveries: n,
                limit: total_limit,
                of: String::new(),
            });
        }
        if broker_limit > 0 && n > broker_limit {
            return Err(PublishError::TooManyDeliveries {
                deliveries: n,
                limit: broker_limit,
                of: at_broker(),
            });
        }
        let pending = self.pending().max(0) as usize;
        if pending + n > total_limit {
            return Err(PublishError::Backlog {
                pending,
                limit: total_limit,
                of: String::new(),
            });
        }
        let of_broker = by_broker.get(broker).copied().unwrap_or(0);
        if broker_limit > 0 && of_broker + n > broker_limit {
            return Err(PublishError::Backlog {
                pending: of_broker,
                limit: broker_limit,
                of: at_broker(),
            });
        }
        self.metrics.queue_depth.add(n as i64);
        match by_broker.get_mut(broker) {
            Some(count) => *count += n,
            None => {
                by_broker.insert(self.intern(broker), n);
            }
        }
        Ok(())
    }

    /// Announces and schedules deliveries now written (see [`Stored`]).
    fn schedule_stored(&self, records: Vec<DeliveryRecord>, shared: Vec<Arc<CloudEvent>>) {
        for run in records.chunk_by(|a, b| a.trigger == b.trigger) {
            if let Some(slot) = self.slot(&run[0].trigger) {
                slot.matched.inc_by(run.len() as u64);
            }
        }
        self.open_groups(&records);
        self.schedule_parsed(records.into_iter().zip(shared.into_iter().map(Some)));
    }

    /// Pending deliveries of `broker`.
    pub fn pending_of(&self, broker: &str) -> usize {
        self.pending_by_broker
            .lock()
            .unwrap()
            .get(broker)
            .copied()
            .unwrap_or(0)
    }

    /// Accepts `events` from a client into `broker`, as [`Router::publish`]
    /// does, unless the backlog is at its bound (then nothing is stored).
    /// A repeat of an event (broker, source, id) accepted within the
    /// de-duplication window is not stored again: see [`Accepted`].
    pub async fn accept(
        &self,
        broker: &str,
        events: Vec<CloudEvent>,
    ) -> Result<Accepted, PublishError> {
        self.publish_bounded(broker, events, Origin::Client).await
    }

    /// Whether events a client posts to `broker` are de-duplicated: unless
    /// the server or its stored resource turns it off.
    pub fn dedupes(&self, broker: &str) -> bool {
        self.limits.dedupe && self.broker(broker).is_none_or(|b| b.dedupe)
    }

    /// Accepts `events` into `broker`: matches them, stores one delivery per
    /// matching trigger, and returns once that is on disk. Replies and
    /// events guests publish come this way: held to twice the backlog bound,
    /// not the bound itself, so deliveries already accepted can still
    /// reply while ingress is refused, and a function that publishes for
    /// every event it gets cannot grow the backlog without end.
    pub async fn publish(&self, broker: &str, events: Vec<CloudEvent>) -> Result<(), PublishError> {
        self.publish_bounded(broker, events, Origin::Function)
            .await
            .map(drop)
    }

    /// True (and counted, and logged at most once a second) when `event`
    /// has passed the hop limit: it is dropped.
    fn over_hop_limit(&self, broker: &str, event: &CloudEvent) -> bool {
        let hops: u32 = event
            .extensions
            .get(HOPS_EXTENSION)
            .and_then(|h| h.parse().ok())
            .unwrap_or(0);
        if hops <= self.limits.max_hops {
            return false;
        }
        // A loop makes these as fast as it runs: one line a second.
        if let Some(since) = self.hop_warnings.allow(self.now_ms()) {
            tracing::warn!(%broker, id = %event.id, hops, more_since_last_line = since, "event dropped: hop limit reached (a reply or publish loop?)");
        }
        self.metrics
            .dropped
            .with_label_values(&[broker, "hop_limit"])
            .inc();
        true
    }

    async fn publish_bounded(
        &self,
        broker: &str,
        events: Vec<CloudEvent>,
        origin: Origin,
    ) -> Result<Accepted, PublishError> {
        // The broker name de-duplication keys and traces are made with: a
        // schedule's firings apart from clients' events (a broker name
        // holds no NUL), so a client posting the same source and id can
        // neither suppress one nor replace its trace.
        let key_space: std::borrow::Cow<str> = match origin {
            Origin::Schedule => schedule_key_space(broker).into(),
            Origin::Client | Origin::Function => broker.into(),
        };
        let dedupe = match origin {
            Origin::Client => self.dedupes(broker),
            // Its ids follow from the schedule and the instant: a repeat
            // is a firing done twice, whatever the broker says.
            Origin::Schedule => self.limits.dedupe,
            Origin::Function => false,
        };
        let keyed_as = dedupe.then_some(&*key_space);
        if let Some(link) = &self.cluster {
            // Functions' events have twice the room, as below.
            let scale = if origin == Origin::Function { 2 } else { 1 };
            self.check_clustered_backlog(link, broker, scale, &events)?;
            // Replies and guests' events are traced as their cause's.
            let traced_as = (origin != Origin::Function).then_some(&*key_space);
            return (self.publish_clustered(link, broker, events, keyed_as, traced_as)).await;
        }
        let bounded = origin != Origin::Function;
        let events: Vec<CloudEvent> = (events.into_iter())
            .filter(|event| !self.over_hop_limit(broker, event))
            .collect();
        // A client's repeat of an event accepted within the window (or
        // earlier in the same request) is a duplicate; replies and guests'
        // events are always new, as in cluster mode.
        let window = dedupe.then(|| self.store.dedupe().cloned()).flatten();
        let mut duplicate = vec![false; events.len()];
        let mut claim = match &window {
            None => None,
            Some(window) => {
                let keys: Vec<sluice_store::DedupeKey> = (events.iter())
                    .map(|e| sluice_store::dedupe_key(&key_space, &e.source, &e.id))
                    .collect();
                let repeats = sluice_store::repeats_within(&keys);
                let distinct: Vec<sluice_store::DedupeKey> = (keys.iter().zip(&repeats))
                    .filter(|(_, repeat)| !**repeat)
                    .map(|(key, _)| *key)
                    .collect();
                let claim = window.claim(&distinct).await;
                let mut verdicts = claim.new.iter();
                for (slot, repeat) in duplicate.iter_mut().zip(repeats) {
                    *slot = if repeat {
                        true
                    } else {
                        !verdicts.next().expect("a verdict per distinct key")
                    };
                }
                Some(claim)
            }
        };
        let index = self.index.read().unwrap().clone();
        let mut records = Vec::new();
        let mut shared = Vec::new();
        let mut unmatched = 0;
        let mut accepted = 0;
        let mut duplicates = Vec::new();
        let watched = self.stream.receiver_count() > 0;
        let mut seen = Vec::new();
        // Replies and guests' events are traced as their cause's.
        let traced = origin != Origin::Function && self.traces.enabled();
        let mut traces = Vec::new();
        let mut repeats = Vec::new();
        let broker_name = self.intern(broker);
        for (mut event, duplicate) in events.into_iter().zip(duplicate) {
            if duplicate {
                if traced {
                    repeats.push(sluice_store::dedupe_key(
                        &key_space,
                        &event.source,
                        &event.id,
                    ));
                }
                duplicates.push(event.id);
                continue;
            }
            accepted += 1;
            let matches = index.matches(broker, &event);
            event.forget_parsed_data();
            if watched {
                seen.push(
                    self.entry("accepted", broker, None, &event, None)
                        .with_matched(matches.iter().map(|t| t.name.clone()).collect()),
                );
            }
            if matches.is_empty() {
                unmatched += 1;
                if traced {
                    // Kept for the reasons only when small: not made at all
                    // for an event whose data alone is too large.
                    let data_len = match &event.data {
                        None => 0,
                        Some(crate::event::Data::Binary(bytes)) => bytes.len(),
                        Some(crate::event::Data::Json(raw)) => raw.get().len(),
                    };
                    let json =
                        (data_len < trace::MAX_EVENT_BYTES).then(|| Arc::from(event.to_json()));
                    traces.push(Router::trace_of(broker, &key_space, &event, &[], json, 0));
                }
                continue;
            }
            // One copy of the event JSON, shared by its deliveries.
            let json: Arc<str> = event.to_json().into();
            let parsed = Arc::new(event);
            let mut group = 0;
            for trigger in &matches {
                let id = self.store.next_id().await?;
                if group == 0 {
                    group = id;
                }
                records.push(DeliveryRecord {
                    id,
                    broker: broker_name.clone(),
                    trigger: self.intern(&trigger.name),
                    event: json.clone(),
                    attempts: 0,
                    not_before_ms: 0,
                    dead_letter: None,
                    group,
                });
                shared.push(parsed.clone());
            }
            if traced {
                traces.push(Router::trace_of(
                    broker,
                    &key_space,
                    &parsed,
                    &matches,
                    Some(json.clone()),
                    group,
                ));
            }
        }
        // Places in the backlog are taken before the deliveries are stored
        // (so concurrent requests cannot all pass the bound), and given
        // back if storing fails or the request is dropped first.
        let scale = if bounded { 1 } else { 2 };
        self.reserve_pending(broker, records.len(), scale)?;
        let mut tail = Stored {
            router: self,
            broker,
            records,
            shared,
            written: false,
        };
        let keyed = claim.as_ref().is_some_and(|c| !c.keys().is_empty());
        if !tail.records.is_empty() || keyed {
            let synced = self
                .store
                .put_deliveries_keyed(&tail.records, claim.as_ref())?;
            // In the journal from here: if the client hangs up while they
            // are synced, they are still delivered (at least once), so
            // their keys are committed then too (a retry of them is a
            // duplicate): the wait runs on a task of its own.
            tail.written = true;
            let claim = claim.take();
            // Traced then too: the events are delivered whether or not
            // the client still waits.
            let (trace_store, batch, now) = (
                self.traces.clone(),
                std::mem::take(&mut traces),
                self.now_ms(),
            );
            let synced = tokio::spawn(async move {
                let result = synced.await;
                if result.is_ok() {
                    if let Some(claim) = claim {
                        claim.commit();
                    }
                    if !batch.is_empty() {
                        trace_store.accepted(batch, now);
                    }
                }
                result
            })
            .await
            .unwrap_or_else(|error| {
                Err(StoreError::Conflict(format!(
                    "waiting for the delivery journal: {error}"
                )))
            });
            if let Err(error) = synced {
                tail.written = false;
                return Err(error.into());
            }
        }
        // Nothing to write (every event a duplicate): nothing new to keep.
        if let Some(claim) = claim {
            claim.commit();
        }
        if let Some(window) = &window {
            self.metrics.dedupe_keys.set(window.len() as i64);
            (self.metrics.dedupe_evicted.with_label_values::<&str>(&[]))
                .inc_by(window.take_evicted());
        }
        for entry in seen {
            let _ = self.stream.send(entry);
        }
        if !traces.is_empty() {
            self.traces
                .accepted(std::mem::take(&mut traces), self.now_ms());
        }
        if !repeats.is_empty() {
            self.traces.duplicates(&repeats);
        }
        self.metrics
            .accepted
            .with_label_values(&[broker])
            .inc_by(accepted);
        self.metrics
            .unmatched
            .with_label_values(&[broker])
            .inc_by(unmatched);
        self.count_duplicates(broker, &duplicates);
        Ok(Accepted { duplicates })
    }

    /// A new trace of `event`, accepted into `broker`, matching `matches`.
    fn trace_of(
        broker: &str,
        keyed_as: &str,
        event: &CloudEvent,
        matches: &[Arc<Trigger>],
        json: Option<Arc<str>>,
        group: u64,
    ) -> Trace {
        Trace::new(
            broker,
            keyed_as,
            (&event.id, &event.source, &event.ty),
            matches.iter().map(|t| t.name.clone()).collect(),
            json,
            group,
        )
    }

    /// The traces of the recent events `id` of `broker` (one per source,
    /// newest first; only `source`'s when given), each with, for every
    /// trigger of the broker now that it did not match, why not (when the
    /// trace kept the event; see [`Trigger::why_not`]). Only cluster mode
    /// can fail (the cluster did not answer).
    pub async fn trace(
        &self,
        broker: &str,
        id: &str,
        source: Option<&str>,
    ) -> Result<Vec<(Trace, Misses)>, StoreError> {
        let found = match &self.cluster {
            Some(link) => trace::read_clustered(&link.cluster, broker, id, source).await?,
            None => self.traces.find(broker, id, source, self.now_ms()),
        };
        Ok(found
            .into_iter()
            .map(|trace| {
                let event = (trace.event.as_deref())
                    .and_then(|json| CloudEvent::from_json(json.as_bytes()).ok());
                let others = (self.triggers().into_iter())
                    .filter(|t| t.broker == broker && !trace.matched.contains(&t.name))
                    .map(|t| {
                        let why = event.as_ref().and_then(|e| t.why_not(e));
                        (t.name.clone(), why)
                    })
                    .collect();
                (trace, others)
            })
            .collect())
    }

    /// Whether traces are kept (`--trace-retention` above 0).
    pub fn traces_kept(&self) -> bool {
        match &self.cluster {
            Some(link) => link.cluster.traces_kept(),
            None => self.traces.enabled(),
        }
    }

    fn count_duplicates(&self, broker: &str, duplicates: &[String]) {
        if !duplicates.is_empty() {
            self.metrics
                .duplicates
                .with_label_values(&[broker])
                .inc_by(duplicates.len() as u64);
        }
    }

    /// Publishes events a function produced while handling `cause` (or on
    /// its own when `cause` is `None`): each carries one hop more, and the
    /// id of its cause.
    pub async fn publish_from(
        &self,
        broker: &str,
        cause: Option<&CloudEvent>,
        mut events: Vec<CloudEvent>,
    ) -> Result<(), PublishError> {
        let hops = cause
            .and_then(|c| c.extensions.get(HOPS_EXTENSION))
            .and_then(|h| h.parse::<u32>().ok())
            .unwrap_or(0);
        for event in &mut events {
            event
                .extensions
                .insert(HOPS_EXTENSION.into(), (hops + 1).to_string());
            if let Some(cause) = cause {
                event
                    .extensions
                    .insert(CAUSE_EXTENSION.into(), cause.id.clone());
            }
        }
        if broker.starts_with(crate::schedule::DIRECT_PREFIX) {
            // Replies to a schedule's firing delivered straight to a
            // function or URL, and what the function publishes while
            // handling it, have no broker to go to (Knative drops a
            // PingSource sink's replies): its own broker's one trigger
            // would deliver them straight back.
            self.metrics
                .dropped
                .with_label_values(&[broker, "schedule_sink_reply"])
                .inc_by(events.len() as u64);
            return Ok(());
        }
        // In cluster mode whether the cause is traced is its delivery's
        // header's to say.
        let ids: Vec<String> = match cause {
            Some(_) if self.cluster.is_some() || self.traces_kept() => {
                events.iter().map(|e| e.id.clone()).collect()
            }
            _ => Vec::new(),
        };
        self.publish(broker, events).await?;
        if let Some(cause) = cause
            && !ids.is_empty()
        {
            match &self.cluster {
                Some(link) => link.caused(broker, cause, &ids),
                None => self.traces.caused(broker, &cause.source, &cause.id, &ids),
            }
        }
        Ok(())
    }

    /// Trigger `name` and its slot (made on first use), if it exists.
    fn trigger_slot(&self, name: &str) -> Option<(Arc<Trigger>, Arc<TriggerSlot>)> {
        // Under the triggers' read lock: a delete (which takes the write
        // lock, then drops the slot) cannot slip between the check and the
        // insert and leave a slot behind.
        let triggers = self.triggers.read().unwrap();
        let trigger = triggers.get(name)?.clone();
        let mut slots = self.per_trigger.lock().unwrap();
        if let Some(slot) = slots.get(name) {
            return Some((trigger, slot.clone()));
        }
        let m = &self.metrics;
        let labels = &[name];
        let slot = Arc::new(TriggerSlot {
            gate: Mutex::default(),
            matched: m.matched.with_label_values(labels),
            delivered: m.delivered.with_label_values(labels),
            retried: m.retried.with_label_values(labels),
            dead_lettered: m.dead_lettered.with_label_values(labels),
            replayed: m.replayed.with_label_values(labels),
            in_flight: m.trigger_in_flight.with_label_values(labels),
        });
        slots.insert(name.to_string(), slot.clone());
        Some((trigger, slot))
    }

    /// The slot of trigger `name`, if it exists.
    fn slot(&self, name: &str) -> Option<Arc<TriggerSlot>> {
        self.trigger_slot(name).map(|(_, slot)| slot)
    }

    async fn attempt(
        &self,
        queued: Queued,
        found: Option<(Arc<Trigger>, Arc<TriggerSlot>)>,
        _admitted: Option<Box<Admitted>>,
    ) {
        let Queued {
            mut record,
            event: parsed,
            failed,
            admitted: _,
            resident,
        } = queued;
        self.resident
            .fetch_sub(resident as usize, std::sync::atomic::Ordering::Relaxed);
        if record.event.is_empty() {
            // Let go of while it waited: read it back from the journal.
            match self.read_event(record.id).await {
                Ok(Some(json)) => record.event = json,
                Ok(None) => {
                    tracing::warn!(id = record.id, trigger = %record.trigger, "a queued delivery is no longer in the journal");
                    // Not pending any more: neither the backlog's count nor
                    // its event's group may keep waiting for it.
                    self.count_pending(&record.broker, -1);
                    self.settle(&record, false);
                    return;
                }
                Err(error) => {
                    tracing::error!(id = record.id, %error, "could not read a delivery's event back; trying again");
                    record.not_before_ms = self.now_ms() + DEAD_LETTER_RETRY.as_millis() as u64;
                    // As it was: one waiting only for its dead letter to be
                    // stored stays so (another attempt would be one too many).
                    self.schedule_queued([Queued {
                        record,
                        event: None,
                        failed,
                        admitted: None,
                        resident: 0,
                    }]);
                    return;
                }
            }
        }
        if let Some(failure) = failed {
            // Only its dead letter is left to store.
            self.fail_for_good(record, parsed, *failure).await;
            return;
        }
        let Some((trigger, slot)) = found else {
            if record.dead_letter.is_some() {
                // A dead letter's forwarding to the sink of a trigger since
                // deleted: the dead letter stays stored.
                self.done(&record);
                return;
            }
            // Deleted: fail it for good, counted for no trigger.
            let reason = format!("trigger {:?} was deleted before delivery", record.trigger);
            let event = match parsed {
                Some(event) => Some(event),
                None => CloudEvent::from_json(record.event.as_bytes())
                    .ok()
                    .map(Arc::new),
            };
            let failure = Failure {
                reason,
                error: None,
                sink_id: None,
            };
            self.fail_for_good(record, event, failure).await;
            return;
        };
        let gauge = slot.in_flight.clone();
        gauge.inc();
        struct Running(IntGauge);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let _running = Running(gauge);
        let parsed = match parsed {
            Some(event) => Ok(event),
            None => CloudEvent::from_json(record.event.as_bytes()).map(Arc::new),
        };
        let event = match parsed {
            Ok(event) => event,
            Err(error) => {
                let failure = Failure {
                    reason: format!("stored event is unreadable: {error}"),
                    error: None,
                    sink_id: None,
                };
                self.fail_for_good(record, None, failure).await;
                return;
            }
        };
        let (destination, retry) = match record.dead_letter {
            None => (trigger.subscriber.clone(), trigger.delivery.retry),
            Some(_) => match &trigger.delivery.dead_letter_sink {
                Some(sink) => (sink.clone(), SINK_ATTEMPTS - 1),
                None => {
                    self.done(&record);
                    return;
                }
            },
        };
        record.attempts += 1;
        let context = DeliveryContext {
            broker: record.broker.to_string(),
            attempt: record.attempts,
            timeout: trigger.delivery.timeout,
        };
        let started = (self.now_ms(), std::time::Instant::now());
        let outcome = self.invoker.deliver(&destination, &event, context).await;
        let again = |retryable: bool| match retryable && record.attempts <= retry {
            true => "retrying",
            false => "failed",
        };
        if let Outcome::Failed {
            retryable,
            code,
            reason,
        } = &outcome
        {
            self.trace_attempt(&record, started, again(*retryable), *code, Some(reason));
        }
        match outcome {
            Outcome::Delivered(replies) => {
                if !replies.is_empty()
                    && let Err(error) = self
                        .publish_from(&record.broker, Some(&*event), replies)
                        .await
                {
                    // The replies are not safe yet: retry the delivery.
                    tracing::warn!(trigger = %record.trigger, %error, "replies could not be stored; retrying");
                    let why = format!("delivered, but its replies could not be stored: {error}");
                    self.trace_attempt(&record, started, again(true), None, Some(&why));
                    self.retry_or_fail(
                        record,
                        (&trigger, &slot),
                        retry,
                        event,
                        None,
                        error.to_string(),
                    )
                    .await;
                    return;
                }
                self.trace_attempt(&record, started, "delivered", None, None);
                if record.dead_letter.is_none() {
                    slot.delivered.inc();
                    self.announce("delivered", &record, &event);
                }
                self.done(&record);
                self.settle(&record, false);
            }
            Outcome::Failed {
                retryable: true,
                code,
                reason,
            } => {
                self.retry_or_fail(record, (&trigger, &slot), retry, event, code, reason)
                    .await;
            }
            Outcome::Failed {
                retryable: false,
                code,
                reason,
            } => {
                tracing::warn!(trigger = %record.trigger, attempts = record.attempts, %reason, "delivery failed permanently");
                self.dead_letter_or_drop(record, &trigger, event, code, reason)
                    .await;
            }
        }
    }

    /// Adds an attempt of `record` (started at `started`) to its event's
    /// trace; a dead letter's forwarding to a sink is not the event's.
    fn trace_attempt(
        &self,
        record: &DeliveryRecord,
        started: (u64, std::time::Instant),
        outcome: &'static str,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        // In cluster mode the delivery's header says whether its event is
        // traced (the accepting node decided).
        if record.dead_letter.is_some() || (self.cluster.is_none() && !self.traces.enabled()) {
            return;
        }
        let attempt = TraceAttempt {
            trigger: record.trigger.to_string(),
            attempt: record.attempts,
            start_ms: started.0,
            duration_ms: started.1.elapsed().as_secs_f64() * 1000.0,
            outcome,
            status,
            error: error.map(str::to_string),
            node: None,
        };
        match &self.cluster {
            Some(link) => link.attempt(record.id, attempt),
            None => self.traces.attempt(record.group, attempt),
        }
    }

    fn done(&self, record: &DeliveryRecord) {
        if let Some(link) = &self.cluster {
            link.finish(record.id, cluster::End::Ack);
            self.count_pending(&record.broker, -1);
            return;
        }
        if let Err(error) = self.store.complete_delivery(record.id) {
            tracing::error!(id = record.id, %error, "could not mark a delivery done; it may run again");
        }
        self.count_pending(&record.broker, -1);
    }

    async fn retry_or_fail(
        &self,
        mut record: DeliveryRecord,
        (trigger, slot): (&Trigger, &TriggerSlot),
        retry: u32,
        event: Arc<CloudEvent>,
        code: Option<u16>,
        reason: String,
    ) {
        if record.attempts <= retry {
            let wait = trigger
                .delivery
                .backoff_policy
                .delay(trigger.delivery.backoff_delay, record.attempts);
            tracing::info!(trigger = %record.trigger, attempt = record.attempts, wait_ms = wait.as_millis() as u64, %reason, "delivery failed; will retry");
            if record.dead_letter.is_none() {
                slot.retried.inc();
                self.announce("retrying", &record, &event);
            }
            if let Some(link) = &self.cluster {
                // Back to JetStream, due after the backoff, for any node.
                link.finish(record.id, cluster::End::Retry(wait));
                self.count_pending(&record.broker, -1);
                return;
            }
            record.not_before_ms = self.now_ms() + wait.as_millis() as u64;
            if let Err(error) = self.store.update_delivery(&record) {
                tracing::error!(id = record.id, %error, "could not record a retry");
            }
            self.schedule_parsed([(record, Some(event))]);
        } else {
            tracing::warn!(trigger = %record.trigger, attempts = record.attempts, %reason, "delivery failed after its last attempt");
            self.dead_letter_or_drop(record, trigger, event, code, reason)
                .await;
        }
    }

    async fn dead_letter_or_drop(
        &self,
        record: DeliveryRecord,
        trigger: &Trigger,
        event: Arc<CloudEvent>,
        code: Option<u16>,
        reason: String,
    ) {
        if record.dead_letter.is_some() {
            // The dead letter stays stored; only its forwarding gave up.
            tracing::warn!(trigger = %record.trigger, %reason, "dead-letter sink did not take the event; it stays in the dead letters");
            self.done(&record);
            return;
        }
        let destination = match &trigger.subscriber {
            Destination::Function(name) => name.clone(),
            Destination::Uri(uri) => uri.clone(),
        };
        let failure = Failure {
            reason,
            error: Some((destination, code)),
            sink_id: None,
        };
        self.fail_for_good(record, Some(event), failure).await;
    }

    /// Stores a dead letter for `record` (with the `knativeerror*`
    /// extensions) and queues it for the dead-letter sink if there is one.
    /// If that cannot be stored now, the delivery stays pending and this is
    /// tried again after [`DEAD_LETTER_RETRY`].
    async fn fail_for_good(
        &self,
        record: DeliveryRecord,
        event: Option<Arc<CloudEvent>>,
        mut failure: Failure,
    ) {
        let mut json = record.event.clone();
        if let Some(event) = &event {
            let mut event = CloudEvent::clone(event);
            if let Some((destination, code)) = &failure.error {
                event
                    .extensions
                    .insert("knativeerrordest".into(), destination.clone());
                if let Some(code) = code {
                    event
                        .extensions
                        .insert("knativeerrorcode".into(), code.to_string());
                }
                event.extensions.insert(
                    "knativeerrordata".into(),
                    truncate(&failure.reason, MAX_ERROR_DATA).to_string(),
                );
            }
            json = event.to_json().into();
        }
        if let Some(link) = &self.cluster {
            self.dead_letter_clustered(link, record, event, failure, json)
                .await;
            return;
        }
        // The dead letter takes the delivery's id: a delivery run again
        // after a crash overwrites its own dead letter.
        let letter_id = record.id;
        let has_sink = self
            .triggers
            .read()
            .unwrap()
            .get(&*record.trigger)
            .is_some_and(|t| t.delivery.dead_letter_sink.is_some());
        let sink_id = match (has_sink, failure.sink_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => match self.store.next_id().await {
                Ok(id) => {
                    failure.sink_id = Some(id);
                    Some(id)
                }
                Err(error) => {
                    tracing::error!(id = record.id, %error, "could not allocate an id for a dead letter's delivery; trying again");
                    self.retry_dead_letter(record, event, failure);
                    return;
                }
            },
        };
        let letter = DeadLetterRecord {
            id: letter_id,
            broker: record.broker.to_string(),
            trigger: record.trigger.to_string(),
            event: json.to_string(),
            attempts: record.attempts,
            reason: failure.reason.clone(),
            time: sluice_store::now_rfc3339(),
        };
        let sink = sink_id.map(|sink_id| DeliveryRecord {
            id: sink_id,
            broker: record.broker.clone(),
            trigger: record.trigger.clone(),
            event: json,
            attempts: 0,
            not_before_ms: 0,
            dead_letter: Some(letter_id),
            group: 0,
        });
        match self
            .store
            .dead_letter(record.id, &letter, sink.as_ref())
            .await
        {
            Ok(()) => {
                if let Some(event) = &event {
                    self.announce("dead_lettered", &record, event);
                }
                (self.traces).dead_lettered(
                    record.group,
                    &record.trigger,
                    letter_id,
                    &letter.reason,
                );
                if let Some(slot) = self.slot(&record.trigger) {
                    slot.dead_lettered.inc();
                }
                self.count_pending(&record.broker, -1);
                self.settle(&record, true);
                if let Some(sink) = sink {
                    self.count_pending(&sink.broker, 1);
                    self.enqueue(vec![sink]);
                }
            }
            Err(error) => {
                tracing::error!(id = record.id, %error, "could not store a dead letter; the delivery stays pending and it is tried again");
                self.retry_dead_letter(record, event, failure);
            }
        }
    }

    /// Queues `record`'s dead letter to be stored again later; once the
    /// store has failed for good (it refuses writes until a restart), the
    /// delivery is left pending for the next start instead.
    fn retry_dead_letter(
        &self,
        mut record: DeliveryRecord,
        event: Option<Arc<CloudEvent>>,
        failure: Failure,
    ) {
        if self.cluster.is_none() && !self.store.healthy() {
            tracing::error!(id = record.id, trigger = %record.trigger, "the store failed: this delivery stays pending and is run again after a restart");
            return;
        }
        record.not_before_ms = self.now_ms() + DEAD_LETTER_RETRY.as_millis() as u64;
        self.schedule_queued([Queued {
            record,
            event,
            failed: Some(Box::new(failure)),
            admitted: None,
            resident: 0,
        }]);
    }

    /// The event of pending delivery `id`, read from the journal off the
    /// async workers.
    async fn read_event(&self, id: u64) -> Result<Option<Arc<str>>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.delivery_event(id))
            .await
            .map_err(|error| StoreError::Conflict(format!("reading an event back: {error}")))?
    }

    /// Counts an event (or a batch) refused at ingress into `broker`. A
    /// broker no trigger names and no one declared is counted as
    /// [`UNKNOWN_BROKER`]: any client can name one in a URL, and each name
    /// would otherwise be a series kept for ever.
    pub fn reject(&self, broker: &str, reason: &str, events: u64) {
        let label = if self.knows_broker(broker) {
            broker
        } else {
            UNKNOWN_BROKER
        };
        self.metrics
            .rejected
            .with_label_values(&[label, reason])
            .inc_by(events);
    }

    /// Whether `broker` is the default one, declared (see
    /// [`Router::declare_broker`]) or named by a trigger.
    pub fn knows_broker(&self, broker: &str) -> bool {
        broker == crate::trigger::DEFAULT_BROKER
            || self.declared.read().unwrap().contains(broker)
            || self.index.read().unwrap().has_broker(broker)
    }

    /// Declares `broker` (a public broker, say) known, for metric labels.
    pub fn declare_broker(&self, broker: &str) {
        self.declared.write().unwrap().insert(broker.to_string());
    }

    /// Counts of trigger `name` since the server started.
    pub fn trigger_stats(&self, name: &str) -> TriggerStats {
        self.slot(name)
            .map_or_else(TriggerStats::default, |slot| TriggerStats {
                matched: slot.matched.get(),
                delivered: slot.delivered.get(),
                retried: slot.retried.get(),
                dead_lettered: slot.dead_lettered.get(),
                in_flight: slot.in_flight.get(),
            })
    }

    /// Deliveries waiting or running.
    pub fn pending(&self) -> i64 {
        self.metrics.queue_depth.get()
    }

    /// The live stream of accepted events and delivery outcomes. Lossy: a
    /// reader that falls 1,024 entries behind misses some (and is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<StreamEntry> {
        self.stream.subscribe()
    }

    fn entry(
        &self,
        kind: &'static str,
        broker: &str,
        trigger: Option<&str>,
        event: &CloudEvent,
        attempt: Option<u32>,
    ) -> StreamEntry {
        StreamEntry {
            kind,
            broker: broker.to_string(),
            trigger: trigger.map(str::to_string),
            id: event.id.clone(),
            ty: event.ty.clone(),
            source: event.source.clone(),
            matched: None,
            attempt,
            time_ms: self.now_ms(),
        }
    }

    fn announce(&self, kind: &'static str, record: &DeliveryRecord, event: &CloudEvent) {
        if self.stream.receiver_count() > 0 {
            let entry = self.entry(
                kind,
                &record.broker,
                Some(&record.trigger),
                event,
                Some(record.attempts),
            );
            let _ = self.stream.send(entry);
        }
    }

    /// Counts `records` into their events' groups.
    fn open_groups(&self, records: &[DeliveryRecord]) {
        let mut groups = self.groups.lock().unwrap();
        for record in records {
            if record.group != 0 && record.dead_letter.is_none() {
                groups.entry(record.group).or_default().remaining += 1;
            }
        }
    }

    /// One delivery of an event ended for good; once all have, the event
    /// counts as delivered, or as dead-lettered if any delivery was.
    fn settle(&self, record: &DeliveryRecord, dead: bool) {
        if record.group == 0 || record.dead_letter.is_some() {
            return;
        }
        let mut groups = self.groups.lock().unwrap();
        let Some(group) = groups.get_mut(&record.group) else {
            return;
        };
        group.remaining = group.remaining.saturating_sub(1);
        group.dead |= dead;
        if group.remaining == 0 {
            let counter = if group.dead {
                &self.metrics.events_dead_lettered
            } else {
                &self.metrics.events_delivered
            };
            counter.with_label_values(&[&record.broker]).inc();
            groups.remove(&record.group);
        }
    }

    /// Stops starting deliveries and waits for those in flight to end. What
    /// is still queued stays durable and runs after the next start (in
    /// cluster mode: goes back to the work queue for any node).
    pub async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
        self.schedules.changed.notify_one();
        if let Some(link) = &self.cluster {
            link.stop_pulling();
        }
        let all = u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX);
        let _all_permits = self.in_flight.acquire_many(all).await;
        if let Some(link) = &self.cluster {
            // Held but not started: straight back to JetStream for the
            // other nodes, rather than after the ack wait.
            link.release_all().await;
            link.flush().await;
        }
    }

    /// Creates or replaces a trigger, durably. Returns true if it replaced one.
    pub async fn put_trigger(&self, trigger: Trigger) -> Result<bool, StoreError> {
        let json = serde_json::to_vec(&trigger.to_json()).expect("JSON");
        let replaced = match &self.cluster {
            Some(link) => {
                let (replaced, revision) = link.put(Bucket::Triggers, &trigger.name, json).await?;
                if link.seen(Bucket::Triggers, &trigger.name, revision) {
                    self.install_trigger(trigger);
                }
                return Ok(replaced);
            }
            None => self.store.put_trigger(&trigger.name, &json).await?,
        };
        self.install_trigger(trigger);
        Ok(replaced)
    }

    /// Puts `trigger` in memory and in the index (written already).
    fn install_trigger(&self, mut trigger: Trigger) {
        // Under the brokers' lock until it is in: a broker changed meanwhile
        // re-resolves it after, never before.
        let brokers = self.brokers.read().unwrap();
        resolve_delivery(&brokers, &mut trigger);
        let mut triggers = self.triggers.write().unwrap();
        triggers.insert(trigger.name.clone(), Arc::new(trigger));
        *self.index.write().unwrap() = Arc::new(TriggerIndex::build(triggers.values().cloned()));
        drop(triggers);
        drop(brokers);
    }

    /// Deletes a trigger, durably, and its metric series. Returns true if
    /// it existed.
    pub async fn delete_trigger(&self, name: &str) -> Result<bool, StoreError> {
        if name.starts_with(crate::schedule::DIRECT_PREFIX) {
            // A schedule's own: it goes with the schedule.
            return Ok(false);
        }
        let existed = match &self.cluster {
            Some(link) => {
                let deleted = link.delete(Bucket::Triggers, name).await?;
                // Made again on another node meanwhile (the watch brought
                // it): that one stays.
                if deleted.is_none_or(|revision| link.seen(Bucket::Triggers, name, revision)) {
                    self.uninstall_trigger(name);
                }
                return Ok(deleted.is_some());
            }
            None => self.store.delete_trigger(name).await?,
        };
        self.uninstall_trigger(name);
        Ok(existed)
    }

    /// Takes trigger `name` out of memory, the index and the metrics.
    fn uninstall_trigger(&self, name: &str) {
        {
            let mut triggers = self.triggers.write().unwrap();
            triggers.remove(name);
            *self.index.write().unwrap() =
                Arc::new(TriggerIndex::build(triggers.values().cloned()));
        }
        // Its pending deliveries fail for good without touching these, now
        // rather than at their next attempt: the parked ones go back to the
        // queue, and the waiting ones are due at once.
        let slot = self.per_trigger.lock().unwrap().remove(name);
        if let Some(slot) = slot {
            let parked = std::mem::take(&mut slot.gate.lock().unwrap().parked);
            self.metrics.parked.sub(parked.len() as i64);
            self.schedule_queued(parked);
        }
        {
            let now = self.now_ms();
            let mut queue = self.queue.lock().unwrap();
            let mut waiting = std::mem::take(&mut *queue).into_vec();
            for Reverse(Waiting(queued)) in &mut waiting {
                if &*queued.record.trigger == name && queued.record.not_before_ms > now {
                    queued.record.not_before_ms = now;
                }
            }
            *queue = BinaryHeap::from(waiting);
        }
        self.wake.notify_one();
        let m = &self.metrics;
        for counter in [
            &m.matched,
            &m.delivered,
            &m.retried,
            &m.dead_lettered,
            &m.replayed,
        ] {
            let _ = counter.remove_label_values(&[name]);
        }
        let _ = m.trigger_in_flight.remove_label_values(&[name]);
    }

    /// Trigger `name`.
    pub fn trigger(&self, name: &str) -> Option<Arc<Trigger>> {
        self.triggers.read().unwrap().get(name).cloned()
    }

    /// Which of `broker`'s triggers `event` would match, storing and
    /// delivering nothing: each of them, by name, with `None` if the event
    /// matches it, else the first condition that failed (see
    /// [`Trigger::why_not`]). Whether it would be a duplicate or past the
    /// hop limit is not said.
    pub fn explain(&self, broker: &str, event: &CloudEvent) -> Vec<(Arc<Trigger>, Option<String>)> {
        let triggers: Vec<Arc<Trigger>> = (self.triggers.read().unwrap().values())
            .filter(|t| t.broker == broker)
            .cloned()
            .collect();
        triggers
            .into_iter()
            .map(|t| {
                let why = t.why_not(event);
                (t, why)
            })
            .collect()
    }

    /// Every trigger, by name (not those of schedules' function or URL
    /// sinks, which are the schedules').
    pub fn triggers(&self) -> Vec<Arc<Trigger>> {
        (self.triggers.read().unwrap().values())
            .filter(|t| !t.name.starts_with(crate::schedule::DIRECT_PREFIX))
            .cloned()
            .collect()
    }

    /// Stores a broker (creating or replacing it), durably, and gives its
    /// default delivery to its triggers that set none. Returns true if it
    /// replaced one.
    pub async fn put_broker(&self, broker: Broker) -> Result<bool, StoreError> {
        // One broker write at a time, so the store and memory agree.
        let _writing = self.broker_writes.lock().await;
        let json = serde_json::to_vec(&broker.to_json()).expect("JSON");
        let replaced = match &self.cluster {
            Some(link) => {
                let (replaced, revision) = link.put(Bucket::Brokers, &broker.name, json).await?;
                if link.seen(Bucket::Brokers, &broker.name, revision) {
                    self.install_broker(broker);
                }
                return Ok(replaced);
            }
            None => self.store.put_broker(&broker.name, &json).await?,
        };
        self.install_broker(broker);
        Ok(replaced)
    }

    fn install_broker(&self, broker: Broker) {
        let name = broker.name.clone();
        self.brokers
            .write()
            .unwrap()
            .insert(name.clone(), Arc::new(broker));
        self.reresolve(&name);
    }

    fn uninstall_broker(&self, name: &str) {
        self.brokers.write().unwrap().remove(name);
        self.reresolve(name);
    }

    /// Deletes a broker, durably (its triggers that set no delivery take
    /// Knative's defaults). Returns true if it existed.
    pub async fn delete_broker(&self, name: &str) -> Result<bool, StoreError> {
        let _writing = self.broker_writes.lock().await;
        let existed = match &self.cluster {
            Some(link) => {
                let deleted = link.delete(Bucket::Brokers, name).await?;
                if deleted.is_none_or(|revision| link.seen(Bucket::Brokers, name, revision)) {
                    self.uninstall_broker(name);
                }
                return Ok(deleted.is_some());
            }
            None => self.store.delete_broker(name).await?,
        };
        self.uninstall_broker(name);
        Ok(existed)
    }

    /// Every stored broker, by name.
    pub fn brokers(&self) -> Vec<Arc<Broker>> {
        self.brokers.read().unwrap().values().cloned().collect()
    }

    /// The stored broker `name`.
    pub fn broker(&self, name: &str) -> Option<Arc<Broker>> {
        self.brokers.read().unwrap().get(name).cloned()
    }

    /// Gives the triggers of broker `name` that set no delivery its current
    /// default.
    fn reresolve(&self, name: &str) {
        let brokers = self.brokers.read().unwrap();
        let mut triggers = self.triggers.write().unwrap();
        let mut changed = false;
        for trigger in triggers.values_mut() {
            if trigger.broker == name && !trigger.own_delivery {
                let mut resolved = (**trigger).clone();
                resolve_delivery(&brokers, &mut resolved);
                *trigger = Arc::new(resolved);
                changed = true;
            }
        }
        if changed {
            *self.index.write().unwrap() =
                Arc::new(TriggerIndex::build(triggers.values().cloned()));
        }
    }

    /// `Ok` if the trigger's subscriber can take events now, else why not.
    pub fn readiness(&self, trigger: &Trigger) -> Result<(), String> {
        self.invoker.check(&trigger.subscriber)
    }

    /// Every dead letter, oldest first (in cluster mode, the cluster's).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRecord>, StoreError> {
        match &self.cluster {
            Some(link) => self.dead_letters_clustered(link).await,
            None => self.store.dead_letters(),
        }
    }

    /// How many dead letters are stored (in cluster mode, the cluster's:
    /// one pass over the bucket's keys).
    pub async fn dead_letter_count(&self) -> Result<usize, StoreError> {
        match &self.cluster {
            Some(link) => {
                let letters = link.cluster.catalog(Bucket::DeadLetters)?;
                Ok(letters.keys_under("").await?.len())
            }
            None => Ok(self.store.dead_letter_count()),
        }
    }

    /// Discards dead letter `id`; `false` if it does not exist.
    pub async fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        match &self.cluster {
            Some(link) => self.delete_dead_letter_clustered(link, id).await,
            None => self.store.delete_dead_letter(id).await,
        }
    }

    /// Dead letter `id`, if it is stored (in cluster mode, the cluster's).
    pub async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetterRecord>, StoreError> {
        match &self.cluster {
            Some(link) => {
                let catalog = link.cluster.catalog(Bucket::DeadLetters)?;
                match catalog.get(&id.to_string()).await? {
                    Some(stored) => Ok(Some(serde_json::from_slice(&stored.value)?)),
                    None => Ok(None),
                }
            }
            None => self.store.dead_letter_record(id),
        }
    }

    /// Redelivers dead letter `id` to its trigger. `false` if it does not
    /// exist.
    pub async fn replay(&self, id: u64) -> Result<bool, StoreError> {
        if let Some(link) = &self.cluster {
            return self.replay_clustered(link, id).await;
        }
        let Some(letter) = self.store.dead_letter_record(id)? else {
            return Ok(false);
        };
        let event = original_event(letter.event);
        let record = DeliveryRecord {
            id: self.store.next_id().await?,
            broker: self.intern(&letter.broker),
            trigger: self.intern(&letter.trigger),
            event: event.into(),
            attempts: 0,
            not_before_ms: 0,
            dead_letter: None,
            group: 0,
        };
        if !self.store.replay_dead_letter(id, &record).await? {
            return Ok(false);
        }
        if let Some(slot) = self.slot(&record.trigger) {
            slot.replayed.inc();
        }
        self.count_pending(&record.broker, 1);
        self.enqueue(vec![record]);
        Ok(true)
    }
}

mod cluster;
mod schedules;
mod trace;
pub use cluster::Definition;
pub use schedules::Mark;
pub use trace::{Misses, Trace, TraceAttempt, TraceDeadLetter};
#[cfg(test)]
mod tests;

/// Deliveries of one request, from their places in the backlog on: when it
/// ends (answered, failed, or dropped because the client hung up), they are
/// scheduled if they were written, and their places given back if not.
struct Stored<'a> {
    router: &'a Router,
    broker: &'a str,
    records: Vec<DeliveryRecord>,
    shared: Vec<Arc<CloudEvent>>,
    written: bool,
}

impl Drop for Stored<'_> {
    fn drop(&mut self) {
        let records = std::mem::take(&mut self.records);
        if self.written {
            self.router
                .schedule_stored(records, std::mem::take(&mut self.shared));
        } else if !records.is_empty() {
            self.router
                .count_pending(self.broker, -(records.len() as i64));
        }
    }
}
