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
//! accumulated with one `write` and one `fdatasync`: concurrent ingress
//! requests share both. When at least [`COMMIT_SIBLINGS`] requests waited
//! for a sync, the writer waits [`COMMIT_DELAY`] before the next so that
//! more join it; a lone request is never delayed. Writes nobody waits for
//! (ends, retries) are written and synced within [`IDLE_WRITE`], whether or
//! not anything else is going on.
//!
//! Layout: segment files `NNNNNNNNNNNNNNNNNNNN.log`, each a sequence of
//! frames `[len: u32 LE][crc32: u32 LE][payload]`. A payload is
//! `1` + JSON of a [`PutFrame`] (an event and its deliveries; a later put of
//! the same id replaces it, as a retry does) or `2` + little-endian u64 ids of
//! deliveries that ended. A new segment starts at each open and when the
//! active one passes [`SEGMENT_BYTES`]. A sealed segment is deleted once no
//! pending delivery lives in it, oldest first (so an end record is never
//! dropped while a put it cancels remains), one at a time, each deletion
//! synced before the next. When more than [`MAX_SEALED`] segments are
//! sealed and the dead bytes in them have reached the live ones, the oldest
//! one's live deliveries are copied forward (one frame per event, off the
//! writer thread), synced, and the segment deleted: a pass over a backlog
//! writes no more than the dead bytes it frees, and a backlog with nothing
//! dead behind it is never rewritten.
//!
//! Durability, sync by sync (each is needed; the power-cut property test
//! in this module fails without any one of them):
//! - an acknowledged put: `fdatasync` of the active segment after writing it;
//! - a new segment: `fsync` of the directory after creating it, and
//!   `fdatasync` of the segment before it (at a roll and, at open, of the
//!   last segment a crash left, which may hold unsynced frames);
//! - the directory itself: `fsync` of its parent after creating it;
//! - deleted segments: `fsync` of the directory after deleting each one,
//!   so a deleted segment never comes back without the segment after it;
//! - de-duplication keys (`window.rs`): a keys frame follows the put frames
//!   of its events in the same write, so any prefix a crash keeps that
//!   holds a key holds its event; the same frames reach the window's files
//!   only after the journal sync that made them durable, and those files are
//!   synced before any segment is deleted (the power-cut test of keys fails
//!   without either order).
//!
//! After a failed write or sync the journal writes nothing more and refuses
//! every put (the file may end in a partial frame; a second sync after a
//! failed one can report success without the data): 503 until a restart.
//!
//! Recovery reads every segment in order. A frame cut short or failing its
//! checksum at the end of the last segment, with no valid frame after it, is
//! a write a crash interrupted (never acknowledged): the file is cut there.
//! Anything else is corruption: the open fails naming the file and offset,
//! and [`Config::salvage`] (`sluice serve --salvage-journal`) keeps every
//! readable frame and drops the damaged bytes instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::disk::{Disk, DiskFile, OsDisk};
use crate::events::DeliveryRecord;
use crate::window::{Archive, DedupeKey, Window, read_archive};
use crate::{Result, StoreError};

/// A segment is sealed and a new one started past this many bytes (by
/// default).
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// How long writes nobody waits for (ends, retries) may sit in memory
/// before they are written and synced.
pub(crate) const IDLE_WRITE: Duration = Duration::from_millis(10);

/// How long the writer waits for more puts before a sync when enough
/// waited for the previous one ([`COMMIT_SIBLINGS`]): under load, more
/// events share one `fdatasync` (PostgreSQL's `commit_delay`).
pub(crate) const COMMIT_DELAY: Duration = Duration::from_micros(200);

/// Waiters at a sync from which the writer delays the next one.
pub(crate) const COMMIT_SIBLINGS: usize = 4;

/// Sealed segments kept before the oldest one's live deliveries may be
/// copied forward.
pub(crate) const MAX_SEALED: usize = 4;

/// Bytes of event text the deliveries recovered at open keep (oldest
/// first); the rest keep an empty event and are read back when due
/// ([`Journal::event`]), so opening a large backlog does not hold every
/// event in memory at once.
pub(crate) const RECOVER_EVENT_BYTES: usize = 32 << 20;

const PUT: u8 = 1;
const DONE: u8 = 2;
/// `3` + [`crate::window::KEY_BYTES`] per key: de-duplication keys of
/// accepted events (see `window.rs`).
const KEYS: u8 = 3;
/// Most keys in one keys frame written at open.
const KEYS_PER_FRAME: usize = 1 << 16;
const HEADER: usize = 8;
/// Largest frame accepted on reading (an event is at most a few MiB).
const MAX_FRAME: usize = 256 << 20;

/// How a journal is opened.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// See [`SEGMENT_BYTES`].
    pub(crate) segment_bytes: u64,
    /// See [`MAX_SEALED`].
    pub(crate) max_sealed: usize,
    /// See [`IDLE_WRITE`].
    pub(crate) idle_write: Duration,
    /// Keep every readable frame of a damaged journal instead of refusing
    /// to open it (the deliveries in the damaged bytes are lost).
    pub(crate) salvage: bool,
    /// See [`RECOVER_EVENT_BYTES`].
    pub(crate) recover_event_bytes: usize,
    /// How long de-duplication keys are kept (`None`: none are written,
    /// and the window's files are left alone).
    pub(crate) dedupe_window: Option<Duration>,
    /// Most keys the window holds in memory.
    pub(crate) dedupe_max_events: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            segment_bytes: SEGMENT_BYTES,
            max_sealed: MAX_SEALED,
            idle_write: IDLE_WRITE,
            salvage: false,
            recover_event_bytes: RECOVER_EVENT_BYTES,
            dedupe_window: None,
            dedupe_max_events: 1_000_000,
        }
    }
}

/// One event and its deliveries, the event stored once.
#[derive(Serialize, Deserialize)]
struct PutFrame<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    deliveries: Vec<Slim<'a>>,
}

/// A [`DeliveryRecord`] without its event.
#[derive(Serialize, Deserialize)]
struct Slim<'a> {
    id: u64,
    #[serde(borrow)]
    broker: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    trigger: std::borrow::Cow<'a, str>,
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

/// One encoded put frame and the deliveries in it.
struct Encoded {
    bytes: Vec<u8>,
    ids: Vec<u64>,
}

/// Frames `records`, one put frame per run of records sharing an event.
fn encode_puts(records: &[DeliveryRecord]) -> Vec<Encoded> {
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
                    broker: std::borrow::Cow::Borrowed(&r.broker),
                    trigger: std::borrow::Cow::Borrowed(&r.trigger),
                    attempts: r.attempts,
                    not_before_ms: r.not_before_ms,
                    dead_letter: r.dead_letter,
                    group: r.group,
                })
                .collect(),
        };
        serde_json::to_writer(&mut payload, &put).expect("records always serialize");
        let mut bytes = Vec::with_capacity(HEADER + payload.len());
        frame(&mut bytes, &payload);
        out.push(Encoded {
            bytes,
            ids: run.iter().map(|r| r.id).collect(),
        });
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

/// What one frame holds, decoded.
enum Entry {
    Put(Vec<DeliveryRecord>),
    Done(Vec<u64>),
    Keys(Vec<(DedupeKey, u64)>),
}

/// `keys` accepted at `at_ms` as keys frames.
fn encode_key_frames(keys: &[DedupeKey], at_ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in keys.chunks(KEYS_PER_FRAME) {
        frame(&mut out, &crate::window::encode_keys(KEYS, chunk, at_ms));
    }
    out
}

/// A decoded frame and where it is.
struct Frame {
    offset: usize,
    /// Header included.
    len: usize,
    entry: Entry,
}

/// One shared copy of each broker and trigger name read back (a backlog
/// names the same few in every record).
#[derive(Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        self.0.insert(name.clone());
        name
    }
}

/// Decodes the frame at `at`: the entry and the frame's length, or why it
/// is not a valid frame.
fn read_frame(data: &[u8], at: usize) -> std::result::Result<(Entry, usize), String> {
    read_frame_with(data, at, &mut Names::default())
}

/// [`read_frame`], sharing names through `names`.
fn read_frame_with(
    data: &[u8],
    at: usize,
    names: &mut Names,
) -> std::result::Result<(Entry, usize), String> {
    if data.len() - at < HEADER {
        return Err("a frame header is cut short".into());
    }
    let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap());
    if len > MAX_FRAME || data.len() - at - HEADER < len {
        return Err(format!("a frame of {len} bytes is cut short"));
    }
    let payload = &data[at + HEADER..at + HEADER + len];
    if !matches!(payload.first(), Some(&PUT | &DONE | &KEYS)) {
        return Err("a frame has an unknown kind".into());
    }
    if crc32fast::hash(payload) != crc {
        return Err("a frame fails its checksum".into());
    }
    let entry = match payload.split_first() {
        Some((&PUT, json)) => {
            let put = serde_json::from_slice::<PutFrame>(json)
                .map_err(|error| format!("a put frame is invalid: {error}"))?;
            // One copy of the event, shared by its deliveries.
            let event: Arc<str> = put.event.into();
            Entry::Put(
                put.deliveries
                    .into_iter()
                    .map(|s| DeliveryRecord {
                        id: s.id,
                        broker: names.intern(&s.broker),
                        trigger: names.intern(&s.trigger),
                        event: event.clone(),
                        attempts: s.attempts,
                        not_before_ms: s.not_before_ms,
                        dead_letter: s.dead_letter,
                        group: s.group,
                    })
                    .collect(),
            )
        }
        Some((&DONE, ids)) if ids.len() % 8 == 0 => Entry::Done(
            ids.chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        ),
        Some((&KEYS, body)) => {
            Entry::Keys(crate::window::decode_keys(body).ok_or("a keys frame is cut short")?)
        }
        _ => return Err("a frame has an unknown kind".into()),
    };
    Ok((entry, HEADER + len))
}

