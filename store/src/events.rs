//! Durable router state: triggers, pending deliveries and dead letters.
//!
//! The router owns the meaning of these records; the store keeps them as
//! opaque JSON (a trigger definition, an event in structured JSON) plus the
//! bookkeeping fields it needs to order and find them.
//!
//! - `triggers`: name → trigger JSON.
//! - Pending deliveries, in the delivery journal (not sled): an event that
//!   got a 202 lives there, with one [`DeliveryRecord`] per matching trigger,
//!   until delivered or dead-lettered. [`Store::insert_deliveries`] returns
//!   once they are synced; concurrent callers share one sync.
//! - `dead_letters`: id → [`DeadLetterRecord`], in sled. A dead letter takes
//!   the id of the delivery that failed, so a delivery run again after a
//!   crash overwrites its own dead letter instead of adding a second.
//!
//! sled writes on acknowledged paths go through [`Store::flush_grouped`]:
//! many concurrent writers share one disk flush, and each returns only once
//! a flush that began after its write has finished.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{Result, Store, StoreError};

/// One pending delivery of one event to one trigger's subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Unique, increasing.
    pub id: u64,
    /// The broker the event was posted to (shared by many deliveries).
    pub broker: Arc<str>,
    /// The trigger (shared by many deliveries).
    pub trigger: Arc<str>,
    /// The event, in structured JSON. Empty when the holder let go of it to
    /// keep memory bounded: [`Store::delivery_event`] reads it back.
    pub event: Arc<str>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix time in ms before which the next attempt must not start.
    pub not_before_ms: u64,
    /// When set, this delivery carries dead letter `id` to the trigger's
    /// dead-letter sink instead of the event to its subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<u64>,
    /// The deliveries of one accepted event share a group (the id of the
    /// first of them), so the event's outcome is known when all have ended.
    /// 0 for deliveries outside any event's count (replays, dead-letter sinks).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An event whose delivery failed for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Unique, increasing.
    pub id: u64,
    /// The broker.
    pub broker: String,
    /// The trigger whose delivery failed.
    pub trigger: String,
    /// The event in structured JSON, with the `knativeerror*` extensions.
    pub event: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub reason: String,
    /// RFC 3339 time it was dead-lettered.
    pub time: String,
}

/// How often sled persists its id counter (see [`Store::next_id`]).
pub(crate) const ID_PERSIST_INTERVAL: u64 = 1_000_000;

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

/// Requests for the group flusher: each is answered after one flush that
/// began after the request was sent.
pub(crate) type FlushRequest = oneshot::Sender<std::result::Result<(), String>>;

pub(crate) fn spawn_flusher(db: sled::Db) -> mpsc::UnboundedSender<FlushRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<FlushRequest>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut waiters = vec![first];
            while let Ok(more) = rx.try_recv() {
                waiters.push(more);
            }
            let result = db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    });
    tx
}

