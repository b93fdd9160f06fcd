//! Function records and their content-addressed component bytes.
//!
//! `functions`: name → JSON [`FunctionRecord`]. `blobs`: digest → component
//! bytes. `blob_refs`: digest → number of function records pointing at it
//! (big-endian u64). A blob whose count reaches zero is deleted in the same
//! transaction, so component bytes never outlive the last function using them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::{Result, Store, StoreError, now_rfc3339};

/// Which contract a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// The standard `wasi:http/proxy` world.
    Http,
    /// The `sluice:function/event-function` world.
    Event,
}

impl World {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Http => "http",
            World::Event => "event",
        }
    }
}

/// Who may invoke a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Invocation needs a token with the `invoke` scope.
    #[default]
    Private,
    /// Anyone may invoke.
    Public,
}

/// Per-function settings. `None` means "the server default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSettings {
    /// Who may invoke the function.
    #[serde(default)]
    pub visibility: Visibility,
    /// Wall-clock limit of one invocation, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Linear memory cap of one instance, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Instances of this function that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Largest request body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Largest response body a guest may produce, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Hosts the guest may reach with outbound HTTP (`api.example.com`,
    /// `*.example.com`).
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// Secret settings: the guest sees them as environment variables and
    /// `wasi:config` values; the API never returns their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Shared key-value buckets the function may open by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_buckets: Vec<String>,
}

/// A deployed function, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// DNS-label name.
    pub name: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Starts at 1; incremented by every deploy or settings change.
    pub version: u64,
    /// Which contract the component implements.
    pub world: World,
    /// The function's settings.
    pub settings: FunctionSettings,
    /// RFC 3339 time of the first deploy.
    pub created: String,
    /// RFC 3339 time of the last change.
    pub updated: String,
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

fn decode(raw: &[u8]) -> TxResult<FunctionRecord> {
    serde_json::from_slice(raw).map_err(|error| ConflictableTransactionError::Abort(error.into()))
}

fn encode(record: &FunctionRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("function records always serialize")
}

fn read_count(refs: &TransactionalTree, digest: &str) -> TxResult<u64> {
    Ok(refs
        .get(digest.as_bytes())?
        .map(|raw| {
            let bytes: [u8; 8] = raw.as_ref().try_into().unwrap_or([0; 8]);
            u64::from_be_bytes(bytes)
        })
        .unwrap_or(0))
}

/// Adds one reference to `digest`, storing `bytes` if it is new.
fn add_ref(
    blobs: &TransactionalTree,
    refs: &TransactionalTree,
    digest: &str,
    bytes: &[u8],
) -> TxResult<()> {
    let count = read_count(refs, digest)?;
    if count == 0 {
        blobs.insert(digest.as_bytes(), bytes)?;
    }
    refs.insert(digest.as_bytes(), &(count + 1).to_be_bytes())?;
    Ok(())
}

/// Drops one reference to `digest`, deleting the blob at zero.
fn drop_ref(blobs: &TransactionalTree, refs: &TransactionalTree, digest: &str) -> TxResult<()> {
    let count = read_count(refs, digest)?;
    if count <= 1 {
        refs.remove(digest.as_bytes())?;
        blobs.remove(digest.as_bytes())?;
    } else {
        refs.insert(digest.as_bytes(), &(count - 1).to_be_bytes())?;
    }
    Ok(())
}

/// Aborts a transaction with [`StoreError::Changed`] when the function is not
/// at `expected` (0: absent).
fn check_version(
    name: &str,
    current: Option<&FunctionRecord>,
    expected: Option<u64>,
) -> TxResult<()> {
    expect_version(name, current, expected).map_err(ConflictableTransactionError::Abort)
}

/// [`StoreError::Changed`] when the function is not at `expected` (0:
/// absent); the rule of every conditional write, in either backend.
pub(crate) fn expect_version(
    name: &str,
    current: Option<&FunctionRecord>,
    expected: Option<u64>,
) -> Result<()> {
    match expected {
        Some(version) if version != current.map_or(0, |record| record.version) => {
            Err(StoreError::Changed(name.to_string()))
        }
        _ => Ok(()),
    }
}

/// The record a deploy of `digest` with `settings` makes of `old`, or `None`
/// when it changes nothing (the same code and settings again).
pub(crate) fn deployed(
    name: &str,
    old: Option<&FunctionRecord>,
    digest: &str,
    world: World,
    settings: &FunctionSettings,
    now: &str,
) -> Option<FunctionRecord> {
    if let Some(old) = old
        && old.digest == digest
        && old.world == world
        && old.settings == *settings
    {
        return None;
    }
    Some(FunctionRecord {
        name: name.to_string(),
        digest: digest.to_string(),
        version: old.map_or(1, |old| old.version + 1),
        world,
        settings: settings.clone(),
        created: old.map_or_else(|| now.to_string(), |old| old.created.clone()),
        updated: now.to_string(),
    })
}

