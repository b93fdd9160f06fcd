//! Cluster mode: the same dispatcher, with events and deliveries on NATS
//! JetStream instead of the local journal.
//!
//! - Ingress publishes each event to the events stream and answers once
//!   JetStream acknowledged it ([`Router::publish_clustered`]).
//! - Every node pulls events from the shared fan-out consumer, matches each
//!   with its own trigger index and enqueues one delivery per matching
//!   trigger in the work queue, then acks the event.
//! - Every node pulls deliveries and runs them through the one dispatcher
//!   (in-flight limits, `maxConcurrency`, retry policy, dead letters,
//!   replies): a delivery ends as an ack, a NAK with the trigger's backoff
//!   (any node may run the next attempt; JetStream's delivery count is the
//!   attempt number), or, once its dead letter is stored in the cluster, a
//!   term. Held deliveries get progress notes, so only a node that stops
//!   (dies) loses them to the others, after the ack wait.
//! - Triggers and brokers live in catalog buckets; every node watches them
//!   and applies each change to its index.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_store::cluster::{
    Arrival, BROKER_HEADER, Bucket, Cluster, DEAD_LETTER_HEADER, DELIVERIES_SUBJECT, Delivery,
    Expect, TRACE_HEADER, delivery_trace, parse_delivery_trace, trace_key,
};
use sluice_store::{DeadLetterRecord, DeliveryRecord, StoreError};

use super::trace::{self, TraceAttempt};
use super::{Accepted, Failure, PublishError, Router, StreamEntry, original_event};
use crate::event::CloudEvent;
use crate::trigger::Trigger;

/// Events one node fans out at once.
const FANOUT_CAPACITY: usize = 64;

/// How a held delivery ends.
pub(super) enum End {
    /// Done (delivered, or given up with nothing to keep).
    Ack,
    /// Hand it out again after the delay.
    Retry(Duration),
    /// Its dead letter is stored: never again.
    Term,
}

/// The router's side of the cluster.
pub(super) struct Link {
    pub(super) cluster: Cluster,
    /// Deliveries pulled and not finished, by id (their work-queue
    /// sequence).
    held: Mutex<HashMap<u64, Arc<Arrival>>>,
    /// The newest revision applied per catalog key: a watched change no
    /// newer than what this node wrote or saw is skipped.
    revisions: Mutex<HashMap<(Bucket, String), u64>>,
    /// The buckets loaded (a snapshot applied, the watch started).
    synced: Mutex<std::collections::HashSet<Bucket>>,
    /// Rung when a bucket is loaded or a trigger change applied.
    changed: tokio::sync::Notify,
    /// The newest trigger-catalog revision applied on this node.
    applied: std::sync::atomic::AtomicU64,
    /// The cluster's delivery backlog as last read, and when.
    queued: Mutex<Option<(std::time::Instant, Queued)>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The cluster's delivery backlog, by broker: what the ingress bounds
/// (`--max-pending-deliveries`, `--max-pending-per-broker`) are checked
/// against.
#[derive(Debug, Default)]
struct Queued {
    total: u64,
    by_broker: HashMap<String, u64>,
}

/// A kind of definition the router keeps in the cluster's catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Definition {
    /// A broker.
    Broker,
    /// A trigger.
    Trigger,
    /// A schedule.
    Schedule,
}

/// How often a node reads the cluster's delivery backlog.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// A backlog read longer ago than this bounds nothing (the cluster is not
/// answering; ingress fails on its own then).
const BACKLOG_STALE: Duration = Duration::from_secs(10);

impl Link {
    /// Ends held delivery `id` with JetStream (in the background: the
    /// outcome is already decided; a lost answer means the delivery is
    /// handed out again, at least once).
    pub(super) fn finish(&self, id: u64, end: End) {
        let Some(arrival) = self.held.lock().unwrap().remove(&id) else {
            return;
        };
        tokio::spawn(async move {
            let result = match end {
                End::Ack => arrival.ack().await,
                End::Retry(delay) => arrival.nak(delay).await,
                End::Term => arrival.term().await,
            };
            if let Err(error) = result {
                tracing::warn!(id, %error, "could not finish a delivery with JetStream; it will run again");
            }
        });
    }

    /// The trace key and event sequence of held delivery `id`, when its
    /// event is traced.
    fn trace_of(&self, id: u64) -> Option<(String, u64)> {
        let held = self.held.lock().unwrap();
        let arrival = held.get(&id)?;
        let (key, sequence) = parse_delivery_trace(arrival.header(TRACE_HEADER)?)?;
        Some((key.to_owned(), sequence))
    }

