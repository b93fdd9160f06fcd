//! The delivery journal: pending deliveries in an append-only log of our
//! own, beside sled in the data directory (`deliveries/`).
//!
//! Pending deliveries are a queue: written once, read once after a restart,
//! removed soon. sled's copy-on-write tree is the wrong shape for that (it
//! rewrites a tree node on every insert and remove, and its flush runs on a
//! pool of threads that wake and sleep per write), and measured as the
//! bottleneck of event ingress. The journal writes each accepted event once,
//! with the deliveries of every trigger it matched, as one frame; a delivery
//! that ends appends a few bytes. One writer thread writes whatever has
//! accumulated with one `write` and, when someone waits for durability, one
//! `fdatasync`: concurrent ingress requests share both. When at least
//! [`COMMIT_SIBLINGS`] requests waited for a sync, the writer waits
//! [`COMMIT_DELAY`] before the next so that more join it; a lone request is
//! never delayed.
//!
//! Layout: segment files `NNNNNNNNNNNNNNNNNNNN.log`, each a sequence of
//! frames `[len: u32 LE][crc32: u32 LE][payload]`. A payload is
//! `1` + JSON of a [`PutFrame`] (an event and its deliveries; a later put of
//! the same id replaces it, as a retry does) or `2` + little-endian u64 ids of
//! deliveries that ended. A new segment starts at each open and when the
//! active one passes [`SEGMENT_BYTES`]. The oldest segment is deleted once no
//! pending delivery lives in it (oldest first, so an end record is never
//! dropped while the put it cancels remains); when more than
//! [`MAX_SEALED`] sealed segments pile up behind long-retrying deliveries,
//! the oldest one's live deliveries are copied forward, synced, and the
//! segment deleted.
//!
//! Recovery reads every segment in order. A frame cut short or failing its
//! checksum at the end of the last segment is a write a crash interrupted
//! (never acknowledged): the file is cut there. Anywhere else it is
//! corruption, a clear error.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::events::DeliveryRecord;
use crate::{Result, StoreError};

/// A segment is sealed and a new one started past this many bytes (by
/// default).
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// How long writes nobody waits for (ends, retries) may sit in memory.
pub(crate) const IDLE_WRITE: std::time::Duration = std::time::Duration::from_millis(10);

/// How long the writer waits for more puts before a sync when enough
/// waited for the previous one ([`COMMIT_SIBLINGS`]): under load, more
/// events share one `fdatasync` (PostgreSQL's `commit_delay`).
pub(crate) const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(200);

/// Waiters at a sync from which the writer delays the next one.
pub(crate) const COMMIT_SIBLINGS: usize = 4;

/// Sealed segments kept before the oldest one's live deliveries are copied
/// forward.
pub(crate) const MAX_SEALED: usize = 4;

const PUT: u8 = 1;
const DONE: u8 = 2;
const HEADER: usize = 8;
/// Largest frame accepted on reading (an event is at most a few MiB).
const MAX_FRAME: usize = 256 << 20;

/// One event and its deliveries, the event stored once.
#[derive(Serialize, Deserialize)]
struct PutFrame<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    deliveries: Vec<Slim>,
}

