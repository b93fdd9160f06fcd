//! Guest key-value data (`wasi:keyvalue`) in cluster mode: one key-value
//! bucket, `sluice_guest_kv`, for every function and shared bucket (one
//! JetStream bucket per function would be one Raft group each).
//!
//! Keys: `data.<kind>.<name>.k<key>` for a value, the guest's key in
//! unpadded URL-safe base64 (guest keys are any string; NATS keys are not),
//! and `count.<kind>.<name>` for the number of keys, where `<kind>.<name>`
//! is the host's bucket name (`fn/<function>`, `shared/<name>`) with `.`
//! for `/`. Every write is compare-and-set on the key's revision, so two
//! nodes racing on one key both land, in some order, and an increment is
//! never lost; a lost round waits a random, growing moment before the next
//! (a replicated bucket can refuse every racer of a round), for up to the
//! request timeout. A new key first reserves its place in the count (also
//! compare-and-set), then is created; a write that fails with an unknown
//! outcome, where the key cannot be read back as absent, keeps its
//! reservation, so the count can run high after such a failure (refusing
//! new keys early, until a refused key recounts the bucket once the count
//! went unwritten for a while) but never low: the key limit is never
//! exceeded. Writers racing to create the same key each
//! take a place until all but one give theirs back: a full count is
//! checked against the key itself, so a racer that lost writes as an
//! overwrite; only a different new key written at that moment, at the
//! limit, can be refused early. Reads go to the bucket's leader, so a value
//! written through one node is read back through any other. A delete purges
//! the key and leaves a marker that expires after 30 seconds (on NATS 2.11
//! or later), so deleted keys take no room for good.

use base64::Engine;
use bytes::Bytes;

use super::{Catalog, Cluster, Expect};
use crate::{KvError, StoreError};

/// The JetStream bucket of guest data.
pub const GUEST_KV_BUCKET: &str = "sluice_guest_kv";

/// How long a deleted key's marker stays in the bucket (then the key leaves
/// no trace: nothing watches guest data). Far longer than a delete takes
/// to give its place in the count back, so that a recount, which counts
/// markers as keys, never counts a key gone whose place is still taken.
const MARKER_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// What headers and the subject add to a value in one publish, kept free of
/// the servers' `max_payload`.
const OVERHEAD: usize = 4096;

/// Guest key-value data on the cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GuestKv {
    cluster: Cluster,
}

fn subject_part(bucket: &str) -> Result<String, KvError> {
    let ok = !bucket.is_empty()
        && bucket.split('/').count() == 2
        && bucket.split('/').all(crate::is_dns_label);
    if !ok {
        return Err(KvError::Store(StoreError::Corrupt(format!(
            "not a guest bucket name: {bucket:?}"
        ))));
    }
    Ok(bucket.replace('/', "."))
}

fn data_prefix(bucket: &str) -> Result<String, KvError> {
    Ok(format!("data.{}.", subject_part(bucket)?))
}

/// The longest guest key cluster mode takes, in bytes: its subject (the
/// key in base64, 4/3 of its length) must stay well inside the NATS
/// servers' default `max_control_line` of 4 KiB.
pub const MAX_KEY_BYTES: usize = 2048;

fn data_key(bucket: &str, key: &str) -> Result<String, KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong {
            bytes: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(format!(
        "{}k{}",
        data_prefix(bucket)?,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    ))
}

fn count_key(bucket: &str) -> Result<String, KvError> {
    Ok(format!("count.{}", subject_part(bucket)?))
}

fn parse_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn contended(key: &str) -> KvError {
    KvError::Store(StoreError::Unavailable(format!(
        "key {key:?} was written by others through every try for the request timeout; try again"
    )))
}

impl GuestKv {
    /// Guest data on `cluster`.
    pub fn new(cluster: Cluster) -> GuestKv {
        GuestKv { cluster }
    }

    fn bucket(&self) -> Result<Catalog, KvError> {
        Ok(self.cluster.catalog(super::Bucket::GuestKv)?)
    }