    /// Adds `attempt` of held delivery `id` to its event's trace.
    pub(super) fn attempt(&self, id: u64, mut attempt: TraceAttempt) {
        let Some((key, sequence)) = self.trace_of(id) else {
            return;
        };
        attempt.node = Some(self.cluster.options().name.clone());
        let record = trace::tagged(sequence, &attempt.bounded());
        self.cluster.write_trace(&key, trace::ATTEMPT, record);
    }

    /// Adds dead letter `letter` of held delivery `id` to its event's
    /// trace.
    pub(super) fn dead_lettered(&self, id: u64, letter: &trace::TraceDeadLetter) {
        if let Some((key, sequence)) = self.trace_of(id) {
            let record = trace::tagged(sequence, letter);
            self.cluster.write_trace(&key, trace::DEAD, record);
        }
    }

    /// Adds the ids of events caused by `cause` (in `broker`) to its trace:
    /// the trace of the traced delivery of `cause` this node holds (a
    /// client's event's, or a schedule's firing's), if any: a reply to a
    /// replayed dead letter or to an untraced event adds to none.
    pub(super) fn caused(&self, broker: &str, cause: &CloudEvent, ids: &[String]) {
        let mut keys = vec![trace_key(broker, broker, &cause.source, &cause.id)];
        if cause.ty == crate::schedule::PING_TYPE {
            let space = super::schedule_key_space(broker);
            keys.push(trace_key(broker, &space, &cause.source, &cause.id));
        }
        let found = (self.held.lock().unwrap().values())
            .filter_map(|arrival| parse_delivery_trace(arrival.header(TRACE_HEADER)?))
            .find(|(key, _)| keys.iter().any(|k| k == key))
            .map(|(key, sequence)| (key.to_owned(), sequence));
        if let Some((key, sequence)) = found {
            let record = trace::tagged(sequence, &trace::CausedRecord::new(ids));
            self.cluster.write_trace(&key, trace::CAUSED, record);
        }
    }

    /// Waits until the trigger, broker and schedule buckets are loaded: nothing is
    /// fanned out or delivered against a half-known catalog.
    async fn synced(&self) {
        self.synced_bucket(Bucket::Triggers).await;
        self.synced_bucket(Bucket::Brokers).await;
        // Schedules' function and URL sinks are triggers too.
        self.synced_bucket(Bucket::Schedules).await;
    }

    /// Whether `bucket` is loaded.
    pub(super) fn is_synced(&self, bucket: Bucket) -> bool {
        self.synced.lock().unwrap().contains(&bucket)
    }

    /// Waits until `bucket` is loaded.
    pub(super) async fn synced_bucket(&self, bucket: Bucket) {
        loop {
            let changed = self.changed.notified();
            if self.synced.lock().unwrap().contains(&bucket) {
                return;
            }
            changed.await;
        }
    }

