//! Guest key-value data, for `wasi:keyvalue`: [`GuestKv`] over the embedded
//! store (below) or the cluster's bucket (`cluster/guest_kv.rs`).
//!
//! `kv`: `<bucket>\0<key>` → value. `kv_counts`: bucket → number of keys
//! (big-endian u64), kept in the same transaction as every insert and
//! delete, so the per-bucket key limit is exact. Buckets are named by the
//! host (`fn/<function>` for a function's own data, `shared/<name>` for a
//! shared bucket); the store only keeps them apart.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::{Result, Store, StoreError};

/// Why a key-value write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket holds its maximum number of keys.
    #[error("the bucket holds its limit of {0} keys")]
    TooManyKeys(u64),
    /// The stored value is not a decimal integer (increment).
    #[error("the value of {0:?} is not a decimal u64")]
    NotANumber(String),
    /// Increment would overflow.
    #[error("incrementing {0:?} would overflow")]
    Overflow(String),
    /// The key is longer than the backend takes (cluster mode: keys become
    /// NATS subjects).
    #[error("a key of {bytes} bytes is longer than cluster mode takes ({limit} bytes)")]
    KeyTooLong {
        /// The key's length.
        bytes: usize,
        /// What the backend takes.
        limit: usize,
    },
    /// The value is larger than the backend takes in one write (cluster
    /// mode: the NATS servers' `max_payload`).
    #[error(
        "a value of {bytes} bytes is larger than this cluster takes in one write ({limit} bytes)"
    )]
    TooLarge {
        /// The value's size.
        bytes: usize,
        /// What the backend takes.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn kv_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + 1 + key.len());
    out.extend_from_slice(bucket.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// `delta` added to `value`, the decimal text of a u64: what an increment
/// of `key` writes, on either backend.
pub(crate) fn incremented(value: &[u8], key: &str, delta: u64) -> Result<u64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| KvError::NotANumber(key.to_owned()))?
        .checked_add(delta)
        .ok_or_else(|| KvError::Overflow(key.to_owned()))
}

fn count_of(raw: Option<sled::IVec>) -> u64 {
    raw.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

type Tx<T> = std::result::Result<T, ConflictableTransactionError<KvError>>;

impl From<sled::transaction::TransactionError<KvError>> for KvError {
    fn from(error: sled::transaction::TransactionError<KvError>) -> KvError {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => KvError::Store(error.into()),
        }
    }
}

