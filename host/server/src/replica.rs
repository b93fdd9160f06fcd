//! Cluster mode: this node's store as a replica of the cluster's catalog.
//!
//! Functions (records and component bytes) and tokens live in the
//! cluster's buckets; every read path (invocation, authentication, listing)
//! reads the local store, which these tasks keep equal to the cluster: the
//! whole bucket once the cluster answers (what the node missed while it was
//! down included), then each change as it happens. A node's own admin token
//! (`<data-dir>/admin.token`) stays on the node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_runtime::functions::Functions;
use sluice_store::cluster::{Bucket, Catalog, Cluster};
use sluice_store::{FunctionRecord, StoreError};

use crate::auth::Auth;

/// Whether each replica has loaded its bucket (for `/readyz`).
#[derive(Debug, Default)]
pub struct Synced {
    functions: AtomicBool,
    tokens: AtomicBool,
}

impl Synced {
    /// True once this node's tokens are the cluster's.
    pub fn tokens_loaded(&self) -> bool {
        self.tokens.load(Ordering::Acquire)
    }

    /// `Ok` once functions and tokens are loaded, else what is missing.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.functions.load(Ordering::Acquire) {
            return Err("loading functions from the cluster".to_owned());
        }
        if !self.tokens.load(Ordering::Acquire) {
            return Err("loading tokens from the cluster".to_owned());
        }
        Ok(())
    }
}

/// Starts the replicas; `examples` are deployed (to the cluster) once the
/// functions are loaded.
pub fn start(
    cluster: Cluster,
    functions: Arc<Functions>,
    auth: Arc<Auth>,
    examples: Option<PathBuf>,
    synced: Arc<Synced>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let functions_task = {
        let (cluster, synced) = (cluster.clone(), synced.clone());
        tokio::spawn(async move {
            let catalog = loaded(&cluster, Bucket::Functions).await;
            replicate_functions(catalog, &functions, &synced, examples).await;
        })
    };
    let tokens_task = tokio::spawn(async move {
        let catalog = loaded(&cluster, Bucket::Tokens).await;
        replicate_tokens(catalog, &auth, &synced).await;
    });
    vec![functions_task, tokens_task]
}

