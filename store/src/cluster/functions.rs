//! Function records in the catalog, their component bytes in the object
//! store: the same rules as the embedded store (versions, conditional
//! writes, unchanged redeploys), from the same helpers.

use bytes::Bytes;

use super::{Bucket, Cluster, Expect};
use crate::functions::{deployed, expect_version, resettled};
use crate::{FunctionRecord, FunctionSettings, Result, StoreError, World, digest_of, now_rfc3339};

impl Cluster {
    /// Deploys `bytes` as function `name` cluster-wide; as
    /// [`crate::Store::deploy_function`]. The bytes are stored first, so a
    /// record never names bytes no node can fetch.
    pub async fn deploy_function(
        &self,
        name: &str,
        bytes: &[u8],
        world: World,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<FunctionRecord> {
        let digest = self.put_blob(bytes).await?;
        debug_assert_eq!(digest, digest_of(bytes));
        self.write_function(name, expected_version, |old| {
            deployed(name, old, &digest, world, &settings, &now_rfc3339())
        })
        .await
        .map(|r| r.expect("a deploy always leaves a record"))
    }

    /// Replaces the settings of function `name` cluster-wide; `None` if it
    /// does not exist. As [`crate::Store::update_function_settings`].
    pub async fn update_function_settings(
        &self,
        name: &str,
        settings: FunctionSettings,
        expected_version: Option<u64>,
    ) -> Result<Option<FunctionRecord>> {
        let catalog = self.catalog(Bucket::Functions)?;
        if catalog.get(name).await?.is_none() {
            return Ok(None);
        }
        self.write_function(name, expected_version, |old| {
            old.and_then(|old| resettled(old, &settings, &now_rfc3339()))
        })
        .await
    }

    /// Deletes function `name` cluster-wide; the deleted record.
    pub async fn delete_function(&self, name: &str) -> Result<Option<FunctionRecord>> {
        let catalog = self.catalog(Bucket::Functions)?;
        let mut pace = self.contention();
        loop {
            let Some(current) = catalog.get(name).await? else {
                return Ok(None);
            };
            let record: FunctionRecord = serde_json::from_slice(&current.value)?;
            match catalog
                .delete(name, Expect::Revision(current.revision))
                .await
            {
                Ok(_) => return Ok(Some(record)),
                Err(StoreError::Changed(_)) if pace.lost().await => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// The record of function `name` in the catalog.
    pub async fn function(&self, name: &str) -> Result<Option<FunctionRecord>> {
        match self.catalog(Bucket::Functions)?.get(name).await? {
            Some(v) => Ok(Some(serde_json::from_slice(&v.value)?)),
            None => Ok(None),
        }
    }

    /// Reads the record, derives the next one with `next` (`None`: nothing
    /// changes), and writes it conditional on the revision read.
    async fn write_function(
        &self,
        name: &str,
        expected_version: Option<u64>,
        next: impl Fn(Option<&FunctionRecord>) -> Option<FunctionRecord>,
    ) -> Result<Option<FunctionRecord>> {
        let catalog = self.catalog(Bucket::Functions)?;
        let mut pace = self.contention();
        loop {
            let current = catalog.get(name).await?;
            let old: Option<FunctionRecord> = current
                .as_ref()
                .map(|v| serde_json::from_slice(&v.value))
                .transpose()?;
            // What is stored already (a retry of a write whose answer was
            // lost) changes nothing, whatever version the caller expected.
            let Some(record) = next(old.as_ref()) else {
                return Ok(old);
            };
            expect_version(name, old.as_ref(), expected_version)?;
            let expect = match &current {
                Some(v) => Expect::Revision(v.revision),
                None => Expect::Absent,
            };
            let body = Bytes::from(serde_json::to_vec(&record)?);
            match catalog.put_definition(name, body, expect).await {
                Ok(_) => return Ok(Some(record)),
                // Another node wrote meanwhile: with an expected version the
                // caller decides (it re-reads); without, derive again.
                Err(StoreError::Changed(_)) if expected_version.is_none() && pace.lost().await => {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stores a token record under `hash` cluster-wide.
    pub async fn put_token(&self, hash: &str, record: &[u8]) -> Result<u64> {
        self.catalog(Bucket::Tokens)?
            .put(hash, Bytes::copy_from_slice(record), Expect::Any)
            .await
    }

    /// Stores a token record under `hash` cluster-wide unless the cluster
    /// has one there: true if stored.
    pub async fn create_token(&self, hash: &str, record: &[u8]) -> Result<bool> {
        let written = self
            .catalog(Bucket::Tokens)?
            .put(hash, Bytes::copy_from_slice(record), Expect::Absent)
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(StoreError::Changed(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes the token under `hash` cluster-wide; whether it existed.
    pub async fn delete_token(&self, hash: &str) -> Result<bool> {
        Ok(self
            .catalog(Bucket::Tokens)?
            .delete(hash, Expect::Any)
            .await?
            .is_some())
    }
}
