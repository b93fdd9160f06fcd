//! Per-event traces: what became of each event a client posted or a
//! schedule fired. Embedded mode keeps them in memory for
//! `--trace-retention`, the last `--trace-max-events` of them; cluster mode
//! writes each node's part as records to the traces stream (see the
//! store's `cluster/traces.rs`) and [`assemble`]s them on a read.
//!
//! A trace holds when the event was accepted, the triggers it matched,
//! every delivery attempt (start, duration, outcome, status or error), the
//! dead letters, and the ids of the events it caused (replies, and events
//! functions published while handling it into the same broker). The event
//! itself is kept too when its JSON is at most [`MAX_EVENT_BYTES`], so that
//! a read can say why each other trigger did not match it (against the
//! triggers as they are then). Each trace is bounded: `id`, `source` and
//! `type` cut at [`MAX_TEXT_BYTES`], at most [`MAX_ENTRIES`] matched
//! triggers, attempts, dead letters and caused ids (later ones are counted,
//! not kept), an error at most [`MAX_ERROR_BYTES`]: about 40 KiB at worst
//! (8 KiB of event, the rest attempts with long errors), under 1 KiB
//! typically.
//!
//! Writing one costs a lock and a hash map insert per accepted event (and
//! per attempt); reading never touches the store. Traces are not durable:
//! a restart starts with none.
//!
//! In cluster mode a trace starts when a node fans the event out (its
//! `accepted` is when JetStream stored it), each record is bounded as
//! above, and the stream keeps the newest 32 records of each kind per
//! event: `attempts_not_kept` and the dead letters past 32 are not counted
//! there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_store::DedupeKey;

/// The largest event JSON a trace keeps (for "why not" on a read).
pub const MAX_EVENT_BYTES: usize = 8 * 1024;
/// Matched triggers, attempts, dead letters and caused event ids a trace
/// keeps (each).
pub const MAX_ENTRIES: usize = 32;
/// Bytes of an attempt's error or a dead letter's reason a trace keeps.
pub const MAX_ERROR_BYTES: usize = 256;
/// Bytes of the event's `id`, `source` and `type` (and of each caused id
/// and trigger name) a trace keeps, for showing.
pub const MAX_TEXT_BYTES: usize = 256;

/// The triggers of a broker an event did not match, by name, each with
/// why not (`None`: not known, the trace did not keep the event).
pub type Misses = Vec<(String, Option<String>)>;

/// What became of one event.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    /// The broker.
    pub broker: String,
    /// The event's `id`.
    pub id: String,
    /// The event's `source`.
    pub source: String,
    /// The event's `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When it was accepted (Unix ms).
    pub accepted_ms: u64,
    /// The triggers it matched, by name.
    pub matched: Vec<String>,
    /// Matched triggers past [`MAX_ENTRIES`], not kept.
    pub matched_not_kept: u32,
    /// Every delivery attempt, in the order they ended.
    pub attempts: Vec<TraceAttempt>,
    /// Attempts past [`MAX_ENTRIES`], not kept.
    pub attempts_not_kept: u32,
    /// Its dead letters, one per trigger that failed for good.
    pub dead_letters: Vec<TraceDeadLetter>,
    /// Ids of the events it caused (replies and published events).
    pub caused: Vec<String>,
    /// Caused events past [`MAX_ENTRIES`], not kept.
    pub caused_not_kept: u32,
    /// Repeats a client posted within the de-duplication window.
    pub duplicates: u32,
    /// The event's JSON, when small enough to keep.
    #[serde(skip)]
    pub event: Option<Arc<str>>,
    /// Its deliveries' group (0: it matched no trigger).
    #[serde(skip)]
    pub group: u64,
    /// Its place in the order traces were made.
    #[serde(skip)]
    seq: u64,
    /// Its key: the broker name its de-duplication uses (the broker's, or
    /// a schedule's own key space), source and id, digested.
    #[serde(skip)]
    key: DedupeKey,
}