/// The record a settings change makes of `record`, or `None` when it
/// changes nothing.
pub(crate) fn resettled(
    record: &FunctionRecord,
    settings: &FunctionSettings,
    now: &str,
) -> Option<FunctionRecord> {
    if record.settings == *settings {
        return None;
    }
    let mut record = record.clone();
    record.settings = settings.clone();
    record.version += 1;
    record.updated = now.to_string();
    Some(record)
}

impl Store {
    /// Deploys `bytes` as function `name` (creating or replacing it), durably.
    ///
    /// With `expected_version`, only if the function is still at that version
    /// (`Some(0)`: only if there is no such function); otherwise
    /// [`StoreError::Changed`], and nothing is written. A caller that read the
    /// record, derived the new one from it, and writes it back so loses no
    /// concurrent change.
    pub async fn deploy_function(
        &self,
        name: &str,
        bytes: &[u8],
        world: World,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<FunctionRecord> {
        let digest = digest_of(bytes);
        let now = now_rfc3339();
        let record = (&self.functions, &self.blobs, &self.blob_refs).transaction(
            |(functions, blobs, refs)| {
                let old = functions
                    .get(name.as_bytes())?
                    .map(|raw| decode(&raw))
                    .transpose()?;
                let Some(record) = deployed(name, old.as_ref(), &digest, world, &settings, &now)
                else {
                    // The same code and settings again: nothing changes,
                    // whatever version the caller expected.
                    return Ok(old.clone().expect("unchanged implies present"));
                };
                check_version(name, old.as_ref(), expected_version)?;
                add_ref(blobs, refs, &digest, bytes)?;
                if let Some(old) = &old {
                    drop_ref(blobs, refs, &old.digest)?;
                }
                functions.insert(name.as_bytes(), encode(&record))?;
                Ok(record)
            },
        )?;
        self.flush().await?;
        Ok(record)
    }

    /// Replaces the settings of function `name`, durably. `None` if it does
    /// not exist. `expected_version` as for [`Store::deploy_function`].
    pub async fn update_function_settings(
        &self,
        name: &str,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<Option<FunctionRecord>> {
        let now = now_rfc3339();
        let record = self.functions.transaction(|functions| {
            let Some(raw) = functions.get(name.as_bytes())? else {
                return Ok(None);
            };
            let record = decode(&raw)?;
            check_version(name, Some(&record), expected_version)?;
            let Some(record) = resettled(&record, &settings, &now) else {
                // Nothing changes: the version stays.
                return Ok(Some(record));
            };
            functions.insert(name.as_bytes(), encode(&record))?;
            Ok(Some(record))
        })?;
        self.flush().await?;
        Ok(record)
    }

    /// Writes `record` as it is, with its component `bytes`: this node's
    /// copy of a function the cluster's catalog holds (cluster mode keeps
    /// the local store as a replica that every read path uses).
    pub async fn replicate_function(&self, record: &FunctionRecord, bytes: &[u8]) -> Result<()> {
        (&self.functions, &self.blobs, &self.blob_refs).transaction(
            |(functions, blobs, refs)| {
                let old = functions
                    .get(record.name.as_bytes())?
                    .map(|raw| decode(&raw))
                    .transpose()?;
                add_ref(blobs, refs, &record.digest, bytes)?;
                if let Some(old) = &old {
                    drop_ref(blobs, refs, &old.digest)?;
                }
                functions.insert(record.name.as_bytes(), encode(record))?;
                Ok(())
            },
        )?;
        self.flush().await
    }

    /// Deletes function `name` and, if no other function uses them, its
    /// component bytes, durably. Returns the deleted record.
    pub async fn delete_function(&self, name: &str) -> Result<Option<FunctionRecord>> {
        let record = (&self.functions, &self.blobs, &self.blob_refs).transaction(
            |(functions, blobs, refs)| {
                let Some(raw) = functions.remove(name.as_bytes())? else {
                    return Ok(None);
                };
                let record = decode(&raw)?;
                drop_ref(blobs, refs, &record.digest)?;
                Ok(Some(record))
            },
        )?;
        self.flush().await?;
        Ok(record)
    }

    /// The record of function `name`.
    pub fn function(&self, name: &str) -> Result<Option<FunctionRecord>> {
        self.functions
            .get(name.as_bytes())?
            .map(|raw| Ok(serde_json::from_slice(&raw)?))
            .transpose()
    }

    /// Every function record, ordered by name.
    pub fn functions(&self) -> Result<Vec<FunctionRecord>> {
        self.functions
            .iter()
            .map(|entry| {
                let (_, raw) = entry?;
                Ok(serde_json::from_slice(&raw)?)
            })
            .collect()
    }

    /// Number of deployed functions.
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// The component bytes with `digest`.
    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.blobs.get(digest.as_bytes())?.map(|raw| raw.to_vec()))
    }

