//! Durable router state: triggers, pending deliveries and dead letters.
//!
//! The router owns the meaning of these records; the store keeps them as
//! opaque JSON (a trigger definition, an event in structured JSON) plus the
//! bookkeeping fields it needs to order and find them.
//!
//! - `triggers`: name → trigger JSON.
//! - `deliveries`: id (big-endian u64) → [`DeliveryRecord`]. An event that got
//!   a 202 lives here, one record per matching trigger, until delivered or
//!   dead-lettered.
//! - `dead_letters`: id → [`DeadLetterRecord`].
//!
//! Ingress writes go through [`Store::flush_grouped`]: many concurrent
//! writers share one disk flush, and each returns only once a flush that
//! began after its write has finished.

use serde::{Deserialize, Serialize};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::{Result, Store, StoreError};

/// One pending delivery of one event to one trigger's subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Unique, increasing.
    pub id: u64,
    /// The broker the event was posted to.
    pub broker: String,
    /// The trigger.
    pub trigger: String,
    /// The event, in structured JSON.
    pub event: String,
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
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
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

    /// Writes `records` atomically (not yet flushed: call
    /// [`Store::flush_grouped`] before acknowledging).
    pub fn insert_deliveries(&self, records: &[DeliveryRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(&key(record.id), encode(record));
        }
        self.checked(self.deliveries.apply_batch(batch))
    }

    /// Records a changed attempt count and schedule.
    pub fn update_delivery(&self, record: &DeliveryRecord) -> Result<()> {
        self.deliveries.insert(key(record.id), encode(record))?;
        Ok(())
    }

    /// Removes a delivery that is done.
    pub fn complete_delivery(&self, id: u64) -> Result<()> {
        self.deliveries.remove(key(id))?;
        Ok(())
    }

    /// Every pending delivery, oldest first.
    pub fn pending_deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        self.deliveries
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Number of pending deliveries.
    pub fn delivery_count(&self) -> usize {
        self.deliveries.len()
    }

    /// Moves delivery `delivery` to the dead letters as `letter`, and queues
    /// `sink` (the dead letter's delivery to a dead-letter sink), atomically.
    pub fn dead_letter(
        &self,
        delivery: u64,
        letter: &DeadLetterRecord,
        sink: Option<&DeliveryRecord>,
    ) -> Result<()> {
        (&self.deliveries, &self.dead_letters).transaction(|(deliveries, dead_letters)| {
            deliveries.remove(&key(delivery))?;
            dead_letters.insert(&key(letter.id), encode(letter))?;
            if let Some(sink) = sink {
                deliveries.insert(&key(sink.id), encode(sink))?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
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
    /// `false` if there is no such dead letter.
    pub async fn replay_dead_letter(&self, id: u64, delivery: &DeliveryRecord) -> Result<bool> {
        let replayed =
            (&self.deliveries, &self.dead_letters).transaction(|(deliveries, dead_letters)| {
                if dead_letters.remove(&key(id))?.is_none() {
                    return Ok(false);
                }
                deliveries.insert(&key(delivery.id), encode(delivery))?;
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(true)
            })?;
        self.flush().await?;
        Ok(replayed)
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

    fn delivery(store: &Store, trigger: &str) -> DeliveryRecord {
        DeliveryRecord {
            id: store.next_id().unwrap(),
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
            store.insert_deliveries(&[a.clone(), b.clone()]).unwrap();
            store.flush_grouped().await.unwrap();
        }
        // The flusher task releases its handle on the database once it sees
        // the store dropped; wait for that instead of sleeping blindly.
        let mut reopened = Store::open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            reopened = Store::open(dir.path());
        }
        let store = reopened.unwrap();
        assert_eq!(
            store.pending_deliveries().unwrap(),
            vec![a.clone(), b.clone()]
        );
        store.complete_delivery(a.id).unwrap();
        assert_eq!(store.pending_deliveries().unwrap(), vec![b]);
        assert!(
            store.next_id().unwrap() > a.id,
            "ids increase across restarts"
        );
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
                store.insert_deliveries(&[record]).unwrap();
                store.flush_grouped().await.unwrap();
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
            .unwrap();
        let letter = DeadLetterRecord {
            id: store.next_id().unwrap(),
            broker: "default".into(),
            trigger: "t".into(),
            event: record.event.clone(),
            attempts: 3,
            reason: "boom".into(),
            time: crate::now_rfc3339(),
        };
        store.dead_letter(record.id, &letter, None).unwrap();
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
