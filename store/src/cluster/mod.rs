//! Cluster mode: what Sluice keeps durable, on NATS JetStream.
//!
//! One [`Cluster`] is one node's connection to a NATS cluster and the
//! JetStream layout every node shares (see `docs/cluster.md` for the layout
//! and why):
//!
//! - `SLUICE_EVENTS`, a stream of accepted events on `sluice.events.<broker>`
//!   (file storage, `discard: new`: a full stream refuses, never drops), each
//!   published with a `Nats-Msg-Id` derived from (broker, source, id), so a
//!   client that retries after a lost answer adds nothing: [`Cluster::publish_event`].
//! - Key-value buckets for what every node must see (functions, triggers,
//!   brokers, tokens), written with compare-and-set on revisions and watched
//!   by every node: [`Catalog`].
//! - An object store of component bytes named by digest, checked on read:
//!   [`Cluster::put_blob`], [`Cluster::blob`].
//! - Guest output in `SLUICE_LOGS`, a bounded ring per function.
//! - Guest key-value data in one more bucket, with the key limit kept by a
//!   compare-and-set count: [`GuestKv`].
//! - Asynchronous invocations: their records in a bucket whose entries
//!   expire after the retention, their requests in the work-queue stream
//!   `SLUICE_INVOCATIONS` every node pulls: [`Cluster::enqueue_invocation`].
//!
//! Connecting never waits for NATS: [`Cluster::connect`] returns at once, and
//! a background task keeps dialling and creates (or binds) the layout as soon
//! as JetStream answers. Until then, and whenever the connection is lost,
//! every operation fails with [`StoreError::Unavailable`] naming the reason,
//! and [`Cluster::readiness`] says why.

mod blobs;
mod catalog;
mod events;
mod functions;
mod guest_kv;
mod invocations;
mod logs;
mod nodes;
mod queue;
mod traces;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, kv, object_store, stream};

use crate::StoreError;

pub use catalog::{Catalog, Change, Expect, Versioned, Watcher};
pub use events::{CATALOG_REVISION_HEADER, Published, event_message_id};
pub use guest_kv::{GUEST_KV_BUCKET, GuestKv};
pub use invocations::{INVOCATIONS_STREAM, INVOKERS_CONSUMER, QueueRefusal};
pub use logs::{CALLS_STREAM, CALLS_SUBJECT, LOGS_STREAM, LOGS_SUBJECT, RECENT_CALLS};
pub use nodes::{Backlog, JetStreamStatus, LEASE_EVERY, LEASE_TTL, NodeInfo, StreamStatus};
pub use queue::{
    ACK_WAIT, Arrival, BROKER_HEADER, DEAD_LETTER_HEADER, DELIVERIES_STREAM, DELIVERIES_SUBJECT,
    Delivery, FANOUT_CONSUMER, Feed, QueuedDeliveries, SHARDS, shard_of,
};
pub use traces::{
    RECORDS_PER_KIND, TRACE_HEADER, TRACES_STREAM, TRACES_SUBJECT, TraceRecord, delivery_trace,
    parse_delivery_trace, trace_group, trace_key,
};

/// The events stream.
pub const EVENTS_STREAM: &str = "SLUICE_EVENTS";
/// Subject prefix of accepted events: `sluice.events.<broker>`.
pub const EVENTS_SUBJECT: &str = "sluice.events";
/// The object store holding component bytes by digest.
pub const BLOBS_BUCKET: &str = "sluice_blobs";

/// The key-value buckets of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Function records, by name.
    Functions,
    /// Triggers, by name.
    Triggers,
    /// Brokers, by name.
    Brokers,
    /// API tokens, by hash.
    Tokens,
    /// Dead letters, by delivery id.
    DeadLetters,
    /// Guest key-value data (`wasi:keyvalue`), see [`GuestKv`].
    GuestKv,
    /// One lease per live node, by node id (entries expire after
    /// [`LEASE_TTL`]).
    Nodes,
    /// Asynchronous invocations' records, by id (entries expire
    /// `invocation_retention` after their last write).
    Invocations,
    /// Schedules: each definition at `schedule.<name>`, its mark (how far
    /// it has fired) at `mark.<name>`.
    Schedules,
}