impl Store {
    /// Waits until every write made before this call is on disk, sharing
    /// the flush with concurrent callers.
    pub async fn flush_grouped(&self) -> Result<()> {
        let flusher = self.flusher.get_or_init(|| spawn_flusher(self.db.clone()));
        let (tx, rx) = oneshot::channel();
        flusher
            .send(tx)
            .map_err(|_| StoreError::Conflict("the flusher stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err({
                self.mark_failed();
                StoreError::Io {
                    context: "flushing the store".into(),
                    source: std::io::Error::other(message),
                }
            }),
            Err(_) => Err(StoreError::Conflict("the flusher stopped".into())),
        }
    }

    /// A fresh id, unique and increasing across restarts.
    ///
    /// sled persists its id counter once every [`ID_PERSIST_INTERVAL`] ids
    /// and starts two intervals past the persisted value after a restart.
    /// That persisted write is not reliably on disk when `generate_id`
    /// returns: the crash harness saw a run after a `kill -9` hand out the
    /// ids of the run before it (which would let a new delivery replace a
    /// pending one). So the id that crossed into a new interval waits for a
    /// sled flush before anyone gets it: once per million ids (without
    /// blocking the caller's thread), and once at open.
    pub async fn next_id(&self) -> Result<u64> {
        let id = self.db.generate_id()?;
        if id % ID_PERSIST_INTERVAL == 0 {
            let flushed = self.db.flush_async().await;
            self.checked(flushed)?;
        }
        Ok(id)
    }

    /// [`Store::next_id`] for a caller that may block (opening the store).
    pub(crate) fn next_id_blocking(&self) -> Result<u64> {
        let id = self.db.generate_id()?;
        if id % ID_PERSIST_INTERVAL == 0 {
            self.checked(self.db.flush())?;
        }
        Ok(id)
    }

    /// Stores trigger `name` (creating or replacing), durably. Returns true
    /// if it replaced one.
    pub async fn put_trigger(&self, name: &str, definition: &[u8]) -> Result<bool> {
        let old = self.triggers.insert(name.as_bytes(), definition)?;
        self.flush().await?;
        Ok(old.is_some())
    }

    /// The definition of trigger `name`.
    pub fn trigger(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.triggers.get(name.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Every trigger definition, ordered by name.
    pub fn triggers(&self) -> Result<Vec<Vec<u8>>> {
        self.triggers
            .iter()
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }

    /// Number of triggers.
    pub fn trigger_count(&self) -> usize {
        self.triggers.len()
    }

    /// Deletes trigger `name`, durably. Returns true if it existed.
    pub async fn delete_trigger(&self, name: &str) -> Result<bool> {
        let old = self.triggers.remove(name.as_bytes())?;
        self.flush().await?;
        Ok(old.is_some())
    }

    /// Stores broker `name` (creating or replacing), durably. Returns true
    /// if it replaced one.
    pub async fn put_broker(&self, name: &str, definition: &[u8]) -> Result<bool> {
        let old = self.brokers.insert(name.as_bytes(), definition)?;
        self.flush().await?;
        Ok(old.is_some())
    }

    /// Every broker definition, ordered by name.
    pub fn brokers(&self) -> Result<Vec<Vec<u8>>> {
        self.brokers
            .iter()
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }

    /// Deletes broker `name`, durably. Returns true if it existed.
    pub async fn delete_broker(&self, name: &str) -> Result<bool> {
        let old = self.brokers.remove(name.as_bytes())?;
        self.flush().await?;
        Ok(old.is_some())
    }

    /// Writes `records` and returns once they are on disk (concurrent
    /// callers share one sync).
    pub async fn insert_deliveries(&self, records: &[DeliveryRecord]) -> Result<()> {
        self.put_deliveries(records)?.await
    }

    /// Writes `records` now and returns what completes once they are on
    /// disk (concurrent callers share one sync). Written means in the
    /// journal: a caller that stops waiting still has them there.
    pub fn put_deliveries(
        &self,
        records: &[DeliveryRecord],
    ) -> Result<impl Future<Output = Result<()>> + use<>> {
        self.put_deliveries_keyed(records, None)
    }

    /// [`Store::put_deliveries`], with the new de-duplication keys of
    /// `claim` (see [`Store::dedupe`]) in the same write: durable with
    /// the deliveries, also when there are none. Commit the claim once
    /// this completes.
    pub fn put_deliveries_keyed(
        &self,
        records: &[DeliveryRecord],
        claim: Option<&crate::Claim>,
    ) -> Result<impl Future<Output = Result<()>> + use<>> {
        let (keys, at_ms) = claim.map_or((&[][..], 0), |c| (c.keys(), c.at_ms()));
        let Some(synced) = self.journal.put_keyed(records, keys, at_ms, true)? else {
            unreachable!("a durable put answers");
        };
        Ok(async move {
            match synced.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(StoreError::Io {
                    context: "syncing the delivery journal".into(),
                    source: std::io::Error::other(message),
                }),
                Err(_) => Err(StoreError::Conflict("the journal writer stopped".into())),
            }
        })
    }

    /// The de-duplication window of accepted events, when it is on
    /// ([`crate::OpenOptions::dedupe_window`]).
    pub fn dedupe(&self) -> Option<&Arc<crate::Window>> {
        self.journal.window()
    }

    /// Records a changed attempt count and schedule (written soon, not
    /// synced on its own: a crash before that runs the attempt again).
    pub fn update_delivery(&self, record: &DeliveryRecord) -> Result<()> {
        self.journal.put(std::slice::from_ref(record), false)?;
        Ok(())
    }

    /// Removes a delivery that is done.
    pub fn complete_delivery(&self, id: u64) -> Result<()> {
        self.journal.done(&[id])
    }

    /// The event (structured JSON) of pending delivery `id`, read back from
    /// the journal; `None` once it has ended.
    pub fn delivery_event(&self, id: u64) -> Result<Option<Arc<str>>> {
        self.journal.event(id)
    }

    /// Every pending delivery, oldest first.
    pub fn pending_deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        self.journal.pending()
    }

    /// The deliveries pending when the store opened that still are, oldest
    /// first (what a starting dispatcher resumes). The first call reuses
    /// what opening the store read; later calls read the journal again.
    pub fn recovered_deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        self.journal.recovered()
    }

    /// Number of pending deliveries.
    pub fn delivery_count(&self) -> usize {
        self.journal.len()
    }

    /// Moves deliveries left in sled by an earlier version into the journal.
    pub(crate) fn migrate_deliveries(&self) -> Result<()> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"deliveries")
        {
            return Ok(());
        }
        let tree = self.db.open_tree("deliveries")?;
        let records: Vec<DeliveryRecord> = tree
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect::<Result<_>>()?;
        if !records.is_empty() {
            tracing::info!(
                deliveries = records.len(),
                "moving pending deliveries from sled into the delivery journal"
            );
            let fresh: Vec<DeliveryRecord> = records
                .into_iter()
                .filter(|r| !self.journal.contains(r.id))
                .collect();
            self.journal.put(&fresh, false)?;
            self.journal.sync_blocking()?;
        }
        self.db.drop_tree("deliveries")?;
        self.db.flush()?;
        Ok(())
    }

    /// Moves delivery `delivery` to the dead letters as `letter`, and queues
    /// `sink` (the dead letter's delivery to a dead-letter sink). The dead
    /// letter is on disk before the delivery ends, so a crash between the
    /// two runs the delivery again (and, `letter.id` being the delivery's
    /// id, overwrites the same dead letter) instead of losing it.
    pub async fn dead_letter(
        &self,
        delivery: u64,
        letter: &DeadLetterRecord,
        sink: Option<&DeliveryRecord>,
    ) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        if self.injected_dead_letter_failure() {
            return Err(StoreError::Io {
                context: "writing a dead letter".into(),
                source: std::io::Error::other("injected failure"),
            });
        }
        let inserted = self.dead_letters.insert(key(letter.id), encode(letter));
        self.checked(inserted)?;
        self.flush_grouped().await?;
        if let Some(sink) = sink {
            self.insert_deliveries(std::slice::from_ref(sink)).await?;
        }
        self.journal.done(&[delivery])
    }

    /// Number of dead letters.
    pub fn dead_letter_count(&self) -> usize {
        self.dead_letters.len()
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRecord>> {
        self.dead_letters
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Dead letter `id`.
    pub fn dead_letter_record(&self, id: u64) -> Result<Option<DeadLetterRecord>> {
        self.dead_letters
            .get(key(id))?
            .map(|v| Ok(serde_json::from_slice(&v)?))
            .transpose()
    }

    /// Replaces dead letter `id` with `delivery` (a redelivery), durably.
    /// `false` if there is no such dead letter. The redelivery is on disk
    /// before the dead letter goes, so a crash between leaves both, never
    /// neither.
    pub async fn replay_dead_letter(&self, id: u64, delivery: &DeliveryRecord) -> Result<bool> {
        let Some(old) = self.dead_letters.get(key(id))? else {
            return Ok(false);
        };
        self.insert_deliveries(std::slice::from_ref(delivery))
            .await?;
        let swapped = self
            .dead_letters
            .compare_and_swap(key(id), Some(old), None::<&[u8]>)?;
        if swapped.is_err() {
            // Replayed or deleted meanwhile: take the redelivery back.
            self.journal.done(&[delivery.id])?;
            return Ok(false);
        }
        self.flush().await?;
        Ok(true)
    }

    /// Deletes dead letter `id`, durably. `false` if there was none.
    pub async fn delete_dead_letter(&self, id: u64) -> Result<bool> {
        let old = self.dead_letters.remove(key(id))?;
        self.flush().await?;
        Ok(old.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(dir: &std::path::Path) -> Store {
        crate::open_when_free(dir).unwrap()
    }

    fn delivery(store: &Store, trigger: &str) -> DeliveryRecord {
        DeliveryRecord {
            id: store.next_id_blocking().unwrap(),
            broker: "default".into(),
            trigger: trigger.into(),
            event: r#"{"id":"1"}"#.into(),
            attempts: 0,
            not_before_ms: 0,
            dead_letter: None,
            group: 0,
        }
    }

    #[tokio::test]
    async fn deliveries_survive_reopen_until_completed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let store = Store::open(dir.path()).unwrap();
            a = delivery(&store, "t1");
            b = delivery(&store, "t2");
            store
                .insert_deliveries(&[a.clone(), b.clone()])
                .await
                .unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(
            store.pending_deliveries().unwrap(),
            vec![a.clone(), b.clone()]
        );
        store.complete_delivery(a.id).unwrap();
        assert_eq!(store.pending_deliveries().unwrap(), vec![b]);
        assert!(
            store.next_id_blocking().unwrap() > a.id,
            "ids increase across restarts"
        );
    }

    #[test]
    fn deliveries_an_earlier_version_kept_in_sled_move_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let record;
        {
            let store = Store::open(dir.path()).unwrap();
            record = delivery(&store, "t");
            let tree = store.db.open_tree("deliveries").unwrap();
            tree.insert(key(record.id), encode(&record)).unwrap();
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.pending_deliveries().unwrap(), vec![record.clone()]);
        assert!(
            !store
                .db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"deliveries")
        );
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.pending_deliveries().unwrap(), vec![record]);
    }

    #[tokio::test]
    async fn concurrent_grouped_flushes_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let record = delivery(&store, &format!("t{i}"));
                store.insert_deliveries(&[record]).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.delivery_count(), 50);
    }

    #[tokio::test]
    async fn dead_letter_then_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = delivery(&store, "t");
        store
            .insert_deliveries(std::slice::from_ref(&record))
            .await
            .unwrap();
        let letter = DeadLetterRecord {
            id: record.id,
            broker: "default".into(),
            trigger: "t".into(),
            event: record.event.to_string(),
            attempts: 3,
            reason: "boom".into(),
            time: crate::now_rfc3339(),
        };
        store.dead_letter(record.id, &letter, None).await.unwrap();
        assert_eq!(store.delivery_count(), 0);
        assert_eq!(store.dead_letters().unwrap(), vec![letter.clone()]);
        let again = delivery(&store, "t");
        assert!(store.replay_dead_letter(letter.id, &again).await.unwrap());
        assert!(!store.replay_dead_letter(letter.id, &again).await.unwrap());
        assert_eq!(store.pending_deliveries().unwrap(), vec![again]);
        assert!(store.dead_letters().unwrap().is_empty());
    }

    #[tokio::test]
    async fn triggers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.put_trigger("a", b"{}").await.unwrap());
        assert!(store.put_trigger("a", b"{\"x\":1}").await.unwrap());
        assert_eq!(store.trigger("a").unwrap().unwrap(), b"{\"x\":1}");
        assert_eq!(store.triggers().unwrap().len(), 1);
        assert!(store.delete_trigger("a").await.unwrap());
        assert!(!store.delete_trigger("a").await.unwrap());
    }
}
