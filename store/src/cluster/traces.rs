//! Per-event traces in cluster mode: one stream, `SLUICE_TRACES`, where
//! each node writes what it did with an event (fanned it out, ran an
//! attempt, stored a dead letter, published an event it caused) as a
//! small record, so that any node can read the whole story.
//!
//! Subjects are `sluice.traces.<E>.<K>.<kind>`: `E` a digest of (broker,
//! id), so one read (the newest record per subject of
//! `sluice.traces.<E>.*.matched`) finds every source's event with that id;
//! `K` the digest of the event's de-duplication key (key space, source,
//! id), telling those apart; then a read of `sluice.traces.<E>.<K>.>`
//! brings one trace whole.
//! The stream keeps at most [`RECORDS_PER_KIND`] records per subject (the
//! newest), records for `--trace-retention` (`max_age`), and at most
//! `trace_max_bytes` in all (the oldest dropped first): a trace is bounded
//! per event and the stream in bytes.
//!
//! Records are published without waiting for JetStream's ack, as guest
//! output is: a trace is not acknowledged data, and neither ingress nor a
//! delivery waits on one. What the records hold is the router's business.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream;
use bytes::Bytes;

use super::{Cluster, ClusterOptions, connected};
use crate::StoreError;

/// The traces stream.
pub const TRACES_STREAM: &str = "SLUICE_TRACES";
/// Subject prefix of trace records.
pub const TRACES_SUBJECT: &str = "sluice.traces";
/// The header carrying an event's trace key: `<E>.<K>` on the event (from
/// ingress to its fan-out), `<E>.<K>:<event sequence>` on its deliveries
/// ([`delivery_trace`]); absent on events not traced (replies and guests'
/// events, traced as their cause's).
pub const TRACE_HEADER: &str = "Sluice-Trace";
/// Records kept per event and kind (the stream's per-subject limit).
pub const RECORDS_PER_KIND: i64 = 32;
/// Records one read takes at most: the newest `matched` record of every
/// source's event with one id, or every record of one event's trace.
const MAX_READ: usize = 4_096;
/// Trace records queued for sending at most; past it they are dropped.
const QUEUE: usize = 4_096;

/// One record of a trace, as read back.
#[derive(Clone, Debug)]
pub struct TraceRecord {
    /// The event's key (`K`, the de-duplication key's digest).
    pub key: String,
    /// What it records (`matched`, `attempt`, ...: the router's names).
    pub kind: String,
    /// The record.
    pub payload: Bytes,
}

/// The group part (`E`) of the trace keys of events `id` in `broker`.
pub fn trace_group(broker: &str, id: &str) -> String {
    // No CloudEvent has an empty source: no event key is this one.
    hex::encode(crate::dedupe_key(broker, "", id))
}

/// The trace key (`<E>.<K>`) of event (`source`, `id`) in `broker`, its
/// de-duplication keyed as `keyed_as` (the broker, or a schedule's key
/// space).
pub fn trace_key(broker: &str, keyed_as: &str, source: &str, id: &str) -> String {
    format!(
        "{}.{}",
        trace_group(broker, id),
        hex::encode(crate::dedupe_key(keyed_as, source, id))
    )
}

/// The trace header of a delivery of event `event_sequence` (in the
/// events stream) whose trace key is `key`: `<E>.<K>:<sequence>`, so its
/// records name the event they belong to (an id posted again later, with
/// de-duplication off or past its window, has the same key).
pub fn delivery_trace(key: &str, event_sequence: u64) -> String {
    format!("{key}:{event_sequence}")
}

/// The key and event sequence of a delivery's trace header.
pub fn parse_delivery_trace(value: &str) -> Option<(&str, u64)> {
    let (key, sequence) = value.split_once(':')?;
    Some((key, sequence.parse().ok()?))
}