/// Decodes the frames of one segment. Returns them and, if the data ends in
/// a bad frame, the offset where the good frames end and why.
fn decode(data: &[u8]) -> (Vec<Frame>, Option<(usize, String)>) {
    decode_with(data, &mut Names::default())
}

/// [`decode`], sharing names through `names`.
fn decode_with(data: &[u8], names: &mut Names) -> (Vec<Frame>, Option<(usize, String)>) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match read_frame_with(data, at, names) {
            Ok((entry, len)) => {
                frames.push(Frame {
                    offset: at,
                    len,
                    entry,
                });
                at += len;
            }
            Err(why) => return (frames, Some((at, why))),
        }
    }
    (frames, None)
}

/// The first offset after `at` where a valid frame starts, if any: a bad
/// frame followed by a valid one is not a torn write.
fn valid_frame_after(data: &[u8], at: usize) -> Option<usize> {
    (at + 1..data.len().saturating_sub(HEADER)).find(|&o| read_frame(data, o).is_ok())
}

/// The bytes of every valid frame of `data`, in order, and the byte ranges
/// that were skipped.
fn salvageable(data: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut kept = Vec::with_capacity(data.len());
    let mut skipped = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match read_frame(data, at) {
            Ok((_, len)) => {
                kept.extend_from_slice(&data[at..at + len]);
                at += len;
            }
            Err(_) => {
                let next = valid_frame_after(data, at).unwrap_or(data.len());
                skipped.push((at, next));
                at = next;
            }
        }
    }
    (kept, skipped)
}

/// The keys in a window file's frames: past a damaged frame, from the next
/// valid one on (a torn tail or a flipped bit costs only the keys in it),
/// with what was skipped.
fn archived_keys(data: &[u8]) -> (Vec<(DedupeKey, u64)>, Option<String>) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match read_frame(data, at) {
            Ok((entry, len)) => {
                if let Entry::Keys(found) = entry {
                    keys.extend(found);
                }
                at += len;
            }
            Err(why) => {
                let next = valid_frame_after(data, at).unwrap_or(data.len());
                skipped.push(format!("bytes {at}..{next} ({why})"));
                at = next;
            }
        }
    }
    let skipped = (!skipped.is_empty()).then(|| skipped.join(", "));
    (keys, skipped)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Segments in `dir`, in order.
fn segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<u64>> {
    numbered(disk, dir, ".log")
}

/// The whole of `path`; `None` if it does not exist (deleted meanwhile).
pub(crate) fn read_if_present(disk: &dyn Disk, path: &Path) -> Result<Option<Vec<u8>>> {
    match disk.read(path) {
        Ok(data) => Ok(Some(data)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// The numbers of the files `NNN<suffix>` in `dir`, in order.
pub(crate) fn numbered(disk: &dyn Disk, dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let names = disk
        .list(dir)
        .map_err(io_error(format!("listing {}", dir.display())))?;
    let mut seqs: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(suffix)?.parse::<u64>().ok())
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Where the latest put of a pending delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
    /// The frame's length, header included.
    len: u32,
    /// The part of the frame's bytes counted as this delivery's.
    share: u32,
}

/// What a segment holds.
#[derive(Clone, Copy, Debug, Default)]
struct Seg {
    /// Bytes written (or queued) to it.
    bytes: u64,
    /// Pending deliveries whose latest put is in it.
    live: usize,
    /// Their share of its bytes.
    live_bytes: u64,
}

/// What a scan found.
struct Scanned {
    /// Pending deliveries by id, with where each is.
    live: BTreeMap<u64, (Loc, DeliveryRecord)>,
    /// Every segment, with its size (live counts still zero).
    segs: BTreeMap<u64, Seg>,
    /// De-duplication keys, in the order written.
    keys: Vec<(DedupeKey, u64)>,
}

/// Whether a scan may change the files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Cut a torn tail off the last segment.
    Repair,
    /// Change nothing.
    Read,
}

/// Reads every segment: the pending deliveries and the segments. In
/// [`Mode::Repair`], a torn tail of the last segment is cut off. The
/// deliveries keep `event_bytes` of event text, in the order they are
/// found; past it, their event is empty (read it back by location).
fn scan(disk: &dyn Disk, dir: &Path, mode: Mode, event_bytes: usize) -> Result<Scanned> {
    let seqs = segments(disk, dir)?;
    let mut live: BTreeMap<u64, (Loc, DeliveryRecord)> = BTreeMap::new();
    let mut kept = 0usize;
    let no_event: Arc<str> = Arc::from("");
    let mut segs = BTreeMap::new();
    let mut names = Names::default();
    let mut keys = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        // Deleted since listed: spent, nothing lives in it.
        let Some(data) = read_if_present(disk, &path)? else {
            continue;
        };
        let (frames, bad) = decode_with(&data, &mut names);
        let mut bytes = data.len() as u64;
        for frame in frames {
            match frame.entry {
                Entry::Put(records) => {
                    let share = (frame.len / records.len().max(1)) as u32;
                    for record in records {
                        let loc = Loc {
                            seq,
                            offset: frame.offset as u64,
                            len: frame.len as u32,
                            share,
                        };
                        let mut record = record;
                        let len = record.event.len();
                        if kept + len <= event_bytes {
                            kept += len;
                        } else {
                            record.event = no_event.clone();
                        }
                        if let Some((_, old)) = live.insert(record.id, (loc, record)) {
                            kept -= old.event.len();
                        }
                    }
                }
                Entry::Done(ids) => {
                    for id in ids {
                        if let Some((_, old)) = live.remove(&id) {
                            kept -= old.event.len();
                        }
                    }
                }
                Entry::Keys(found) => keys.extend(found),
            }
        }
        if let Some((at, why)) = bad {
            let last = i + 1 == seqs.len();
            let after = valid_frame_after(&data, at);
            if !last || after.is_some() {
                let follows = match after {
                    Some(next) => format!(", and a valid frame follows at byte {next}"),
                    None => String::new(),
                };
                return Err(StoreError::Corrupt(format!(
                    "delivery journal {} is damaged at byte {at}: {why}{follows}; this is not a write a crash interrupted. \
                     Restore the data directory from a backup, or start with --salvage-journal to keep every readable \
                     frame and drop the damaged bytes (deliveries in them are lost)",
                    path.display()
                )));
            }
            if mode == Mode::Repair {
                tracing::warn!(path = %path.display(), at, %why, "cutting a torn write off the delivery journal");
                disk.truncate(&path, at as u64)
                    .map_err(io_error(format!("repairing {}", path.display())))?;
                bytes = at as u64;
            }
        }
        segs.insert(
            seq,
            Seg {
                bytes,
                ..Seg::default()
            },
        );
    }
    top_up(disk, dir, &mut live, event_bytes.saturating_sub(kept))?;
    Ok(Scanned { live, segs, keys })
}

/// Gives the oldest deliveries whose event text the scan dropped (while
/// deliveries that ended later in the journal still held the budget) their
/// text back, as far as `room` goes.
fn top_up(
    disk: &dyn Disk,
    dir: &Path,
    live: &mut BTreeMap<u64, (Loc, DeliveryRecord)>,
    mut room: usize,
) -> Result<()> {
    // Deliveries of one frame are neighbours: each frame is read once.
    let mut frame: Option<((u64, u64), Vec<DeliveryRecord>)> = None;
    for (id, (loc, record)) in live.iter_mut() {
        if room == 0 {
            break;
        }
        if !record.event.is_empty() {
            continue;
        }
        let at = (loc.seq, loc.offset);
        if frame.as_ref().is_none_or(|(of, _)| *of != at) {
            let path = segment_path(dir, loc.seq);
            let bytes = disk
                .read_at(&path, loc.offset, loc.len as usize)
                .map_err(io_error(format!("reading {}", path.display())))?;
            let records = match read_frame(&bytes, 0) {
                Ok((Entry::Put(records), _)) => records,
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "delivery journal {} at byte {}: not the put the scan read",
                        path.display(),
                        loc.offset
                    )));
                }
            };
            frame = Some((at, records));
        }
        let Some(event) = frame
            .as_ref()
            .and_then(|(_, records)| records.iter().find(|r| r.id == *id))
            .map(|r| r.event.clone())
        else {
            continue;
        };
        if event.len() > room {
            break;
        }
        room -= event.len();
        record.event = event;
    }
    Ok(())
}