impl Bucket {
    /// Every bucket, in the order they are created.
    pub const ALL: [Bucket; 9] = [
        Bucket::Functions,
        Bucket::Triggers,
        Bucket::Brokers,
        Bucket::Tokens,
        Bucket::DeadLetters,
        Bucket::GuestKv,
        Bucket::Nodes,
        Bucket::Invocations,
        Bucket::Schedules,
    ];

    /// The JetStream bucket name.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Functions => "sluice_functions",
            Bucket::Triggers => "sluice_triggers",
            Bucket::Brokers => "sluice_brokers",
            Bucket::Tokens => "sluice_tokens",
            Bucket::DeadLetters => "sluice_dead_letters",
            Bucket::GuestKv => GUEST_KV_BUCKET,
            Bucket::Nodes => "sluice_nodes",
            Bucket::Invocations => "sluice_invocations",
            Bucket::Schedules => "sluice_schedules",
        }
    }
}

/// How a node joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://host:port`); any one reachable is enough.
    pub urls: Vec<String>,
    /// A NATS credentials file (`.creds`).
    pub credentials: Option<PathBuf>,
    /// Replicas of every stream and bucket; `None`: 3 when the cluster has
    /// three or more servers, else 1.
    pub replicas: Option<usize>,
    /// How long accepted events stay in the events stream.
    pub event_retention: Duration,
    /// The most bytes the events stream holds (full: new events are
    /// refused); `None`: only JetStream's storage limits.
    pub event_max_bytes: Option<u64>,
    /// Within this window a repeat of (broker, source, id) is answered as a
    /// duplicate and not stored again (JetStream's duplicate window).
    pub dedupe_window: Duration,
    /// This node's name, as NATS shows the connection.
    pub name: String,
    /// How long one JetStream request may take before it counts as
    /// unanswered.
    pub request_timeout: Duration,
    /// How long a pulled event or delivery may go without an ack or a
    /// progress note before another node gets it.
    pub ack_wait: Duration,
    /// Lines of guest output kept per function (the logs stream's limit
    /// per subject).
    pub log_lines: usize,
    /// How long a finished asynchronous invocation's record is kept (the
    /// invocations bucket's `max_age`, set when it is made).
    pub invocation_retention: Duration,
    /// Asynchronous invocations queued at most, and the bytes their
    /// requests hold at most (the invocations stream's limits: past
    /// them a call is refused, see [`QueueRefusal::Full`]).
    pub max_invocations: usize,
    /// See `max_invocations`.
    pub max_invocation_bytes: u64,
    /// How long trace records are kept (the traces stream's `max_age`);
    /// zero: this node writes and reads none.
    pub trace_retention: Duration,
    /// The bytes the traces stream holds at most (the oldest records
    /// dropped first).
    pub trace_max_bytes: u64,
    /// How long a node must see a full guest-bucket key count unchanged
    /// before a refused new key recounts the bucket (the count can run high
    /// after writes whose outcome was unknown): far past the longest a
    /// reserved create or a delete's give-back can still be under way.
    pub kv_recount_after: Duration,
    /// Binds to the streams and buckets that exist as they are, changing
    /// none of their settings (for a tool such as `sluice migrate`, whose
    /// defaults must not override the nodes' flags); missing ones are
    /// made.
    pub keep_layout: bool,
}

impl ClusterOptions {
    /// Options for `urls` with the defaults: event retention 24 h (as
    /// EventFlow keeps events), a 10 minute dedupe window, 5 s requests.
    pub fn new(urls: Vec<String>) -> ClusterOptions {
        ClusterOptions {
            urls,
            credentials: None,
            replicas: None,
            event_retention: Duration::from_secs(24 * 3600),
            event_max_bytes: None,
            dedupe_window: Duration::from_secs(600),
            name: "sluice".to_owned(),
            request_timeout: Duration::from_secs(5),
            ack_wait: ACK_WAIT,
            log_lines: 1_000,
            invocation_retention: Duration::from_secs(3_600),
            max_invocations: 10_000,
            max_invocation_bytes: 1 << 30,
            trace_retention: Duration::from_secs(3_600),
            trace_max_bytes: 64 << 20,
            kv_recount_after: Duration::from_secs(60),
            keep_layout: false,
        }
    }
}

