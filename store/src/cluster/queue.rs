//! Fan-out and dispatch: the events stream's shared consumer and the
//! sharded work-queue of deliveries.
//!
//! Every node pulls accepted events from one durable consumer
//! (`sluice_fanout`), matches each against its trigger index, enqueues one
//! delivery message per matching trigger (message id `<event
//! sequence>.<trigger>`, so a node that dies mid-fan-out and whose event is
//! fanned out again by another node adds no duplicate), and only then acks
//! the event. Deliveries live in a work-queue stream, on subjects
//! `sluice.deliveries.<shard>.<trigger>`, one durable consumer per shard
//! (a work-queue's consumers must not overlap); every node pulls from every
//! shard. A delivery is acked when it ends, NAKed with the trigger's backoff
//! for a retry (JetStream's delivery count is the attempt number), and
//! terminated once its dead letter is stored: every message ends as ack or
//! term, never left at a server-side `max_deliver`.
//!
//! A node never holds more messages than it has room to run: a feed pulls
//! only as many as its capacity has free permits, and each [`Arrival`]
//! holds its permit until it is finished (or dropped).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Cluster, EVENTS_STREAM, PublishFailure};

use crate::StoreError;

/// The work-queue stream of deliveries.
pub const DELIVERIES_STREAM: &str = "SLUICE_DELIVERIES";
/// Subject prefix of deliveries: `sluice.deliveries.<shard>.<trigger>`.
pub const DELIVERIES_SUBJECT: &str = "sluice.deliveries";
/// Shards of the work queue. A retry waiting out its backoff counts against
/// its shard consumer's `max_ack_pending`: shards keep one trigger's
/// backlog of retries from stalling every other trigger.
pub const SHARDS: usize = 8;
/// The events stream's shared consumer.
pub const FANOUT_CONSUMER: &str = "sluice_fanout";
/// How long a pulled message may go without an ack or a progress note
/// before JetStream gives it to another node. A delivery that runs longer
/// sends progress notes ([`Arrival::progress`]).
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages one shard consumer has out (pulled, not yet acked) at most,
/// across every node.
const MAX_ACK_PENDING: i64 = 4096;

/// The shard of `trigger`'s deliveries.
pub fn shard_of(trigger: &str) -> usize {
    let hash = Sha256::digest(trigger.as_bytes());
    usize::from(hash[0]) % SHARDS
}