impl Trace {
    /// A new trace (its texts and `matched` cut to the bounds).
    pub(super) fn new(
        broker: &str,
        keyed_as: &str,
        (id, source, ty): (&str, &str, &str),
        matched: Vec<String>,
        event: Option<Arc<str>>,
        group: u64,
    ) -> Trace {
        let kept = matched.len().min(MAX_ENTRIES);
        let matched_not_kept = (matched.len() - kept) as u32;
        Trace {
            broker: broker.to_string(),
            id: cut(id, MAX_TEXT_BYTES),
            source: cut(source, MAX_TEXT_BYTES),
            ty: cut(ty, MAX_TEXT_BYTES),
            accepted_ms: 0,
            matched: matched.into_iter().take(kept).collect(),
            matched_not_kept,
            attempts: Vec::new(),
            attempts_not_kept: 0,
            dead_letters: Vec::new(),
            caused: Vec::new(),
            caused_not_kept: 0,
            duplicates: 0,
            event: event.filter(|json| json.len() <= MAX_EVENT_BYTES),
            group,
            seq: 0,
            key: sluice_store::dedupe_key(keyed_as, source, id),
        }
    }
}

/// One delivery attempt.
#[derive(Clone, Debug, Serialize)]
pub struct TraceAttempt {
    /// The trigger.
    pub trigger: String,
    /// Its number for this trigger (1 is the first).
    pub attempt: u32,
    /// When it started (Unix ms).
    pub start_ms: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// `delivered`, `retrying` (failed; it will be tried again) or `failed`
    /// (for good: a dead letter follows).
    pub outcome: &'static str,
    /// The HTTP status the subscriber answered, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed (a trap, a limit the instance hit, a timeout, the
    /// subscriber's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node that ran it (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl TraceAttempt {
    /// The attempt within a trace's bounds: its error cut, its duration
    /// in microseconds (as fine as it is measured).
    pub(super) fn bounded(mut self) -> TraceAttempt {
        self.error = self.error.map(|e| cut(&e, MAX_ERROR_BYTES));
        self.duration_ms = (self.duration_ms * 1000.0).round() / 1000.0;
        self
    }
}

/// An attempt as a cluster node stored it.
#[derive(Deserialize)]
struct StoredAttempt {
    trigger: String,
    attempt: u32,
    start_ms: u64,
    duration_ms: f64,
    outcome: String,
    status: Option<u16>,
    error: Option<String>,
    node: Option<String>,
}

impl From<StoredAttempt> for TraceAttempt {
    fn from(stored: StoredAttempt) -> TraceAttempt {
        TraceAttempt {
            trigger: stored.trigger,
            attempt: stored.attempt,
            start_ms: stored.start_ms,
            duration_ms: stored.duration_ms,
            outcome: match stored.outcome.as_str() {
                "delivered" => "delivered",
                "retrying" => "retrying",
                _ => "failed",
            },
            status: stored.status,
            error: stored.error,
            node: stored.node,
        }
    }
}

/// A dead letter of the event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceDeadLetter {
    /// The trigger that failed for good.
    pub trigger: String,
    /// The dead letter's id, as `GET /v1/deadletters` shows it.
    pub id: String,
    /// Why.
    pub reason: String,
}

impl TraceDeadLetter {
    /// Dead letter `id` of `trigger`, within a trace's bounds.
    pub(super) fn new(trigger: &str, id: u64, reason: &str) -> TraceDeadLetter {
        TraceDeadLetter {
            trigger: cut(trigger, MAX_TEXT_BYTES),
            id: id.to_string(),
            reason: cut(reason, MAX_ERROR_BYTES),
        }
    }
}

/// Cluster mode: what the node fanning an event out records (kind
/// [`MATCHED`]): the start of its trace.
#[derive(Serialize, Deserialize)]
pub(super) struct MatchedRecord {
    pub broker: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub accepted_ms: u64,
    pub matched: Vec<String>,
    pub matched_not_kept: u32,
    /// The event's JSON, when at most [`MAX_EVENT_BYTES`] (as JSON, not a
    /// string: nothing escaped).
    #[serde(default)]
    pub event: Option<Box<serde_json::value::RawValue>>,
}