/// One replica whatever the others have: a trace is no one's data, and on
/// R3 each record would be a replicated write (measured: about 10 % of the
/// pipeline on three nodes); a server that dies takes its traces with it.
pub(super) fn traces_config(options: &ClusterOptions) -> stream::Config {
    stream::Config {
        name: TRACES_STREAM.to_owned(),
        description: Some("Sluice: per-event traces, bounded per event and in bytes".to_owned()),
        subjects: vec![format!("{TRACES_SUBJECT}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: options.trace_retention,
        max_bytes: i64::try_from(options.trace_max_bytes.max(1)).unwrap_or(i64::MAX),
        max_messages_per_subject: RECORDS_PER_KIND,
        duplicate_window: std::time::Duration::from_secs(120).min(options.trace_retention),
        num_replicas: 1,
        ..Default::default()
    }
}

/// Starts the task that sends queued trace records, and returns its queue.
pub(super) fn start_writer(
    client: async_nats::Client,
) -> tokio::sync::mpsc::Sender<(String, Bytes)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(QUEUE);
    tokio::spawn(async move {
        while let Some((subject, payload)) = rx.recv().await {
            if let Err(error) = client.publish(subject, payload).await {
                tracing::debug!(%error, "a trace record was not sent");
            }
        }
    });
    tx
}

fn is_key(key: &str) -> bool {
    let mut parts = key.split('.');
    let hex32 = |p: Option<&str>| {
        p.is_some_and(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    hex32(parts.next()) && hex32(parts.next()) && parts.next().is_none()
}

impl Cluster {
    /// Whether this node keeps traces (`trace_retention` above zero, and
    /// the traces stream there once the layout is).
    pub fn traces_kept(&self) -> bool {
        let on =
            !self.inner.options.trace_retention.is_zero() && self.inner.options.trace_max_bytes > 0;
        on && self
            .inner
            .layout
            .get()
            .is_none_or(|layout| layout.traces.is_some())
    }

    /// Adds a record of `kind` to the trace `key` (a [`trace_key`]): queued
    /// and sent without waiting for an acknowledgement, never waited on
    /// (dropped, and counted, when the queue is full or NATS away). Whether
    /// an event is traced is decided once, by the node that accepted it:
    /// the others write its records whatever their own setting.
    pub fn write_trace(&self, key: &str, kind: &str, payload: Vec<u8>) {
        if !is_key(key) || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
            return;
        }
        let subject = format!("{TRACES_SUBJECT}.{key}.{kind}");
        let connected =
            self.inner.client.connection_state() == async_nats::connection::State::Connected;
        if !connected || (self.inner.trace_out.try_send((subject, payload.into()))).is_err() {
            (self.inner.trace_dropped).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Trace records this node dropped (its queue full, NATS away).
    pub fn trace_records_dropped(&self) -> u64 {
        (self.inner.trace_dropped).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The newest `matched` record of each event in group `group` (a
    /// [`trace_group`]): one per source that posted the id.
    pub async fn latest_traces(&self, group: &str) -> Result<Vec<TraceRecord>, StoreError> {
        self.read_traces(
            format!("{TRACES_SUBJECT}.{group}.*.matched"),
            DeliverPolicy::LastPerSubject,
        )
        .await
    }

    /// Every record of the trace `key` (a [`trace_key`]), in the order
    /// they were stored.
    pub async fn trace_records(&self, key: &str) -> Result<Vec<TraceRecord>, StoreError> {
        if !is_key(key) {
            return Ok(Vec::new());
        }
        self.read_traces(format!("{TRACES_SUBJECT}.{key}.>"), DeliverPolicy::All)
            .await
    }

    async fn read_traces(
        &self,
        filter_subject: String,
        deliver_policy: DeliverPolicy,
    ) -> Result<Vec<TraceRecord>, StoreError> {
        let traces = (self.layout()?.traces.clone()).ok_or_else(|| {
            StoreError::Unavailable("traces are off on this node (--trace-retention 0s)".into())
        })?;
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let unavailable =
            |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("reading traces: {e}"));
        let read = async {
            let messages =
                super::logs::read_ordered(self, &traces, filter_subject, deliver_policy, MAX_READ)
                    .await
                    .map_err(|e| unavailable(&e))?;
            let records = messages
                .into_iter()
                .filter_map(|read| {
                    let mut tokens = read.subject.rsplitn(3, '.');
                    let (kind, key) = (tokens.next()?, tokens.next()?);
                    Some(TraceRecord {
                        key: key.to_owned(),
                        kind: kind.to_owned(),
                        payload: read.payload,
                    })
                })
                .collect();
            Ok(records)
        };
        match tokio::time::timeout(self.inner.options.request_timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(&"JetStream did not answer in time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_broker_and_id_and_are_subject_tokens() {
        let a = trace_key("default", "default", "/s", "x");
        assert!(is_key(&a), "{a}");
        assert!(a.starts_with(&trace_group("default", "x")));
        assert_eq!(
            trace_key("default", "default", "/t", "x")[..32],
            a[..32],
            "one group for one id"
        );
        assert_ne!(trace_key("default", "default", "/t", "x"), a);
        assert_ne!(trace_key("default", "default\0schedule", "/s", "x"), a);
        assert_ne!(trace_group("other", "x"), trace_group("default", "x"));
        assert!(!is_key("a.b") && !is_key(&format!("{a}.z")) && !is_key("*.>"));
    }
}