    /// Number of distinct component blobs stored.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn deploy_get_list_and_versioning() {
        let (_dir, store) = open();
        let first = store
            .deploy_function("a", b"one", World::Http, FunctionSettings::default(), None)
            .await
            .unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(first.digest, digest_of(b"one"));
        let second = store
            .deploy_function("a", b"two", World::Http, FunctionSettings::default(), None)
            .await
            .unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(second.created, first.created);
        assert_eq!(store.function("a").unwrap().unwrap(), second);
        assert_eq!(store.functions().unwrap(), vec![second]);
        assert!(store.function("missing").unwrap().is_none());
    }

    #[tokio::test]
    async fn blobs_are_shared_and_collected_when_unreferenced() {
        let (_dir, store) = open();
        let settings = FunctionSettings::default;
        store
            .deploy_function("a", b"same", World::Http, settings(), None)
            .await
            .unwrap();
        store
            .deploy_function("b", b"same", World::Http, settings(), None)
            .await
            .unwrap();
        assert_eq!(store.blob_count(), 1, "identical bytes are stored once");

        store
            .deploy_function("a", b"other", World::Http, settings(), None)
            .await
            .unwrap();
        assert_eq!(store.blob_count(), 2);
        assert!(
            store.blob(&digest_of(b"same")).unwrap().is_some(),
            "b still uses it"
        );

        store.delete_function("b").await.unwrap().unwrap();
        assert!(
            store.blob(&digest_of(b"same")).unwrap().is_none(),
            "collected"
        );
        assert_eq!(store.blob_count(), 1);

        store.delete_function("a").await.unwrap().unwrap();
        assert_eq!(store.blob_count(), 0);
        assert!(store.delete_function("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn redeploying_the_same_bytes_keeps_the_blob() {
        let (_dir, store) = open();
        for _ in 0..3 {
            store
                .deploy_function("a", b"same", World::Http, FunctionSettings::default(), None)
                .await
                .unwrap();
        }
        assert_eq!(store.blob(&digest_of(b"same")).unwrap().unwrap(), b"same");
    }

    #[tokio::test]
    async fn settings_update_bumps_version_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .deploy_function("a", b"x", World::Event, FunctionSettings::default(), None)
                .await
                .unwrap();
            let settings = FunctionSettings {
                timeout_ms: Some(250),
                ..FunctionSettings::default()
            };
            let updated = store
                .update_function_settings("a", settings, None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(updated.version, 2);
            assert!(
                store
                    .update_function_settings("missing", FunctionSettings::default(), None)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        let store = crate::open_when_free(dir.path()).unwrap();
        let record = store.function("a").unwrap().unwrap();
        assert_eq!(record.settings.timeout_ms, Some(250));
        assert_eq!(record.world, World::Event);
        assert_eq!(store.blob(&record.digest).unwrap().unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_write_conditional_on_a_version_changes_nothing_when_it_moved() {
        let (_dir, store) = open();
        let defaults = FunctionSettings::default;
        let changed = |result: Result<FunctionRecord>| matches!(result, Err(StoreError::Changed(name)) if name == "a");
        assert!(changed(
            store
                .deploy_function("a", b"one", World::Http, defaults(), Some(1))
                .await
        ));
        assert!(store.function("a").unwrap().is_none(), "nothing written");
        let first = store
            .deploy_function("a", b"one", World::Http, defaults(), Some(0))
            .await
            .unwrap();
        assert!(changed(
            store
                .deploy_function("a", b"two", World::Http, defaults(), Some(0))
                .await
        ));
        // A retry of the first deploy (its answer lost): the same code and
        // settings are what is stored, so it succeeds and changes nothing.
        let again = store
            .deploy_function("a", b"one", World::Http, defaults(), Some(0))
            .await
            .unwrap();
        assert_eq!(again, first);
        let public = FunctionSettings {
            visibility: Visibility::Public,
            ..defaults()
        };
        assert!(matches!(
            store
                .update_function_settings("a", public.clone(), Some(7))
                .await,
            Err(StoreError::Changed(_))
        ));
        assert_eq!(store.function("a").unwrap().unwrap(), first);
        assert_eq!(store.blob_count(), 1, "the refused bytes left no blob");
        let second = store
            .update_function_settings("a", public, Some(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.version, 2);
        store
            .deploy_function("a", b"two", World::Http, defaults(), Some(2))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn writing_what_is_there_already_changes_nothing() {
        let (_dir, store) = open();
        let defaults = FunctionSettings::default;
        let first = store
            .deploy_function("a", b"one", World::Http, defaults(), None)
            .await
            .unwrap();
        let again = store
            .deploy_function("a", b"one", World::Http, defaults(), None)
            .await
            .unwrap();
        assert_eq!(again, first, "same version, same updated time");
        let same = store
            .update_function_settings("a", defaults(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(same, first);
        assert_eq!(store.blob_count(), 1);
    }

    #[test]
    fn unknown_setting_is_rejected() {
        let error = serde_json::from_str::<FunctionSettings>(r#"{"timeout": 5}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }
}