/// A [`DeliveryRecord`] without its event.
#[derive(Serialize, Deserialize)]
struct Slim {
    id: u64,
    broker: String,
    trigger: String,
    attempts: u32,
    not_before_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_letter: Option<u64>,
    #[serde(default)]
    group: u64,
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Frames `records`, one put frame per run of records sharing an event.
fn encode_puts(records: &[DeliveryRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    for run in records.chunk_by(|a, b| Arc::ptr_eq(&a.event, &b.event) || a.event == b.event) {
        payload.clear();
        payload.push(PUT);
        let put = PutFrame {
            event: std::borrow::Cow::Borrowed(&run[0].event),
            deliveries: run
                .iter()
                .map(|r| Slim {
                    id: r.id,
                    broker: r.broker.clone(),
                    trigger: r.trigger.clone(),
                    attempts: r.attempts,
                    not_before_ms: r.not_before_ms,
                    dead_letter: r.dead_letter,
                    group: r.group,
                })
                .collect(),
        };
        serde_json::to_writer(&mut payload, &put).expect("records always serialize");
        frame(&mut out, &payload);
    }
    out
}

fn encode_done(ids: &[u64]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + 8 * ids.len());
    payload.push(DONE);
    for id in ids {
        payload.extend_from_slice(&id.to_le_bytes());
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    frame(&mut out, &payload);
    out
}

/// What one segment holds, decoded.
enum Entry {
    Put(Vec<DeliveryRecord>),
    Done(Vec<u64>),
}

/// Decodes the frames of one segment. Returns the entries and, if the data
/// ends in a bad frame, the offset where the good frames end.
fn decode(data: &[u8]) -> (Vec<Entry>, Option<(usize, String)>) {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let bad = |why: String| Some((at, why));
        if data.len() - at < HEADER {
            return (entries, bad("a frame header is cut short".into()));
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap());
        if len > MAX_FRAME || data.len() - at - HEADER < len {
            return (entries, bad(format!("a frame of {len} bytes is cut short")));
        }
        let payload = &data[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            return (entries, bad("a frame fails its checksum".into()));
        }
        let entry = match payload.split_first() {
            Some((&PUT, json)) => match serde_json::from_slice::<PutFrame>(json) {
                Ok(put) => {
                    // One copy of the event, shared by its deliveries.
                    let event: Arc<str> = put.event.into();
                    Entry::Put(
                        put.deliveries
                            .into_iter()
                            .map(|s| DeliveryRecord {
                                id: s.id,
                                broker: s.broker,
                                trigger: s.trigger,
                                event: event.clone(),
                                attempts: s.attempts,
                                not_before_ms: s.not_before_ms,
                                dead_letter: s.dead_letter,
                                group: s.group,
                            })
                            .collect(),
                    )
                }
                Err(error) => return (entries, bad(format!("a put frame is invalid: {error}"))),
            },
            Some((&DONE, ids)) if ids.len() % 8 == 0 => Entry::Done(
                ids.chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            _ => return (entries, bad("a frame has an unknown kind".into())),
        };
        entries.push(entry);
        at += HEADER + len;
    }
    (entries, None)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Segments in `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let read = std::fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in read {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        seqs.push(seq);
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Pending deliveries by id, each with the segment holding it.
type Recovered = BTreeMap<u64, (u64, DeliveryRecord)>;

/// Reads every segment: the pending deliveries by id, and which segment
/// holds each. With `repair`, a torn tail of the last segment is cut off.
fn scan(dir: &Path, repair: bool) -> Result<(Recovered, Vec<u64>)> {
    let seqs = segments(dir)?;
    let mut live = BTreeMap::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // Deleted since listed: spent, nothing lives in it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        let (entries, bad) = decode(&data);
        for entry in entries {
            match entry {
                Entry::Put(records) => {
                    for record in records {
                        live.insert(record.id, (seq, record));
                    }
                }
                Entry::Done(ids) => {
                    for id in ids {
                        live.remove(&id);
                    }
                }
            }
        }
        if let Some((at, why)) = bad {
            let last = i + 1 == seqs.len();
            if !last {
                return Err(StoreError::Corrupt(format!(
                    "delivery journal {} at byte {at}: {why}",
                    path.display()
                )));
            }
            if repair {
                tracing::warn!(path = %path.display(), at, %why, "cutting a torn write off the delivery journal");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(format!("opening {}", path.display())))?;
                file.set_len(at as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(format!("repairing {}", path.display())))?;
            }
        }
    }
    Ok((live, seqs))
}

/// Bytes waiting for the writer, in order.
enum Chunk {
    Data(Vec<u8>),
    /// Seal the current segment (synced) and continue in segment `seq`.
    Roll(u64),
}

struct State {
    chunks: Vec<Chunk>,
    /// Deliveries that ended since the last write: one end frame, written
    /// after the chunks (so after every put it cancels).
    done: Vec<u64>,
    /// A sync is due even without waiters (deliveries copied forward).
    sync_due: bool,
    /// Answered once everything appended before them is synced.
    waiters: Vec<oneshot::Sender<std::result::Result<(), String>>>,
    /// Pending delivery id → the segment holding its latest record.
    live: HashMap<u64, u64>,
    /// Segment → how many pending deliveries live in it, oldest first.
    counts: BTreeMap<u64, usize>,
    active: u64,
    active_len: u64,
    error: Option<String>,
    closing: bool,
    /// The writer is waiting on `work`: only then does a put wake it (a
    /// futex call per put otherwise, while the writer is busy syncing).
    sleeping: bool,
}

impl State {
    /// Records that the latest record of delivery `id` is in segment `seq`.
    fn place(&mut self, id: u64, seq: u64) {
        if let Some(old) = self.live.insert(id, seq) {
            *self
                .counts
                .get_mut(&old)
                .expect("segments of live ids are counted") -= 1;
        }
        *self
            .counts
            .get_mut(&seq)
            .expect("the segment written to is counted") += 1;
    }
}

struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    work: Condvar,
    /// The file being written, and its segment.
    file: Mutex<(File, u64)>,
    failed: Arc<AtomicBool>,
}

/// The journal. Dropping the last handle writes and syncs what is left and
/// stops the writer thread.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    /// What the open read, until [`Journal::recovered`] takes it.
    recovered: Mutex<Option<Vec<DeliveryRecord>>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens the journal in `dir`, recovering what it holds.
    pub(crate) fn open(dir: &Path, failed: Arc<AtomicBool>) -> Result<Journal> {
        Journal::open_with(dir, failed, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, failed: Arc<AtomicBool>, segment_bytes: u64) -> Result<Journal> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let (records, seqs) = scan(dir, true)?;
        let mut live = HashMap::with_capacity(records.len());
        let mut counts: BTreeMap<u64, usize> = seqs.iter().map(|&s| (s, 0)).collect();
        let mut recovered = Vec::with_capacity(records.len());
        for (id, (seq, record)) in records {
            live.insert(id, seq);
            *counts.entry(seq).or_default() += 1;
            recovered.push(record);
        }
        let active = seqs.last().map_or(1, |last| last + 1);
        counts.insert(active, 0);
        let file = create_segment(dir, active)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(State {
                chunks: Vec::new(),
                done: Vec::new(),
                sync_due: false,
                waiters: Vec::new(),
                live,
                counts,
                active,
                active_len: 0,
                error: None,
                closing: false,
                sleeping: false,
            }),
            work: Condvar::new(),
            file: Mutex::new((file, active)),
            failed,
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sluice-journal".into())
                .spawn(move || shared.run())
                .map_err(io_error("starting the journal writer"))?
        };
        Ok(Journal {
            shared,
            recovered: Mutex::new(Some(recovered)),
            writer: Some(writer),
        })
    }

    /// Appends `records`; the receiver answers once they are on disk.
    pub(crate) fn put(
        &self,
        records: &[DeliveryRecord],
        durable: bool,
    ) -> Result<Option<oneshot::Receiver<std::result::Result<(), String>>>> {
        let bytes = encode_puts(records);
        let mut state = self.shared.state.lock().unwrap();
        if let Some(error) = &state.error {
            return Err(failed(error));
        }
        let seq = self.shared.append(&mut state, bytes);
        for record in records {
            state.place(record.id, seq);
        }
        let receiver = durable.then(|| {
            let (tx, rx) = oneshot::channel();
            state.waiters.push(tx);
            rx
        });
        // A busy writer looks at the waiters again before it sleeps.
        let wake = durable && std::mem::take(&mut state.sleeping);
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(receiver)
    }

    /// Records that deliveries `ids` ended. Written with the next sync or
    /// within [`IDLE_WRITE`], not synced on its own: a crash before that
    /// runs them again (at least once). Wakes no thread.
    pub(crate) fn done(&self, ids: &[u64]) -> Result<()> {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(error) = &state.error {
            return Err(failed(error));
        }
        for id in ids {
            if let Some(seq) = state.live.remove(id) {
                *state
                    .counts
                    .get_mut(&seq)
                    .expect("segments of live ids are counted") -= 1;
                state.done.push(*id);
                state.active_len += 8;
            }
        }
        Ok(())
    }

    /// Whether delivery `id` is pending.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.shared.state.lock().unwrap().live.contains_key(&id)
    }

    /// Pending deliveries.
    pub(crate) fn len(&self) -> usize {
        self.shared.state.lock().unwrap().live.len()
    }

    /// The deliveries that were pending when the journal opened and still
    /// are, oldest first: the first call hands out what the open read (a
    /// restart with a large backlog reads the files once), later ones read
    /// the files again.
    pub(crate) fn recovered(&self) -> Result<Vec<DeliveryRecord>> {
        let Some(mut records) = self.recovered.lock().unwrap().take() else {
            return self.pending();
        };
        let state = self.shared.state.lock().unwrap();
        records.retain(|record| state.live.contains_key(&record.id));
        Ok(records)
    }

    /// Every pending delivery, oldest first, read back from the files.
    pub(crate) fn pending(&self) -> Result<Vec<DeliveryRecord>> {
        self.shared.write_out(false)?;
        let (records, _) = scan(&self.shared.dir, false)?;
        Ok(records.into_values().map(|(_, record)| record).collect())
    }

    /// Writes and syncs everything appended so far, blocking.
    pub(crate) fn sync_blocking(&self) -> Result<()> {
        self.shared.write_out(true).map(|_| ())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closing = true;
        self.shared.work.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn failed(error: &str) -> StoreError {
    StoreError::Io {
        context: "writing the delivery journal".into(),
        source: std::io::Error::other(error.to_string()),
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    // The new file's name must survive a crash too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("syncing {}", dir.display())))?;
    Ok(file)
}

impl Shared {
    /// Queues `bytes` for the active segment (rolling to a new one when it
    /// is full); returns the segment they go to.
    fn append(&self, state: &mut State, bytes: Vec<u8>) -> u64 {
        if state.active_len > 0 && state.active_len + bytes.len() as u64 > self.segment_bytes {
            state.active += 1;
            state.active_len = 0;
            let active = state.active;
            state.counts.insert(active, 0);
            state.chunks.push(Chunk::Roll(active));
        }
        state.active_len += bytes.len() as u64;
        state.chunks.push(Chunk::Data(bytes));
        state.active
    }

    /// Writes the queued chunks to the files; with `sync`, syncs the file.
    /// Returns how many pending deliveries each segment held as of the
    /// bytes written: a segment empty there stays empty once they are
    /// synced, whatever was appended since (a retry moving a delivery out
    /// of an old segment is only safe once the retry's record is synced).
    fn write_out(&self, sync: bool) -> Result<BTreeMap<u64, usize>> {
        let mut file = self.file.lock().unwrap();
        let (chunks, counts) = {
            let mut state = self.state.lock().unwrap();
            let mut chunks = std::mem::take(&mut state.chunks);
            if !state.done.is_empty() {
                chunks.push(Chunk::Data(encode_done(&state.done)));
                state.done.clear();
            }
            (chunks, state.counts.clone())
        };
        let result = self.write_chunks(&mut file, chunks).and_then(|()| {
            if sync {
                file.0
                    .sync_data()
                    .map_err(io_error("syncing the delivery journal"))
            } else {
                Ok(())
            }
        });
        if let Err(error) = &result {
            self.fail(error.to_string());
        }
        result.map(|()| counts)
    }

    fn write_chunks(&self, file: &mut (File, u64), chunks: Vec<Chunk>) -> Result<()> {
        let mut batch = Vec::new();
        for chunk in chunks {
            match chunk {
                Chunk::Data(bytes) => {
                    if batch.is_empty() {
                        batch = bytes;
                    } else {
                        batch.extend_from_slice(&bytes);
                    }
                }
                Chunk::Roll(seq) => {
                    file.0
                        .write_all(&batch)
                        .and_then(|()| file.0.sync_data())
                        .map_err(io_error("writing the delivery journal"))?;
                    batch.clear();
                    *file = (create_segment(&self.dir, seq)?, seq);
                }
            }
        }
        file.0
            .write_all(&batch)
            .map_err(io_error("writing the delivery journal"))
    }

    fn fail(&self, error: String) {
        self.failed.store(true, Ordering::Release);
        let mut state = self.state.lock().unwrap();
        for waiter in state.waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
        state.error.get_or_insert(error);
    }

    /// The writer thread: write what accumulated, sync when someone waits,
    /// answer them, then drop segments nothing lives in.
    fn run(&self) {
        loop {
            let (waiters, sync_due, closing) = {
                let mut state = self.state.lock().unwrap();
                // Wake for someone waiting; write what nobody waits for
                // after a short while, in one go.
                while state.waiters.is_empty() && !state.sync_due && !state.closing {
                    state.sleeping = true;
                    if state.chunks.is_empty() && state.done.is_empty() {
                        state = self.work.wait(state).unwrap();
                    } else {
                        let (next, timeout) = self.work.wait_timeout(state, IDLE_WRITE).unwrap();
                        state = next;
                        if timeout.timed_out() {
                            state.sleeping = false;
                            break;
                        }
                    }
                    state.sleeping = false;
                }
                if state.waiters.len() >= COMMIT_SIBLINGS && !state.closing {
                    // Busy: let more puts join this sync.
                    drop(state);
                    std::thread::sleep(COMMIT_DELAY);
                    state = self.state.lock().unwrap();
                }
                let sync_due = std::mem::take(&mut state.sync_due);
                (std::mem::take(&mut state.waiters), sync_due, state.closing)
            };
            let sync = !waiters.is_empty() || sync_due || closing;
            let result = self.write_out(sync).map_err(|e| e.to_string());
            for waiter in waiters {
                let _ = waiter.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
            }
            match result {
                Ok(synced) if sync && !closing => self.collect(&synced),
                Ok(_) if !closing => {}
                _ => return,
            }
        }
    }

    /// Deletes the oldest sealed segments nothing lives in, and copies the
    /// live deliveries of the oldest forward when too many are sealed.
    /// Runs right after a sync, with the counts as of the synced bytes, so
    /// copies made before are durable before their source goes.
    fn collect(&self, synced: &BTreeMap<u64, usize>) {
        let written = self.file.lock().unwrap().1;
        let mut dead = Vec::new();
        let mut copy = None;
        {
            let mut state = self.state.lock().unwrap();
            while let Some((&seq, &count)) = state.counts.first_key_value() {
                if seq >= written || count > 0 || synced.get(&seq).is_none_or(|&n| n > 0) {
                    break;
                }
                state.counts.remove(&seq);
                dead.push(seq);
            }
            if state.counts.range(..written).count() > MAX_SEALED {
                copy = state.counts.first_key_value().map(|(&seq, _)| seq);
            }
        }
        for seq in dead {
            let path = segment_path(&self.dir, seq);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "could not delete a spent journal segment");
            }
        }
        if let Some(seq) = copy
            && let Err(error) = self.copy_forward(seq)
        {
            tracing::error!(seq, %error, "could not copy live deliveries out of an old journal segment");
        }
    }

    /// Re-appends the deliveries still living in sealed segment `seq` to
    /// the active one; a later collection deletes `seq` once they are synced.
    fn copy_forward(&self, seq: u64) -> Result<()> {
        let path = segment_path(&self.dir, seq);
        let data = std::fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
        let (entries, _) = decode(&data);
        let mut latest = BTreeMap::new();
        for entry in entries {
            if let Entry::Put(records) = entry {
                for record in records {
                    latest.insert(record.id, record);
                }
            }
        }
        let mut state = self.state.lock().unwrap();
        let moving: Vec<DeliveryRecord> = latest
            .into_values()
            .filter(|r| state.live.get(&r.id) == Some(&seq))
            .collect();
        if !moving.is_empty() {
            tracing::info!(
                seq,
                deliveries = moving.len(),
                "copying live deliveries out of an old journal segment"
            );
        }
        for record in &moving {
            let to = self.append(&mut state, encode_puts(std::slice::from_ref(record)));
            state.place(record.id, to);
        }
        state.sync_due = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, event: &str) -> DeliveryRecord {
        DeliveryRecord {
            id,
            broker: "default".into(),
            trigger: format!("t{}", id % 3),
            event: event.into(),
            attempts: 0,
            not_before_ms: 0,
            dead_letter: None,
            group: id - id % 3,
        }
    }

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, Arc::default()).unwrap()
    }

    #[tokio::test]
    async fn puts_survive_reopen_until_done_and_the_event_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let event = format!(r#"{{"id":"1","data":"{}"}}"#, "x".repeat(1000));
        let records: Vec<_> = (3..6).map(|id| record(id, &event)).collect();
        {
            let journal = open(dir.path());
            let rx = journal.put(&records, true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
            let size: u64 = segments(dir.path())
                .unwrap()
                .iter()
                .map(|&s| {
                    std::fs::metadata(segment_path(dir.path(), s))
                        .unwrap()
                        .len()
                })
                .sum();
            assert!(
                size < 1500,
                "three deliveries of one 1 KB event took {size} bytes"
            );
        }
        let journal = open(dir.path());
        assert_eq!(journal.pending().unwrap(), records);
        assert_eq!(journal.len(), 3);
        journal.done(&[4]).unwrap();
        let mut retried = records[2].clone();
        retried.attempts = 1;
        retried.not_before_ms = 99;
        journal.put(std::slice::from_ref(&retried), false).unwrap();
        drop(journal);
        let journal = open(dir.path());
        assert_eq!(
            journal.pending().unwrap(),
            vec![records[0].clone(), retried]
        );
    }

    #[tokio::test]
    async fn what_the_open_read_is_handed_out_once_without_what_ended_since() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (3..7).map(|id| record(id, "{}")).collect();
        {
            let journal = open(dir.path());
            let rx = journal.put(&records, true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
        }
        let journal = open(dir.path());
        journal.done(&[4]).unwrap();
        let later = record(9, "{}");
        journal.put(std::slice::from_ref(&later), false).unwrap();
        let expected = vec![records[0].clone(), records[2].clone(), records[3].clone()];
        let recovered = journal.recovered().unwrap();
        assert_eq!(recovered, expected, "no 4, no 9");
        assert!(
            Arc::ptr_eq(&recovered[0].event, &recovered[2].event),
            "deliveries of one event share one copy of it"
        );
        // Taken: the next call reads the files, so it sees the later put.
        let mut all = expected;
        all.push(later);
        assert_eq!(journal.recovered().unwrap(), all);
        assert_eq!(journal.pending().unwrap(), all);
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = open(dir.path());
            journal.put(&[record(3, "{}")], false).unwrap();
            journal.put(&[record(4, "{}")], false).unwrap();
            journal.sync_blocking().unwrap();
        }
        let seq = *segments(dir.path()).unwrap().last().unwrap();
        let path = segment_path(dir.path(), seq);
        let full = std::fs::read(&path).unwrap();
        // A crash mid-write: the second frame cut short.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        {
            let journal = open(dir.path());
            assert_eq!(journal.pending().unwrap(), vec![record(3, "{}")]);
            journal.put(&[record(6, "{}")], false).unwrap();
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            full.len() / 2,
            "the torn frame was cut off"
        );
        // A flipped byte in a sealed segment is not a torn write.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        match Journal::open(dir.path(), Arc::default()) {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("checksum"), "{message}"),
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("expected corruption, the journal opened"),
        }
    }

    #[tokio::test]
    async fn spent_segments_are_deleted_and_a_long_pending_delivery_is_copied_forward() {
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes = 64 << 10;
        let big = format!(r#"{{"data":"{}"}}"#, "y".repeat(8 << 10));
        let journal = Journal::open_with(dir.path(), Arc::default(), segment_bytes).unwrap();
        let mut id = 10;
        let mut fill = async |journal: &Journal, segments: usize| {
            for _ in 0..(segment_bytes as usize / big.len() + 1) * segments {
                let rx = journal.put(&[record(id, &big)], true).unwrap().unwrap();
                rx.await.unwrap().unwrap();
                journal.done(&[id]).unwrap();
                id += 1;
            }
        };
        fill(&journal, 5).await;
        let left = segments(dir.path()).unwrap();
        assert!(left.len() <= 2, "spent segments were not deleted: {left:?}");
        // A delivery that stays pending while many segments fill behind it
        // is copied forward, and its old segment deleted.
        let first = *left.last().unwrap();
        journal.put(&[record(1, "{\"keep\":true}")], false).unwrap();
        fill(&journal, 3 * MAX_SEALED).await;
        let left = segments(dir.path()).unwrap();
        assert!(
            left.len() <= MAX_SEALED + 2,
            "too many segments kept: {left:?}"
        );
        assert!(
            left[0] > first,
            "the pending delivery's first segment was kept: {left:?}"
        );
        drop(journal);
        let journal = Journal::open_with(dir.path(), Arc::default(), segment_bytes).unwrap();
        assert_eq!(
            journal.pending().unwrap(),
            vec![record(1, "{\"keep\":true}")]
        );
        // Once it ends, they all go.
        journal.done(&[1]).unwrap();
        fill(&journal, 1).await;
        let left = segments(dir.path()).unwrap();
        assert!(left.len() <= 2, "spent segments were not deleted: {left:?}");
        drop(journal);
        assert!(open(dir.path()).pending().unwrap().is_empty());
    }

    #[test]
    fn every_prefix_of_a_journal_recovers_a_prefix_of_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = open(dir.path());
            for id in 3..9 {
                journal.put(&[record(id, "{\"a\":1}")], false).unwrap();
            }
            journal.done(&[3, 5]).unwrap();
            journal.sync_blocking().unwrap();
        }
        let seq = *segments(dir.path()).unwrap().last().unwrap();
        let path = segment_path(dir.path(), seq);
        let full = std::fs::read(&path).unwrap();
        let mut seen = 0;
        for cut in 0..=full.len() {
            let case = tempfile::tempdir().unwrap();
            std::fs::write(segment_path(case.path(), seq), &full[..cut]).unwrap();
            let pending = open(case.path()).pending().unwrap();
            let ids: Vec<u64> = pending.iter().map(|r| r.id).collect();
            // Always a prefix of the writes: puts in order, then the end.
            let expected_prefixes: [&[u64]; 8] = [
                &[],
                &[3],
                &[3, 4],
                &[3, 4, 5],
                &[3, 4, 5, 6],
                &[3, 4, 5, 6, 7],
                &[3, 4, 5, 6, 7, 8],
                &[4, 6, 7, 8],
            ];
            assert!(
                expected_prefixes.contains(&ids.as_slice()),
                "cut at {cut}: {ids:?}"
            );
            seen = seen.max(ids.len());
        }
        assert_eq!(seen, 6);
    }
}
