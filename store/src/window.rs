//! The de-duplication window of the embedded store: which (broker, source,
//! id) triples were accepted within the last `--dedupe-window`, so a repeat
//! is answered as a duplicate and not delivered again (CloudEvents: source
//! and id identify an event).
//!
//! In memory, [`Window`] maps each key (the first 16 bytes of a SHA-256 of
//! the triple, see [`dedupe_key`]) to the time it was accepted, with the
//! keys in acceptance order beside it for expiry: about 77 bytes an event
//! as measured (`examples/window_memory.rs`),
//! at most `--dedupe-max-events` of them (past that the oldest is forgotten
//! early, and counted).
//!
//! On disk, a key is written twice. With its event's deliveries, as a keys
//! frame in the delivery journal, in the same write and `fdatasync` that
//! makes the event durable (so a 202 costs no extra sync), and as the same
//! frame in the window's own files, [`Archive`] (`deliveries/NNN.keys`),
//! written with it but synced only before the journal deletes a segment (so
//! a key outlives the segment it was written in). At open, the keys of both
//! within the window are the window again, rewritten into one new file.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::disk::{Disk, DiskFile};
use crate::{Result, StoreError};

/// What identifies an event within a broker's window.
pub type DedupeKey = [u8; 16];

/// Bytes one key takes in a keys frame: the key and its time in
/// milliseconds since the Unix epoch.
pub(crate) const KEY_BYTES: usize = 16 + 8;

