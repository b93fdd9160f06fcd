//! Store errors.

use std::path::Path;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another sluice process{holder}; stop it or pick another --data-dir"
    )]
    Locked {
        /// The data directory.
        path: String,
        /// ` (pid N)` when the holder wrote its pid.
        holder: String,
    },
    /// The store was written by a newer Sluice.
    #[error(
        "store schema version {found} is newer than this sluice supports ({supported}); upgrade sluice"
    )]
    NewerSchema {
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The on-disk data cannot be read.
    #[error("store is corrupt or unreadable: {0}")]
    Corrupt(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A write or flush failed (disk full, I/O error).
    #[error("storage write failed: {0}")]
    Sled(#[from] sled::Error),
    /// A conditional write lost a race or found unexpected state.
    #[error("{0}")]
    Conflict(String),
    /// A write conditional on a function's version found another version
    /// (another request changed the function meanwhile).
    #[error("function {0:?} changed while this request ran; retry")]
    Changed(String),
    /// The cluster backend (NATS JetStream) cannot be reached or has no
    /// quorum: nothing was written, or whether it was is unknown and a retry
    /// with the same request is safe.
    #[error("cluster storage unavailable: {0}")]
    Unavailable(String),
    /// A value is larger than the storage takes (NATS's `max_payload`):
    /// it can never be stored as it is.
    #[error("{0}")]
    TooLarge(String),
}

impl StoreError {
    pub(crate) fn from_open(path: &Path, error: sled::Error) -> StoreError {
        match error {
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
                StoreError::Corrupt(format!("{}: {error}", path.display()))
            }
            sled::Error::Io(source) => StoreError::Io {
                context: format!("opening store {}", path.display()),
                source,
            },
            other => StoreError::Corrupt(format!("{}: {other}", path.display())),
        }
    }

    /// True when the failure is in the storage medium (full disk, I/O error),
    /// so the caller should answer 503 and the client retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(_) | StoreError::Io { .. } | StoreError::Unavailable(_)
        )
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(error: sled::transaction::TransactionError<StoreError>) -> StoreError {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => StoreError::Sled(error),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> StoreError {
        StoreError::Corrupt(format!("undecodable record: {error}"))
    }
}