impl Store {
    /// The value of `key` in `bucket`.
    pub fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.kv.get(kv_key(bucket, key))?.map(|v| v.to_vec()))
    }

    /// True if `key` exists in `bucket`.
    pub fn kv_exists(&self, bucket: &str, key: &str) -> Result<bool> {
        Ok(self.kv.contains_key(kv_key(bucket, key))?)
    }

    /// Sets `key` in `bucket`, refusing a new key past `max_keys`.
    pub fn kv_set(
        &self,
        bucket: &str,
        key: &str,
        value: &[u8],
        max_keys: u64,
    ) -> std::result::Result<(), KvError> {
        let full = kv_key(bucket, key);
        (&self.kv, &self.kv_counts).transaction(|(kv, counts)| -> Tx<()> {
            if kv.insert(full.as_slice(), value)?.is_none() {
                let count = count_of(counts.get(bucket.as_bytes())?);
                if count >= max_keys {
                    return Err(ConflictableTransactionError::Abort(KvError::TooManyKeys(
                        max_keys,
                    )));
                }
                counts.insert(bucket.as_bytes(), &(count + 1).to_be_bytes())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Deletes `key` from `bucket` (no error if absent).
    pub fn kv_delete(&self, bucket: &str, key: &str) -> std::result::Result<(), KvError> {
        let full = kv_key(bucket, key);
        (&self.kv, &self.kv_counts).transaction(|(kv, counts)| -> Tx<()> {
            if kv.remove(full.as_slice())?.is_some() {
                let count = count_of(counts.get(bucket.as_bytes())?);
                counts.insert(bucket.as_bytes(), &count.saturating_sub(1).to_be_bytes())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Adds `delta` to the decimal value of `key` (0 if absent), atomically.
    pub fn kv_increment(
        &self,
        bucket: &str,
        key: &str,
        delta: u64,
        max_keys: u64,
    ) -> std::result::Result<u64, KvError> {
        let full = kv_key(bucket, key);
        let value = (&self.kv, &self.kv_counts).transaction(|(kv, counts)| -> Tx<u64> {
            let next = match kv.get(full.as_slice())? {
                Some(raw) => {
                    incremented(&raw, key, delta).map_err(ConflictableTransactionError::Abort)?
                }
                None => {
                    let count = count_of(counts.get(bucket.as_bytes())?);
                    if count >= max_keys {
                        return Err(ConflictableTransactionError::Abort(KvError::TooManyKeys(
                            max_keys,
                        )));
                    }
                    counts.insert(bucket.as_bytes(), &(count + 1).to_be_bytes())?;
                    delta
                }
            };
            kv.insert(full.as_slice(), next.to_string().as_bytes())?;
            Ok(next)
        })?;
        Ok(value)
    }

    /// Up to `page` keys of `bucket` in order, starting at position `cursor`;
    /// and the cursor of the next page, if any.
    pub fn kv_list(
        &self,
        bucket: &str,
        cursor: u64,
        page: usize,
    ) -> Result<(Vec<String>, Option<u64>)> {
        let prefix = kv_key(bucket, "");
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut keys = Vec::new();
        let mut more = false;
        for entry in self.kv.scan_prefix(&prefix).keys().skip(skip) {
            if keys.len() == page {
                more = true;
                break;
            }
            let full = entry?;
            keys.push(String::from_utf8_lossy(&full[prefix.len()..]).into_owned());
        }
        let next = more.then(|| cursor + keys.len() as u64);
        Ok((keys, next))
    }

    /// Every key of every bucket with its value, in order: `(bucket, key,
    /// value)` (for `sluice migrate`).
    pub fn kv_entries(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        let mut entries = Vec::new();
        for entry in self.kv.iter() {
            let (full, value) = entry?;
            // `<bucket>\0<key>`: a bucket name never holds a NUL.
            let Some(split) = full.iter().position(|b| *b == 0) else {
                continue;
            };
            entries.push((
                String::from_utf8_lossy(&full[..split]).into_owned(),
                String::from_utf8_lossy(&full[split + 1..]).into_owned(),
                value.to_vec(),
            ));
        }
        Ok(entries)
    }

    /// Number of keys in `bucket`.
    pub fn kv_count(&self, bucket: &str) -> Result<u64> {
        Ok(count_of(self.kv_counts.get(bucket.as_bytes())?))
    }
}

/// Guest key-value data where this node keeps it: the embedded store, or
/// the cluster's bucket. The one interface `wasi:keyvalue` is served from;
/// every write has reached its durable home when the call returns (sled
/// flushed, or JetStream acknowledged), and the key limit holds in both.
#[derive(Clone, Debug)]
pub enum GuestKv {
    /// This node's sled store.
    Local(Box<Store>),
    /// The cluster's guest key-value bucket.
    Cluster(crate::cluster::GuestKv),
}

impl GuestKv {
    /// The value of `key` in `bucket`.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> std::result::Result<Option<Vec<u8>>, KvError> {
        match self {
            GuestKv::Local(store) => Ok(store.kv_get(bucket, key)?),
            GuestKv::Cluster(kv) => kv.get(bucket, key).await,
        }
    }

    /// True if `key` exists in `bucket`.
    pub async fn exists(&self, bucket: &str, key: &str) -> std::result::Result<bool, KvError> {
        match self {
            GuestKv::Local(store) => Ok(store.kv_exists(bucket, key)?),
            GuestKv::Cluster(kv) => Ok(kv.get(bucket, key).await?.is_some()),
        }
    }

    /// Sets each pair in `bucket`, refusing a new key past `max_keys`; durable
    /// on return. Pairs before a refused one stay set.
    pub async fn set(
        &self,
        bucket: &str,
        pairs: &[(String, Vec<u8>)],
        max_keys: u64,
    ) -> std::result::Result<(), KvError> {
        match self {
            GuestKv::Local(store) => {
                let mut result = Ok(());
                for (key, value) in pairs {
                    result = store.kv_set(bucket, key, value, max_keys);
                    if result.is_err() {
                        break;
                    }
                }
                // What was set before a refusal is as durable as the rest.
                store.flush_grouped().await?;
                result
            }
            GuestKv::Cluster(kv) => {
                for (key, value) in pairs {
                    kv.set(bucket, key, value, max_keys).await?;
                }
                Ok(())
            }
        }
    }

    /// Deletes each of `keys` from `bucket` (no error for an absent one);
    /// durable on return.
    pub async fn delete(&self, bucket: &str, keys: &[String]) -> std::result::Result<(), KvError> {
        match self {
            GuestKv::Local(store) => {
                let mut result = Ok(());
                for key in keys {
                    result = store.kv_delete(bucket, key);
                    if result.is_err() {
                        break;
                    }
                }
                store.flush_grouped().await?;
                result
            }
            GuestKv::Cluster(kv) => {
                for key in keys {
                    kv.delete(bucket, key).await?;
                }
                Ok(())
            }
        }
    }

    /// Adds `delta` to the decimal value of `key` (0 if absent), atomically;
    /// durable on return.
    pub async fn increment(
        &self,
        bucket: &str,
        key: &str,
        delta: u64,
        max_keys: u64,
    ) -> std::result::Result<u64, KvError> {
        match self {
            GuestKv::Local(store) => {
                let value = store.kv_increment(bucket, key, delta, max_keys)?;
                store.flush_grouped().await?;
                Ok(value)
            }
            GuestKv::Cluster(kv) => kv.increment(bucket, key, delta, max_keys).await,
        }
    }

    /// Up to `page` keys of `bucket` in order, from position `cursor`; and
    /// the cursor of the next page, if any.
    pub async fn list(
        &self,
        bucket: &str,
        cursor: u64,
        page: usize,
    ) -> std::result::Result<(Vec<String>, Option<u64>), KvError> {
        match self {
            GuestKv::Local(store) => Ok(store.kv_list(bucket, cursor, page)?),
            GuestKv::Cluster(kv) => kv.list(bucket, cursor, page).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_apart_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.kv_set("fn/a", "k", b"1", 10).unwrap();
        store.kv_set("fn/a", "k", b"2", 10).unwrap();
        store.kv_set("fn/ab", "k", b"x", 10).unwrap();
        assert_eq!(store.kv_get("fn/a", "k").unwrap().unwrap(), b"2");
        assert_eq!(store.kv_get("fn/b", "k").unwrap(), None);
        assert_eq!(store.kv_count("fn/a").unwrap(), 1);
        assert_eq!(
            store.kv_list("fn/a", 0, 10).unwrap(),
            (vec!["k".to_string()], None)
        );
        store.kv_delete("fn/a", "k").unwrap();
        store.kv_delete("fn/a", "k").unwrap();
        assert_eq!(store.kv_count("fn/a").unwrap(), 0);
        assert!(store.kv_exists("fn/ab", "k").unwrap());
    }

    #[test]
    fn key_limit_is_exact_and_overwrites_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.kv_set("b", "1", b"", 2).unwrap();
        store.kv_set("b", "2", b"", 2).unwrap();
        store.kv_set("b", "2", b"again", 2).unwrap();
        assert!(matches!(
            store.kv_set("b", "3", b"", 2),
            Err(KvError::TooManyKeys(2))
        ));
        assert!(matches!(
            store.kv_increment("b", "n", 1, 2),
            Err(KvError::TooManyKeys(2))
        ));
        assert_eq!(
            store.kv_get("b", "3").unwrap(),
            None,
            "a refused write changes nothing"
        );
        assert_eq!(store.kv_count("b").unwrap(), 2);
    }

    #[test]
    fn increment_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.kv_increment("b", "n", 5, 10).unwrap(), 5);
        assert_eq!(store.kv_increment("b", "n", 2, 10).unwrap(), 7);
        store.kv_set("b", "s", b"text", 10).unwrap();
        assert!(matches!(
            store.kv_increment("b", "s", 1, 10),
            Err(KvError::NotANumber(_))
        ));
        store
            .kv_set("b", "max", u64::MAX.to_string().as_bytes(), 10)
            .unwrap();
        assert!(matches!(
            store.kv_increment("b", "max", 1, 10),
            Err(KvError::Overflow(_))
        ));
        let (page, next) = store.kv_list("b", 0, 2).unwrap();
        assert_eq!(page, vec!["max", "n"]);
        let (page, next) = store.kv_list("b", next.unwrap(), 2).unwrap();
        assert_eq!((page, next), (vec!["s".to_string()], None));
    }
}