    /// Waits (a few seconds at most) until this node has applied trigger
    /// revision `revision`.
    async fn catch_up(&self, revision: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let changed = self.changed.notified();
            if self.applied.load(std::sync::atomic::Ordering::Acquire) >= revision {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    revision,
                    "the trigger catalog did not catch up in 5 s; fanning out with what this node has"
                );
                return;
            }
        }
    }

    /// Stops pulling events and deliveries (a node shutting down); progress
    /// notes for what is still held go on.
    pub(super) fn stop_pulling(&self) {
        // The first two tasks are fan-out and intake (see start_cluster).
        for task in self.tasks.lock().unwrap().iter().take(2) {
            task.abort();
        }
    }

    /// Hands every held delivery back at once, for any node to run (its
    /// next delivery counts as an attempt, as after a crash: JetStream
    /// counts handings-out).
    pub(super) async fn release_all(&self) {
        let held: Vec<Arc<Arrival>> = self.held.lock().unwrap().drain().map(|(_, a)| a).collect();
        for arrival in held {
            let _ = arrival.nak(Duration::ZERO).await;
        }
    }

    /// Sends what the client still buffers (acks, NAKs, progress notes):
    /// at shutdown, so the hand-back reaches JetStream before the process
    /// ends.
    pub(super) async fn flush(&self) {
        // Let the ack tasks of deliveries that just ended queue theirs.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.cluster.flush().await;
    }

    /// Writes `json` at `key` with compare-and-set against what is there
    /// (two nodes replacing one trigger cannot both win silently). Returns
    /// whether it replaced a value, and the new revision.
    pub(super) async fn put(
        &self,
        bucket: Bucket,
        key: &str,
        json: Vec<u8>,
    ) -> Result<(bool, u64), StoreError> {
        let catalog = self.cluster.catalog(bucket)?;
        let json = bytes::Bytes::from(json);
        let mut pace = self.cluster.contention();
        loop {
            let current = catalog.get(key).await?;
            let expect = match &current {
                Some(value) => Expect::Revision(value.revision),
                None => Expect::Absent,
            };
            match catalog.put_definition(key, json.clone(), expect).await {
                Ok(revision) => return Ok((current.is_some(), revision)),
                Err(StoreError::Changed(_)) if pace.lost().await => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Deletes `key`; the revision it deleted, or `None` if it was absent.
    pub(super) async fn delete(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.cluster.catalog(bucket)?.delete(key, Expect::Any).await
    }

    /// Records that this node wrote `revision` of `key`; true when no newer
    /// one was seen meanwhile (the write may be applied to memory; else
    /// the watch already brought something newer, which stays).
    pub(super) fn seen(&self, bucket: Bucket, key: &str, revision: u64) -> bool {
        let mut revisions = self.revisions.lock().unwrap();
        let known = revisions.entry((bucket, key.to_owned())).or_default();
        if *known > revision {
            return false;
        }
        *known = revision;
        true
    }

    /// True (and recorded) when `revision` of `key` is newer than any this
    /// node applied.
    fn fresh(&self, bucket: Bucket, key: &str, revision: u64) -> bool {
        let mut revisions = self.revisions.lock().unwrap();
        let known = revisions.entry((bucket, key.to_owned())).or_default();
        if *known >= revision {
            return false;
        }
        *known = revision;
        true
    }
}

impl Router {
    /// A router in cluster mode: events and deliveries on JetStream,
    /// triggers and brokers from the cluster's catalog (loaded once the
    /// cluster answers: until then [`Router::cluster_readiness`] says why
    /// not, and ingress and trigger writes are refused). `store` still
    /// holds what is this node's own. Call [`Router::run`] to start.
    pub fn clustered(
        store: sluice_store::Store,
        cluster: Cluster,
        invoker: Arc<dyn super::Invoker>,
        limits: super::DispatchLimits,
        registry: &prometheus::Registry,
    ) -> Arc<Router> {
        let link = Link {
            cluster,
            held: Mutex::default(),
            revisions: Mutex::default(),
            synced: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            applied: Default::default(),
            queued: Mutex::default(),
            tasks: Mutex::default(),
        };
        Router::assemble(
            store,
            invoker,
            limits,
            registry,
            Default::default(),
            Some(link),
        )
    }

    /// In cluster mode: stores the `kind` definition `json` (as the
    /// embedded store holds it) in the cluster unless the cluster has one
    /// of its name, by compare-and-set on its absence, so one made
    /// meanwhile is never overwritten. Its name, and whether it was stored
    /// (false: the cluster's is kept). Not installed on this node: every
    /// node's watch brings it. A schedule takes `mark`'s last firing time
    /// (the embedded store's) and fires from its next instant on.
    /// `sluice migrate` copies definitions in with it.
    pub async fn create_in_cluster(
        &self,
        kind: Definition,
        json: &[u8],
        mark: Option<&[u8]>,
    ) -> Result<(String, bool), StoreError> {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| StoreError::Corrupt(format!("a stored {kind:?}: {e}")))?;
        let unreadable = |e: crate::trigger::TriggerError| StoreError::Corrupt(e.to_string());
        let (bucket, name, json) = match kind {
            Definition::Broker => {
                let broker = crate::broker::Broker::parse(&value, None).map_err(unreadable)?;
                let json = serde_json::to_vec(&broker.to_json()).expect("JSON");
                (Bucket::Brokers, broker.name, json)
            }
            Definition::Trigger => {
                let trigger = Trigger::parse(&value, None).map_err(unreadable)?;
                let json = serde_json::to_vec(&trigger.to_json()).expect("JSON");
                (Bucket::Triggers, trigger.name, json)
            }
            Definition::Schedule => {
                let schedule =
                    crate::schedule::Schedule::parse(&value, None).map_err(unreadable)?;
                let json = serde_json::to_vec(&schedule.to_json()).expect("JSON");
                (Bucket::Schedules, schedule.name, json)
            }
        };
        let catalog = self.link().cluster.catalog(bucket)?;
        let key = match kind {
            Definition::Schedule => super::schedules::definition_key(&name),
            _ => name.clone(),
        };
        if catalog.get(&key).await?.is_some() {
            return Ok((name, false));
        }
        if kind == Definition::Schedule {
            // The mark first, as a put does: a node that sees the
            // definition finds it. A deleted schedule's mark may be left:
            // moved forward, never back.
            let fired = mark
                .and_then(super::schedules::Mark::parse)
                .and_then(|m| m.fired);
            let mark_key = super::schedules::mark_key(&name);
            let old = catalog.get(&mark_key).await?;
            let old_through = old
                .as_ref()
                .and_then(|v| super::schedules::Mark::parse(&v.value))
                .map_or(0, |m| m.through);
            let mark = super::schedules::Mark {
                through: jiff::Timestamp::now().as_millisecond().max(old_through),
                fired,
            };
            let expect = old.map_or(Expect::Absent, |v| Expect::Revision(v.revision));
            match catalog.put(&mark_key, mark.to_json().into(), expect).await {
                Ok(_) => {}
                Err(StoreError::Changed(_)) => return Ok((name, false)),
                Err(error) => return Err(error),
            }
        }
        match catalog
            .put_definition(&key, json.into(), Expect::Absent)
            .await
        {
            Ok(_) => Ok((name, true)),
            Err(StoreError::Changed(_)) => Ok((name, false)),
            Err(error) => Err(error),
        }
    }

    /// In cluster mode: `Ok` once the cluster answers and this node has
    /// loaded its triggers and brokers, else why not.
    pub fn cluster_readiness(&self) -> Result<(), String> {
        let Some(link) = &self.cluster else {
            return Ok(());
        };
        link.cluster.readiness()?;
        let synced = link.synced.lock().unwrap();
        for bucket in [Bucket::Brokers, Bucket::Triggers] {
            if !synced.contains(&bucket) {
                return Err(format!("loading {} from the cluster", bucket.name()));
            }
        }
        Ok(())
    }

    /// The cluster this router runs on, in cluster mode.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref().map(|link| &link.cluster)
    }

    /// Stops this node's part in the cluster at once, finishing nothing:
    /// what it held goes to other nodes after the ack wait, as when a node
    /// dies. (For tests of exactly that.)
    pub fn abandon(&self) {
        if let Some(link) = &self.cluster {
            for task in link.tasks.lock().unwrap().drain(..) {
                task.abort();
            }
            self.stopping
                .store(true, std::sync::atomic::Ordering::Release);
            self.wake.notify_one();
            link.held.lock().unwrap().clear();
        }
    }

    /// Starts fan-out, intake, progress notes and the catalog watches.
    pub(super) fn start_cluster(self: Arc<Self>) {
        let Some(link) = &self.cluster else {
            return;
        };
        let tasks = vec![
            tokio::spawn(self.clone().fan_out_loop()),
            tokio::spawn(self.clone().intake_loop()),
            tokio::spawn(self.clone().progress_loop()),
            tokio::spawn(self.clone().backlog_loop()),
            tokio::spawn(self.clone().watch_loop(Bucket::Triggers)),
            tokio::spawn(self.clone().watch_loop(Bucket::Brokers)),
            tokio::spawn(self.clone().watch_loop(Bucket::Schedules)),
        ];
        link.tasks.lock().unwrap().extend(tasks);
    }

    fn link(&self) -> &Link {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// Ingress in cluster mode: each event into the events stream; returns
    /// once JetStream acknowledged every one (a 202 may be answered).
    pub(super) async fn publish_clustered(
        &self,
        link: &Link,
        broker: &str,
        events: Vec<CloudEvent>,
        keyed_as: Option<&str>,
        traced_as: Option<&str>,
    ) -> Result<Accepted, PublishError> {
        let mut accepted = 0;
        let mut duplicates = Vec::new();
        // With `keyed_as` (the broker, or a schedule's own key space), a
        // repeat of an event is the same event
        // (CloudEvents: source and id), within JetStream's duplicate window
        // (`--dedupe-window`); a reply or a guest's publish is always new,
        // even when it keeps the id and source of its cause.
        for event in events {
            if self.over_hop_limit(broker, &event) {
                continue;
            }
            let json = event.to_json();
            let seen = link.applied.load(std::sync::atomic::Ordering::Acquire);
            let message_id = if let Some(keyed_as) = keyed_as {
                sluice_store::cluster::event_message_id(keyed_as, &event.source, &event.id)
            } else {
                link.cluster.unique_message_id()
            };
            // Traced under its de-duplication key space (whether or not
            // de-duplication is on), from its fan-out on.
            let trace = (traced_as.filter(|_| link.cluster.traces_kept()))
                .map(|space| trace_key(broker, space, &event.source, &event.id));
            let published = link
                .cluster
                .publish_event(broker, &message_id, json.into(), seen, trace.as_deref())
                .await?;
            if published.duplicate {
                if let Some(trace) = &trace {
                    let record = trace::tagged(published.sequence, &serde_json::json!({}));
                    link.cluster.write_trace(trace, trace::REPEAT, record);
                }
                duplicates.push(event.id);
            } else {
                accepted += 1;
            }
        }
        self.metrics
            .accepted
            .with_label_values(&[broker])
            .inc_by(accepted);
        self.count_duplicates(broker, &duplicates);
        Ok(Accepted { duplicates })
    }

    async fn fan_out_loop(self: Arc<Self>) {
        self.link().synced().await;
        let mut feed = self.link().cluster.event_feed(FANOUT_CAPACITY);
        while let Some(arrival) = feed.next().await {
            let router = self.clone();
            tokio::spawn(async move { router.fan_out(arrival).await });
        }
    }

    /// One accepted event: a delivery per matching trigger, then the ack.
    async fn fan_out(&self, arrival: Arrival) {
        let link = self.link();
        let Some(broker) = arrival.subject.strip_prefix("sluice.events.") else {
            let _ = arrival.term().await;
            return;
        };
        let mut event = match CloudEvent::from_json(&arrival.payload) {
            Ok(event) => event,
            Err(error) => {
                // Only Sluice publishes here, after parsing: never retried.
                tracing::error!(sequence = arrival.sequence, %error, "an unreadable event in the events stream; skipped");
                let _ = arrival.term().await;
                return;
            }
        };
        if let Some(revision) = arrival
            .header(sluice_store::cluster::CATALOG_REVISION_HEADER)
            .and_then(|r| r.parse().ok())
        {
            link.catch_up(revision).await;
        }
        if let Some(schedule) = broker.strip_prefix(crate::schedule::DIRECT_PREFIX)
            && self.trigger(broker).is_none()
        {
            // A firing of a schedule with a function or URL sink that
            // this node's watch has not brought yet: never taken for an
            // event no trigger matches.
            if let Err(error) = self.load_schedule(schedule).await {
                tracing::warn!(%schedule, %error, "could not look a schedule up in the cluster; the firing waits");
                let _ = arrival.nak(Duration::from_secs(1)).await;
                return;
            }
        }
        let matches = self.index.read().unwrap().clone().matches(broker, &event);
        event.forget_parsed_data();
        let (sequence, payload) = (arrival.sequence, &arrival.payload);
        let trace = arrival.header(TRACE_HEADER);
        if let Some(key) = trace {
            // Before its deliveries, so their attempts come after it.
            let record = trace::MatchedRecord::new(
                broker,
                (&event.id, &event.source, &event.ty),
                arrival.published_ms,
                matches.iter().map(|t| t.name.clone()).collect(),
                payload,
            );
            let record = trace::tagged(sequence, &record);
            link.cluster.write_trace(key, trace::MATCHED, record);
        }
        let trace = trace.map(|key| delivery_trace(key, sequence));
        let trace = trace.as_deref();
        let enqueued = futures::future::join_all(matches.iter().map(|trigger| {
            let delivery = Delivery {
                broker,
                trigger: &trigger.name,
                dead_letter: None,
                trace,
            };
            let payload = payload.clone();
            async move {
                link.cluster
                    .enqueue_delivery(sequence, &delivery, "delivery", payload)
                    .await
            }
        }))
        .await;
        if let Some(Err(StoreError::TooLarge(reason))) = enqueued
            .iter()
            .find(|r| matches!(r, Err(StoreError::TooLarge(_))))
        {
            // It was stored as an event, so it fits; only the headers could
            // push a delivery over. Never retried for ever: dropped, said.
            tracing::error!(sequence = arrival.sequence, %reason, "an accepted event cannot be queued for delivery; dropped");
            self.metrics
                .dropped
                .with_label_values(&[broker, "too_large"])
                .inc();
            let _ = arrival.term().await;
            return;
        }
        if let Some(Err(error)) = enqueued.into_iter().find(Result::is_err) {
            // Fanned out again later; the ones that did go in are not
            // doubled (their message ids are the same).
            tracing::warn!(sequence = arrival.sequence, %error, "could not fan an event out; trying again");
            let _ = arrival.nak(Duration::from_secs(1)).await;
            return;
        }
        if let Err(error) = arrival.ack().await {
            tracing::warn!(sequence = arrival.sequence, %error, "fanned out, but the ack was lost; it may be fanned out again (no duplicates)");
        }
        if matches.is_empty() {
            self.metrics.unmatched.with_label_values(&[broker]).inc();
        }
        for trigger in &matches {
            if let Some(slot) = self.slot(&trigger.name) {
                slot.matched.inc();
            }
        }
        if self.stream.receiver_count() > 0 {
            let entry: StreamEntry = self
                .entry("accepted", broker, None, &event, None)
                .with_matched(matches.iter().map(|t| t.name.clone()).collect());
            let _ = self.stream.send(entry);
        }
    }

    async fn intake_loop(self: Arc<Self>) {
        let link = self.link();
        link.synced().await;
        let mut feed = link.cluster.delivery_feed(self.limits.max_in_flight);
        while let Some(arrival) = feed.next().await {
            let trigger = arrival
                .subject
                .strip_prefix(DELIVERIES_SUBJECT)
                .and_then(|rest| rest.splitn(3, '.').nth(2))
                .map(str::to_owned);
            let event = std::str::from_utf8(&arrival.payload)
                .ok()
                .map(str::to_owned);
            let (Some(trigger), Some(broker), Some(event)) = (
                trigger,
                arrival.header(BROKER_HEADER).map(str::to_owned),
                event,
            ) else {
                tracing::error!(sequence = arrival.sequence, subject = %arrival.subject, "an unreadable delivery in the work queue; skipped");
                let _ = arrival.term().await;
                continue;
            };
            let dead_letter = arrival
                .header(DEAD_LETTER_HEADER)
                .and_then(|id| id.parse().ok());
            if self.trigger(&trigger).is_none() {
                // Made on another node a moment ago, and this node's watch
                // has not brought it yet? Only one the cluster does not
                // have either is a deleted trigger; if the cluster cannot
                // say now, ask again shortly.
                if let Err(error) = self.load_trigger(&trigger).await {
                    tracing::warn!(%trigger, %error, "could not look a trigger up in the cluster; the delivery waits");
                    let _ = arrival.nak(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let record = DeliveryRecord {
                id: arrival.sequence,
                broker: self.intern(&broker),
                trigger: self.intern(&trigger),
                event: event.into(),
                attempts: u32::try_from(arrival.delivered.saturating_sub(1)).unwrap_or(u32::MAX),
                not_before_ms: 0,
                dead_letter,
                group: 0,
            };
            link.held
                .lock()
                .unwrap()
                .insert(record.id, Arc::new(arrival));
            self.count_pending(&record.broker, 1);
            self.enqueue(vec![record]);
        }
    }

    /// Reads trigger `name` from the cluster and installs it, if it is
    /// there and this node has none.
    async fn load_trigger(&self, name: &str) -> Result<(), StoreError> {
        let link = self.link();
        if let Some(schedule) = name.strip_prefix(crate::schedule::DIRECT_PREFIX) {
            // A schedule's own trigger: from its definition.
            return self.load_schedule(schedule).await;
        }
        let Some(value) = link.cluster.catalog(Bucket::Triggers)?.get(name).await? else {
            return Ok(());
        };
        link.seen(Bucket::Triggers, name, value.revision);
        match parse(&value.value, Trigger::parse) {
            Ok(trigger) if self.trigger(name).is_none() => self.install_trigger(trigger),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(trigger = %name, %error, "a trigger in the catalog is invalid; ignored")
            }
        }
        Ok(())
    }

    /// Reads schedule `name` from the cluster and applies it (and so the
    /// trigger of its function or URL sink), if it is newer than what
    /// this node has: a firing can reach a node before the watch brought
    /// the schedule.
    async fn load_schedule(&self, name: &str) -> Result<(), StoreError> {
        let key = format!("schedule.{name}");
        let catalog = self.link().cluster.catalog(Bucket::Schedules)?;
        if let Some(value) = catalog.get(&key).await? {
            self.apply(Bucket::Schedules, key, Some(value.value), value.revision);
        }
        Ok(())
    }

    /// Reads the cluster's delivery backlog every [`BACKLOG_EVERY`], for
    /// the ingress bounds.
    async fn backlog_loop(self: Arc<Self>) {
        let link = self.link();
        // Until the triggers are loaded every delivery would look like a
        // deleted trigger's.
        link.synced().await;
        loop {
            match link.cluster.queued_deliveries().await {
                Ok(read) => {
                    let mut queued = Queued::default();
                    for (trigger, count) in read.by_trigger {
                        // A deleted trigger's deliveries (which can wait
                        // out a long retry delay before they are dead
                        // lettered) bound nothing: JetStream cannot bring
                        // them forward as embedded mode does, and they
                        // would hold other triggers' events back.
                        if let Some(trigger) = self.trigger(&trigger) {
                            queued.total += count;
                            *queued.by_broker.entry(trigger.broker.clone()).or_default() += count;
                        }
                    }
                    *link.queued.lock().unwrap() = Some((std::time::Instant::now(), queued));
                }
                Err(error) => tracing::debug!(%error, "the delivery backlog was not read"),
            }
            tokio::time::sleep(BACKLOG_EVERY).await;
        }
    }

    /// Refuses `events` while the cluster's delivery backlog is at its
    /// bounds (times `scale`, as in embedded mode), as last read (at most
    /// [`BACKLOG_EVERY`] ago; what arrives in between can pass them), unless
    /// none of them matches a trigger (they would add nothing to it). The
    /// matching is done only while at a bound.
    pub(super) fn check_clustered_backlog(
        &self,
        link: &Link,
        broker: &str,
        scale: usize,
        events: &[CloudEvent],
    ) -> Result<(), PublishError> {
        let refusal = self.clustered_backlog_refusal(link, broker, scale);
        let Some(refusal) = refusal else {
            return Ok(());
        };
        let index = self.index.read().unwrap().clone();
        if events
            .iter()
            .any(|event| !index.matches(broker, event).is_empty())
        {
            return Err(refusal);
        }
        Ok(())
    }

    /// The refusal the last backlog read calls for, if any.
    fn clustered_backlog_refusal(
        &self,
        link: &Link,
        broker: &str,
        scale: usize,
    ) -> Option<PublishError> {
        let queued = link.queued.lock().unwrap();
        let (read, queued) = queued.as_ref()?;
        if read.elapsed() > BACKLOG_STALE {
            return None;
        }
        let total_limit = self.limits.max_pending.saturating_mul(scale);
        let total = usize::try_from(queued.total).unwrap_or(usize::MAX);
        if total >= total_limit {
            return Some(PublishError::Backlog {
                pending: total,
                limit: total_limit,
                of: String::new(),
            });
        }
        let broker_limit = self.limits.max_pending_per_broker.saturating_mul(scale);
        let of_broker = queued.by_broker.get(broker).copied().unwrap_or(0);
        let of_broker = usize::try_from(of_broker).unwrap_or(usize::MAX);
        (broker_limit > 0 && of_broker >= broker_limit).then(|| PublishError::Backlog {
            pending: of_broker,
            limit: broker_limit,
            of: format!(" at broker {broker:?}"),
        })
    }

    /// Progress notes for every held delivery, three per ack wait.
    async fn progress_loop(self: Arc<Self>) {
        let link = self.link();
        let every = link.cluster.options().ack_wait / 3;
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<Arc<Arrival>> = link.held.lock().unwrap().values().cloned().collect();
            for arrival in held {
                if let Err(error) = arrival.progress().await {
                    tracing::debug!(%error, "a progress note was not sent");
                }
            }
        }
    }

    /// Loads `bucket` once the cluster answers, then applies every change
    /// another node (or this one) makes.
    async fn watch_loop(self: Arc<Self>, bucket: Bucket) {
        let link = self.link();
        let mut delay = Duration::from_millis(100);
        let (catalog, entries, after) = loop {
            let loaded = async {
                let catalog = link.cluster.catalog(bucket)?;
                let (entries, after) = catalog.snapshot().await?;
                Ok::<_, StoreError>((catalog, entries, after))
            };
            match loaded.await {
                Ok(loaded) => break loaded,
                Err(error) => {
                    tracing::debug!(bucket = bucket.name(), %error, "catalog not loaded yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (key, value) in entries {
            self.apply(bucket, key, Some(value.value), value.revision);
        }
        if bucket == Bucket::Triggers {
            link.applied
                .fetch_max(after, std::sync::atomic::Ordering::AcqRel);
        }
        let mut watch = catalog.watch(after);
        link.synced.lock().unwrap().insert(bucket);
        link.changed.notify_waiters();
        tracing::info!(bucket = bucket.name(), "catalog loaded; watching it");
        while let Some(change) = watch.next().await {
            let revision = change.revision;
            self.apply(bucket, change.key, change.value, revision);
            if bucket == Bucket::Triggers {
                // How far this node's index is: what catch_up waits on.
                link.applied
                    .fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
            }
            link.changed.notify_waiters();
        }
    }

    fn apply(&self, bucket: Bucket, key: String, value: Option<bytes::Bytes>, revision: u64) {
        if !self.link().fresh(bucket, &key, revision) {
            return;
        }
        match (bucket, value) {
            (Bucket::Triggers, Some(json)) => match parse(&json, Trigger::parse) {
                Ok(trigger) => self.install_trigger(trigger),
                Err(error) => {
                    tracing::error!(trigger = %key, %error, "a trigger in the catalog is invalid; ignored")
                }
            },
            (Bucket::Triggers, None) => self.uninstall_trigger(&key),
            (Bucket::Brokers, Some(json)) => match parse(&json, crate::broker::Broker::parse) {
                Ok(broker) => self.install_broker(broker),
                Err(error) => {
                    tracing::error!(broker = %key, %error, "a broker in the catalog is invalid; ignored")
                }
            },
            (Bucket::Brokers, None) => self.uninstall_broker(&key),
            (Bucket::Schedules, value) => self.apply_schedule_change(&key, value),
            _ => {}
        }
    }

    /// Stores a dead letter in the cluster, enqueues its forwarding to the
    /// trigger's sink (if any), then terminates the delivery. If that
    /// cannot be done now, it is tried again later (the delivery stays held).
    pub(super) async fn dead_letter_clustered(
        &self,
        link: &Link,
        record: DeliveryRecord,
        event: Option<Arc<CloudEvent>>,
        failure: Failure,
        json: Arc<str>,
    ) {
        let letter = DeadLetterRecord {
            id: record.id,
            broker: record.broker.to_string(),
            trigger: record.trigger.to_string(),
            event: json.to_string(),
            attempts: record.attempts,
            reason: failure.reason.clone(),
            time: sluice_store::now_rfc3339(),
        };
        let has_sink = self
            .triggers
            .read()
            .unwrap()
            .get(&*record.trigger)
            .is_some_and(|t| t.delivery.dead_letter_sink.is_some());
        let stored = async {
            let letters = link.cluster.catalog(Bucket::DeadLetters)?;
            let key = record.id.to_string();
            let body = serde_json::to_vec(&letter).expect("JSON");
            match letters.put(&key, body.into(), Expect::Any).await {
                Err(StoreError::TooLarge(_)) => {
                    // Too big to keep whole (the event near the message
                    // limit, plus the error): kept without its data, and
                    // said so, rather than retried for ever.
                    let mut small = letter.clone();
                    small.event = without_data(&letter.event);
                    small.reason = format!(
                        "{} (the event's data was dropped from this dead letter: too large to store)",
                        letter.reason
                    );
                    let body = serde_json::to_vec(&small).expect("JSON");
                    letters.put(&key, body.into(), Expect::Any).await?;
                }
                other => {
                    other?;
                }
            }
            if has_sink {
                let delivery = Delivery {
                    broker: &letter.broker,
                    trigger: &letter.trigger,
                    dead_letter: Some(record.id),
                    trace: None,
                };
                let event = bytes::Bytes::from(letter.event.clone());
                match link
                    .cluster
                    .enqueue_delivery(record.id, &delivery, "deadletter", event)
                    .await
                {
                    Err(StoreError::TooLarge(reason)) => {
                        tracing::warn!(id = record.id, %reason, "a dead letter is too large to forward to the sink; it stays in the dead letters");
                    }
                    other => {
                        other?;
                    }
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match stored {
            Ok(()) => {
                if let Some(event) = &event {
                    self.announce("dead_lettered", &record, event);
                }
                let traced =
                    trace::TraceDeadLetter::new(&letter.trigger, record.id, &letter.reason);
                link.dead_lettered(record.id, &traced);
                if let Some(slot) = self.slot(&record.trigger) {
                    slot.dead_lettered.inc();
                }
                link.finish(record.id, End::Term);
                self.count_pending(&record.broker, -1);
            }
            Err(error) => {
                tracing::error!(id = record.id, %error, "could not store a dead letter in the cluster; trying again");
                self.retry_dead_letter(record, event, failure);
            }
        }
    }

    /// Redelivers dead letter `id` (cluster mode).
    pub(super) async fn replay_clustered(&self, link: &Link, id: u64) -> Result<bool, StoreError> {
        let catalog = link.cluster.catalog(Bucket::DeadLetters)?;
        let Some(stored) = catalog.get(&id.to_string()).await? else {
            return Ok(false);
        };
        let letter: DeadLetterRecord = serde_json::from_slice(&stored.value)?;
        let delivery = Delivery {
            broker: &letter.broker,
            trigger: &letter.trigger,
            dead_letter: None,
            trace: None,
        };
        let event = bytes::Bytes::from(original_event(letter.event.clone()));
        // One replay per stored dead letter, however often it is asked for.
        link.cluster
            .enqueue_delivery(id, &delivery, &format!("replay{}", stored.revision), event)
            .await?;
        match catalog
            .delete(&id.to_string(), Expect::Revision(stored.revision))
            .await
        {
            Ok(_) | Err(StoreError::Changed(_)) => {}
            Err(error) => return Err(error),
        }
        if let Some(slot) = self.slot(&letter.trigger) {
            slot.replayed.inc();
        }
        Ok(true)
    }

    /// Dead letters stored in the cluster, oldest first.
    pub(super) async fn dead_letters_clustered(
        &self,
        link: &Link,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let (entries, _) = link
            .cluster
            .catalog(Bucket::DeadLetters)?
            .snapshot()
            .await?;
        let mut letters = entries
            .into_iter()
            .map(|(_, v)| serde_json::from_slice::<DeadLetterRecord>(&v.value))
            .collect::<Result<Vec<_>, _>>()?;
        letters.sort_by_key(|l| l.id);
        Ok(letters)
    }

    /// Deletes dead letter `id` from the cluster; whether it existed.
    pub(super) async fn delete_dead_letter_clustered(
        &self,
        link: &Link,
        id: u64,
    ) -> Result<bool, StoreError> {
        Ok(link
            .cluster
            .catalog(Bucket::DeadLetters)?
            .delete(&id.to_string(), Expect::Any)
            .await?
            .is_some())
    }
}

fn parse<T>(
    json: &[u8],
    parse: fn(&serde_json::Value, Option<&str>) -> Result<T, crate::trigger::TriggerError>,
) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    parse(&value, None).map_err(|e| e.to_string())
}

/// A dead letter's event without its `data` (or `data_base64`), for one
/// too large to store whole.
fn without_data(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut event)) => {
            event.remove("data");
            event.remove("data_base64");
            serde_json::Value::Object(event).to_string()
        }
        _ => "{}".to_owned(),
    }
}