/// A SHA-256 of (broker, source, id), each part length-prefixed so no two
/// triples share one.
pub fn triple_digest(broker: &str, source: &str, id: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [broker, source, id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

/// The window key of (broker, source, id): 128 bits of [`triple_digest`],
/// so a client cannot make another's event look like a repeat of its own.
pub fn dedupe_key(broker: &str, source: &str, id: &str) -> DedupeKey {
    let digest = triple_digest(broker, source, id);
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// `duration` in milliseconds (at most `u64::MAX`).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes keys accepted at `at_ms` as the payload of a keys frame, after
/// its kind byte `kind`.
pub(crate) fn encode_keys(kind: u8, keys: &[DedupeKey], at_ms: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + KEY_BYTES * keys.len());
    payload.push(kind);
    for key in keys {
        payload.extend_from_slice(key);
        payload.extend_from_slice(&at_ms.to_le_bytes());
    }
    payload
}

/// Decodes the body of a keys frame (after its kind byte), if well formed.
pub(crate) fn decode_keys(body: &[u8]) -> Option<Vec<(DedupeKey, u64)>> {
    if !body.len().is_multiple_of(KEY_BYTES) {
        return None;
    }
    Some(
        body.chunks_exact(KEY_BYTES)
            .map(|chunk| {
                let key: DedupeKey = chunk[..16].try_into().unwrap();
                let at = u64::from_le_bytes(chunk[16..].try_into().unwrap());
                (key, at)
            })
            .collect(),
    )
}

/// The keys accepted within the window, in memory.
pub struct Window {
    window_ms: u64,
    max: usize,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Accepted keys and when.
    accepted: HashMap<DedupeKey, u64>,
    /// The same, oldest first: each accepted key is here exactly once.
    order: VecDeque<(u64, DedupeKey)>,
    /// Keys of events being made durable now, each with what tells its
    /// waiters that the attempt ended (one way or the other).
    in_flight: HashMap<DedupeKey, watch::Receiver<()>>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("window_ms", &self.window_ms)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// A window of `window` holding at most `max` keys, with the keys
    /// `recovered` (any order) that are still within it at `now_ms`.
    pub(crate) fn new(
        window: Duration,
        max: usize,
        mut recovered: Vec<(DedupeKey, u64)>,
        now_ms: u64,
    ) -> Window {
        let window = Window {
            window_ms: millis(window),
            max: max.max(1),
            inner: Mutex::default(),
            evicted: AtomicU64::new(0),
        };
        recovered.sort_by_key(|(_, at)| *at);
        {
            let mut inner = window.inner.lock().unwrap();
            for (key, at) in recovered {
                if at.saturating_add(window.window_ms) > now_ms {
                    window.remember(&mut inner, key, at);
                }
            }
        }
        window
    }

    /// How long a key is kept.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().accepted.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys forgotten before their time because the window was full,
    /// since the last call (so concurrent callers count each once).
    pub fn take_evicted(&self) -> u64 {
        self.evicted.swap(0, Ordering::Relaxed)
    }

    /// The keys in the window, oldest first (for tests).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(DedupeKey, u64)> {
        let inner = self.inner.lock().unwrap();
        inner.order.iter().map(|&(at, key)| (key, at)).collect()
    }

    fn remember(&self, inner: &mut Inner, key: DedupeKey, at: u64) {
        match inner.accepted.entry(key) {
            // Already known (a recovered key found twice, oldest first):
            // one entry in the order.
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
        inner.order.push_back((at, key));
        while inner.accepted.len() > self.max {
            let Some((_, oldest)) = inner.order.pop_front() else {
                break;
            };
            inner.accepted.remove(&oldest);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn expire(&self, inner: &mut Inner, now_ms: u64) {
        while let Some(&(at, key)) = inner.order.front() {
            if at.saturating_add(self.window_ms) > now_ms {
                break;
            }
            inner.order.pop_front();
            inner.accepted.remove(&key);
        }
    }

    /// Claims `keys` (distinct): for each, whether it is new. A key another
    /// request is making durable right now is waited for (its outcome
    /// decides: accepted, a duplicate; failed, new). All keys are claimed
    /// at once or none, so two requests never wait for each other.
    pub async fn claim(self: &Arc<Self>, keys: &[DedupeKey]) -> Claim {
        loop {
            let mut busy = {
                let mut inner = self.inner.lock().unwrap();
                let now = now_ms();
                self.expire(&mut inner, now);
                let busy = keys.iter().find_map(|k| inner.in_flight.get(k)).cloned();
                match busy {
                    Some(busy) => busy,
                    None => {
                        let (done, ended) = watch::channel(());
                        let mut new = Vec::with_capacity(keys.len());
                        let mut claimed = Vec::new();
                        for key in keys {
                            let fresh = !inner.accepted.contains_key(key);
                            new.push(fresh);
                            if fresh {
                                inner.in_flight.insert(*key, ended.clone());
                                claimed.push(*key);
                            }
                        }
                        return Claim {
                            window: self.clone(),
                            new,
                            claimed,
                            at_ms: now,
                            done: Some(done),
                        };
                    }
                }
            };
            // Ends when the other attempt's claim is committed or dropped.
            let _ = busy.changed().await;
        }
    }
}

/// Keys claimed by one request: committed once the events are durable,
/// released (for a later attempt) if the request fails or is dropped.
pub struct Claim {
    window: Arc<Window>,
    /// Per key given to [`Window::claim`]: true if it is new.
    pub new: Vec<bool>,
    claimed: Vec<DedupeKey>,
    at_ms: u64,
    done: Option<watch::Sender<()>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("new", &self.new)
            .field("at_ms", &self.at_ms)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// The new keys, to write with the events.
    pub fn keys(&self) -> &[DedupeKey] {
        &self.claimed
    }

    /// When they were accepted (milliseconds since the Unix epoch).
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// The events are durable: their keys are in the window from now on.
    pub fn commit(mut self) {
        let mut inner = self.window.inner.lock().unwrap();
        for key in std::mem::take(&mut self.claimed) {
            inner.in_flight.remove(&key);
            self.window.remember(&mut inner, key, self.at_ms);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.claimed.is_empty() {
            let mut inner = self.window.inner.lock().unwrap();
            for key in &self.claimed {
                inner.in_flight.remove(key);
            }
        }
        // Wakes every waiter (committed or not): they look again.
        drop(self.done.take());
    }
}

/// The window's own files: `NNN.keys` in the journal's directory, each a
/// sequence of journal keys frames. One is written at a time; a new one is
/// started each quarter window, and one whose newest key left the window is
/// deleted.
pub(crate) struct Archive {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    window_ms: u64,
    /// Sealed files and the newest key time in each.
    sealed: BTreeMap<u64, u64>,
    current: Box<dyn DiskFile>,
    seq: u64,
    /// When the current file was started, and its newest key time.
    started_ms: u64,
    newest_ms: u64,
    unsynced: bool,
}

fn archive_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.keys"))
}

/// Deletes `path` (already gone is fine).
fn remove(disk: &dyn Disk, path: &Path) -> Result<()> {
    match disk.remove(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            context: format!("deleting {}", path.display()),
            source,
        }),
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// Keys and the times they were accepted.
pub(crate) type Keys = Vec<(DedupeKey, u64)>;

/// The keys of the window files in `dir`, newest file first, until `max`
/// keys are read (older files' keys would be forgotten anyway), and every
/// file's number. `decode` gives a file's keys and what it skipped as
/// damaged: the window is weaker, nothing is refused.
pub(crate) fn read_archive(
    disk: &dyn Disk,
    dir: &Path,
    max: usize,
    decode: impl Fn(&[u8]) -> (Keys, Option<String>),
) -> Result<(Keys, Vec<u64>)> {
    let seqs = crate::journal::numbered(disk, dir, ".keys")?;
    let mut keys = Vec::new();
    for &seq in seqs.iter().rev() {
        if keys.len() >= max {
            break;
        }
        let path = archive_path(dir, seq);
        let Some(data) = crate::journal::read_if_present(disk, &path)? else {
            continue;
        };
        let (found, bad) = decode(&data);
        if let Some(why) = bad {
            tracing::warn!(path = %path.display(), skipped = %why, "a de-duplication window file is damaged; the keys in the damaged bytes are forgotten");
        }
        keys.extend(found);
    }
    Ok((keys, seqs))
}

impl Archive {
    /// Starts the window's files afresh in `dir`: `keys` (the whole window)
    /// into a new file, synced, then every older file (`old`) deleted.
    pub(crate) fn create(
        disk: Arc<dyn Disk>,
        dir: &Path,
        window: Duration,
        old: &[u64],
        frame: &[u8],
        newest_ms: u64,
    ) -> Result<Archive> {
        let seq = old.iter().copied().max().unwrap_or(0) + 1;
        let path = archive_path(dir, seq);
        let mut current = disk
            .append_to(&path)
            .map_err(io_error(format!("creating {}", path.display())))?;
        current
            .append(frame)
            .and_then(|()| current.sync())
            .map_err(io_error(format!("writing {}", path.display())))?;
        disk.sync_dir(dir)
            .map_err(io_error(format!("syncing {}", dir.display())))?;
        for &seq in old {
            let path = archive_path(dir, seq);
            remove(&*disk, &path)?;
        }
        disk.sync_dir(dir)
            .map_err(io_error(format!("syncing {}", dir.display())))?;
        Ok(Archive {
            disk,
            dir: dir.to_path_buf(),
            window_ms: millis(window),
            sealed: BTreeMap::new(),
            current,
            seq,
            started_ms: now_ms(),
            newest_ms,
            unsynced: false,
        })
    }

    /// Appends keys frames (not synced) whose newest key is `newest_ms`,
    /// starting a new file first when the current one is a quarter window
    /// old (the old one synced before it is let go).
    pub(crate) fn append(&mut self, bytes: &[u8], newest_ms: u64) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        // A new file each quarter window, at most one a second.
        if now.saturating_sub(self.started_ms) >= (self.window_ms / 4).max(1000) {
            self.sync()?;
            let seq = self.seq + 1;
            let path = archive_path(&self.dir, seq);
            let next = self
                .disk
                .append_to(&path)
                .map_err(io_error(format!("creating {}", path.display())))?;
            self.disk
                .sync_dir(&self.dir)
                .map_err(io_error(format!("syncing {}", self.dir.display())))?;
            self.sealed.insert(self.seq, self.newest_ms);
            self.current = next;
            self.seq = seq;
            self.started_ms = now;
            self.newest_ms = 0;
        }
        let path = archive_path(&self.dir, self.seq);
        self.current
            .append(bytes)
            .map_err(io_error(format!("writing {}", path.display())))?;
        self.newest_ms = self.newest_ms.max(newest_ms);
        self.unsynced = true;
        Ok(())
    }

    /// Makes what was appended durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            let path = archive_path(&self.dir, self.seq);
            self.current
                .sync()
                .map_err(io_error(format!("syncing {}", path.display())))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Deletes the sealed files whose newest key has left the window.
    pub(crate) fn expire(&mut self) -> Result<()> {
        let now = now_ms();
        let spent: Vec<u64> = (self.sealed.iter())
            .filter(|&(_, &newest)| newest.saturating_add(self.window_ms) <= now)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in spent {
            let path = archive_path(&self.dir, seq);
            remove(&*self.disk, &path)?;
            self.sealed.remove(&seq);
        }
        Ok(())
    }
}

/// Keys in `keys` that occur more than once after their first: the repeats
/// within one request.
pub fn repeats_within(keys: &[DedupeKey]) -> Vec<bool> {
    let mut seen = HashSet::with_capacity(keys.len());
    keys.iter().map(|k| !seen.insert(*k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DedupeKey {
        [n; 16]
    }

    #[test]
    fn keys_tell_every_triple_apart() {
        assert_eq!(dedupe_key("b", "s", "1"), dedupe_key("b", "s", "1"));
        assert_ne!(dedupe_key("b", "s", "1"), dedupe_key("b", "s1", ""));
        assert_ne!(dedupe_key("b", "s", "1"), dedupe_key("c", "s", "1"));
        assert_ne!(dedupe_key("b", "s", "1"), dedupe_key("b", "t", "1"));
        let payload = encode_keys(3, &[key(1), key(2)], 77);
        assert_eq!(
            decode_keys(&payload[1..]),
            Some(vec![(key(1), 77), (key(2), 77)])
        );
        assert_eq!(decode_keys(&payload[2..]), None, "cut short");
    }

    #[tokio::test]
    async fn a_committed_key_is_a_duplicate_a_dropped_one_is_not_and_old_ones_expire() {
        let now = now_ms();
        let window = Arc::new(Window::new(
            Duration::from_secs(60),
            100,
            vec![(key(9), now - 61_000), (key(8), now - 1_000)],
            now,
        ));
        assert_eq!(window.len(), 1, "the expired recovered key is gone");
        let claim = window.claim(&[key(1), key(8)]).await;
        assert_eq!(claim.new, [true, false]);
        assert_eq!(claim.keys(), [key(1)]);
        drop(claim);
        let claim = window.claim(&[key(1)]).await;
        assert_eq!(claim.new, [true], "a failed attempt leaves it new");
        claim.commit();
        assert_eq!(window.claim(&[key(1)]).await.new, [false]);
        assert_eq!(window.len(), 2);
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_attempt_in_flight_and_follows_its_outcome() {
        let window = Arc::new(Window::new(Duration::from_secs(60), 100, vec![], now_ms()));
        let first = window.claim(&[key(1), key(2)]).await;
        let waiting = {
            let window = window.clone();
            tokio::spawn(async move { window.claim(&[key(2), key(3)]).await.new.clone() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while key 2 is in flight");
        first.commit();
        assert_eq!(waiting.await.unwrap(), [false, true]);

        let second = window.claim(&[key(4)]).await;
        let waiting = {
            let window = window.clone();
            tokio::spawn(async move { window.claim(&[key(4)]).await.new.clone() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(second);
        assert_eq!(waiting.await.unwrap(), [true], "the first attempt failed");
    }

    #[tokio::test]
    async fn a_full_window_forgets_its_oldest_and_counts_them() {
        let window = Arc::new(Window::new(Duration::from_secs(60), 3, vec![], now_ms()));
        for n in 0..5 {
            window.claim(&[key(n)]).await.commit();
        }
        assert_eq!(window.len(), 3);
        assert_eq!(window.take_evicted(), 2);
        assert_eq!(window.take_evicted(), 0, "counted once");
        assert_eq!(window.claim(&[key(0)]).await.new, [true]);
        assert_eq!(window.claim(&[key(4)]).await.new, [false]);
    }

    #[test]
    fn repeats_within_a_request_are_found() {
        assert_eq!(
            repeats_within(&[key(1), key(2), key(1), key(1)]),
            [false, false, true, true]
        );
    }
}