/// The layout handles, once created or bound.
struct Layout {
    events: stream::Stream,
    deliveries: stream::Stream,
    logs: stream::Stream,
    /// `None` when it could not be made (the node's own list is shown).
    calls: Option<stream::Stream>,
    /// Whether the guest data bucket takes message TTLs (deleted keys'
    /// markers expire).
    guest_ttls: bool,
    /// `None` when this node keeps no traces.
    traces: Option<stream::Stream>,
    buckets: Vec<(Bucket, kv::Store)>,
    blobs: object_store::ObjectStore,
    replicas: usize,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    options: ClusterOptions,
    client: async_nats::Client,
    js: jetstream::Context,
    layout: OnceLock<Layout>,
    /// Why the layout is not there yet (the last error of the set-up task).
    waiting: Mutex<String>,
    /// When the connection was last seen up, in ms after `started`.
    last_connected: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    /// This process's id in the cluster (its lease's key).
    node_id: String,
    /// Trace records on their way out (see `traces.rs`): a bounded queue
    /// one task empties, so no caller ever waits on one.
    trace_out: tokio::sync::mpsc::Sender<(String, bytes::Bytes)>,
    /// Trace records dropped: the queue full (NATS slow or away).
    trace_dropped: std::sync::atomic::AtomicU64,
    /// Full guest-bucket counts this node saw, by bucket (see
    /// `GuestKv::recounted`).
    recounts: Mutex<std::collections::HashMap<String, Recount>>,
}

/// A full key count as one node saw it.
#[derive(Debug)]
struct Recount {
    /// The count's revision.
    revision: u64,
    /// Since when this node has seen that revision.
    since: std::time::Instant,
    /// When this node last recounted the bucket.
    done: Option<std::time::Instant>,
}