/// The catalog bucket, once the cluster answers.
async fn loaded(cluster: &Cluster, bucket: Bucket) -> Catalog {
    let mut delay = Duration::from_millis(100);
    loop {
        match cluster.catalog(bucket) {
            Ok(catalog) => return catalog,
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A snapshot, retried until the cluster answers.
async fn snapshot(catalog: &Catalog) -> (Vec<(String, sluice_store::cluster::Versioned)>, u64) {
    let mut delay = Duration::from_millis(100);
    loop {
        match catalog.snapshot().await {
            Ok(snapshot) => return snapshot,
            Err(error) => {
                tracing::debug!(bucket = catalog.bucket().name(), %error, "catalog not readable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn replicate_functions(
    catalog: Catalog,
    functions: &Arc<Functions>,
    synced: &Synced,
    examples: Option<PathBuf>,
) {
    let (entries, after) = snapshot(&catalog).await;
    let mut revisions = HashMap::new();
    let mut names = std::collections::HashSet::new();
    // Changes that failed to apply here (the component bytes not fetched,
    // the local disk failing), retried until they land or a newer change
    // of the same function replaces them.
    let mut pending: HashMap<String, Option<Bytes>> = HashMap::new();
    for (name, value) in entries {
        names.insert(name.clone());
        revisions.insert(name.clone(), value.revision);
        if !apply_function(functions, &name, Some(&value.value)).await {
            pending.insert(name, Some(value.value));
        }
    }
    // Deleted in the cluster while this node was away (or made on this
    // node before it joined: the cluster's catalog is the truth).
    let gone: Vec<String> = functions
        .store()
        .functions()
        .unwrap_or_default()
        .into_iter()
        .filter(|record| !names.contains(&record.name))
        .map(|record| record.name)
        .collect();
    if !gone.is_empty() {
        tracing::warn!(functions = ?gone, "functions on this node that the cluster does not have: removed from this node");
    }
    for name in gone {
        if !apply_function(functions, &name, None).await {
            pending.insert(name, None);
        }
    }
    synced.functions.store(true, Ordering::Release);
    tracing::info!(functions = names.len(), "functions loaded from the cluster");
    if let Some(dir) = examples
        && let Err(error) = crate::deploy_examples(functions, &dir).await
    {
        tracing::error!(%error, "could not deploy the examples to the cluster");
    }
    let mut watch = catalog.watch(after);
    let mut delay = RETRY_FIRST;
    let mut retry_at = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            change = watch.next() => {
                let Some(change) = change else { return };
                let known = revisions.entry(change.key.clone()).or_default();
                if *known >= change.revision {
                    continue;
                }
                *known = change.revision;
                pending.remove(&change.key);
                if !apply_function(functions, &change.key, change.value.as_ref()).await {
                    if pending.is_empty() {
                        delay = RETRY_FIRST;
                        retry_at = tokio::time::Instant::now() + delay;
                    }
                    pending.insert(change.key, change.value);
                }
            }
            () = tokio::time::sleep_until(retry_at), if !pending.is_empty() => {
                let names: Vec<String> = pending.keys().cloned().collect();
                for name in names {
                    let value = pending[&name].clone();
                    if apply_function(functions, &name, value.as_ref()).await {
                        tracing::info!(function = %name, "replicated to this node after a failure");
                        pending.remove(&name);
                    }
                }
                delay = (delay * 2).min(RETRY_LAST);
                retry_at = tokio::time::Instant::now() + delay;
            }
        }
    }
}

/// The first and the longest pause before a failed change is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);

/// Applies one change of the functions bucket to this node: false when it
/// failed and should be tried again.
async fn apply_function(functions: &Arc<Functions>, name: &str, value: Option<&Bytes>) -> bool {
    let Some(value) = value else {
        if let Err(error) = functions.forget(name).await {
            tracing::error!(function = %name, %error, "could not remove a deleted function from this node; will retry");
            return false;
        }
        return true;
    };
    let record: FunctionRecord = match serde_json::from_slice(value) {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(function = %name, %error, "a function record in the cluster is unreadable; ignored");
            return true;
        }
    };
    // This node may hold a newer version of the same function already (it
    // wrote it): an older change seen late is not applied over it.
    if let Ok(Some(local)) = functions.store().function(name)
        && local.created == record.created
        && local.version > record.version
    {
        return true;
    }
    if let Err(error) = functions.keep_replica(&record, None).await {
        tracing::error!(function = %name, %error, "could not replicate a function to this node; will retry");
        return false;
    }
    true
}

async fn replicate_tokens(catalog: Catalog, auth: &Auth, synced: &Synced) {
    let (entries, after) = snapshot(&catalog).await;
    let store = auth.store();
    let mut hashes = std::collections::HashSet::new();
    for (hash, value) in &entries {
        hashes.insert(hash.clone());
        log_failure(
            store.put_token(hash, value.value.as_ref()).await,
            "store a token",
        );
    }
    // Revoked in the cluster while this node was away (never this node's
    // own admin token, which only it has).
    for (hash, _) in store.tokens().unwrap_or_default() {
        if !hashes.contains(&hash) && !auth.is_own_admin(&hash) {
            log_failure(
                store.delete_token(&hash).await.map(drop),
                "remove a revoked token",
            );
        }
    }
    synced.tokens.store(true, Ordering::Release);
    let mut watch = catalog.watch(after);
    while let Some(change) = watch.next().await {
        match change.value {
            Some(value) => log_failure(store.put_token(&change.key, &value).await, "store a token"),
            None => {
                if !auth.is_own_admin(&change.key) {
                    log_failure(
                        store.delete_token(&change.key).await.map(drop),
                        "remove a revoked token",
                    );
                }
            }
        }
    }
}

fn log_failure(result: Result<(), StoreError>, what: &str) {
    if let Err(error) = result {
        tracing::error!(%error, "could not {what} on this node");
    }
}
