//! `sluice-store`: everything Sluice keeps durable, on [sled] and, for
//! pending event deliveries, an append-only journal beside it.
//!
//! One [`Store`] owns one data directory. In sled (`db/`): function records,
//! the component bytes they point at (content-addressed by sha256, stored
//! once however many functions share them, and removed when no function
//! points at them any more), triggers, dead letters, guest key-value data,
//! logs, tokens, and a schema version checked at open. In the delivery
//! journal (`deliveries/`, see `journal.rs`): pending event deliveries, the
//! one queue-shaped thing Sluice keeps, written once per accepted event.
//!
//! Guarantees:
//! - Every mutating method that an acknowledgement depends on is `async` and
//!   returns only after the change is on disk (sled flushed, or the journal
//!   synced): a write the API acknowledges survives a crash.
//! - Multi-tree changes (a function record and its blob reference counts) are
//!   one sled transaction: a crash leaves either the old or the new state.
//! - A data directory held by another process, or written by a newer schema,
//!   is a clear [`StoreError`], never a panic.
//!
//! No wasmtime and no HTTP types appear here.

#![forbid(unsafe_code)]

pub mod cluster;
mod component;
mod disk;
mod error;
mod events;
mod functions;
mod journal;
mod kv;
mod lock;
mod logs;
mod private;
mod schedules;
pub use schedules::StoredSchedule;
mod tokens;
mod window;

use std::path::{Path, PathBuf};

use sled::Tree;

pub use component::{check_component_bytes, validate_component};
pub use error::StoreError;
pub use events::{DeadLetterRecord, DeliveryRecord};
pub use functions::{FunctionRecord, FunctionSettings, Visibility, World, digest_of};
pub use kv::{GuestKv, KvError};
pub use logs::LogLine;
pub use window::{Claim, DedupeKey, Window, dedupe_key, repeats_within, triple_digest};

/// The schema this build writes. A store written by a newer schema is refused.
pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// How [`Store::open_with`] opens a store.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Open a damaged delivery journal by keeping every readable frame and
    /// dropping the damaged bytes (the deliveries in them are lost), instead
    /// of refusing to start. For an operator who has no better copy.
    pub salvage_journal: bool,
    /// Keep the de-duplication keys of accepted events this long (`None`:
    /// no de-duplication; see [`Window`]).
    pub dedupe_window: Option<std::time::Duration>,
    /// Most keys the window holds (past it the oldest are forgotten early).
    pub dedupe_max_events: usize,
}

/// A result with a [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The durable state of one Sluice data directory.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: Tree,
    functions: Tree,
    blobs: Tree,
    blob_refs: Tree,
    triggers: Tree,
    brokers: Tree,
    schedules: Tree,
    schedule_marks: Tree,
    journal: std::sync::Arc<journal::Journal>,
    dead_letters: Tree,
    kv: Tree,
    kv_counts: Tree,
    logs: Tree,
    invocations: Tree,
    tokens: Tree,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    flusher: std::sync::Arc<
        std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<events::FlushRequest>>,
    >,
    dir: PathBuf,
    #[cfg(feature = "fault-injection")]
    faults: std::sync::Arc<Faults>,
    _lock: std::sync::Arc<lock::DirLock>,
}

