//! `sluice migrate`: copies what an embedded data directory holds into a
//! cluster, so that a deployment that outgrew one machine keeps its
//! functions, triggers, brokers, schedules, tokens and guest data.
//!
//! It runs while the directory's server is stopped (sled's lock says so),
//! and never replaces what the cluster already has: every copy is a
//! compare-and-set on absence, so a name the cluster knows (or that a node
//! makes meanwhile) is kept as the cluster has it, and said. Guest data
//! goes first, so a function is never live in the cluster without it.
//! A directory migrated once says so (a file in it) and is refused again
//! without `again`: a second run would bring back what the cluster
//! deleted since. What it cannot carry (pending deliveries, queued
//! invocations) makes it refuse before it writes anything; what it leaves
//! behind (dead letters, logs, finished invocations) it says.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use sluice_router::dispatch::{
    Definition, DeliveryContext, DispatchLimits, Invoker, Outcome, Router,
};
use sluice_router::event::CloudEvent;
use sluice_router::trigger::Destination;
use sluice_store::cluster::{Cluster, ClusterOptions, GuestKv};
use sluice_store::{KvError, Store, StoreError};

/// The file a migrated data directory holds: when, and to which NATS.
pub const MIGRATED_FILE: &str = "migrated";

/// What one migration did, a line per thing.
#[derive(Debug, Default)]
pub struct Migration {
    /// Copied into the cluster (`function hello`, `guest key counter/n`).
    pub copied: Vec<String>,
    /// The cluster had one of the name already: the cluster's is kept.
    pub kept: Vec<String>,
    /// Could not be copied, with the reason.
    pub failed: Vec<String>,
    /// Left behind in the directory, not carried (dead letters, logs).
    pub left: Vec<String>,
}

/// The router is used only to write definitions: it never delivers.
struct NoDeliveries;

impl Invoker for NoDeliveries {
    fn deliver<'a>(
        &'a self,
        _destination: &'a Destination,
        _event: &'a Arc<CloudEvent>,
        _context: DeliveryContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async {
            Outcome::Failed {
                retryable: true,
                code: None,
                reason: "sluice migrate delivers nothing".to_owned(),
            }
        })
    }

    fn check(&self, _destination: &Destination) -> Result<(), String> {
        Ok(())
    }
}

/// Copies the embedded store at `data_dir` into the cluster `options`
/// name, binding to its streams and buckets as they are. A directory
/// migrated before is refused unless `again`.
pub async fn migrate(
    data_dir: &Path,
    mut options: ClusterOptions,
    again: bool,
) -> anyhow::Result<Migration> {
    // Opening a directory that is not there would make an empty store.
    if !data_dir.join("db").exists() {
        anyhow::bail!(
            "{} holds no Sluice data (give --data-dir the embedded server's directory)",
            data_dir.display()
        );
    }
    let marker = data_dir.join(MIGRATED_FILE);
    if let Ok(runs) = std::fs::read_to_string(&marker)
        && !again
    {
        anyhow::bail!(
            "{} was migrated already ({}): a second run would copy back what the cluster deleted since (revoked tokens too); give --again to copy what the cluster lacks anyway",
            data_dir.display(),
            runs.lines().next().unwrap_or_default()
        );
    }
    let store = Store::open(data_dir).with_context(|| {
        format!(
            "opening {} (stop the server that uses it first)",
            data_dir.display()
        )
    })?;
    if store.delivery_count() > 0 {
        anyhow::bail!(
            "{} holds {}, which cannot move: run its server without --nats until they are delivered (sluice_deliveries_pending 0), then migrate",
            data_dir.display(),
            crate::pending_by_trigger(&store)
        );
    }
    let unfinished = crate::invocations::unfinished(&store)?;
    if unfinished > 0 {
        anyhow::bail!(
            "{} holds {unfinished} queued or running asynchronous invocations, which cannot move: run its server without --nats until they are finished, then migrate",
            data_dir.display()
        );
    }
    let urls = options.urls.join(",");
    eprintln!(
        "sluice migrate: connecting to the cluster (waiting up to 30 s for it) to copy {} into it",
        data_dir.display()
    );
    options.keep_layout = true;
    let cluster = Cluster::connect(options).await?;
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .context("the cluster is not ready")?;
    let router = Router::clustered(
        store.clone(),
        cluster.clone(),
        Arc::new(NoDeliveries),
        DispatchLimits::default(),
        &prometheus::Registry::new(),
    );
    // Marked before the first write: a run that fails half way has
    // written some, and a plain second run must not bring back what the
    // cluster deletes meanwhile.
    // A line per run (the first one's stays), private as the directory.
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&marker)
            .with_context(|| format!("writing {}", marker.display()))?;
        // One an older build made may be readable by others.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(file, "{} into {urls}", sluice_store::now_rfc3339())
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    let mut done = Migration::default();
    // The functions the cluster lacks: their data goes in before them.
    let mut new_functions = Vec::new();
    for record in store.functions()? {
        match cluster.function(&record.name).await? {
            Some(theirs) => done.kept.push(format!(
                "function {} (the cluster's v{})",
                record.name, theirs.version
            )),
            None if store.blob(&record.digest)?.is_none() => done.failed.push(format!(
                "function {}: its component {} is missing",
                record.name, record.digest
            )),
            None => new_functions.push(record),
        }
    }
    copy_guest_data(&store, &cluster, &new_functions, &mut done).await?;
    copy_definitions(&store, &router, Definition::Broker, &mut done).await?;
    copy_functions(&store, &cluster, new_functions, &mut done).await?;
    copy_definitions(&store, &router, Definition::Trigger, &mut done).await?;
    copy_definitions(&store, &router, Definition::Schedule, &mut done).await?;
    copy_tokens(data_dir, &store, &cluster, &mut done).await?;
    let letters = store.dead_letter_count();
    if letters > 0 {
        done.left.push(format!(
            "{letters} dead letters (`sluice deadletter list` on the old server lists them)"
        ));
    }
    done.left
        .push("the functions' logs and finished asynchronous invocations".to_owned());
    Ok(done)
}