/// One node's handle on the cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Connects (without waiting for a server to answer) and starts the task
    /// that creates the layout. Fails only for options that can never work
    /// (no URL, an unreadable credentials file). Must run inside a tokio
    /// runtime.
    pub async fn connect(options: ClusterOptions) -> Result<Cluster, StoreError> {
        if options.urls.is_empty() {
            return Err(StoreError::Unavailable("no NATS URL given".to_owned()));
        }
        let mut connect = match &options.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| StoreError::Io {
                    context: format!("reading NATS credentials {}", path.display()),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        connect = connect
            .name(&options.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // The default (60 s) notices a hung server only after minutes.
            .ping_interval(Duration::from_secs(2))
            .request_timeout(Some(options.request_timeout))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(5) as u32).min(1000))
            });
        let client = connect
            .connect(options.urls.as_slice())
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting to NATS: {e}")))?;
        // The client's inboxes end in a random NUID: this process's id.
        let node_id = {
            let inbox = client.new_inbox();
            inbox.rsplit('.').next().unwrap_or(&inbox).to_owned()
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);
        let trace_out = traces::start_writer(client.clone());
        let cluster = Cluster {
            inner: Arc::new(Inner {
                options,
                client,
                js,
                layout: OnceLock::new(),
                waiting: Mutex::new("connecting to NATS".to_owned()),
                last_connected: Default::default(),
                started: std::time::Instant::now(),
                node_id,
                trace_out,
                trace_dropped: Default::default(),
                recounts: Mutex::default(),
            }),
        };
        let setup = cluster.clone();
        tokio::spawn(async move { setup.set_up().await });
        let watch = Arc::downgrade(&cluster.inner);
        tokio::spawn(async move {
            while let Some(inner) = watch.upgrade() {
                if inner.client.connection_state() == State::Connected {
                    let now = inner.started.elapsed().as_millis() as u64;
                    inner
                        .last_connected
                        .store(now, std::sync::atomic::Ordering::Release);
                }
                drop(inner);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(cluster)
    }

    /// Waits until the layout exists (or `timeout` passes): for start-up
    /// paths that would rather wait than answer 503 at once.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.readiness() {
                Ok(()) => return Ok(()),
                Err(reason) if tokio::time::Instant::now() >= deadline => {
                    return Err(StoreError::Unavailable(reason));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Ok when connected with the layout in place, else why not (for
    /// `/readyz` and for 503 answers). Cheap: reads local state only.
    pub fn readiness(&self) -> Result<(), String> {
        let urls = self.inner.options.urls.join(",");
        match self.inner.client.connection_state() {
            State::Connected => {}
            State::Pending => return Err(format!("connecting to NATS at {urls}")),
            State::Disconnected => return Err(format!("NATS at {urls} unreachable")),
        }
        if self.inner.layout.get().is_none() {
            let waiting = self.inner.waiting.lock().unwrap().clone();
            return Err(format!("JetStream not ready: {waiting}"));
        }
        Ok(())
    }

    /// Asks JetStream itself (one round trip): the live check behind
    /// `/readyz`, which also notices a server that is connected but has lost
    /// its JetStream quorum.
    pub async fn probe(&self) -> Result<(), String> {
        self.readiness()?;
        match tokio::time::timeout(
            self.inner.options.request_timeout,
            self.inner.js.query_account(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("JetStream does not answer: {e}")),
            Err(_) => Err("JetStream does not answer in time".to_owned()),
        }
    }

    /// How long the connection has been down (zero while it is up; since
    /// the start when it never came up).
    pub fn disconnected_for(&self) -> Duration {
        if self.inner.client.connection_state() == State::Connected {
            return Duration::ZERO;
        }
        let last = self
            .inner
            .last_connected
            .load(std::sync::atomic::Ordering::Acquire);
        self.inner
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Sends what the client still buffers (a few seconds at most).
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.client.flush()).await;
    }

    /// Replicas of the events stream (what a 202 promises), once the
    /// layout exists.
    pub fn replicas(&self) -> Option<usize> {
        self.inner.layout.get().map(|l| l.replicas)
    }

    /// This process's id in the cluster: random, new at each start.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The options this node connected with.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.options
    }

    /// The catalog bucket `bucket`.
    pub fn catalog(&self, bucket: Bucket) -> Result<Catalog, StoreError> {
        let layout = self.layout()?;
        let kv = layout
            .buckets
            .iter()
            .find(|(b, _)| *b == bucket)
            .map(|(_, kv)| kv.clone())
            .expect("every bucket is created with the layout");
        Ok(Catalog::new(
            bucket,
            kv,
            self.inner.client.clone(),
            self.inner.options.request_timeout,
        ))
    }

    fn layout(&self) -> Result<&Layout, StoreError> {
        self.inner.layout.get().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "JetStream not ready: {}",
                self.inner.waiting.lock().unwrap()
            ))
        })
    }

    /// Keeps trying to create (or bind) the layout until it exists.
    async fn set_up(self) {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.inner.client.connection_state() == State::Connected {
                match self.create_layout().await {
                    Ok(layout) => {
                        tracing::info!(
                            replicas = layout.replicas,
                            "JetStream layout ready (events stream, catalog buckets, blob store)"
                        );
                        let _ = self.inner.layout.set(layout);
                        return;
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "JetStream layout not ready yet; retrying");
                        *self.inner.waiting.lock().unwrap() = reason;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn create_layout(&self) -> Result<Layout, String> {
        let options = &self.inner.options;
        let js = &self.inner.js;
        let replicas = match options.replicas {
            Some(n) => n.max(1),
            None => {
                // Every server's client URL, this one's included, as the
                // server advertises them; at least the URLs we were given.
                let info = self.inner.client.server_info();
                let servers = info.connect_urls.len().max(options.urls.len());
                if servers >= 3 { 3 } else { 1 }
            }
        };
        let events_config = stream::Config {
            name: EVENTS_STREAM.to_owned(),
            description: Some("Sluice: accepted CloudEvents, one subject per broker".to_owned()),
            subjects: vec![format!("{EVENTS_SUBJECT}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_age: options.event_retention,
            max_bytes: options
                .event_max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            // JetStream caps the duplicate window at max_age.
            duplicate_window: options.dedupe_window.min(options.event_retention),
            num_replicas: replicas,
            ..Default::default()
        };
        let explicit = options.replicas.is_some();
        let events = ensure_stream(js, events_config, explicit, options.keep_layout).await?;
        let deliveries = ensure_stream(
            js,
            queue::deliveries_config(options, replicas),
            explicit,
            options.keep_layout,
        )
        .await?;
        let logs = ensure_stream(
            js,
            logs::logs_config(options, replicas),
            explicit,
            options.keep_layout,
        )
        .await?;
        // Recent calls are no one's data (as traces): one replica, and a
        // stream that cannot be made costs the list, never readiness.
        let calls = match ensure_stream(js, logs::calls_config(), explicit, options.keep_layout)
            .await
        {
            Ok(stream) => Some(stream),
            Err(reason) => {
                tracing::warn!(%reason, "the recent-calls stream is not there; each node lists its own calls");
                None
            }
        };
        ensure_stream(
            js,
            invocations::invocations_config(options, replicas),
            explicit,
            options.keep_layout,
        )
        .await?;
        // Traces are no one's data: a stream that cannot be made (an
        // account's storage limit, a server refusing the config) costs the
        // traces, never the node's readiness.
        let traces = match self.traces_kept() {
            true => match ensure_stream(
                js,
                traces::traces_config(options),
                explicit,
                options.keep_layout,
            )
            .await
            {
                Ok(stream) => Some(stream),
                Err(reason) => {
                    tracing::warn!(%reason, "the traces stream is not there; this node keeps no traces");
                    None
                }
            },
            false => None,
        };
        // What the events stream has, which is what a 202 promises.
        let replicas = {
            let mut events = events.clone();
            events
                .info()
                .await
                .map(|info| info.config.num_replicas)
                .unwrap_or(replicas)
        };
        let mut buckets = Vec::new();
        let mut guest_ttls = false;
        for bucket in Bucket::ALL {
            // A lease lapses unless its node renews it; an invocation's
            // record once its retention passed.
            let max_age = match bucket {
                Bucket::Nodes => LEASE_TTL,
                Bucket::Invocations => options.invocation_retention,
                _ => Duration::ZERO,
            };
            let kv = match js.get_key_value(bucket.name()).await {
                Ok(kv) => {
                    // Made by an older build or with another retention:
                    // the age limit becomes this node's.
                    if !max_age.is_zero() && !options.keep_layout {
                        align_max_age(js, bucket.name(), max_age).await?;
                    }
                    kv
                }
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: bucket.name().to_owned(),
                        history: 1,
                        max_age,
                        storage: stream::StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("creating bucket {}: {e}", bucket.name()))?,
            };
            if bucket == Bucket::GuestKv {
                // Without TTLs a delete leaves its marker for good: worse,
                // but no reason to keep the node from serving.
                guest_ttls = match allow_message_ttls(js, bucket.name(), options.keep_layout).await
                {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::warn!(
                            "the NATS servers do not take message TTLs (2.11 or later does): deleted guest keys leave markers for good"
                        );
                        false
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "could not let guest data expire deleted keys' markers; they stay for good");
                        false
                    }
                };
            }
            buckets.push((bucket, kv));
        }
        let blobs = match js.get_object_store(BLOBS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BLOBS_BUCKET.to_owned(),
                    description: Some("Sluice: component bytes by digest".to_owned()),
                    num_replicas: replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating object store {BLOBS_BUCKET}: {e}"))?,
        };
        Ok(Layout {
            events,
            deliveries,
            logs,
            calls,
            guest_ttls,
            traces,
            buckets,
            blobs,
            replicas,
        })
    }
}

/// Lets `bucket`'s stream take per-message TTLs (a delete's expiring
/// marker, see [`Catalog::purge`]); once set it stays. True if the stream
/// takes them, as read back (a server older than 2.11 ignores the
/// setting).
async fn allow_message_ttls(
    js: &jetstream::Context,
    bucket: &str,
    read_only: bool,
) -> Result<bool, String> {
    // Nodes started together race to make and update the bucket's stream,
    // and an update while its replicas form can time out: read it again
    // and retry a few times before giving up.
    // The retries take at most TTL_SETUP_BUDGET in all: without TTLs the
    // node still serves.
    let retried = async {
        let mut failures = 0;
        loop {
            match allow_message_ttls_once(js, bucket, read_only).await {
                Err(reason) if failures < 4 => {
                    failures += 1;
                    tracing::debug!(%reason, "letting guest data expire markers; retried");
                    tokio::time::sleep(Duration::from_millis(500 * failures)).await;
                }
                done => return done,
            }
        }
    };
    tokio::time::timeout(TTL_SETUP_BUDGET, retried)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {TTL_SETUP_BUDGET:?}")))
}

/// How long a node tries, at start, to let guest data's stream take
/// message TTLs.
const TTL_SETUP_BUDGET: Duration = Duration::from_secs(8);

async fn allow_message_ttls_once(
    js: &jetstream::Context,
    bucket: &str,
    read_only: bool,
) -> Result<bool, String> {
    let name = format!("KV_{bucket}");
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("reading stream {name}: {e}"))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| format!("reading stream {name}: {e}"))?
        .config
        .clone();
    if !config.allow_message_ttl && !read_only {
        config.allow_message_ttl = true;
        let updated = js
            .update_stream(&config)
            .await
            .map_err(|e| format!("updating stream {name}: {e}"))?;
        return Ok(updated.config.allow_message_ttl);
    }
    Ok(config.allow_message_ttl)
}