/// Failures a test asks for (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
struct Faults {
    /// How many of the next dead-letter writes fail.
    dead_letters: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Fails with [`StoreError::Locked`] if another process holds `dir`, with
    /// [`StoreError::NewerSchema`] if a newer Sluice wrote it, and with
    /// [`StoreError::Corrupt`] if sled or the delivery journal cannot read it.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, &OpenOptions::default())
    }

    /// Opens the store in `dir` with `options`.
    pub fn open_with(dir: &Path, options: &OpenOptions) -> Result<Store> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Io {
                    context: format!("creating data directory {}", dir.display()),
                    source,
                })?;
        }
        // The data directory's name must survive a power cut too (it may
        // have been created just now, or by a run that crashed).
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                context: format!("syncing {}", parent.display()),
                source,
            })?;
        private::tighten(dir)?;
        let lock = lock::DirLock::acquire(dir)?;
        let db_path = dir.join("db");
        remove_unfinished_snapshots(&db_path)?;
        let db = sled::Config::new()
            .path(&db_path)
            // Acknowledged writes are flushed explicitly; the background
            // flusher only bounds what an unacknowledged write can lose.
            .flush_every_ms(Some(500))
            .idgen_persist_interval(events::ID_PERSIST_INTERVAL)
            .open()
            .map_err(|error| StoreError::from_open(&db_path, error))?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| StoreError::from_open(&db_path, error))
        };
        let failed: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let journal = journal::Journal::open(
            &dir.join("deliveries"),
            failed.clone(),
            options.salvage_journal,
            options
                .dedupe_window
                .map(|window| (window, options.dedupe_max_events)),
        )?;

        let store = Store {
            meta: open_tree("meta")?,
            functions: open_tree("functions")?,
            blobs: open_tree("blobs")?,
            blob_refs: open_tree("blob_refs")?,
            triggers: open_tree("triggers")?,
            brokers: open_tree("brokers")?,
            schedules: open_tree("schedules")?,
            schedule_marks: open_tree("schedule_marks")?,
            journal: std::sync::Arc::new(journal),
            dead_letters: open_tree("dead_letters")?,
            kv: open_tree("kv")?,
            kv_counts: open_tree("kv_counts")?,
            logs: open_tree("logs")?,
            invocations: open_tree("invocations")?,
            tokens: open_tree("tokens")?,
            flusher: Default::default(),
            failed,
            db,
            dir: dir.to_path_buf(),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
            _lock: std::sync::Arc::new(lock),
        };
        store.check_schema()?;
        store.migrate_deliveries()?;
        // The first id of this run makes sled persist its id counter; have
        // that on disk before any id is handed out (see `next_id`).
        store.next_id_blocking()?;
        Ok(store)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_schema(&self) -> Result<()> {
        match self.meta.get(SCHEMA_KEY)? {
            None => {
                self.meta
                    .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(raw) => {
                let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "schema version key holds {} bytes, expected 4",
                        raw.len()
                    ))
                })?;
                let found = u32::from_be_bytes(bytes);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
        }
    }

    /// Flushes every pending write to disk.
    pub async fn flush(&self) -> Result<()> {
        if let Err(error) = self.db.flush_async().await {
            self.mark_failed();
            return Err(error.into());
        }
        Ok(())
    }

    /// Flushes sled and syncs the delivery journal (for shutdown).
    pub async fn flush_all(&self) -> Result<()> {
        self.flush().await?;
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.sync_blocking())
            .await
            .map_err(|e| StoreError::Conflict(format!("syncing the delivery journal: {e}")))?
    }

    /// Records that a write to disk failed. sled refuses writes after an I/O
    /// error, so the store stays failed until the process restarts.
    pub(crate) fn mark_failed(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Passes `result` on, recording an I/O failure of the medium.
    pub(crate) fn checked<T>(&self, result: sled::Result<T>) -> Result<T> {
        if let Err(sled::Error::Io(_)) = &result {
            self.mark_failed();
        }
        Ok(result?)
    }

    /// Makes the next `n` dead-letter writes fail as a full disk would (for
    /// tests).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_dead_letters(&self, n: usize) {
        self.faults
            .dead_letters
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// True if a dead-letter write should fail now (see
    /// [`Store::fail_next_dead_letters`]).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn injected_dead_letter_failure(&self) -> bool {
        self.faults
            .dead_letters
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }

    /// Drops this handle as a crash of the process would: what the delivery
    /// journal has queued but not written is lost, nothing more is synced
    /// (for tests; other handles on the store stop working).
    #[cfg(feature = "fault-injection")]
    pub fn crash(self) {
        self.journal.abandon();
    }

    /// False once a write or flush has failed (full disk, I/O error).
    pub fn healthy(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Removes snapshot files sled left half-written (`snap.*.generating`): a
/// start interrupted by a crash or a full disk leaves one, possibly empty,
/// and sled then refuses to open the store as corrupt although the log
/// and the previous snapshot hold everything. sled writes them only while
/// opening, which this process does under the directory lock.
fn remove_unfinished_snapshots(db: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(db) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            tracing::warn!(path = %path.display(), "removing a snapshot file an interrupted start left unfinished");
            std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                context: format!("removing {}", path.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// True if `name` is a DNS label: 1 to 63 lowercase letters, digits and
/// `-`, not starting or ending with `-`. Functions, triggers and brokers are
/// named this way.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Opens the store in `dir` once the last [`Store`] on it let go: sled's
/// flusher thread releases its handle on the database a moment after the
/// store is dropped, so a test that reopens at once can find it locked.
#[cfg(test)]
pub(crate) fn open_when_free(dir: &Path) -> Result<Store, StoreError> {
    for _ in 0..200 {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other,
        }
    }
    Store::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .meta
                .insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        let error = open_when_free(dir.path()).unwrap_err();
        assert!(
            matches!(error, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1)
        );
        assert!(error.to_string().contains("newer"), "{error}");
    }

    #[test]
    fn second_open_of_the_same_directory_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    }

    #[test]
    fn a_snapshot_an_interrupted_start_left_empty_does_not_make_the_store_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.meta.insert(b"probe", b"kept").unwrap();
            store.db.flush().unwrap();
        }
        let db = dir.path().join("db");
        let snapshots: Vec<String> = std::fs::read_dir(&db)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("snap."))
            .collect();
        // What a start on a full disk leaves: an empty snapshot in progress,
        // newer than any finished one.
        std::fs::write(db.join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store =
            open_when_free(dir.path()).unwrap_or_else(|e| panic!("{e} (had {snapshots:?})"));
        assert_eq!(store.meta.get(b"probe").unwrap().unwrap(), b"kept"[..]);
        assert!(!db.join("snap.7FFFFFFFFFFFFFFF.generating").exists());
    }

    #[test]
    fn reopen_after_close_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        open_when_free(dir.path()).unwrap();
    }
}