/// Brokers, triggers or schedules, each unless the cluster has it.
async fn copy_definitions(
    store: &Store,
    router: &Router,
    kind: Definition,
    done: &mut Migration,
) -> anyhow::Result<()> {
    // (definition, mark): only schedules have marks.
    let (noun, stored): (&str, Vec<sluice_store::StoredSchedule>) = match kind {
        Definition::Broker => (
            "broker",
            store.brokers()?.into_iter().map(|b| (b, None)).collect(),
        ),
        Definition::Trigger => (
            "trigger",
            store.triggers()?.into_iter().map(|t| (t, None)).collect(),
        ),
        Definition::Schedule => ("schedule", store.schedules()?),
    };
    for (json, mark) in stored {
        match router.create_in_cluster(kind, &json, mark.as_deref()).await {
            Ok((name, true)) if kind == Definition::Schedule => done
                .copied
                .push(format!("{noun} {name} (fires from its next instant)")),
            Ok((name, true)) => done.copied.push(format!("{noun} {name}")),
            Ok((name, false)) => done.kept.push(format!("{noun} {name}")),
            Err(StoreError::Corrupt(reason)) => {
                done.failed.push(format!("a stored {noun}: {reason}"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

async fn copy_functions(
    store: &Store,
    cluster: &Cluster,
    functions: Vec<sluice_store::FunctionRecord>,
    done: &mut Migration,
) -> anyhow::Result<()> {
    for record in functions {
        let what = format!("function {}", record.name);
        let Some(bytes) = store.blob(&record.digest)? else {
            done.failed.push(format!(
                "{what}: its component {} is missing",
                record.digest
            ));
            continue;
        };
        // Version 0 expected: only if the cluster still has none.
        match cluster
            .deploy_function(
                &record.name,
                &bytes,
                record.world,
                record.settings.clone(),
                Some(0),
            )
            .await
        {
            Ok(_) => done.copied.push(what),
            Err(StoreError::Changed(_)) => done.kept.push(format!(
                "{what} (deployed in the cluster meanwhile; the directory's guest data of it went into its bucket)"
            )),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

async fn copy_tokens(
    data_dir: &Path,
    store: &Store,
    cluster: &Cluster,
    done: &mut Migration,
) -> anyhow::Result<()> {
    // The server's own admin token works on its own node only; in a
    // cluster each node makes its own.
    let own_admin = crate::auth::own_admin_hash(data_dir);
    for (hash, record) in store.tokens()? {
        if own_admin.as_deref() == Some(hash.as_str()) {
            done.left.push(format!(
                "the server's own admin token ({}; each node has its own, or give every node --admin-token)",
                crate::auth::admin_token_path(data_dir).display()
            ));
            continue;
        }
        // Named by its id in the record, never by the hash.
        let id = serde_json::from_slice::<serde_json::Value>(&record)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "(no id)".to_owned());
        let what = format!("token {id}");
        if cluster.create_token(&hash, &record).await? {
            done.copied.push(what);
        } else {
            done.kept.push(what);
        }
    }
    Ok(())
}

/// The guest data of the functions the cluster lacks (`fn/<name>`
/// buckets) and of shared buckets, key by key unless the cluster has the
/// key.
async fn copy_guest_data(
    store: &Store,
    cluster: &Cluster,
    new_functions: &[sluice_store::FunctionRecord],
    done: &mut Migration,
) -> anyhow::Result<()> {
    let kv = GuestKv::new(cluster.clone());
    let (mut copied, mut kept, mut skipped) = (0usize, 0usize, 0usize);
    for (bucket, key, value) in store.kv_entries()? {
        let copy = match bucket.split_once('/') {
            Some(("fn", function)) => new_functions.iter().any(|f| f.name == function),
            Some(("shared", _)) => true,
            _ => false,
        };
        if !copy {
            // A function the cluster has (its data is its own), or one
            // deleted here.
            skipped += 1;
            continue;
        }
        // The embedded store held it within the function's limits: no
        // limit refuses it here (the cluster's count still counts it).
        match kv.create(&bucket, &key, &value).await {
            Ok(true) => copied += 1,
            Ok(false) => kept += 1,
            Err(error @ (KvError::KeyTooLong { .. } | KvError::TooLarge { .. })) => {
                done.failed
                    .push(format!("guest key {key:?} of bucket {bucket}: {error}"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    let keys = |n: usize| format!("{n} guest key{}", if n == 1 { "" } else { "s" });
    if copied > 0 {
        done.copied.push(keys(copied));
    }
    if kept > 0 {
        done.kept.push(keys(kept));
    }
    if skipped > 0 {
        done.left.push(format!(
            "{} of functions the cluster has already or that were deleted here",
            keys(skipped)
        ));
    }
    Ok(())
}