pub(super) fn deliveries_config(
    options: &super::ClusterOptions,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: DELIVERIES_STREAM.to_owned(),
        description: Some("Sluice: deliveries, one per (event, matching trigger)".to_owned()),
        subjects: vec![format!("{DELIVERIES_SUBJECT}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: options.dedupe_window.min(options.event_retention),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// What the work queue holds: every delivery not yet finished (waiting,
/// held by a node, or waiting out a retry's delay), by trigger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueuedDeliveries {
    /// By trigger (dead letters' forwardings count to their trigger).
    pub by_trigger: std::collections::HashMap<String, u64>,
}

/// Header of a delivery message naming its event's broker.
pub const BROKER_HEADER: &str = "Sluice-Broker";
/// Header of a delivery message that forwards a dead letter to its sink:
/// the dead letter's id.
pub const DEAD_LETTER_HEADER: &str = "Sluice-Dead-Letter";

/// What a delivery message says besides its event (which is its body, as
/// accepted: no copy wrapped in another document).
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The event's broker.
    pub broker: &'a str,
    /// The trigger to deliver to (also the subject's last token).
    pub trigger: &'a str,
    /// For the forwarding of a dead letter to the trigger's sink: its id.
    pub dead_letter: Option<u64>,
    /// The event's trace key ([`super::TRACE_HEADER`]), when it is traced.
    pub trace: Option<&'a str>,
}

/// One message pulled from a feed: an accepted event (from
/// [`Cluster::event_feed`]) or a delivery (from [`Cluster::delivery_feed`]).
pub struct Arrival {
    /// The subject it was published on.
    pub subject: String,
    /// Its bytes.
    pub payload: Bytes,
    /// Its sequence in its stream (unique cluster-wide per stream).
    pub sequence: u64,
    /// How many times JetStream has handed it out, this time included
    /// (1 on the first).
    pub delivered: u64,
    /// When JetStream stored it (Unix ms).
    pub published_ms: u64,
    message: jetstream::Message,
    /// Its place in the feed's capacity, given back once it is finished.
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("subject", &self.subject)
            .field("sequence", &self.sequence)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Arrival {
    /// The value of header `name`, if it was published with one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str())
    }

    /// Done: JetStream removes a delivery (and marks an event fanned out),
    /// and confirms it did.
    pub async fn ack(&self) -> Result<(), StoreError> {
        self.finish(AckKind::Ack, true).await
    }

    /// Hand it out again after `delay` (to any node).
    pub async fn nak(&self, delay: Duration) -> Result<(), StoreError> {
        self.finish(AckKind::Nak(Some(delay)), false).await
    }

    /// Never hand it out again (its dead letter is stored).
    pub async fn term(&self) -> Result<(), StoreError> {
        self.finish(AckKind::Term, true).await
    }

    async fn finish(&self, kind: AckKind, confirm: bool) -> Result<(), StoreError> {
        let result = ack(&self.message, kind, confirm).await;
        self.permit.lock().unwrap().take();
        result
    }

    /// Still working on it: restarts its [`ACK_WAIT`].
    pub async fn progress(&self) -> Result<(), StoreError> {
        ack(&self.message, AckKind::Progress, false).await
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind, confirm: bool) -> Result<(), StoreError> {
    let sent = async {
        if confirm {
            message.double_ack_with(kind).await
        } else {
            message.ack_with(kind).await
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!(
            "acknowledging a message: {e}"
        ))),
        Err(_) => Err(StoreError::Unavailable(
            "acknowledging a message: no answer".to_owned(),
        )),
    }
}

/// Messages pulled for this node; the pulling stops when this is dropped.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Arrival>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Feed {
    pub(super) fn new(
        rx: mpsc::Receiver<Arrival>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Feed {
        Feed { rx, tasks }
    }

    /// The next message; waits for one.
    pub async fn next(&mut self) -> Option<Arrival> {
        self.rx.recv().await
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Cluster {
    /// Deliveries stored in the work queue now (waiting, running or waiting
    /// out a retry's backoff).
    pub async fn delivery_count(&self) -> Result<u64, StoreError> {
        let mut deliveries = self.layout()?.deliveries.clone();
        match tokio::time::timeout(self.inner.options.request_timeout, deliveries.info()).await {
            Ok(Ok(info)) => Ok(info.state.messages),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "reading the deliveries stream: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "reading the deliveries stream: no answer".to_owned(),
            )),
        }
    }

    /// Enqueues the delivery of the event at `event_sequence` to `trigger`
    /// (`kind` tells deliveries of one event to one trigger apart: the
    /// delivery itself, or its dead letter's forwarding to the sink).
    /// Returns once JetStream stored it (or knew it already: a repeat of the
    /// same (sequence, trigger, kind) within the dedupe window adds
    /// nothing). The returned sequence identifies the delivery.
    pub async fn enqueue_delivery(
        &self,
        event_sequence: u64,
        delivery: &Delivery<'_>,
        kind: &str,
        event: Bytes,
    ) -> Result<u64, StoreError> {
        let trigger = delivery.trigger;
        self.layout()?;
        let subject = format!("{DELIVERIES_SUBJECT}.{}.{trigger}", shard_of(trigger));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{event_sequence}.{trigger}.{kind}").as_str(),
        );
        headers.insert(BROKER_HEADER, delivery.broker);
        if let Some(letter) = delivery.dead_letter {
            headers.insert(DEAD_LETTER_HEADER, letter.to_string().as_str());
        }
        if let Some(trace) = delivery.trace {
            headers.insert(super::TRACE_HEADER, trace);
        }
        match self.publish_idempotent(&subject, &headers, &event).await {
            Ok(ack) => Ok(ack.sequence),
            Err(PublishFailure::TooLarge) => Err(StoreError::TooLarge(format!(
                "a delivery of {} bytes is more than the NATS server takes in one message",
                event.len()
            ))),
            Err(PublishFailure::Full(reason)) => Err(StoreError::Unavailable(format!(
                "the deliveries stream is full ({reason}): not queued"
            ))),
            Err(PublishFailure::NotSent(error)) => Err(error),
            Err(PublishFailure::Unanswered(failure)) => Err(StoreError::Unavailable(format!(
                "JetStream did not take a delivery of trigger {trigger:?}: {failure}"
            ))),
        }
    }

    /// The deliveries the work queue holds, from the stream's per-subject
    /// counts (a work queue keeps a message until it is acked or
    /// terminated; one page of the server's answer per 100,000 subjects).
    pub async fn queued_deliveries(&self) -> Result<QueuedDeliveries, StoreError> {
        let stream = self.layout()?.deliveries.clone();
        let read = async {
            let mut queued = QueuedDeliveries::default();
            let mut subjects = stream
                .info_with_subjects(format!("{DELIVERIES_SUBJECT}.>"))
                .await?;
            while let Some((subject, count)) = subjects.next().await.transpose()? {
                let count = count as u64;
                // sluice.deliveries.<shard>.<trigger>
                if let Some(trigger) = subject
                    .strip_prefix(DELIVERIES_SUBJECT)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|rest| rest.split_once('.'))
                    .map(|(_, trigger)| trigger)
                {
                    *queued.by_trigger.entry(trigger.to_owned()).or_default() += count;
                }
            }
            Ok::<_, stream::InfoError>(queued)
        };
        match tokio::time::timeout(self.inner.options.request_timeout, read).await {
            Ok(Ok(queued)) => Ok(queued),
            Ok(Err(error)) => Err(StoreError::Unavailable(format!(
                "reading the deliveries stream: {error}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "the deliveries stream's state was not read in time".to_owned(),
            )),
        }
    }

    /// Accepted events for this node to fan out, at most `capacity` held at
    /// once.
    pub fn event_feed(&self, capacity: usize) -> Feed {
        let permits = Arc::new(Semaphore::new(capacity.max(1)));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let cluster = self.clone();
        let task = tokio::spawn(async move {
            cluster
                .pull(EVENTS_STREAM, FANOUT_CONSUMER, String::new(), permits, tx)
                .await
        });
        Feed::new(rx, vec![task])
    }

    /// Deliveries for this node to run, from every shard, at most
    /// `capacity` held at once.
    pub fn delivery_feed(&self, capacity: usize) -> Feed {
        let permits = Arc::new(Semaphore::new(capacity.max(1)));
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let tasks = (0..SHARDS)
            .map(|shard| {
                let cluster = self.clone();
                let (permits, tx) = (permits.clone(), tx.clone());
                tokio::spawn(async move {
                    cluster
                        .pull(
                            DELIVERIES_STREAM,
                            &format!("sluice_dispatch_{shard}"),
                            format!("{DELIVERIES_SUBJECT}.{shard}.>"),
                            permits,
                            tx,
                        )
                        .await
                })
            })
            .collect();
        Feed::new(rx, tasks)
    }

    /// Pulls from `consumer` (made if missing) into `tx` for as long as `tx`
    /// is open, never holding more than `permits` allow; re-binds after any
    /// error, with a backoff.
    pub(super) async fn pull(
        self,
        stream: &str,
        consumer: &str,
        filter: String,
        permits: Arc<Semaphore>,
        tx: mpsc::Sender<Arrival>,
    ) {
        let mut delay = Duration::from_millis(100);
        while !tx.is_closed() {
            let bound = match self.bind(stream, consumer, &filter).await {
                Ok(bound) => bound,
                Err(e) => {
                    tracing::debug!(%consumer, error = %e, "consumer not bound yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            loop {
                // Waiting for work holds one place only: a shard with
                // nothing to do must not sit on the room others could use.
                let Ok(first) = permits.clone().acquire_owned().await else {
                    return;
                };
                let waited = bound
                    .batch()
                    .max_messages(1)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await;
                let Some(got) = self.take(waited, vec![first], consumer, &tx).await else {
                    return;
                };
                match got {
                    Err(()) => break,
                    Ok(0) => continue,
                    Ok(_) => {}
                }
                // Work is there: as much more as there is room for, now.
                let mut held = Vec::new();
                while held.len() < 64 {
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => held.push(permit),
                        Err(_) => break,
                    }
                }
                if held.is_empty() {
                    continue;
                }
                // A bounded wait: a fetch without one waits for ever for a
                // server that went away mid-request.
                let more = bound
                    .fetch()
                    .max_messages(held.len())
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await;
                match self.take(more, held, consumer, &tx).await {
                    None => return,
                    Some(Err(())) => break,
                    Some(Ok(_)) => {}
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Hands the messages of one pull to `tx`, each with one of `held`.
    /// `None`: the feed is gone; `Some(Err)`: the pull failed (re-bind);
    /// `Some(Ok(n))`: `n` messages handed over.
    async fn take<E: std::fmt::Display>(
        &self,
        batch: Result<pull::Batch, E>,
        mut held: Vec<OwnedSemaphorePermit>,
        consumer: &str,
        tx: &mpsc::Sender<Arrival>,
    ) -> Option<Result<usize, ()>> {
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(%consumer, error = %e, "pull failed; re-binding");
                return Some(Err(()));
            }
        };
        let mut taken = 0;
        loop {
            // However the pull was asked, it ends within this: a server that
            // died holding the request must not stall the feed.
            let message = match tokio::time::timeout(Duration::from_secs(10), batch.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(%consumer, "a pull went unanswered; re-binding");
                    return Some(Err(()));
                }
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(%consumer, error = %e, "pull ended; re-binding");
                    return Some(Err(()));
                }
            };
            let Ok(info) = message.info() else {
                // Not a JetStream message (a pull only brings those).
                continue;
            };
            let (sequence, delivered) = (info.stream_sequence, info.delivered.max(1) as u64);
            let published_ms =
                u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let Some(permit) = held.pop() else {
                break;
            };
            let arrival = Arrival {
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                sequence,
                delivered,
                published_ms,
                message,
                permit: std::sync::Mutex::new(Some(permit)),
            };
            if tx.send(arrival).await.is_err() {
                return None;
            }
            taken += 1;
        }
        Some(Ok(taken))
    }

    async fn bind(
        &self,
        stream: &str,
        consumer: &str,
        filter: &str,
    ) -> Result<PullConsumer, String> {
        let js = &self.inner.js;
        let stream = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let config = pull::Config {
            durable_name: Some(consumer.to_owned()),
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.inner.options.ack_wait,
            // Unlimited: Sluice ends every message itself (ack or term).
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        // Created, or updated to this node's settings (its ack wait): give
        // every node the same --nats-ack-wait.
        stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("consumer {consumer}: {e}"))
    }
}