/// Rewrites every damaged segment in `dir` with its readable frames only.
fn salvage(disk: &dyn Disk, dir: &Path) -> Result<()> {
    for seq in segments(disk, dir)? {
        let path = segment_path(dir, seq);
        let data = disk
            .read(&path)
            .map_err(io_error(format!("reading {}", path.display())))?;
        let (kept, skipped) = salvageable(&data);
        if skipped.is_empty() {
            continue;
        }
        let lost: usize = skipped.iter().map(|(from, to)| to - from).sum();
        tracing::warn!(path = %path.display(), ?skipped, lost_bytes = lost, "salvaging the delivery journal: dropping damaged bytes");
        let tmp = path.with_extension("salvage");
        let write = || -> std::io::Result<()> {
            // A leftover of an interrupted salvage is not appended to.
            match disk.remove(&tmp) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            let mut file = disk.append_to(&tmp)?;
            file.append(&kept)?;
            file.sync()?;
            disk.rename(&tmp, &path)?;
            disk.sync_dir(dir)
        };
        write().map_err(io_error(format!("salvaging {}", path.display())))?;
    }
    Ok(())
}

/// Bytes waiting for the writer, in order.
enum Chunk {
    Data(Vec<u8>),
    /// Seal the current segment (synced) and continue in segment `seq`.
    Roll(u64),
}

/// What the writer thread is doing while it waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// Not waiting: it looks at the state again before it sleeps.
    Awake,
    /// Waiting at most [`Config::idle_write`] before writing what is queued.
    Timed,
    /// Nothing queued: waiting until woken.
    Idle,
}

struct State {
    chunks: Vec<Chunk>,
    /// Keys frames queued for the window's files (with the same frames in
    /// `chunks`), and the newest key time in them.
    archive: Vec<u8>,
    archive_newest: u64,
    /// Deliveries that ended since the last chunk: one end frame, queued
    /// before the next put (so the offsets of puts are exact) or at the next
    /// write (so after every put it cancels).
    done: Vec<u64>,
    /// A sync is due even without waiters (deliveries copied forward).
    sync_due: bool,
    /// Answered once everything appended before them is synced.
    waiters: Vec<oneshot::Sender<std::result::Result<(), String>>>,
    /// Pending delivery id → where its latest put is.
    live: HashMap<u64, Loc>,
    /// Every segment, oldest first.
    segs: BTreeMap<u64, Seg>,
    active: u64,
    /// Bytes appended to the active segment, written or queued.
    active_len: u64,
    error: Option<String>,
    closing: bool,
    /// Written by a reader (`pending`, `event`) but not yet synced.
    unsynced: bool,
    /// The writer stops without writing what is queued (a simulated crash).
    abandoned: bool,
    sleeping: Sleep,
    /// A copy-forward is running.
    cleaning: bool,
}

impl State {
    /// Records that the latest put of delivery `id` is at `loc`.
    fn place(&mut self, id: u64, loc: Loc) {
        if let Some(old) = self.live.insert(id, loc) {
            self.unplace(old);
        }
        let seg = self
            .segs
            .get_mut(&loc.seq)
            .expect("the segment written to is known");
        seg.live += 1;
        seg.live_bytes += u64::from(loc.share);
    }

    fn unplace(&mut self, old: Loc) {
        let seg = self
            .segs
            .get_mut(&old.seq)
            .expect("segments of live ids are known");
        seg.live -= 1;
        seg.live_bytes = seg.live_bytes.saturating_sub(u64::from(old.share));
    }
}

/// The segment being written.
struct Active {
    file: Box<dyn DiskFile>,
    seq: u64,
}

struct Shared {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: Config,
    state: Mutex<State>,
    work: Condvar,
    file: Mutex<Active>,
    /// The de-duplication window's files (taken after `file`).
    archive: Mutex<Option<Archive>>,
    failed: Arc<AtomicBool>,
}

/// The journal. Dropping the last handle writes and syncs what is left and
/// stops the writer thread.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    /// What the open read, until [`Journal::recovered`] takes it.
    recovered: Mutex<Option<Vec<DeliveryRecord>>>,
    /// The de-duplication window (with the keys found at open).
    window: Option<Arc<Window>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens the journal in `dir`, recovering what it holds.
    pub(crate) fn open(
        dir: &Path,
        failed: Arc<AtomicBool>,
        salvage: bool,
        dedupe: Option<(Duration, usize)>,
    ) -> Result<Journal> {
        let defaults = Config::default();
        let config = Config {
            salvage,
            dedupe_window: dedupe.map(|(window, _)| window),
            dedupe_max_events: dedupe.map_or(defaults.dedupe_max_events, |(_, max)| max),
            ..defaults
        };
        Journal::open_on(Arc::new(OsDisk), dir, failed, config)
    }

    /// Opens the journal in `dir` on `disk`.
    pub(crate) fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        failed: Arc<AtomicBool>,
        config: Config,
    ) -> Result<Journal> {
        disk.create_dir_all(dir)
            .map_err(io_error(format!("creating {}", dir.display())))?;
        // The directory's own name must survive a power cut too.
        if let Some(parent) = dir.parent() {
            disk.sync_dir(parent)
                .map_err(io_error(format!("syncing {}", parent.display())))?;
        }
        if config.salvage {
            salvage(&*disk, dir)?;
        }
        let scanned = scan(&*disk, dir, Mode::Repair, config.recover_event_bytes)?;
        // The last segment may hold frames a killed process wrote but never
        // synced (and a cut just made): make them durable before a segment
        // after it exists, or a power cut would leave a torn segment that is
        // no longer the last.
        if let Some((&last, _)) = scanned.segs.last_key_value() {
            let path = segment_path(dir, last);
            disk.sync_file(&path)
                .map_err(io_error(format!("syncing {}", path.display())))?;
        }
        let Scanned {
            live: found,
            segs,
            keys,
        } = scanned;
        let active = segs.last_key_value().map_or(1, |(last, _)| last + 1);
        // The window: the keys of its files and of the journal, rewritten
        // into one new file before any segment can be deleted.
        let (window, archive) = match config.dedupe_window {
            None => (None, None),
            Some(duration) => {
                let (mut all, old) =
                    read_archive(&*disk, dir, config.dedupe_max_events, archived_keys)?;
                all.extend(keys);
                let now = crate::window::now_ms();
                let window_ms = crate::window::millis(duration);
                let mut first: HashMap<DedupeKey, u64> = HashMap::with_capacity(all.len());
                for (key, at) in all {
                    if at.saturating_add(window_ms) > now {
                        let seen = first.entry(key).or_insert(at);
                        *seen = (*seen).min(at);
                    }
                }
                let mut kept: Vec<(DedupeKey, u64)> = first.into_iter().collect();
                kept.sort_by_key(|&(key, at)| (at, key));
                // The newest the window holds; the rest would be evicted.
                let over = kept.len().saturating_sub(config.dedupe_max_events);
                kept.drain(..over);
                let mut bytes = Vec::new();
                for run in kept.chunk_by(|a, b| a.1 == b.1) {
                    let keys: Vec<DedupeKey> = run.iter().map(|(k, _)| *k).collect();
                    bytes.extend(encode_key_frames(&keys, run[0].1));
                }
                let newest = kept.last().map_or(0, |&(_, at)| at);
                let archive = Archive::create(disk.clone(), dir, duration, &old, &bytes, newest)?;
                let window = Window::new(duration, config.dedupe_max_events, kept, now);
                (Some(Arc::new(window)), Some(archive))
            }
        };
        let file = create_segment(&*disk, dir, active)?;
        let mut state = State {
            chunks: Vec::new(),
            archive: Vec::new(),
            archive_newest: 0,
            done: Vec::new(),
            sync_due: false,
            waiters: Vec::new(),
            live: HashMap::with_capacity(found.len()),
            segs,
            active,
            active_len: 0,
            error: None,
            closing: false,
            unsynced: false,
            abandoned: false,
            sleeping: Sleep::Awake,
            cleaning: false,
        };
        state.segs.insert(active, Seg::default());
        let mut recovered = Vec::with_capacity(found.len());
        for (id, (loc, record)) in found {
            state.place(id, loc);
            recovered.push(record);
        }
        let shared = Arc::new(Shared {
            disk,
            dir: dir.to_path_buf(),
            config,
            state: Mutex::new(state),
            work: Condvar::new(),
            file: Mutex::new(Active { file, seq: active }),
            archive: Mutex::new(archive),
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
            window,
            writer: Some(writer),
        })
    }

    /// The de-duplication window, when keys are kept.
    pub(crate) fn window(&self) -> Option<&Arc<Window>> {
        self.window.as_ref()
    }

    /// Appends `records`; with `durable`, the receiver answers once they
    /// are on disk.
    pub(crate) fn put(
        &self,
        records: &[DeliveryRecord],
        durable: bool,
    ) -> Result<Option<oneshot::Receiver<std::result::Result<(), String>>>> {
        self.put_keyed(records, &[], 0, durable)
    }

    /// [`Journal::put`], with the de-duplication keys of the events
    /// accepted at `at_ms` in the same write (and the window's files).
    pub(crate) fn put_keyed(
        &self,
        records: &[DeliveryRecord],
        keys: &[DedupeKey],
        at_ms: u64,
        durable: bool,
    ) -> Result<Option<oneshot::Receiver<std::result::Result<(), String>>>> {
        let frames = encode_puts(records);
        let keyed = if keys.is_empty() || self.shared.config.dedupe_window.is_none() {
            Vec::new()
        } else {
            encode_key_frames(keys, at_ms)
        };
        let mut state = self.shared.state.lock().unwrap();
        if let Some(error) = &state.error {
            return Err(failed(error));
        }
        self.shared.append_puts(&mut state, frames);
        // The keys after the events they stand for: whatever prefix of the
        // file a crash keeps, a key in it has its event before it (a key
        // without its event would make the client's retry a "duplicate" of
        // an event that was lost).
        if !keyed.is_empty() {
            state.archive.extend_from_slice(&keyed);
            state.archive_newest = state.archive_newest.max(at_ms);
            self.shared.append(&mut state, keyed);
        }
        let receiver = durable.then(|| {
            let (tx, rx) = oneshot::channel();
            state.waiters.push(tx);
            rx
        });
        // A durable put wakes a sleeping writer; one nobody waits for wakes
        // only an idle writer (which then writes it within `idle_write`).
        let wake = match state.sleeping {
            Sleep::Awake => false,
            Sleep::Timed => durable,
            Sleep::Idle => true,
        };
        if wake {
            state.sleeping = Sleep::Awake;
        }
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(receiver)
    }

    /// Records that deliveries `ids` ended. Written and synced with the
    /// next sync, or within [`IDLE_WRITE`]: a crash before that runs them
    /// again (at least once).
    pub(crate) fn done(&self, ids: &[u64]) -> Result<()> {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(error) = &state.error {
            return Err(failed(error));
        }
        let mut any = false;
        for id in ids {
            if let Some(loc) = state.live.remove(id) {
                state.unplace(loc);
                state.done.push(*id);
                any = true;
            }
        }
        let wake = any && state.sleeping == Sleep::Idle;
        if wake {
            state.sleeping = Sleep::Awake;
        }
        drop(state);
        if wake {
            self.shared.work.notify_one();
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

    /// The event of pending delivery `id`, read back from its segment.
    pub(crate) fn event(&self, id: u64) -> Result<Option<Arc<str>>> {
        for _ in 0..3 {
            let Some(loc) = self.shared.state.lock().unwrap().live.get(&id).copied() else {
                return Ok(None);
            };
            // Queued but not yet written: write it first.
            self.shared.write_out(false)?;
            let path = segment_path(&self.shared.dir, loc.seq);
            match self
                .shared
                .disk
                .read_at(&path, loc.offset, loc.len as usize)
            {
                Ok(bytes) => {
                    let (entry, _) = read_frame(&bytes, 0).map_err(|why| {
                        StoreError::Corrupt(format!(
                            "delivery journal {} at byte {}: {why}",
                            path.display(),
                            loc.offset
                        ))
                    })?;
                    let Entry::Put(records) = entry else {
                        return Err(StoreError::Corrupt(format!(
                            "delivery journal {} at byte {}: not a put",
                            path.display(),
                            loc.offset
                        )));
                    };
                    return Ok(records
                        .into_iter()
                        .find(|r| r.id == id)
                        .map(|record| record.event));
                }
                // Copied forward and deleted meanwhile: look again.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StoreError::Io {
                        context: format!("reading {}", path.display()),
                        source,
                    });
                }
            }
        }
        Err(StoreError::Conflict(format!(
            "delivery {id} kept moving while being read"
        )))
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
        let scanned = scan(&*self.shared.disk, &self.shared.dir, Mode::Read, usize::MAX)?;
        Ok(scanned
            .live
            .into_values()
            .map(|(_, record)| record)
            .collect())
    }

    /// Writes and syncs everything appended so far, blocking.
    pub(crate) fn sync_blocking(&self) -> Result<()> {
        self.shared.write_out(true).map(|_| ())
    }

    /// Stops the writer without writing what is queued, as a crash of the
    /// process would: for tests of what a crash loses.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn abandon(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.abandoned = true;
        state.closing = true;
        state.error = Some("the journal was abandoned (a simulated crash)".into());
        drop(state);
        self.shared.work.notify_one();
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

