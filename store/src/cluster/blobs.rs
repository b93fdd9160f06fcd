//! Component bytes in a JetStream object store, named by digest.

use std::time::Duration;

use async_nats::jetstream::object_store::{GetErrorKind, InfoErrorKind};
use tokio::io::AsyncReadExt;

use super::{Cluster, connected};
use crate::{StoreError, digest_of};

/// How long moving one component in or out may take (they are megabytes,
/// sent in 128 KiB chunks).
const BLOB_TIMEOUT: Duration = Duration::from_secs(60);

/// More than any component Sluice accepts (its deploy limit is far
/// lower): a size past it read from the object store is not believed.
const MAX_BLOB_BYTES: usize = 1 << 30;

/// The object name of a digest (`sha256:<hex>` is stored as `<hex>`).
fn object_name(digest: &str) -> Result<&str, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| StoreError::Corrupt(format!("not a sha256 digest: {digest:?}")))
}

impl Cluster {
    /// Stores `bytes` under their digest (once: a digest already stored is
    /// not sent again) and returns the digest.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let blobs = &self.layout()?.blobs;
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let digest = digest_of(bytes);
        let name = object_name(&digest)?.to_owned();
        let work = async {
            match blobs.info(&name).await {
                Ok(info) if !info.deleted && info.size == bytes.len() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == InfoErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("reading", &name, &e)),
            }
            let mut reader = bytes;
            blobs
                .put(name.as_str(), &mut reader)
                .await
                .map(|_| ())
                .map_err(|e| unavailable("storing", &name, &e))
        };
        match tokio::time::timeout(BLOB_TIMEOUT, work).await {
            Ok(result) => result.map(|()| digest),
            Err(_) => Err(unavailable("storing", &name, &"timed out")),
        }
    }

    /// The bytes stored under `digest`, checked against it; `None` when no
    /// node stored them.
    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let blobs = &self.layout()?.blobs;
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let name = object_name(digest)?;
        let work = async {
            let mut object = match blobs.get(name).await {
                Ok(object) => object,
                Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(unavailable("reading", name, &e)),
            };
            if object.info.deleted {
                return Ok(None);
            }
            if object.info.size > MAX_BLOB_BYTES {
                return Err(StoreError::Corrupt(format!(
                    "component {name} is said to be {} bytes, more than any component Sluice stores",
                    object.info.size
                )));
            }
            let mut bytes = Vec::with_capacity(object.info.size);
            if object.info.size > 0 {
                object
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| unavailable("reading", name, &e))?;
            }
            Ok(Some(bytes))
        };
        let bytes = match tokio::time::timeout(BLOB_TIMEOUT, work).await {
            Ok(result) => result?,
            Err(_) => return Err(unavailable("reading", name, &"timed out")),
        };
        match bytes {
            Some(bytes) if digest_of(&bytes) != digest => Err(StoreError::Corrupt(format!(
                "component {digest} read back with digest {}",
                digest_of(&bytes)
            ))),
            other => Ok(other),
        }
    }
}

fn unavailable(what: &str, name: &str, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what} component {name}: {error}"))
}