impl MatchedRecord {
    /// The record of `event` (its JSON `json`) accepted at `accepted_ms`
    /// into `broker`, matching `matched`.
    pub(super) fn new(
        broker: &str,
        (id, source, ty): (&str, &str, &str),
        accepted_ms: u64,
        matched: Vec<String>,
        json: &[u8],
    ) -> MatchedRecord {
        let kept = matched.len().min(MAX_ENTRIES);
        MatchedRecord {
            broker: broker.to_owned(),
            id: cut(id, MAX_TEXT_BYTES),
            source: cut(source, MAX_TEXT_BYTES),
            ty: cut(ty, MAX_TEXT_BYTES),
            accepted_ms,
            matched_not_kept: (matched.len() - kept) as u32,
            matched: matched.into_iter().take(kept).collect(),
            event: (json.len() <= MAX_EVENT_BYTES)
                .then(|| std::str::from_utf8(json).ok())
                .flatten()
                .and_then(|text| serde_json::value::RawValue::from_string(text.to_owned()).ok()),
        }
    }
}

/// Cluster mode: ids of events one delivery caused (kind [`CAUSED`]).
#[derive(Serialize, Deserialize)]
pub(super) struct CausedRecord {
    pub ids: Vec<String>,
}

impl CausedRecord {
    pub(super) fn new(ids: &[String]) -> CausedRecord {
        CausedRecord {
            ids: ids
                .iter()
                .take(MAX_ENTRIES)
                .map(|id| cut(id, MAX_TEXT_BYTES))
                .collect(),
        }
    }
}

/// A record of the trace of event `sequence` (its sequence in the events
/// stream), as stored: `{"seq": sequence, "record": record}` (not
/// flattened: a raw JSON value inside cannot be).
pub(super) fn tagged<T: Serialize>(sequence: u64, record: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Tagged<'a, T> {
        seq: u64,
        record: &'a T,
    }
    let tagged = Tagged {
        seq: sequence,
        record,
    };
    serde_json::to_vec(&tagged).expect("JSON")
}

/// A stored record's `seq` and the record.
#[derive(Deserialize)]
struct Tagged<T> {
    seq: u64,
    record: T,
}

fn untag<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<(u64, T)> {
    let tagged: Tagged<T> = serde_json::from_slice(payload).ok()?;
    Some((tagged.seq, tagged.record))
}

/// Traces one read shows at most (the newest), of as many sources' events
/// with the id asked for.
pub const MAX_TRACES_READ: usize = 16;

/// The traces of events `id` of `broker` in cluster mode (only `source`'s
/// when given), newest first, at most [`MAX_TRACES_READ`]: the newest
/// `matched` record of each event with that id, then every record of the
/// newest ones.
pub(super) async fn read_clustered(
    cluster: &sluice_store::cluster::Cluster,
    broker: &str,
    id: &str,
    source: Option<&str>,
) -> Result<Vec<Trace>, sluice_store::StoreError> {
    let group = sluice_store::cluster::trace_group(broker, id);
    let latest = cluster.latest_traces(&group).await?;
    let (id_cut, source_cut) = (
        cut(id, MAX_TEXT_BYTES),
        source.map(|s| cut(s, MAX_TEXT_BYTES)),
    );
    let mut keys: Vec<(u64, String)> = (latest.into_iter())
        .filter_map(|record| {
            let (_, matched) = untag::<MatchedRecord>(&record.payload)?;
            let fits = matched.broker == broker
                && matched.id == id_cut
                && source_cut.as_ref().is_none_or(|s| *s == matched.source);
            fits.then(|| (matched.accepted_ms, format!("{group}.{}", record.key)))
        })
        .collect();
    keys.sort_by(|a, b| b.cmp(a));
    keys.truncate(MAX_TRACES_READ);
    let reads = keys.iter().map(|(_, key)| cluster.trace_records(key));
    let mut records = Vec::new();
    for read in futures::future::join_all(reads).await {
        records.extend(read?);
    }
    Ok(assemble(records, broker, id, source))
}

/// Record kinds in the traces stream (subject tokens).
pub(super) const MATCHED: &str = "matched";
pub(super) const ATTEMPT: &str = "attempt";
pub(super) const DEAD: &str = "dead";
pub(super) const CAUSED: &str = "caused";
pub(super) const REPEAT: &str = "repeat";