/// Sets the `max_age` of key-value bucket `bucket`'s stream to `max_age`
/// if it has another (with its duplicate window, which may not exceed it).
async fn align_max_age(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<(), String> {
    let name = format!("KV_{bucket}");
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("reading stream {name}: {e}"))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| format!("reading stream {name}: {e}"))?
        .config
        .clone();
    if config.max_age != max_age {
        config.max_age = max_age;
        config.duplicate_window = config.duplicate_window.min(max_age);
        js.update_stream(&config)
            .await
            .map_err(|e| format!("updating stream {name}: {e}"))?;
    }
    Ok(())
}

/// Creates `config`'s stream, or updates an existing one to it (another
/// retention or replica count after an upgrade or a flag change).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    explicit_replicas: bool,
    keep_existing: bool,
) -> Result<stream::Stream, String> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(existing) if keep_existing => Ok(existing),
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| format!("reading stream {name}: {e}"))?;
            let mut current = info.config.clone();
            let held_bytes = info.state.bytes;
            // Replicas are chosen when a stream is made; an existing one
            // keeps its own unless --nats-replicas says otherwise (a node
            // that sees fewer servers must never shrink it).
            let replicas = if explicit_replicas {
                config.num_replicas
            } else {
                current.num_replicas
            };
            if current.max_age != config.max_age
                || current.duplicate_window != config.duplicate_window
                || current.num_replicas != replicas
                || (config.max_messages_per_subject > 0
                    && current.max_messages_per_subject != config.max_messages_per_subject)
                || raise_bytes(&name, &current, &config, held_bytes)
            {
                // Only the fields Sluice sets change; tuning done on the
                // stream by hand stays.
                current.max_age = config.max_age;
                current.duplicate_window = config.duplicate_window;
                current.num_replicas = replicas;
                if config.max_messages_per_subject > 0 {
                    current.max_messages_per_subject = config.max_messages_per_subject;
                }
                if raise_bytes(&name, &current, &config, held_bytes) {
                    current.max_bytes = config.max_bytes;
                }
                js.update_stream(&current)
                    .await
                    .map_err(|e| format!("updating stream {name}: {e}"))?;
            }
            Ok(existing)
        }
        Err(_) => js
            .create_stream(config)
            .await
            .map_err(|e| format!("creating stream {name}: {e}")),
    }
}

