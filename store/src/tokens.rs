//! API token records, keyed by the SHA-256 of the token (the secret itself
//! is never stored). The host owns the record format.

use crate::{Result, Store};

impl Store {
    /// Stores an API token record under the hash of its secret, durably.
    pub async fn put_token(&self, hash: &str, record: &[u8]) -> Result<()> {
        self.tokens.insert(hash.as_bytes(), record)?;
        self.flush().await
    }

    /// The token record stored under `hash`.
    pub fn token(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tokens.get(hash.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Every token record, as (hash, record).
    pub fn tokens(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.tokens
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Deletes the token stored under `hash`, durably.
    pub async fn delete_token(&self, hash: &str) -> Result<bool> {
        let old = self.tokens.remove(hash.as_bytes())?;
        self.flush().await?;
        Ok(old.is_some())
    }
}