    fn check_size(&self, value: &[u8]) -> Result<(), KvError> {
        // Before the first server's INFO the size is not known (0): the
        // write then fails as unavailable, with that reason.
        self.cluster.readiness().map_err(StoreError::Unavailable)?;
        let limit = self
            .cluster
            .inner
            .client
            .server_info()
            .max_payload
            .saturating_sub(OVERHEAD);
        if value.len() > limit {
            return Err(KvError::TooLarge {
                bytes: value.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The value of `key` in `bucket`.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let found = self.bucket()?.get(&data_key(bucket, key)?).await?;
        Ok(found.map(|v| v.value.to_vec()))
    }

    /// Sets `key` in `bucket`, refusing a new key past `max_keys`.
    pub async fn set(
        &self,
        bucket: &str,
        key: &str,
        value: &[u8],
        max_keys: u64,
    ) -> Result<(), KvError> {
        self.check_size(value)?;
        let kv = self.bucket()?;
        let full = data_key(bucket, key)?;
        let value = Bytes::copy_from_slice(value);
        let mut pace = self.cluster.contention();
        loop {
            let expect = match kv.get(&full).await? {
                Some(current) => Some(Expect::Revision(current.revision)),
                None => self
                    .reserve_new(&kv, bucket, &full, max_keys)
                    .await?
                    .then_some(Expect::Absent),
            };
            // None: the key appeared meanwhile; read it again at once.
            if let Some(expect) = expect {
                let written = kv.put(&full, value.clone(), expect).await;
                // No read-back: two writers of the same value would both
                // keep a place in the count, on every such race.
                if (self.settle(&kv, bucket, &full, expect, written, None)).await? {
                    return Ok(());
                }
                if !pace.lost().await {
                    return Err(contended(key));
                }
            }
        }
    }

    /// Creates `key` in `bucket` with `value` unless it is there: true if
    /// created, false if the bucket has the key (kept as it is, also when
    /// it was created meanwhile). No key limit refuses it; it counts.
    /// For `sluice migrate`.
    pub async fn create(&self, bucket: &str, key: &str, value: &[u8]) -> Result<bool, KvError> {
        self.check_size(value)?;
        let kv = self.bucket()?;
        let full = data_key(bucket, key)?;
        if kv.get(&full).await?.is_some() || !self.reserve_new(&kv, bucket, &full, u64::MAX).await?
        {
            return Ok(false);
        }
        let value = Bytes::copy_from_slice(value);
        let written = kv.put(&full, value.clone(), Expect::Absent).await;
        (self.settle(&kv, bucket, &full, Expect::Absent, written, Some(&value))).await
    }

    /// What a compare-and-set write that `expect`ed the key's state ended
    /// in: true when it landed, false when it lost a race (read again); a
    /// new key's place in the count is given back unless it was used. With
    /// `same_is_done` (migrate's one-off creates only), a create refused
    /// as a conflict whose key holds exactly that value counts as landed
    /// and keeps its place: async-nats reports a create whose first answer
    /// was lost as a conflict. Without it such a create gives its place
    /// back and the count runs one low (rare: a lost answer).
    async fn settle(
        &self,
        kv: &Catalog,
        bucket: &str,
        full: &str,
        expect: Expect,
        written: Result<u64, StoreError>,
        same_is_done: Option<&Bytes>,
    ) -> Result<bool, KvError> {
        match written {
            Ok(_) => Ok(true),
            Err(StoreError::Changed(_)) => {
                if expect == Expect::Absent {
                    // async-nats reports a create whose first answer was
                    // lost as a conflict: a key holding exactly what was
                    // written is this write's (or the same write's by
                    // another, as good), and keeps its place.
                    if let Some(value) = same_is_done
                        && kv.get(full).await?.is_some_and(|v| v.value == *value)
                    {
                        return Ok(true);
                    }
                    // Another writer created it first: not a new key.
                    self.release(kv, bucket).await?;
                }
                Ok(false)
            }
            Err(error) => {
                if expect == Expect::Absent {
                    self.release_unless_written(kv, bucket, full).await;
                }
                Err(error.into())
            }
        }
    }

    /// Deletes `key` from `bucket` (no error if absent).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        let kv = self.bucket()?;
        let full = data_key(bucket, key)?;
        let mut pace = self.cluster.contention();
        loop {
            let removed = match self.cluster.guest_ttls() {
                true => kv.purge(&full, Expect::Any, MARKER_TTL).await,
                false => kv.delete(&full, Expect::Any).await,
            };
            match removed {
                Ok(Some(_)) => return self.release(&kv, bucket).await,
                Ok(None) => return Ok(()),
                // Written between the read and the delete: read again.
                Err(StoreError::Changed(_)) => {
                    if !pace.lost().await {
                        return Err(contended(key));
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Adds `delta` to the decimal value of `key` (0 if absent), atomically.
    pub async fn increment(
        &self,
        bucket: &str,
        key: &str,
        delta: u64,
        max_keys: u64,
    ) -> Result<u64, KvError> {
        let kv = self.bucket()?;
        let full = data_key(bucket, key)?;
        let mut pace = self.cluster.contention();
        loop {
            let (next, expect) = match kv.get(&full).await? {
                Some(current) => (
                    crate::kv::incremented(&current.value, key, delta)?,
                    Expect::Revision(current.revision),
                ),
                None => {
                    if !self.reserve_new(&kv, bucket, &full, max_keys).await? {
                        // The key appeared meanwhile: read it again at once.
                        continue;
                    }
                    (delta, Expect::Absent)
                }
            };
            let written = kv.put(&full, Bytes::from(next.to_string()), expect).await;
            // No read-back: two racers' first increments write the same
            // value, and only one of them may be told it won.
            if self
                .settle(&kv, bucket, &full, expect, written, None)
                .await?
            {
                return Ok(next);
            }
            if !pace.lost().await {
                return Err(contended(key));
            }
        }
    }

    /// Up to `page` keys of `bucket` in order, from position `cursor`; and
    /// the cursor of the next page, if any.
    pub async fn list(
        &self,
        bucket: &str,
        cursor: u64,
        page: usize,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = data_prefix(bucket)?;
        let mut keys: Vec<String> = self
            .bucket()?
            .keys_under(&prefix)
            .await?
            .into_iter()
            .filter_map(|full| {
                let encoded = full.strip_prefix(&prefix)?.strip_prefix('k')?;
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded)
                    .ok()?;
                String::from_utf8(raw).ok()
            })
            .collect();
        keys.sort();
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let rest = keys.len().saturating_sub(skip);
        let page_keys: Vec<String> = keys.into_iter().skip(skip).take(page).collect();
        let next = (rest > page_keys.len()).then(|| cursor + page_keys.len() as u64);
        Ok((page_keys, next))
    }

    /// Takes a place in `bucket`'s count for the new key `full`: true when
    /// taken, false when the key exists after all (another writer created
    /// it while the count was full of racers' places: write it as an
    /// overwrite), [`KvError::TooManyKeys`] when the bucket is full.
    async fn reserve_new(
        &self,
        kv: &Catalog,
        bucket: &str,
        full: &str,
        max_keys: u64,
    ) -> Result<bool, KvError> {
        match self.reserve(kv, bucket, max_keys).await {
            Ok(()) => Ok(true),
            Err(KvError::TooManyKeys(limit)) => match kv.get(full).await? {
                Some(_) => Ok(false),
                None => Err(KvError::TooManyKeys(limit)),
            },
            Err(error) => Err(error),
        }
    }

    /// Takes one place in `bucket`'s count, refusing past `max_keys`.
    async fn reserve(&self, kv: &Catalog, bucket: &str, max_keys: u64) -> Result<(), KvError> {
        let key = count_key(bucket)?;
        let mut pace = self.cluster.contention();
        loop {
            let current = kv.get(&key).await?;
            let (count, expect) = match &current {
                Some(current) => (
                    parse_count(&current.value),
                    Expect::Revision(current.revision),
                ),
                None => (0, Expect::Absent),
            };
            if count >= max_keys {
                if let Some(current) = &current
                    && self.recounted(kv, bucket, current).await?
                {
                    continue;
                }
                return Err(KvError::TooManyKeys(max_keys));
            }
            match kv
                .put(&key, Bytes::from((count + 1).to_string()), expect)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Changed(_)) => {
                    if !pace.lost().await {
                        return Err(contended(&key));
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// After a create that failed: gives its place back if the key is
    /// known to be absent (the write did not land), keeps it when that
    /// cannot be known (the count then runs one high: a leak towards
    /// refusing early, never towards passing the limit).
    async fn release_unless_written(&self, kv: &Catalog, bucket: &str, full: &str) {
        if let Ok(None) = kv.get(full).await
            && let Err(error) = self.release(kv, bucket).await
        {
            tracing::debug!(%error, bucket, "could not give back a key's place after a failed write");
        }
    }

    /// A full count this node saw unchanged (same revision) for
    /// [`ClusterOptions::kv_recount_after`](super::ClusterOptions) (so no
    /// create it reserved a place for, and no delete's give-back, is still
    /// under way) may have run
    /// high after writes whose outcome was unknown: counts the bucket's
    /// keys and, if fewer, sets the count to them (compare-and-set on the
    /// count read). True when it was lowered (try again). At most once per
    /// bucket per that time on this node: a bucket that is really
    /// full is not listed at each refused write.
    async fn recounted(
        &self,
        kv: &Catalog,
        bucket: &str,
        count: &super::catalog::Versioned,
    ) -> Result<bool, KvError> {
        let after = self.cluster.inner.options.kv_recount_after;
        {
            // Quiet by this node's own clock: the same revision seen for
            // the whole time (a delete's give-back or a create's
            // reservation would have changed it).
            let mut seen = self.cluster.inner.recounts.lock().unwrap();
            let now = std::time::Instant::now();
            let entry = seen.entry(bucket.to_owned()).or_insert(super::Recount {
                revision: count.revision,
                since: now,
                done: None,
            });
            if entry.revision != count.revision {
                entry.revision = count.revision;
                entry.since = now;
            }
            if entry.since.elapsed() < after || entry.done.is_some_and(|at| at.elapsed() < after) {
                return Ok(false);
            }
            entry.done = Some(now);
        }
        // Deleted keys whose marker is still there count too: a delete
        // gives its place back only after its purge, and the marker
        // outlives that by far.
        let live = kv.subjects_under(&data_prefix(bucket)?).await?;
        let stored = parse_count(&count.value);
        if live >= stored {
            return Ok(false);
        }
        match kv
            .put(
                &count_key(bucket)?,
                Bytes::from(live.to_string()),
                Expect::Revision(count.revision),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    bucket,
                    stored,
                    live,
                    "a key count that ran high (writes with unknown outcomes) recounted"
                );
                Ok(true)
            }
            // Written meanwhile: the reservation reads it again.
            Err(StoreError::Changed(_)) => Ok(true),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives back one place in `bucket`'s count.
    async fn release(&self, kv: &Catalog, bucket: &str) -> Result<(), KvError> {
        let key = count_key(bucket)?;
        let mut pace = self.cluster.contention();
        loop {
            let Some(current) = kv.get(&key).await? else {
                return Ok(());
            };
            let count = parse_count(&current.value).saturating_sub(1);
            match kv
                .put(
                    &key,
                    Bytes::from(count.to_string()),
                    Expect::Revision(current.revision),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Changed(_)) => {
                    if !pace.lost().await {
                        return Err(contended(&key));
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_keys_for_any_guest_key() {
        for key in ["", "a", "with space", "a.b.c", "ünïcode/*>", "$KV"] {
            let full = data_key("fn/orders", key).unwrap();
            assert!(full.starts_with("data.fn.orders.k"), "{full}");
            assert!(
                full.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{full}"
            );
            assert!(!full.ends_with('.'), "{full}");
        }
        assert_eq!(count_key("shared/carts").unwrap(), "count.shared.carts");
        // Two buckets whose names share a prefix stay apart.
        assert!(
            !data_key("fn/ab", "k")
                .unwrap()
                .starts_with(&data_prefix("fn/a").unwrap())
        );
    }

    #[test]
    fn bucket_names_the_host_never_makes_are_refused() {
        for bucket in ["", "fn", "fn/", "fn/a.b", "fn/a/b", "fn/>", "FN/a"] {
            assert!(data_key(bucket, "k").is_err(), "{bucket:?}");
        }
    }
}