/// True if the events stream's `max_bytes` should become `config`'s: only
/// when a node sets one (a node without `--event-max-bytes` leaves the
/// stream's alone) and never below what the stream holds, since JetStream
/// would make room by deleting the oldest events, accepted ones included.
/// The traces stream's always follows the node's bound.
fn raise_bytes(name: &str, current: &stream::Config, config: &stream::Config, held: u64) -> bool {
    if config.max_bytes <= 0 || current.max_bytes == config.max_bytes {
        return false;
    }
    if name == TRACES_STREAM {
        // Traces are no one's data: the newest node's bound holds.
        return true;
    }
    if name != EVENTS_STREAM {
        return false;
    }
    if u64::try_from(config.max_bytes).unwrap_or(0) < held {
        tracing::warn!(
            stream = name,
            held,
            wanted = config.max_bytes,
            "--event-max-bytes is below what the events stream holds; keeping the stream's limit (lowering it would delete accepted events)"
        );
        return false;
    }
    true
}

/// Why [`Cluster::publish_idempotent`] gave up.
pub(crate) enum PublishFailure {
    /// Larger than the server takes in one message: never sent.
    TooLarge,
    /// The stream is full (its limits or JetStream's storage): refused, not
    /// stored; this says which.
    Full(String),
    /// Not connected in time: nothing was sent.
    NotSent(StoreError),
    /// Sent but not acknowledged in time (this says why): it may or may
    /// not be stored; a retry with the same message id is safe.
    Unanswered(String),
}