/// The traces of events `id` of `broker` (only `source`'s when given),
/// newest first, from the records read from the traces stream. An event
/// with no [`MATCHED`] record (not fanned out yet) has none.
pub(super) fn assemble(
    records: Vec<sluice_store::cluster::TraceRecord>,
    broker: &str,
    id: &str,
    source: Option<&str>,
) -> Vec<Trace> {
    #[derive(Default)]
    struct Parts {
        matched: Option<(u64, MatchedRecord)>,
        /// Records of any event with this key, by its sequence.
        of: Vec<(u64, Part)>,
    }
    enum Part {
        Attempt(TraceAttempt),
        Dead(TraceDeadLetter),
        Caused(Vec<String>),
        Repeat,
    }
    #[derive(Default)]
    struct Kept {
        attempts: Vec<TraceAttempt>,
        dead_letters: Vec<TraceDeadLetter>,
        caused: Vec<String>,
        caused_not_kept: u32,
        repeats: u32,
    }
    let (id, source) = (
        cut(id, MAX_TEXT_BYTES),
        source.map(|s| cut(s, MAX_TEXT_BYTES)),
    );
    let mut parts: HashMap<String, Parts> = HashMap::new();
    for record in records {
        let part = parts.entry(record.key).or_default();
        let payload = &record.payload;
        let of = match record.kind.as_str() {
            // A fan-out done again (its node died before the ack), or the
            // same id posted again: the later one.
            MATCHED => {
                // The newest event's (a redone fan-out of an older one
                // can come later in the stream).
                if let Some(matched) = untag::<MatchedRecord>(payload)
                    && part
                        .matched
                        .as_ref()
                        .is_none_or(|(seq, _)| *seq <= matched.0)
                {
                    part.matched = Some(matched);
                }
                continue;
            }
            ATTEMPT => untag::<StoredAttempt>(payload)
                .map(|(seq, a)| (seq, Part::Attempt(TraceAttempt::from(a).bounded()))),
            DEAD => untag::<TraceDeadLetter>(payload).map(|(seq, d)| (seq, Part::Dead(d))),
            CAUSED => untag::<CausedRecord>(payload).map(|(seq, c)| (seq, Part::Caused(c.ids))),
            REPEAT => untag::<serde_json::Value>(payload).map(|(seq, _)| (seq, Part::Repeat)),
            _ => None,
        };
        part.of.extend(of);
    }
    let mut found: Vec<Trace> = (parts.into_values())
        .filter_map(|part| {
            let (seq, matched) = part.matched?;
            if matched.broker != broker || matched.id != id {
                return None;
            }
            if source.as_ref().is_some_and(|s| *s != matched.source) {
                return None;
            }
            // Only the records of this event: an earlier one with the
            // same key (posted again) has its own sequence.
            let mut kept = Kept::default();
            for (_, record) in part.of.into_iter().filter(|(s, _)| *s == seq) {
                match record {
                    Part::Attempt(attempt) => kept.attempts.push(attempt),
                    Part::Dead(letter) => kept.dead_letters.push(letter),
                    Part::Caused(ids) => {
                        for id in ids {
                            if kept.caused.len() < MAX_ENTRIES {
                                kept.caused.push(id);
                            } else {
                                kept.caused_not_kept += 1;
                            }
                        }
                    }
                    Part::Repeat => kept.repeats += 1,
                }
            }
            let mut trace = Trace::new(
                broker,
                broker,
                (&matched.id, &matched.source, &matched.ty),
                matched.matched,
                matched.event.map(|raw| Arc::from(raw.get())),
                0,
            );
            trace.accepted_ms = matched.accepted_ms;
            trace.matched_not_kept = matched.matched_not_kept;
            trace.attempts = kept.attempts;
            trace.dead_letters = kept.dead_letters;
            trace.caused = kept.caused;
            trace.caused_not_kept = kept.caused_not_kept;
            trace.duplicates = kept.repeats;
            Some(trace)
        })
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t.accepted_ms));
    found
}

/// The traces of one router.
pub(super) struct Traces {
    retention_ms: u64,
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<DedupeKey, Trace>,
    /// The key of each traced event's delivery group.
    groups: HashMap<u64, DedupeKey>,
    /// (key, group, accepted, seq) by acceptance, for expiry.
    order: VecDeque<(DedupeKey, u64, u64, u64)>,
    next_seq: u64,
}

fn cut(text: &str, max: usize) -> String {
    super::truncate(text, max).to_string()
}

impl Traces {
    /// Traces kept for `retention` (zero: none), at most `max` of them.
    pub(super) fn new(retention: Duration, max: usize) -> Traces {
        Traces {
            retention_ms: retention.as_millis() as u64,
            max,
            inner: Mutex::default(),
        }
    }

