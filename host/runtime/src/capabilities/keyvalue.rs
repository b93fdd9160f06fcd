//! `wasi:keyvalue` (store, atomics, batch), backed by the server's store:
//! sled, or in cluster mode the cluster's guest key-value bucket (see
//! [`GuestKv`]).
//!
//! A function opens its own bucket with the identifier `""` or `"default"`
//! (stored as `fn/<function>`): no other function can reach it. A named
//! shared bucket (`shared/<name>`) opens only for functions whose settings
//! list it in `kv_buckets`. Writes are durable (sled flushed, or JetStream
//! acknowledged) before the call returns to the guest, so a value a guest
//! saw written survives a crash.
//! Keys, values and keys per bucket are bounded; going past a bound is an
//! `error::other` with the reason, and changes nothing.

use sluice_store::{GuestKv, KvError};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::Error,
        },
        require_store_data_send: true,
    });
}

pub use generated::wasi::keyvalue;

/// Keys one `list-keys` call returns at most.
pub const LIST_PAGE: usize = 1000;

/// What one invocation may do with key-value data.
#[derive(Clone, Debug)]
pub struct KvContext {
    /// Where the data lives.
    pub store: GuestKv,
    /// The calling function.
    pub function: String,
    /// Shared buckets it may open.
    pub shared: Vec<String>,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one bucket.
    pub max_keys: u64,
}

/// An open bucket: the store's bucket name.
#[derive(Debug)]
pub struct Bucket {
    name: String,
}

/// A `wasi:keyvalue` error before it reaches the guest.
#[derive(Debug)]
pub enum Error {
    /// No such bucket.
    NoSuchStore,
    /// The function may not open it.
    AccessDenied,
    /// Anything else, with the reason.
    Other(String),
}

impl From<wasmtime::component::ResourceTableError> for Error {
    fn from(error: wasmtime::component::ResourceTableError) -> Error {
        Error::Other(error.to_string())
    }
}

impl From<KvError> for Error {
    fn from(error: KvError) -> Error {
        if let KvError::Store(store) = &error {
            tracing::error!(error = %store, "key-value store failed");
        }
        Error::Other(error.to_string())
    }
}

impl From<sluice_store::StoreError> for Error {
    fn from(error: sluice_store::StoreError) -> Error {
        tracing::error!(%error, "key-value store failed");
        Error::Other(format!("storage failed: {error}"))
    }
}

impl KvContext {
    fn check_key(&self, key: &str) -> Result<(), Error> {
        if key.len() > self.max_key_bytes {
            return Err(Error::Other(format!(
                "key of {} bytes is longer than the limit of {} bytes",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        if value.len() > self.max_value_bytes {
            return Err(Error::Other(format!(
                "value of {} bytes is larger than the limit of {} bytes",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

/// What one call's `wasi:keyvalue` imports work on: the function's context
/// (none where key-value storage is not available) and the call's resource
/// table.
pub struct KvView<'a> {
    /// The function's key-value context.
    pub context: Option<&'a std::sync::Arc<KvContext>>,
    /// The call's resources (open buckets).
    pub table: &'a mut ResourceTable,
}

impl KvView<'_> {
    fn kv(&self) -> Result<std::sync::Arc<KvContext>, Error> {
        self.context
            .cloned()
            .ok_or_else(|| Error::Other("key-value storage is not available".into()))
    }

    fn bucket(&mut self, bucket: &Resource<Bucket>) -> Result<String, Error> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

impl keyvalue::store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let kv = self.kv()?;
        let name = match identifier.as_str() {
            "" | "default" => format!("fn/{}", kv.function),
            shared if kv.shared.iter().any(|s| s == shared) => format!("shared/{shared}"),
            _ if !sluice_store::is_dns_label(&identifier) => return Err(Error::NoSuchStore),
            _ => return Err(Error::AccessDenied),
        };
        Ok(self.table.push(Bucket { name })?)
    }

    fn convert_error(&mut self, error: Error) -> wasmtime::Result<keyvalue::store::Error> {
        Ok(match error {
            Error::NoSuchStore => keyvalue::store::Error::NoSuchStore,
            Error::AccessDenied => keyvalue::store::Error::AccessDenied,
            Error::Other(reason) => keyvalue::store::Error::Other(reason),
        })
    }
}

impl keyvalue::store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let name = self.bucket(&bucket)?;
        Ok(self.kv()?.store.get(&name, &key).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        let kv = self.kv()?;
        kv.check_key(&key)?;
        kv.check_value(&value)?;
        kv.store.set(&name, &[(key, value)], kv.max_keys).await?;
        Ok(())
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.kv()?.store.delete(&name, &[key]).await?;
        Ok(())
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let name = self.bucket(&bucket)?;
        Ok(self.kv()?.store.exists(&name, &key).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<keyvalue::store::KeyResponse, Error> {
        let name = self.bucket(&bucket)?;
        let (keys, cursor) = self
            .kv()?
            .store
            .list(&name, cursor.unwrap_or(0), LIST_PAGE)
            .await?;
        Ok(keyvalue::store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl keyvalue::atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        let name = self.bucket(&bucket)?;
        let kv = self.kv()?;
        kv.check_key(&key)?;
        Ok(kv.store.increment(&name, &key, delta, kv.max_keys).await?)
    }
}

impl keyvalue::batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let name = self.bucket(&bucket)?;
        let kv = self.kv()?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(kv.store.get(&name, &key).await?.map(|value| (key, value)));
        }
        Ok(found)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        let kv = self.kv()?;
        for (key, value) in &key_values {
            kv.check_key(key)?;
            kv.check_value(value)?;
        }
        kv.store.set(&name, &key_values, kv.max_keys).await?;
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.kv()?.store.delete(&name, &keys).await?;
        Ok(())
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue` to `linker`, each call's view from `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    keyvalue::store::add_to_linker::<T, HasKv>(linker, view)?;
    keyvalue::atomics::add_to_linker::<T, HasKv>(linker, view)?;
    keyvalue::batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}