/// Creates segment `seq`, its name durable before anything is written to it.
fn create_segment(disk: &dyn Disk, dir: &Path, seq: u64) -> Result<Box<dyn DiskFile>> {
    let path = segment_path(dir, seq);
    let file = disk
        .append_to(&path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    disk.sync_dir(dir)
        .map_err(io_error(format!("syncing {}", dir.display())))?;
    Ok(file)
}

impl Shared {
    /// Queues `bytes` for the active segment (rolling to a new one when it
    /// is full); returns where they go.
    fn append(&self, state: &mut State, bytes: Vec<u8>) -> (u64, u64) {
        let len = bytes.len() as u64;
        if state.active_len > 0 && state.active_len + len > self.config.segment_bytes {
            state.active += 1;
            state.active_len = 0;
            let active = state.active;
            state.segs.insert(active, Seg::default());
            state.chunks.push(Chunk::Roll(active));
        }
        let at = (state.active, state.active_len);
        state.active_len += len;
        state
            .segs
            .get_mut(&state.active)
            .expect("the active segment is known")
            .bytes += len;
        state.chunks.push(Chunk::Data(bytes));
        at
    }

    /// Queues the end frame of the deliveries that ended since the last one.
    fn flush_done(&self, state: &mut State) {
        if !state.done.is_empty() {
            let bytes = encode_done(&state.done);
            state.done.clear();
            self.append(state, bytes);
        }
    }

    /// Queues put frames and records where their deliveries now live.
    fn append_puts(&self, state: &mut State, frames: Vec<Encoded>) {
        self.flush_done(state);
        for Encoded { bytes, ids } in frames {
            let len = bytes.len() as u32;
            let share = len / ids.len().max(1) as u32;
            let (seq, offset) = self.append(state, bytes);
            for id in ids {
                state.place(
                    id,
                    Loc {
                        seq,
                        offset,
                        len,
                        share,
                    },
                );
            }
        }
    }

    /// Writes the queued chunks to the files; with `sync`, syncs the file.
    /// Returns how many pending deliveries each segment held as of the
    /// bytes written: a segment empty there stays empty once they are
    /// synced, whatever was appended since (a retry moving a delivery out
    /// of an old segment is only safe once the retry's record is synced).
    ///
    /// After a failed write or sync nothing is written again (the file may
    /// end in a partial frame, and a sync that failed once may "succeed"
    /// the second time without the data): every later call fails.
    fn write_out(&self, sync: bool) -> Result<BTreeMap<u64, usize>> {
        let mut file = self.file.lock().unwrap();
        let (chunks, (keyed, newest), counts) = {
            let mut state = self.state.lock().unwrap();
            if let Some(error) = &state.error {
                return Err(failed(error));
            }
            self.flush_done(&mut state);
            let chunks = std::mem::take(&mut state.chunks);
            // Keys go to the window's files only once the journal holding
            // their events is synced (by this write): an unsynced write of
            // them there could outlive the events in a power cut.
            let (keyed, newest) = if sync {
                (
                    std::mem::take(&mut state.archive),
                    std::mem::take(&mut state.archive_newest),
                )
            } else {
                (Vec::new(), 0)
            };
            if sync {
                state.unsynced = false;
            } else if !chunks.is_empty() {
                // Written, not synced: the writer syncs it soon.
                state.unsynced = true;
                if state.sleeping == Sleep::Idle {
                    state.sleeping = Sleep::Awake;
                    self.work.notify_one();
                }
            }
            let counts = state.segs.iter().map(|(&s, seg)| (s, seg.live)).collect();
            (chunks, (keyed, newest), counts)
        };
        let result = self.write_chunks(&mut file, chunks).and_then(|()| {
            if sync {
                file.file
                    .sync()
                    .map_err(io_error("syncing the delivery journal"))
            } else {
                Ok(())
            }
        });
        // The same keys into the window's files, unsynced: the journal has
        // them until their segment goes, and `collect` syncs these first.
        let result = result.and_then(|()| match self.archive.lock().unwrap().as_mut() {
            Some(archive) => archive.append(&keyed, newest),
            None => Ok(()),
        });
        if let Err(error) = &result {
            self.fail(error.to_string());
        }
        result.map(|()| counts)
    }

    fn write_chunks(&self, active: &mut Active, chunks: Vec<Chunk>) -> Result<()> {
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
                    active
                        .file
                        .append(&batch)
                        .and_then(|()| active.file.sync())
                        .map_err(io_error("writing the delivery journal"))?;
                    batch.clear();
                    *active = Active {
                        file: create_segment(&*self.disk, &self.dir, seq)?,
                        seq,
                    };
                }
            }
        }
        active
            .file
            .append(&batch)
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

    /// The writer thread: write and sync what accumulated when someone
    /// waits (or within `idle_write` when nobody does), answer the waiters,
    /// then drop segments nothing lives in.
    fn run(self: Arc<Self>) {
        loop {
            let (waiters, closing) = {
                let mut state = self.state.lock().unwrap();
                while state.waiters.is_empty() && !state.sync_due && !state.closing {
                    if state.chunks.is_empty() && state.done.is_empty() && !state.unsynced {
                        state.sleeping = Sleep::Idle;
                        state = self.work.wait(state).unwrap();
                    } else {
                        state.sleeping = Sleep::Timed;
                        let (next, timeout) = self
                            .work
                            .wait_timeout(state, self.config.idle_write)
                            .unwrap();
                        state = next;
                        if timeout.timed_out() {
                            state.sleeping = Sleep::Awake;
                            break;
                        }
                    }
                    state.sleeping = Sleep::Awake;
                }
                if state.waiters.len() >= COMMIT_SIBLINGS && !state.closing {
                    // Busy: let more puts join this sync.
                    drop(state);
                    std::thread::sleep(COMMIT_DELAY);
                    state = self.state.lock().unwrap();
                }
                if state.abandoned {
                    return;
                }
                state.sync_due = false;
                (std::mem::take(&mut state.waiters), state.closing)
            };
            let result = self.write_out(true).map_err(|e| e.to_string());
            for waiter in waiters {
                let _ = waiter.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
            }
            match result {
                Ok(synced) if !closing => self.collect(&synced),
                _ => return,
            }
        }
    }

    /// Deletes the oldest sealed segments nothing lives in, and starts a
    /// copy-forward of the oldest when it holds up enough dead bytes. Runs
    /// right after a sync, with the counts as of the synced bytes, so copies
    /// made before are durable before their source goes.
    fn collect(self: &Arc<Self>, synced: &BTreeMap<u64, usize>) {
        let written = self.file.lock().unwrap().seq;
        let mut dead = Vec::new();
        let mut copy = None;
        {
            let mut state = self.state.lock().unwrap();
            for (&seq, seg) in &state.segs {
                if seq >= written || seg.live > 0 || synced.get(&seq).is_none_or(|&n| n > 0) {
                    break;
                }
                dead.push(seq);
            }
            let sealed: Vec<Seg> = state
                .segs
                .range(..written)
                .filter(|(seq, _)| !dead.contains(seq))
                .map(|(_, s)| *s)
                .collect();
            let oldest = state.segs.iter().find(|(seq, _)| !dead.contains(seq));
            if !state.cleaning
                && sealed.len() > self.config.max_sealed
                && let Some((&oldest, seg)) = oldest
                && seg.live > 0
            {
                let live: u64 = sealed.iter().map(|s| s.live_bytes).sum();
                let total: u64 = sealed.iter().map(|s| s.bytes).sum();
                let garbage = total.saturating_sub(live);
                // Start copying only once the dead bytes held up behind
                // the oldest segments reach the live bytes: a pass over the
                // backlog then writes no more than it frees, and a backlog
                // with nothing dead behind it is never rewritten.
                if garbage >= live.max(self.config.segment_bytes) {
                    state.cleaning = true;
                    copy = Some(oldest);
                }
            }
        }
        // A deleted segment's de-duplication keys live on in the window's
        // files: those are synced before any segment goes.
        // Files whose keys all left the window go whenever.
        if let Some(archive) = self.archive.lock().unwrap().as_mut() {
            let synced = if dead.is_empty() {
                Ok(())
            } else {
                archive.sync()
            };
            if let Err(error) = synced.and_then(|()| archive.expire()) {
                self.fail(error.to_string());
                return;
            }
        }
        // Oldest first, each deletion made durable before the next: a power
        // cut can bring back only the newest deleted segment, whose ends
        // are all in segments that still exist.
        for seq in dead {
            let path = segment_path(&self.dir, seq);
            match self.disk.remove(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    // Kept, and with it every later one: deleting those
                    // would revive this one's deliveries at the next start.
                    tracing::warn!(path = %path.display(), %error, "could not delete a spent journal segment");
                    break;
                }
            }
            if let Err(error) = self.disk.sync_dir(&self.dir) {
                self.fail(format!("syncing {}: {error}", self.dir.display()));
                break;
            }
            self.state.lock().unwrap().segs.remove(&seq);
        }
        if let Some(seq) = copy {
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("sluice-journal-copy".into())
                .spawn(move || {
                    /// Clears `cleaning` however the copy ends.
                    struct Done<'a>(&'a Shared);
                    impl Drop for Done<'_> {
                        fn drop(&mut self) {
                            self.0.state.lock().unwrap().cleaning = false;
                        }
                    }
                    let _done = Done(&shared);
                    if let Err(error) = shared.copy_forward(seq) {
                        tracing::error!(seq, %error, "could not copy live deliveries out of an old journal segment");
                    }
                });
            if spawned.is_err() {
                self.state.lock().unwrap().cleaning = false;
            }
        }
    }

    /// Re-appends the deliveries still living in sealed segment `seq` to
    /// the active one, one frame per event; a later collection deletes
    /// `seq` once they are synced. Reads and encodes without holding the
    /// state lock; only the final check and append take it.
    fn copy_forward(&self, seq: u64) -> Result<()> {
        let path = segment_path(&self.dir, seq);
        // Deleted meanwhile: nothing left to move.
        let Some(data) = read_if_present(&*self.disk, &path)? else {
            return Ok(());
        };
        let (frames, _) = decode(&data);
        // The latest put of each delivery in this segment, by frame.
        let mut puts: Vec<Vec<DeliveryRecord>> = Vec::new();
        let mut latest: HashMap<u64, usize> = HashMap::new();
        for frame in frames {
            if let Entry::Put(records) = frame.entry {
                for record in &records {
                    latest.insert(record.id, puts.len());
                }
                puts.push(records);
            }
        }
        let here = |state: &State, id: u64| state.live.get(&id).is_some_and(|l| l.seq == seq);
        let still: HashSet<u64> = {
            let state = self.state.lock().unwrap();
            latest
                .keys()
                .copied()
                .filter(|&id| here(&state, id))
                .collect()
        };
        let groups: Vec<Vec<DeliveryRecord>> = puts
            .into_iter()
            .enumerate()
            .map(|(i, records)| {
                records
                    .into_iter()
                    .filter(|r| latest.get(&r.id) == Some(&i) && still.contains(&r.id))
                    .collect::<Vec<_>>()
            })
            .filter(|records| !records.is_empty())
            .collect();
        let encoded: Vec<Vec<Encoded>> = groups.iter().map(|g| encode_puts(g)).collect();
        let moved: usize = groups.iter().map(Vec::len).sum();
        let mut state = self.state.lock().unwrap();
        if let Some(error) = &state.error {
            return Err(failed(error));
        }
        for (group, frames) in groups.into_iter().zip(encoded) {
            // Ended or retried since they were read: leave those out.
            if group.iter().all(|r| here(&state, r.id)) {
                self.append_puts(&mut state, frames);
            } else {
                let left: Vec<DeliveryRecord> =
                    group.into_iter().filter(|r| here(&state, r.id)).collect();
                self.append_puts(&mut state, encode_puts(&left));
            }
        }
        if moved > 0 {
            tracing::info!(
                seq,
                deliveries = moved,
                "copied live deliveries out of an old journal segment"
            );
            state.sync_due = true;
            state.sleeping = Sleep::Awake;
            state.cleaning = false;
            drop(state);
            self.work.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::sim::{Rng, SimDisk};

    fn record(id: u64, event: &str) -> DeliveryRecord {
        DeliveryRecord {
            id,
            broker: "default".into(),
            trigger: format!("t{}", id % 3).into(),
            event: event.into(),
            attempts: 0,
            not_before_ms: 0,
            dead_letter: None,
            group: id - id % 3,
        }
    }

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, Arc::default(), false, None).unwrap()
    }

    const DIR: &str = "/data/deliveries";

    fn small() -> Config {
        Config {
            segment_bytes: 1024,
            max_sealed: 2,
            idle_write: Duration::from_millis(1),
            salvage: false,
            recover_event_bytes: RECOVER_EVENT_BYTES,
            dedupe_window: None,
            dedupe_max_events: 1_000_000,
        }
    }

    /// A simulated disk holding the data directory (`/data`, durably, as
    /// the store creates it), without the journal's own directory.
    fn sim() -> SimDisk {
        let disk = SimDisk::new();
        disk.create_dir_all(Path::new("/data")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        disk
    }

    fn open_sim(disk: &SimDisk, config: Config) -> Result<Journal> {
        Journal::open_on(
            Arc::new(disk.clone()),
            Path::new(DIR),
            Arc::default(),
            config,
        )
    }

    fn ids(records: &[DeliveryRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    fn sim_segments(disk: &SimDisk) -> Vec<u64> {
        segments(disk, Path::new(DIR)).unwrap()
    }

    #[tokio::test]
    async fn a_reopen_keeps_event_text_up_to_its_budget_and_the_rest_is_read_back() {
        let disk = sim();
        let event = |id: u64| format!(r#"{{"id":"{id}","data":"{}"}}"#, "y".repeat(100));
        let config = Config {
            recover_event_bytes: 3 * event(1).len(),
            ..small()
        };
        {
            let journal = open_sim(&disk, config.clone()).unwrap();
            for id in 1..=10 {
                let rx = journal.put(&[record(id, &event(id))], true).unwrap();
                rx.unwrap().await.unwrap().unwrap();
            }
            // One ended: its bytes do not count.
            journal.done(&[1]).unwrap();
            journal.sync_blocking().unwrap();
        }
        let journal = open_sim(&disk, config).unwrap();
        let recovered = journal.recovered().unwrap();
        assert_eq!(ids(&recovered), (2..=10).collect::<Vec<_>>());
        let with_text: Vec<u64> = recovered
            .iter()
            .filter(|r| !r.event.is_empty())
            .map(|r| r.id)
            .collect();
        assert_eq!(with_text, vec![2, 3, 4], "the oldest, within the budget");
        for record in &recovered {
            assert_eq!(
                journal.event(record.id).unwrap().as_deref(),
                Some(event(record.id).as_str()),
                "every event can be read back"
            );
        }
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
            let size: u64 = segments(&OsDisk, dir.path())
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
            assert_eq!(journal.event(4).unwrap().as_deref(), Some(event.as_str()));
        }
        let journal = open(dir.path());
        assert_eq!(journal.pending().unwrap(), records);
        assert_eq!(journal.len(), 3);
        journal.done(&[4]).unwrap();
        assert_eq!(journal.event(4).unwrap(), None, "ended: no event");
        let mut retried = records[2].clone();
        retried.attempts = 1;
        retried.not_before_ms = 99;
        journal.put(std::slice::from_ref(&retried), false).unwrap();
        assert_eq!(journal.event(5).unwrap().as_deref(), Some(event.as_str()));
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

    #[tokio::test]
    async fn an_end_nobody_waits_for_is_synced_while_ingress_is_idle() {
        let disk = sim();
        let journal = open_sim(&disk, Config::default()).unwrap();
        let rx = journal
            .put(&[record(3, "{}"), record(4, "{}")], true)
            .unwrap();
        rx.unwrap().await.unwrap().unwrap();
        // Nothing else happens after these ends: no ingress, no waiter.
        journal.done(&[3]).unwrap();
        let mut retried = record(4, "{}");
        retried.attempts = 1;
        journal.put(std::slice::from_ref(&retried), false).unwrap();
        tokio::time::sleep(IDLE_WRITE * 10).await;
        for seed in 0..20 {
            let cut = disk.after_power_cut(&mut Rng(seed));
            let reopened = open_sim(&cut, Config::default()).unwrap();
            assert_eq!(
                reopened.pending().unwrap(),
                vec![retried.clone()],
                "seed {seed}: the end and the retry reached the disk"
            );
        }
        drop(journal);
    }

    #[test]
    fn open_syncs_the_last_segment_a_crash_left_before_starting_another() {
        // A killed process wrote frames it never synced.
        let disk = sim();
        disk.create_dir_all(Path::new(DIR)).unwrap();
        disk.sync_dir(Path::new("/data")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let path = segment_path(Path::new(DIR), 1);
        let mut file = disk.append_to(&path).unwrap();
        disk.sync_dir(Path::new(DIR)).unwrap();
        let mut bytes = Vec::new();
        for id in 3..9 {
            bytes.extend(
                encode_puts(&[record(id, "{\"a\":1}")])
                    .into_iter()
                    .flat_map(|e| e.bytes),
            );
        }
        file.append(&bytes).unwrap();
        let expected: Vec<u64> = (3..9).collect();
        // Restarted (it opens a segment after the unsynced one) ...
        let journal = open_sim(&disk, Config::default()).unwrap();
        assert_eq!(ids(&journal.recovered().unwrap()), expected);
        drop(journal);
        // ... then the power fails: the old segment must be whole.
        for seed in 0..50 {
            let cut = disk.after_power_cut(&mut Rng(seed));
            let reopened = open_sim(&cut, Config::default())
                .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
            assert_eq!(ids(&reopened.pending().unwrap()), expected, "seed {seed}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_bad_frame_before_valid_ones_is_corruption_to_salvage() {
        let disk = sim();
        {
            let journal = open_sim(&disk, Config::default()).unwrap();
            for id in 3..6 {
                journal.put(&[record(id, "{}")], false).unwrap();
            }
            journal.sync_blocking().unwrap();
        }
        let seq = *sim_segments(&disk).last().unwrap();
        let path = segment_path(Path::new(DIR), seq);
        let full = disk.contents(&path).unwrap();
        let frame_len = full.len() / 3;
        // A crash mid-write: the last frame cut short.
        disk.set_contents(&path, full[..full.len() - 5].to_vec());
        {
            let journal = open_sim(&disk, Config::default()).unwrap();
            assert_eq!(ids(&journal.pending().unwrap()), vec![3, 4]);
        }
        assert_eq!(
            disk.contents(&path).unwrap().len(),
            2 * frame_len,
            "the torn frame was cut off"
        );
        // One flipped bit in the first frame, valid frames after it: not a
        // torn write. The open refuses, naming the file and the offset.
        let mut damaged = full.clone();
        damaged[HEADER + 2] ^= 0x01;
        disk.set_contents(&path, damaged.clone());
        let later = segment_path(Path::new(DIR), seq + 1);
        let _ = disk.remove(&later);
        match open_sim(&disk, Config::default()) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains("at byte 0"), "{message}");
                assert!(message.contains("--salvage-journal"), "{message}");
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("expected corruption, the journal opened"),
        }
        assert_eq!(disk.contents(&path).unwrap(), damaged, "nothing was cut");
        // Salvage keeps what is readable and drops only the damaged frame.
        let journal = open_sim(
            &disk,
            Config {
                salvage: true,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(ids(&journal.pending().unwrap()), vec![4, 5]);
        drop(journal);
        assert_eq!(
            ids(&open_sim(&disk, Config::default())
                .unwrap()
                .pending()
                .unwrap()),
            vec![4, 5]
        );
    }

    #[test]
    fn damage_in_a_sealed_segment_is_corruption() {
        let disk = sim();
        {
            let journal = open_sim(&disk, Config::default()).unwrap();
            journal.put(&[record(3, "{}")], false).unwrap();
            journal.sync_blocking().unwrap();
        }
        drop(open_sim(&disk, Config::default()).unwrap());
        let first = sim_segments(&disk)[0];
        let path = segment_path(Path::new(DIR), first);
        let mut bytes = disk.contents(&path).unwrap();
        // Cut short, in a segment that is not the last: still corruption.
        bytes.truncate(bytes.len() - 1);
        disk.set_contents(&path, bytes);
        assert!(matches!(
            open_sim(&disk, Config::default()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn spent_segments_are_deleted_and_a_long_pending_delivery_is_copied_forward() {
        let disk = sim();
        let config = Config {
            segment_bytes: 64 << 10,
            ..Config::default()
        };
        let segment_bytes = config.segment_bytes as usize;
        let big = format!(r#"{{"data":"{}"}}"#, "y".repeat(8 << 10));
        let journal = open_sim(&disk, config.clone()).unwrap();
        let mut id = 10;
        let mut fill = async |journal: &Journal, segments: usize| {
            for _ in 0..(segment_bytes / big.len() + 1) * segments {
                let rx = journal.put(&[record(id, &big)], true).unwrap().unwrap();
                rx.await.unwrap().unwrap();
                journal.done(&[id]).unwrap();
                id += 1;
            }
        };
        fill(&journal, 5).await;
        let left = sim_segments(&disk);
        assert!(left.len() <= 2, "spent segments were not deleted: {left:?}");
        // A delivery that stays pending while many segments fill behind it
        // is copied forward, and its old segment deleted.
        let first = *left.last().unwrap();
        journal.put(&[record(1, "{\"keep\":true}")], false).unwrap();
        fill(&journal, 3 * MAX_SEALED).await;
        let left = sim_segments(&disk);
        assert!(
            left.len() <= MAX_SEALED + 3,
            "too many segments kept: {left:?}"
        );
        assert!(
            left[0] > first,
            "the pending delivery's first segment was kept: {left:?}"
        );
        drop(journal);
        let journal = open_sim(&disk, config.clone()).unwrap();
        assert_eq!(
            journal.pending().unwrap(),
            vec![record(1, "{\"keep\":true}")]
        );
        // Once it ends, they all go.
        journal.done(&[1]).unwrap();
        fill(&journal, 1).await;
        let left = sim_segments(&disk);
        assert!(left.len() <= 2, "spent segments were not deleted: {left:?}");
        drop(journal);
        assert!(
            open_sim(&disk, config)
                .unwrap()
                .pending()
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn dedupe_keys_outlive_their_segment_and_a_power_cut_and_leave_with_the_window() {
        let disk = sim();
        let config = Config {
            segment_bytes: 16 << 10,
            dedupe_window: Some(Duration::from_secs(60)),
            ..Config::default()
        };
        let journal = open_sim(&disk, config.clone()).unwrap();
        let now = crate::window::now_ms();
        let put = async |journal: &Journal, records: &[DeliveryRecord], keys: &[DedupeKey], at| {
            let rx = journal.put_keyed(records, keys, at, true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
        };
        // With a delivery, without one, and one already out of the window.
        put(&journal, &[record(1, "{}")], &[[1; 16]], now).await;
        put(&journal, &[], &[[2; 16], [3; 16]], now).await;
        put(&journal, &[], &[[4; 16]], now - 61_000).await;
        journal.done(&[1]).unwrap();
        let first = sim_segments(&disk)[0];
        let big = format!(r#"{{"data":"{}"}}"#, "y".repeat(4 << 10));
        let mut id = 10;
        while sim_segments(&disk)[0] == first {
            put(&journal, &[record(id, &big)], &[], 0).await;
            journal.done(&[id]).unwrap();
            id += 1;
            assert!(id < 1000, "the first segment is never deleted");
        }
        // Whatever a power cut keeps, the keys are there: synced into the
        // window's files before their segment went.
        for seed in 0..20 {
            let cut = disk.after_power_cut(&mut Rng(seed));
            let reopened = open_sim(&cut, config.clone()).unwrap();
            let mut keys = reopened.window().unwrap().snapshot();
            keys.sort();
            assert_eq!(
                keys,
                [([1; 16], now), ([2; 16], now), ([3; 16], now)],
                "seed {seed}"
            );
            // Reopened, the window is one new file: and again after that.
            drop(reopened);
            let again = open_sim(&cut, config.clone()).unwrap();
            assert_eq!(again.window().unwrap().len(), 3, "seed {seed}");
        }
        // Without a window, no keys are written or read.
        drop(journal);
        let off = open_sim(&disk, Config::default()).unwrap();
        assert!(off.window().is_none());
        off.put_keyed(&[], &[[5; 16]], now, false).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_window_file_costs_only_the_keys_in_the_damaged_frame() {
        let disk = sim();
        let config = Config {
            segment_bytes: 16 << 10,
            dedupe_window: Some(Duration::from_secs(60)),
            ..Config::default()
        };
        let now = crate::window::now_ms();
        let journal = open_sim(&disk, config.clone()).unwrap();
        for n in 0..3u8 {
            let rx = journal.put_keyed(&[], &[[n; 16]], now - u64::from(n), true);
            rx.unwrap().unwrap().await.unwrap().unwrap();
        }
        // The segments holding the keys go: the window's file has them.
        let first = sim_segments(&disk)[0];
        let big = format!(r#"{{"data":"{}"}}"#, "y".repeat(4 << 10));
        for id in 10.. {
            let rx = journal.put(&[record(id, &big)], true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
            journal.done(&[id]).unwrap();
            if sim_segments(&disk)[0] != first {
                break;
            }
        }
        drop(journal);
        // Reopened, the window is one file, a frame per time, oldest first.
        drop(open_sim(&disk, config.clone()).unwrap());
        let files = numbered(&disk, Path::new(DIR), ".keys").unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let path = Path::new(DIR).join(format!("{:020}.keys", files[0]));
        let mut bytes = disk.contents(&path).unwrap();
        assert_eq!(bytes.len(), 3 * (HEADER + 1 + crate::window::KEY_BYTES));
        bytes[HEADER + 5] ^= 0xff;
        disk.set_contents(&path, bytes);
        let journal = open_sim(&disk, config).unwrap();
        let mut keys = journal.window().unwrap().snapshot();
        keys.sort();
        assert_eq!(
            keys,
            [([0; 16], now), ([1; 16], now - 1)],
            "the oldest frame was damaged"
        );
    }

    /// Power cuts at random moments while keyed events are put (synced
    /// and not, with reads that write without syncing, and ends that let
    /// segments go): after each, every key in the window has its event
    /// pending or ended after it was acknowledged, and every acknowledged
    /// key is in the window.
    #[test]
    fn power_cuts_never_keep_a_key_without_its_event() {
        let key_of = |id: u64| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&id.to_le_bytes());
            key
        };
        let config = Config {
            segment_bytes: 2048,
            max_sealed: 2,
            idle_write: Duration::from_millis(1),
            dedupe_window: Some(Duration::from_secs(600)),
            ..Config::default()
        };
        for seed in 0..150 {
            let mut rng = Rng(seed);
            let disk = sim();
            let journal = open_sim(&disk, config.clone()).unwrap();
            let now = crate::window::now_ms();
            let (mut acked, mut ended) = (HashSet::new(), HashSet::new());
            disk.power_off_after(50 + rng.below(400));
            for id in 1..400u64 {
                if disk.is_off() {
                    break;
                }
                let durable = rng.chance(2);
                let event = format!(r#"{{"n":{id},"pad":"{}"}}"#, "p".repeat(60));
                let Ok(rx) = journal.put_keyed(&[record(id, &event)], &[key_of(id)], now, durable)
                else {
                    break;
                };
                if let Some(rx) = rx {
                    match rx.blocking_recv() {
                        Ok(Ok(())) => {
                            acked.insert(id);
                            if rng.chance(2) && journal.done(&[id]).is_ok() {
                                ended.insert(id);
                            }
                        }
                        _ => break,
                    }
                }
                if rng.chance(5) {
                    let _ = journal.pending();
                }
            }
            disk.power_off_now();
            let image = disk.image().after_power_cut(&mut rng);
            drop(journal);
            let reopened = open_sim(&image, config.clone()).unwrap();
            let pending: HashSet<u64> = ids(&reopened.pending().unwrap()).into_iter().collect();
            let window: HashSet<u64> = (reopened.window().unwrap().snapshot().into_iter())
                .map(|(key, _)| u64::from_le_bytes(key[..8].try_into().unwrap()))
                .collect();
            for id in &window {
                assert!(
                    pending.contains(id) || ended.contains(id),
                    "seed {seed}: key {id} is in the window without its event"
                );
            }
            for id in &acked {
                assert!(
                    window.contains(id),
                    "seed {seed}: acknowledged key {id} lost"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_backlog_that_is_all_live_is_never_rewritten() {
        let disk = sim();
        let config = Config {
            segment_bytes: 16 << 10,
            ..Config::default()
        };
        let journal = open_sim(&disk, config.clone()).unwrap();
        let event = format!(r#"{{"data":"{}"}}"#, "z".repeat(2000));
        // Ten segments of deliveries that all stay pending.
        for id in 1..=80u64 {
            let rx = journal.put(&[record(id, &event)], true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
        }
        let before = sim_segments(&disk);
        assert!(before.len() > MAX_SEALED + 2, "{before:?}");
        let size = |disk: &SimDisk| -> usize {
            sim_segments(disk)
                .iter()
                .map(|&s| {
                    disk.contents(&segment_path(Path::new(DIR), s))
                        .unwrap()
                        .len()
                })
                .sum()
        };
        let bytes = size(&disk);
        // Many syncs later (each one a chance to copy), nothing moved.
        for _ in 0..50 {
            journal.sync_blocking().unwrap();
            journal
                .shared
                .collect(&journal.shared.write_out(true).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sim_segments(&disk), before, "segments were rewritten");
        assert_eq!(size(&disk), bytes, "the backlog was copied");
    }

    #[tokio::test]
    async fn a_copied_event_is_stored_once_for_all_its_deliveries() {
        let disk = sim();
        let config = Config {
            segment_bytes: 16 << 10,
            max_sealed: 1,
            ..Config::default()
        };
        let journal = open_sim(&disk, config).unwrap();
        let event: Arc<str> = format!(r#"{{"data":"{}"}}"#, "k".repeat(4000)).into();
        let fanned: Vec<DeliveryRecord> = (1..=4)
            .map(|id| DeliveryRecord {
                event: event.clone(),
                ..record(id, "")
            })
            .collect();
        journal
            .put(&fanned, true)
            .unwrap()
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let first = sim_segments(&disk)[0];
        // Fill segments behind it with deliveries that end at once.
        let filler = format!(r#"{{"data":"{}"}}"#, "f".repeat(4000));
        for id in 100..140 {
            let rx = journal.put(&[record(id, &filler)], true).unwrap().unwrap();
            rx.await.unwrap().unwrap();
            journal.done(&[id]).unwrap();
        }
        let mut copied = false;
        for _ in 0..200 {
            journal.sync_blocking().unwrap();
            if sim_segments(&disk)[0] > first {
                copied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(copied, "the four deliveries were not copied forward");
        // The copy holds the 4 KB event once, not four times.
        // A segment listed may be deleted before it is read (the copy
        // thread frees what it copied): it then holds nothing. A copy may
        // itself be copied forward again, and the segment it left is gone
        // only a moment later: wait for that.
        let mut frames: Vec<Frame> = Vec::new();
        for _ in 0..200 {
            frames = sim_segments(&disk)
                .iter()
                .filter_map(|&s| disk.contents(&segment_path(Path::new(DIR), s)))
                .flat_map(|data| decode(&data).0)
                .filter(|f| matches!(&f.entry, Entry::Put(r) if r.iter().any(|r| r.id <= 4)))
                .collect();
            if frames.len() == 1 {
                break;
            }
            journal.sync_blocking().unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(frames.len(), 1, "one frame for the event");
        assert!(frames[0].len < 5000, "{} bytes", frames[0].len);
        assert_eq!(ids(&journal.pending().unwrap()), vec![1, 2, 3, 4]);
    }

    #[test]
    fn every_prefix_of_a_journal_recovers_a_prefix_of_its_writes() {
        let disk = sim();
        {
            let journal = open_sim(&disk, Config::default()).unwrap();
            for id in 3..9 {
                journal.put(&[record(id, "{\"a\":1}")], false).unwrap();
            }
            journal.done(&[3, 5]).unwrap();
            journal.sync_blocking().unwrap();
        }
        let seq = *sim_segments(&disk).last().unwrap();
        let path = segment_path(Path::new(DIR), seq);
        let full = disk.contents(&path).unwrap();
        let mut seen = 0;
        for cut in 0..=full.len() {
            let case = sim();
            case.create_dir_all(Path::new(DIR)).unwrap();
            case.append_to(&segment_path(Path::new(DIR), seq))
                .unwrap()
                .append(&full[..cut])
                .unwrap();
            let pending = open_sim(&case, Config::default())
                .unwrap()
                .pending()
                .unwrap();
            let ids = ids(&pending);
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

    /// A pending delivery as the property test tracks it: attempts, event.
    type Version = (u32, Arc<str>);

    /// What the property test knows about the journal since it was opened.
    #[derive(Default)]
    struct Model {
        /// Pending when opened (all of it durable: the open syncs).
        base: BTreeMap<u64, Version>,
        /// Puts (`Some`) and ends (`None`) since, in order.
        ops: Vec<(u64, Option<Version>)>,
        /// How many of `ops` an acknowledged sync covers.
        durable: usize,
        /// Every id ever put.
        known: HashSet<u64>,
    }

    impl Model {
        fn reset(&mut self, pending: &[DeliveryRecord]) {
            self.base = pending
                .iter()
                .map(|r| (r.id, (r.attempts, r.event.clone())))
                .collect();
            self.ops.clear();
            self.durable = 0;
        }

        /// The pending deliveries after the first `k` of `ops`.
        fn after(&self, k: usize) -> BTreeMap<u64, Version> {
            let mut state = self.base.clone();
            for (id, op) in &self.ops[..k] {
                match op {
                    Some(version) => {
                        state.insert(*id, version.clone());
                    }
                    None => {
                        state.remove(id);
                    }
                }
            }
            state
        }

        fn now(&self) -> BTreeMap<u64, Version> {
            self.after(self.ops.len())
        }

        /// What a reopened journal holds must be the state after some
        /// prefix of the operations that includes every acknowledged one:
        /// nothing acknowledged lost, nothing ended before an acknowledged
        /// sync back, no version older than one acknowledged, no event
        /// changed, nothing invented.
        fn check(&self, found: &[DeliveryRecord]) -> std::result::Result<(), String> {
            let found: BTreeMap<u64, Version> = found
                .iter()
                .map(|r| (r.id, (r.attempts, r.event.clone())))
                .collect();
            if let Some(id) = found.keys().find(|id| !self.known.contains(id)) {
                return Err(format!("delivery {id} was never put"));
            }
            if (self.durable..=self.ops.len()).any(|k| self.after(k) == found) {
                return Ok(());
            }
            let durable = self.after(self.durable);
            let lost: Vec<&u64> = durable
                .keys()
                .filter(|id| !found.contains_key(id))
                .collect();
            let back: Vec<&u64> = found
                .keys()
                .filter(|id| !self.now().contains_key(id))
                .collect();
            Err(format!(
                "the journal holds no prefix of what was written: {} of {} operations acknowledged; \
                 acknowledged and missing {lost:?}; ended and back {back:?}; found {:?}",
                self.durable,
                self.ops.len(),
                found
                    .iter()
                    .map(|(id, (a, _))| (*id, *a))
                    .collect::<Vec<_>>()
            ))
        }
    }

    /// How one step of the workload went.
    enum Step {
        Done,
        /// The power is off: the journal's errors are expected.
        Off,
    }

    /// One random step on `journal`.
    fn step(
        rng: &mut Rng,
        disk: &SimDisk,
        journal: &Journal,
        model: &mut Model,
        next_id: &mut u64,
    ) -> std::result::Result<Step, String> {
        let failed = |e: StoreError| {
            if disk.is_off() {
                Ok(Step::Off)
            } else {
                Err(e.to_string())
            }
        };
        match rng.below(100) {
            0..30 => {
                let event = format!("{{\"n\":\"{}\"}}", "e".repeat(rng.below(300) as usize));
                let event: Arc<str> = event.into();
                let fanned: Vec<DeliveryRecord> = (0..1 + rng.below(3))
                    .map(|_| {
                        *next_id += 1;
                        DeliveryRecord {
                            event: event.clone(),
                            ..record(*next_id, "")
                        }
                    })
                    .collect();
                for r in &fanned {
                    model.ops.push((r.id, Some((0, event.clone()))));
                    model.known.insert(r.id);
                }
                let durable = rng.below(4) != 0;
                let rx = match journal.put(&fanned, durable) {
                    Ok(rx) => rx,
                    Err(e) => return failed(e),
                };
                if let Some(rx) = rx {
                    match rx.blocking_recv().map_err(|e| e.to_string())? {
                        Ok(()) => model.durable = model.ops.len(),
                        Err(_) if disk.is_off() => return Ok(Step::Off),
                        Err(e) => return Err(e),
                    }
                }
            }
            30..50 => {
                let pending: Vec<(u64, Version)> = model.now().into_iter().collect();
                if let Some((id, (attempts, _))) = pending
                    .get(rng.below(pending.len() as u64) as usize)
                    .cloned()
                {
                    let event: Arc<str> = format!("{{\"retry\":{}}}", attempts + 1).into();
                    let retried = DeliveryRecord {
                        attempts: attempts + 1,
                        event: event.clone(),
                        ..record(id, "")
                    };
                    model.ops.push((id, Some((attempts + 1, event))));
                    if let Err(e) = journal.put(std::slice::from_ref(&retried), false) {
                        return failed(e);
                    }
                }
            }
            50..75 => {
                let pending: Vec<u64> = model.now().into_keys().collect();
                if let Some(&id) = pending.get(rng.below(pending.len() as u64) as usize) {
                    model.ops.push((id, None));
                    if let Err(e) = journal.done(&[id]) {
                        return failed(e);
                    }
                }
            }
            75..80 => match journal.sync_blocking() {
                Ok(()) => model.durable = model.ops.len(),
                Err(e) => return failed(e),
            },
            80..86 => {
                // Read an event back (written first, not synced).
                let now = model.now();
                let ids: Vec<&u64> = now.keys().collect();
                if let Some(&&id) = ids.get(rng.below(ids.len() as u64) as usize) {
                    match journal.event(id) {
                        Ok(event) => {
                            if event.as_deref() != Some(&*now[&id].1) {
                                return Err(format!(
                                    "event({id}) is {event:?}, not {:?}",
                                    now[&id].1
                                ));
                            }
                        }
                        Err(e) => return failed(e),
                    }
                }
            }
            _ => std::thread::sleep(Duration::from_micros(rng.below(1500))),
        }
        Ok(Step::Done)
    }

    /// Runs steps until the power goes off (within `limit` steps, else it
    /// is turned off then).
    fn run_until_off(
        rng: &mut Rng,
        disk: &SimDisk,
        journal: &Journal,
        model: &mut Model,
        next_id: &mut u64,
        limit: u64,
    ) -> std::result::Result<(), String> {
        for _ in 0..limit {
            if disk.is_off() {
                return Ok(());
            }
            if let Step::Off = step(rng, disk, journal, model, next_id)? {
                return Ok(());
            }
        }
        disk.power_off_now();
        Ok(())
    }

    /// One random workload, cut by power failures and process crashes at
    /// random operations of the disk; after each, the reopened journal must
    /// hold a prefix of what was written that includes everything
    /// acknowledged.
    fn power_cut_case(rng: &mut Rng) -> std::result::Result<(), String> {
        let mut disk = sim();
        let mut journal = open_sim(&disk, small()).map_err(|e| e.to_string())?;
        let mut model = Model::default();
        let mut next_id = 1;
        let steps = 40 + rng.below(120);
        let mut s = 0;
        while s < steps {
            s += 1;
            let crash = rng.chance(16);
            let cut = !crash && rng.chance(14);
            let last = s == steps;
            if !(crash || cut || last) {
                if let Step::Off = step(rng, &disk, &journal, &mut model, &mut next_id)? {
                    return Err("the power went off by itself".into());
                }
                continue;
            }
            // The power goes (or the process dies) at one of the next few
            // operations on the disk, by whichever thread makes it.
            if crash && rng.chance(2) {
                // Between a write and its sync.
                let _ = journal.pending();
            }
            disk.power_off_after(rng.below(12));
            run_until_off(rng, &disk, &journal, &mut model, &mut next_id, 30)?;
            let what = if crash { "a crash" } else { "a power cut" };
            let image = if crash {
                disk.image()
            } else {
                disk.image().after_power_cut(rng)
            };
            drop(journal);
            disk = image;
            journal =
                open_sim(&disk, small()).map_err(|e| format!("open after {what} failed: {e}"))?;
            let pending = journal.pending().map_err(|e| e.to_string())?;
            model
                .check(&pending)
                .map_err(|e| format!("after {what}: {e}"))?;
            model.reset(&pending);
        }
        Ok(())
    }

    #[test]
    fn power_cuts_lose_nothing_acknowledged_and_bring_back_nothing_ended() {
        let seed: u64 = match std::env::var("SLUICE_POWER_CUT_SEED") {
            Ok(seed) => seed.parse().expect("SLUICE_POWER_CUT_SEED is a number"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        let cases: u64 = std::env::var("SLUICE_POWER_CUT_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2000);
        println!(
            "power-cut property test: {cases} cases, seed {seed} (SLUICE_POWER_CUT_SEED replays it)"
        );
        let mut rng = Rng(seed);
        let case_seeds: Vec<u64> = (0..cases).map(|_| rng.next()).collect();
        // The cases mostly wait on the writer thread: run four at a time.
        let failures: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|worker| {
                    let case_seeds = &case_seeds;
                    scope.spawn(move || {
                        case_seeds
                            .iter()
                            .enumerate()
                            .skip(worker)
                            .step_by(4)
                            .filter_map(|(case, &case_seed)| {
                                power_cut_case(&mut Rng(case_seed)).err().map(|error| {
                                    format!(
                                        "seed {seed}, case {case} (case seed {case_seed}): {error}"
                                    )
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{} of {cases} cases failed:\n{}",
            failures.len(),
            failures[..failures.len().min(10)].join("\n")
        );
    }
}
