//! The catalog: key-value buckets every node reads and watches.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Bucket, connected, is_revision_conflict};
use crate::StoreError;

/// What a write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Anything: the write replaces whatever is there.
    Any,
    /// Nothing: the key must be absent (or deleted).
    Absent,
    /// Exactly this revision: the write loses if another landed since.
    Revision(u64),
}

/// A value and the revision that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Bytes,
    /// The bucket's sequence of the write (a compare-and-set token).
    pub revision: u64,
}

/// One change a [`Watcher`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key that changed.
    pub key: String,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Bytes>,
    /// The revision of the change.
    pub revision: u64,
}

/// One catalog bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Catalog {
    bucket: Bucket,
    kv: kv::Store,
    client: async_nats::Client,
    timeout: Duration,
}

impl Catalog {
    pub(super) fn new(
        bucket: Bucket,
        kv: kv::Store,
        client: async_nats::Client,
        timeout: Duration,
    ) -> Catalog {
        Catalog {
            bucket,
            kv,
            client,
            timeout,
        }
    }

    /// Which bucket this is.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// The current value of `key`, read from the bucket's leader (a replica
    /// could answer with a value older than a write already acknowledged).
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let subject = format!("{}{key}", self.kv.prefix);
        let read = self.kv.stream.get_last_raw_message_by_subject(&subject);
        let message = match tokio::time::timeout(self.timeout, read).await {
            Err(_) => return Err(self.unanswered("read", key)),
            Ok(Ok(message)) => message,
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Ok(Err(e)) => return Err(self.unavailable("read", key, &e)),
        };
        let deleted = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if deleted {
            return Ok(None);
        }
        Ok(Some(Versioned {
            value: message.payload,
            revision: message.sequence,
        }))
    }

    /// Writes `value` at `key` if the key is as `expect` says; returns the
    /// new revision. A lost race is [`StoreError::Changed`].
    pub async fn put(&self, key: &str, value: Bytes, expect: Expect) -> Result<u64, StoreError> {
        connected(&self.client, self.timeout).await?;
        self.try_put(key, value, expect).await
    }

    /// [`Catalog::put`] for a value that says what the key is to hold (a
    /// definition, a record with its own time), where the same bytes are
    /// the same outcome whoever wrote them: a write that timed out or was
    /// refused as a conflict may have landed (its answer lost on a loaded
    /// server; async-nats reads a create back and reports a conflict when
    /// the first try's answer went missing), so if the key then holds
    /// exactly `value`, the write is reported done. Not for a value derived
    /// from what was read (a counter, a lease): two writers of the same
    /// next value would both be told they won.
    pub async fn put_definition(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        connected(&self.client, self.timeout).await?;
        let result = self.try_put(key, value.clone(), expect).await;
        match result {
            Err(error @ (StoreError::Changed(_) | StoreError::Unavailable(_))) => {
                match self.get(key).await {
                    Ok(Some(current)) if current.value == value => Ok(current.revision),
                    _ => Err(error),
                }
            }
            done => done,
        }
    }

    async fn try_put(&self, key: &str, value: Bytes, expect: Expect) -> Result<u64, StoreError> {
        let write = async {
            match expect {
                Expect::Any => self
                    .kv
                    .put(key, value)
                    .await
                    .map_err(|e| self.failed(key, &e)),
                Expect::Absent => self.kv.create(key, value).await.map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        StoreError::Changed(key.to_owned())
                    } else {
                        self.failed(key, &e)
                    }
                }),
                Expect::Revision(revision) => self
                    .kv
                    .update(key, value, revision)
                    .await
                    .map_err(|e| self.failed(key, &e)),
            }
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(self.unanswered("write", key)),
        }
    }

    /// Deletes `key` if it is as `expect` says; returns the revision it
    /// deleted, or `None` when the key was absent.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<Option<u64>, StoreError> {
        self.remove(key, expect, None).await
    }

    /// [`Catalog::delete`] that leaves no marker for good: the key's
    /// values go (a purge) and its marker expires after `ttl` (the bucket's
    /// stream allows message TTLs). For keys nobody watches: a watcher
    /// that was away longer than `ttl` would not learn of the delete.
    pub async fn purge(
        &self,
        key: &str,
        expect: Expect,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.remove(key, expect, Some(ttl)).await
    }

    async fn remove(
        &self,
        key: &str,
        expect: Expect,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StoreError> {
        let Some(current) = self.get(key).await? else {
            return match expect {
                Expect::Revision(_) => Err(StoreError::Changed(key.to_owned())),
                Expect::Any | Expect::Absent => Ok(None),
            };
        };
        match expect {
            Expect::Absent => return Err(StoreError::Changed(key.to_owned())),
            Expect::Revision(r) if r != current.revision => {
                return Err(StoreError::Changed(key.to_owned()));
            }
            Expect::Revision(_) | Expect::Any => {}
        }
        connected(&self.client, self.timeout).await?;
        let removed = async {
            match ttl {
                None => self
                    .kv
                    .delete_expect_revision(key, Some(current.revision))
                    .await
                    .map_err(|e| self.failed(key, &e)),
                Some(ttl) => self
                    .kv
                    .purge_expect_revision_with_ttl(key, current.revision, ttl)
                    .await
                    .map_err(|e| self.failed(key, &e)),
            }
        };
        match tokio::time::timeout(self.timeout, removed).await {
            Ok(Ok(())) => Ok(Some(current.revision)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(self.unanswered("delete", key)),
        }
    }

    /// Every live key with its value, and the bucket's last revision at the
    /// time of reading: watching from the revision after it misses nothing.
    pub async fn snapshot(&self) -> Result<(Vec<(String, Versioned)>, u64), StoreError> {
        let mut stream = self.kv.stream.clone();
        let last = match tokio::time::timeout(self.timeout, stream.info()).await {
            Ok(Ok(info)) => info.state.last_sequence,
            Ok(Err(e)) => return Err(self.unavailable("list", "", &e)),
            Err(_) => return Err(self.unanswered("list", "")),
        };
        let keys = async {
            let mut keys = self
                .kv
                .keys()
                .await
                .map_err(|e| self.unavailable("list", "", &e))?;
            let mut all = Vec::new();
            while let Some(key) = keys.next().await {
                all.push(key.map_err(|e| self.unavailable("list", "", &e))?);
            }
            Ok::<_, StoreError>(all)
        };
        let keys = match tokio::time::timeout(self.timeout, keys).await {
            Ok(keys) => keys?,
            Err(_) => return Err(self.unanswered("list", "")),
        };
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key).await? {
                entries.push((key, value));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((entries, last))
    }

    /// Every live key that starts with `prefix` (a whole number of
    /// `.`-separated tokens ending in `.`), unordered.
    pub async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        self.last_values(prefix, true, |key, _| keys.push(key.to_owned()))
            .await?;
        Ok(keys)
    }

    /// Calls `each` with every live key that starts with `prefix` (as in
    /// [`Catalog::keys_under`]; `""` for all) and its value, unordered: one
    /// pass over the bucket, not a read per key.
    pub async fn values_under(
        &self,
        prefix: &str,
        each: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        self.last_values(prefix, false, each).await
    }

    /// How many keys under `prefix` the bucket holds a message for: live
    /// ones and deleted ones whose marker has not expired yet (from the
    /// stream's per-subject counts).
    pub async fn subjects_under(&self, prefix: &str) -> Result<u64, StoreError> {
        use futures::TryStreamExt;
        connected(&self.client, self.timeout).await?;
        let filter = format!("{}{prefix}>", self.kv.prefix);
        let count = async {
            let subjects = self.kv.stream.info_with_subjects(filter).await?;
            subjects
                .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                .await
        };
        match tokio::time::timeout(self.timeout, count).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.unavailable("list", prefix, &e)),
            Err(_) => Err(self.unanswered("list", prefix)),
        }
    }

    /// The last message of every subject under `prefix`, live ones only,
    /// through an ordered consumer that is removed once read.
    async fn last_values(
        &self,
        prefix: &str,
        headers_only: bool,
        mut each: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
        connected(&self.client, self.timeout).await?;
        let subject_prefix = format!("{}{prefix}", self.kv.prefix);
        let list = async {
            let consumer = self
                .kv
                .stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    description: Some("sluice key listing".to_owned()),
                    filter_subject: format!("{subject_prefix}>"),
                    headers_only,
                    replay_policy: ReplayPolicy::Instant,
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| self.unavailable("list", prefix, &e))?;
            let name = consumer.cached_info().name.clone();
            // The consumer goes as soon as it was read (else it would sit
            // on the servers until its inactivity threshold).
            let _remove = RemoveConsumer(Some((self.kv.stream.clone(), name)));
            if consumer.cached_info().num_pending == 0 {
                return Ok(());
            }
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| self.unavailable("list", prefix, &e))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| self.unavailable("list", prefix, &e))?;
                let info = message
                    .info()
                    .map_err(|e| self.unavailable("list", prefix, &e))?;
                let pending = info.pending;
                let deleted = message.headers.as_ref().is_some_and(|headers| {
                    headers
                        .get("KV-Operation")
                        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
                        || headers.get("Nats-Marker-Reason").is_some()
                });
                if !deleted && let Some(key) = message.subject.strip_prefix(&self.kv.prefix) {
                    each(key, &message.payload);
                }
                if pending == 0 {
                    break;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, list).await {
            Ok(result) => result,
            Err(_) => Err(self.unanswered("list", prefix)),
        }
    }

    /// Every change after revision `after`, as it happens, for as long as the
    /// [`Watcher`] lives. The watch survives lost connections and server
    /// restarts: it is re-created from the last revision it reported (so a
    /// change is reported at most once and none is skipped), with a backoff.
    pub fn watch(&self, after: u64) -> Watcher {
        let (tx, rx) = mpsc::channel(256);
        let catalog = self.clone();
        let task = tokio::spawn(async move { catalog.supervise(after, tx).await });
        Watcher { rx, task }
    }

    async fn supervise(self, mut after: u64, tx: mpsc::Sender<Change>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let watch =
                tokio::time::timeout(self.timeout, self.kv.watch_all_from_revision(after + 1))
                    .await;
            match watch {
                Ok(Ok(mut watch)) => {
                    delay = Duration::from_millis(100);
                    while let Some(entry) = watch.next().await {
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(e) => {
                                tracing::warn!(bucket = self.bucket.name(), error = %e, "catalog watch failed; re-creating it");
                                break;
                            }
                        };
                        if entry.revision <= after {
                            continue;
                        }
                        after = entry.revision;
                        let value = match entry.operation {
                            kv::Operation::Put => Some(entry.value),
                            kv::Operation::Delete | kv::Operation::Purge => None,
                        };
                        let change = Change {
                            key: entry.key,
                            value,
                            revision: entry.revision,
                        };
                        if tx.send(change).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(bucket = self.bucket.name(), error = %e, "catalog watch not created; retrying");
                }
                Err(_) => {
                    tracing::debug!(
                        bucket = self.bucket.name(),
                        "catalog watch not created in time; retrying"
                    );
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn failed(&self, key: &str, error: &(dyn std::error::Error + 'static)) -> StoreError {
        if is_revision_conflict(error) {
            StoreError::Changed(key.to_owned())
        } else {
            self.unavailable("write", key, error)
        }
    }

    fn unavailable(&self, what: &str, key: &str, error: &dyn std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("{what} {}/{key}: {error}", self.bucket.name()))
    }

    fn unanswered(&self, what: &str, key: &str) -> StoreError {
        // Only a write has an outcome to be unsure of.
        let outcome = match what {
            "read" | "list" => "",
            _ => "; the outcome is unknown",
        };
        StoreError::Unavailable(format!(
            "{what} {}/{key}: JetStream did not answer within {:?}{outcome}",
            self.bucket.name(),
            self.timeout
        ))
    }
}

/// Changes to one bucket, in revision order, from [`Catalog::watch`]. The
/// watch stops when this is dropped.
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::Receiver<Change>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The next change; waits for one.
    pub async fn next(&mut self) -> Option<Change> {
        self.rx.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deletes an ephemeral consumer when dropped (in the background: a read
/// never waits for it).
pub(super) struct RemoveConsumer(
    pub(super) Option<(async_nats::jetstream::stream::Stream, String)>,
);

impl Drop for RemoveConsumer {
    fn drop(&mut self) {
        if let Some((stream, name)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.delete_consumer(&name))
                    .await;
            });
        }
    }
}