    /// Whether traces are kept at all.
    pub(super) fn enabled(&self) -> bool {
        self.retention_ms > 0 && self.max > 0
    }

    /// Starts the traces of accepted events.
    pub(super) fn accepted(&self, traces: Vec<Trace>, now_ms: u64) {
        let mut inner = self.inner.lock().unwrap();
        for mut trace in traces {
            inner.expire(now_ms, self.retention_ms, self.max.saturating_sub(1));
            let (key, group, seq) = (trace.key, trace.group, inner.next_seq);
            inner.next_seq += 1;
            trace.accepted_ms = now_ms;
            trace.seq = seq;
            if let Some(old) = inner.traces.insert(key, trace) {
                // The same event again (de-duplication off): the newer one.
                inner.groups.remove(&old.group);
            }
            if group != 0 {
                inner.groups.insert(group, key);
            }
            inner.order.push_back((key, group, now_ms, seq));
        }
    }

    /// Counts repeats of traced events, by the key their de-duplication
    /// used.
    pub(super) fn duplicates(&self, keys: &[DedupeKey]) {
        let mut inner = self.inner.lock().unwrap();
        for key in keys {
            if let Some(trace) = inner.traces.get_mut(key) {
                trace.duplicates += 1;
            }
        }
    }

    /// Adds an attempt to the trace of delivery group `group`.
    pub(super) fn attempt(&self, group: u64, attempt: TraceAttempt) {
        if group == 0 {
            return;
        }
        let attempt = attempt.bounded();
        self.with_group(group, |trace| {
            if trace.attempts.len() < MAX_ENTRIES {
                trace.attempts.push(attempt);
            } else {
                trace.attempts_not_kept += 1;
            }
        });
    }

    /// Adds a dead letter to the trace of delivery group `group`.
    pub(super) fn dead_lettered(&self, group: u64, trigger: &str, id: u64, reason: &str) {
        if group == 0 {
            return;
        }
        self.with_group(group, |trace| {
            if trace.dead_letters.len() < MAX_ENTRIES {
                trace
                    .dead_letters
                    .push(TraceDeadLetter::new(trigger, id, reason));
            }
        });
    }

    /// Adds the ids of events caused by event (`broker`, `source`, `id`)
    /// (a client's, or else a schedule's).
    pub(super) fn caused(&self, broker: &str, source: &str, id: &str, ids: &[String]) {
        let keys = [
            sluice_store::dedupe_key(broker, source, id),
            sluice_store::dedupe_key(&super::schedule_key_space(broker), source, id),
        ];
        let mut inner = self.inner.lock().unwrap();
        let Some(key) = keys.into_iter().find(|k| inner.traces.contains_key(k)) else {
            return;
        };
        let trace = inner.traces.get_mut(&key).expect("found");
        for id in ids {
            if trace.caused.len() < MAX_ENTRIES {
                trace.caused.push(cut(id, MAX_TEXT_BYTES));
            } else {
                trace.caused_not_kept += 1;
            }
        }
    }

    /// The traces of events `id` in `broker` (one per source, or the one
    /// of `source`), newest first.
    pub(super) fn find(
        &self,
        broker: &str,
        id: &str,
        source: Option<&str>,
        now_ms: u64,
    ) -> Vec<Trace> {
        let mut inner = self.inner.lock().unwrap();
        inner.expire(now_ms, self.retention_ms, self.max);
        let id = cut(id, MAX_TEXT_BYTES);
        let source = source.map(|s| cut(s, MAX_TEXT_BYTES));
        let mut found: Vec<Trace> = (inner.traces.values())
            .filter(|t| t.id == id && t.broker == broker)
            .filter(|t| source.as_ref().is_none_or(|s| *s == t.source))
            .cloned()
            .collect();
        found.sort_by_key(|t| std::cmp::Reverse(t.accepted_ms));
        found
    }

    fn with_group(&self, group: u64, change: impl FnOnce(&mut Trace)) {
        let mut inner = self.inner.lock().unwrap();
        let Some(key) = inner.groups.get(&group).copied() else {
            return;
        };
        if let Some(trace) = inner.traces.get_mut(&key) {
            change(trace);
        }
    }
}