impl Cluster {
    /// Publishes to a stream with `headers` (which carry the message id)
    /// until JetStream acknowledges it or the request timeout passes:
    /// an unanswered attempt is tried again with the same id, so a retry
    /// that lands is the duplicate it is; nothing is sent while the
    /// connection is down.
    pub(crate) async fn publish_idempotent(
        &self,
        subject: &str,
        headers: &async_nats::HeaderMap,
        payload: &bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, PublishFailure> {
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut pause = Duration::from_millis(50);
        let mut failure = None;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(error) = connected(&self.inner.client, remaining).await {
                return Err(match failure {
                    None => PublishFailure::NotSent(error),
                    Some(_) => PublishFailure::Unanswered("connection lost".to_owned()),
                });
            }
            let attempt = async {
                self.inner
                    .js
                    .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
                    .await?
                    .await
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let reason = match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(mut ack)) => {
                    // After an attempt that may have landed, a duplicate
                    // may be that attempt: not reported as a repeat (the
                    // message is stored once either way).
                    if failure.is_some() {
                        ack.duplicate = false;
                    }
                    return Ok(ack);
                }
                Ok(Err(e))
                    if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                {
                    return Err(PublishFailure::TooLarge);
                }
                // Refused for room: trying again in a moment would not help.
                Ok(Err(e)) if is_full(&e) => return Err(PublishFailure::Full(e.to_string())),
                // Not stored, or not known to be: try again with the same id.
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no acknowledgement".to_owned(),
            };
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(PublishFailure::Unanswered(reason));
            }
            failure = Some(reason);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Waits up to `budget` for `client` to be connected. A request sent while
/// disconnected waits in the client's queue and may land after its caller
/// gave up (and answered 503): so nothing is sent until the connection is
/// up, and a caller that runs out of time has written nothing.
async fn connected(client: &async_nats::Client, budget: Duration) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        match client.connection_state() {
            State::Connected => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(StoreError::Unavailable(format!(
                    "not connected to NATS (waited {:.1} s); nothing was written",
                    budget.as_secs_f64()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Paces the rounds of a compare-and-set loop on a key other writers race
/// for. A replicated stream refuses a conditional write while another write
/// to the same key is still being replicated (10164), whether or not that
/// one then lands, so every racer can lose a round and a fixed number of
/// immediate retries runs out under load. Each lost round instead waits a
/// random time below a ceiling that doubles from 1 ms to 64 ms (full
/// jitter), and the writer gives up when its budget (the request timeout)
/// is spent.
pub struct Contention {
    round: u32,
    deadline: tokio::time::Instant,
}

impl Contention {
    /// Rounds for one write, within `budget`.
    pub fn new(budget: Duration) -> Contention {
        Contention {
            round: 0,
            deadline: tokio::time::Instant::now() + budget,
        }
    }

    /// After a lost round: waits before the next one; false when the
    /// budget is spent (give up).
    pub async fn lost(&mut self) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        let ceiling = 1_000u64 << self.round.min(6);
        self.round += 1;
        // A fresh `RandomState` is randomly keyed: a jitter source without
        // a dependency.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let wait = Duration::from_micros(random % ceiling);
        tokio::time::sleep(wait.min(self.deadline - now)).await;
        true
    }
}

impl Cluster {
    /// Whether deleted guest keys' markers expire (see [`Catalog::purge`]).
    pub(crate) fn guest_ttls(&self) -> bool {
        self.layout().is_ok_and(|layout| layout.guest_ttls)
    }

    /// Pacing for one compare-and-set write on a contended key.
    pub fn contention(&self) -> Contention {
        Contention::new(self.inner.options.request_timeout)
    }
}

/// The JetStream error code in `error`'s source chain, if any.
fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        next = e.source();
    }
    None
}

/// True if JetStream refused a write for lack of room: the stream's
/// `max_bytes` or `max_msgs` with `discard: new` (10077, "maximum ...
/// exceeded"), or the account's or server's storage (10023, 10047).
fn is_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = error.to_string();
    matches!(jetstream_code(error), Some(10023) | Some(10047))
        || text.contains("maximum bytes exceeded")
        || text.contains("maximum messages exceeded")
        || text.contains("insufficient resources")
        || text.contains("resource limits exceeded")
}

/// A revision conflict, however the server reports it: 10071 ("wrong last
/// sequence"), or 10164 as replicated streams answer it.
fn is_revision_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(jetstream_code(error), Some(10071) | Some(10164))
        || error.to_string().contains("wrong last sequence")
}