impl Inner {
    /// Drops traces older than `retention_ms`, and the oldest past `keep`.
    fn expire(&mut self, now_ms: u64, retention_ms: u64, keep: usize) {
        while let Some(&(key, group, accepted, seq)) = self.order.front() {
            if self.order.len() <= keep && accepted + retention_ms > now_ms {
                break;
            }
            self.order.pop_front();
            self.groups.remove(&group);
            // A newer trace of the same event stays (its own entry in the
            // order comes later).
            if self.traces.get(&key).is_some_and(|t| t.seq == seq) {
                self.traces.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(id: &str, source: &str, group: u64) -> Trace {
        Trace::new("b", "b", (id, source, "t"), vec!["one".into()], None, group)
    }

    fn attempt(n: u32) -> TraceAttempt {
        TraceAttempt {
            trigger: "one".into(),
            attempt: n,
            start_ms: 0,
            duration_ms: 1.0,
            outcome: "retrying",
            status: Some(500),
            error: Some("x".repeat(10_000)),
            node: None,
        }
    }

    #[test]
    fn cluster_records_assemble_into_one_trace_per_source() {
        use sluice_store::cluster::TraceRecord;
        let record = |key: &str, kind: &str, payload: Vec<u8>| TraceRecord {
            key: key.into(),
            kind: kind.into(),
            payload: payload.into(),
        };
        let matched = |source: &str, at: u64, seq: u64| {
            let json = br#"{"id":"x","data":"a \"quoted\" line"}"#;
            let m = MatchedRecord::new("b", ("x", source, "t"), at, vec!["one".into()], json);
            tagged(seq, &m)
        };
        let records = vec![
            // An attempt can be stored before its fan-out's record is read.
            record("k1", ATTEMPT, tagged(7, &attempt(1).bounded())),
            record("k1", MATCHED, matched("/one", 5, 7)),
            record("k1", MATCHED, matched("/one", 6, 7)),
            record(
                "k1",
                DEAD,
                tagged(7, &TraceDeadLetter::new("one", 9, "gave up")),
            ),
            record("k1", CAUSED, tagged(7, &CausedRecord::new(&["r1".into()]))),
            record("k1", REPEAT, tagged(7, &serde_json::json!({}))),
            record("k1", "unknown", b"{}".to_vec()),
            record("k1", ATTEMPT, b"not json".to_vec()),
            record("k2", MATCHED, matched("/two", 7, 8)),
            // Not fanned out yet: no trace.
            record("k3", ATTEMPT, tagged(9, &attempt(1).bounded())),
            // The same id and source posted again (de-duplication off):
            // only the newer event's records.
            record("k4", MATCHED, matched("/four", 1, 10)),
            record("k4", ATTEMPT, tagged(10, &attempt(1).bounded())),
            record("k4", MATCHED, matched("/four", 2, 11)),
            record("k4", ATTEMPT, tagged(11, &attempt(1).bounded())),
            record("k4", ATTEMPT, tagged(11, &attempt(2).bounded())),
        ];
        let found = assemble(records.clone(), "b", "x", None);
        assert_eq!(
            found.iter().map(|t| t.source.as_str()).collect::<Vec<_>>(),
            ["/two", "/one", "/four"],
            "newest first"
        );
        let one = &found[1];
        assert_eq!(one.accepted_ms, 6, "the later fan-out");
        assert_eq!(one.attempts.len(), 1);
        assert!(one.attempts[0].error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
        assert_eq!(one.dead_letters[0].id, "9");
        assert_eq!(one.caused, ["r1"]);
        assert_eq!(one.duplicates, 1);
        let event = one.event.as_deref().expect("kept");
        assert_eq!(
            event, r#"{"id":"x","data":"a \"quoted\" line"}"#,
            "the event as posted"
        );
        let four = &found[2];
        assert_eq!(
            four.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            [1, 2],
            "the newer event's attempts only"
        );
        assert_eq!(assemble(records.clone(), "b", "x", Some("/one")).len(), 1);
        assert!(assemble(records.clone(), "other", "x", None).is_empty());
        assert!(assemble(records, "b", "y", None).is_empty());
        // The event is stored as JSON, not as an escaped string.
        let stored = matched("/one", 5, 7);
        assert!(!String::from_utf8(stored).unwrap().contains(r#"\\\"quoted"#));
    }

    #[test]
    fn traces_are_bounded_in_count_age_and_size() {
        let traces = Traces::new(Duration::from_secs(60), 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            traces.accepted(vec![trace(id, "/s", 10 + i as u64)], 1_000 + i as u64);
        }
        assert!(
            traces.find("b", "a", None, 1_010).is_empty(),
            "the oldest past the count"
        );
        assert_eq!(
            traces.inner.lock().unwrap().traces.len(),
            3,
            "gone from the map too"
        );
        assert_eq!(traces.find("b", "d", None, 1_010).len(), 1);
        for n in 0..100 {
            traces.attempt(13, attempt(n));
        }
        traces.caused(
            "b",
            "/s",
            "d",
            &(0..100)
                .map(|i| format!("{i}{}", "y".repeat(1000)))
                .collect::<Vec<_>>(),
        );
        traces.dead_lettered(13, "one", 7, "gave up");
        traces.duplicates(&[sluice_store::dedupe_key("b", "/s", "d")]);
        let d = &traces.find("b", "d", Some("/s"), 1_010)[0];
        assert_eq!(
            (d.attempts.len(), d.attempts_not_kept),
            (MAX_ENTRIES, 100 - MAX_ENTRIES as u32)
        );
        assert!(d.attempts[0].error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
        assert_eq!(
            (d.caused.len(), d.caused_not_kept),
            (MAX_ENTRIES, 100 - MAX_ENTRIES as u32)
        );
        assert!(d.caused.iter().all(|c| c.len() <= MAX_TEXT_BYTES));
        assert_eq!(d.dead_letters[0].id, "7");
        assert_eq!(d.duplicates, 1);
        assert_eq!(d.accepted_ms, 1_003, "the time it was recorded");
        // An attempt of an event not traced (a reply's) changes nothing.
        traces.attempt(99, attempt(1));
        // Past the retention, gone, from the map too.
        assert!(traces.find("b", "d", None, 1_003 + 60_000).is_empty());
        let inner = traces.inner.lock().unwrap();
        assert!(inner.groups.is_empty() && inner.traces.is_empty() && inner.order.is_empty());
    }

    #[test]
    fn long_texts_and_many_matches_are_cut() {
        let long = "z".repeat(100_000);
        let matched: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let t = Trace::new(
            "b",
            "b",
            (&long, &long, &long),
            matched,
            Some(long.clone().into()),
            1,
        );
        assert!(t.id.len() <= MAX_TEXT_BYTES && t.source.len() <= MAX_TEXT_BYTES);
        assert_eq!(
            (t.matched.len(), t.matched_not_kept),
            (MAX_ENTRIES, 1000 - MAX_ENTRIES as u32)
        );
        assert!(t.event.is_none(), "too large to keep");
        let traces = Traces::new(Duration::from_secs(60), 10);
        traces.accepted(vec![t], 1);
        assert_eq!(
            traces.find("b", &long, Some(&long), 2).len(),
            1,
            "found by the full id"
        );
    }

    #[test]
    fn one_id_from_two_sources_is_two_traces_and_a_repeat_replaces_one() {
        let traces = Traces::new(Duration::from_secs(60), 10);
        traces.accepted(vec![trace("x", "/one", 1)], 1);
        traces.accepted(vec![trace("x", "/two", 2)], 2);
        let both = traces.find("b", "x", None, 3);
        assert_eq!(
            both.iter().map(|t| t.source.as_str()).collect::<Vec<_>>(),
            ["/two", "/one"]
        );
        assert_eq!(traces.find("b", "x", Some("/one"), 3).len(), 1);
        assert!(traces.find("other", "x", None, 3).is_empty());
        // De-duplication off: the same event again is traced anew; the
        // older entry's expiry leaves the newer trace.
        traces.accepted(vec![trace("x", "/one", 3)], 3);
        traces.attempt(1, attempt(1));
        traces.attempt(3, attempt(1));
        let again = &traces.find("b", "x", Some("/one"), 4)[0];
        assert_eq!(again.attempts.len(), 1, "only the newer group's");
        let short = Traces::new(Duration::from_millis(10), 10);
        short.accepted(vec![trace("x", "/one", 1)], 0);
        short.accepted(vec![trace("x", "/one", 2)], 5);
        assert_eq!(
            short.find("b", "x", None, 12).len(),
            1,
            "the newer one stays"
        );
        assert!(!Traces::new(Duration::ZERO, 10).enabled());
    }
}
