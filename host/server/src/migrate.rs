//! `sluice migrate`: copies what an embedded data directory holds into a
//! cluster, so that a deployment that outgrew one machine keeps its
//! functions, triggers, brokers, schedules, tokens and guest data.
//!
//! It runs while the directory's server is stopped (sled's lock says so),
//! and never replaces what the cluster already has: a name the cluster
//! knows is kept as the cluster has it, and said. Run again, it copies
//! nothing twice. What it cannot carry (pending deliveries, queued
//! invocations) makes it refuse before it writes anything; what it leaves
//! behind (dead letters, logs, finished invocations) it counts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use sluice_router::broker::Broker;
use sluice_router::dispatch::{
    Definition, DeliveryContext, DispatchLimits, Invoker, Outcome, Router,
};
use sluice_router::event::CloudEvent;
use sluice_router::schedule::Schedule;
use sluice_router::trigger::{Destination, Trigger};
use sluice_store::cluster::{Bucket, Cluster, ClusterOptions, GuestKv};
use sluice_store::{KvError, Store};

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
/// name, binding to its streams and buckets as they are.
pub async fn migrate(data_dir: &Path, mut options: ClusterOptions) -> anyhow::Result<Migration> {
    // Opening a directory that is not there would make an empty store.
    if !data_dir.join("db").exists() {
        anyhow::bail!(
            "{} holds no Sluice data (give --data-dir the embedded server's directory)",
            data_dir.display()
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
            "{} holds {} pending deliveries, which cannot move: run its server without --nats until they are delivered (sluice_deliveries_pending 0), then migrate",
            data_dir.display(),
            store.delivery_count()
        );
    }
    let unfinished = crate::invocations::unfinished(&store)?;
    if unfinished > 0 {
        anyhow::bail!(
            "{} holds {unfinished} queued or running asynchronous invocations, which cannot move: run its server without --nats until they are finished, then migrate",
            data_dir.display()
        );
    }
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
    let mut done = Migration::default();
    copy_brokers(&store, &router, &mut done).await?;
    copy_functions(&store, &cluster, &mut done).await?;
    copy_triggers(&store, &router, &mut done).await?;
    copy_schedules(&store, &router, &mut done).await?;
    copy_tokens(&store, &cluster, &mut done).await?;
    copy_guest_data(&store, &cluster, &mut done).await?;
    let letters = store.dead_letter_count();
    if letters > 0 {
        done.left.push(format!(
            "{letters} dead letters (GET /v1/deadletters on the old server lists them)"
        ));
    }
    done.left
        .push("the functions' logs and finished asynchronous invocations".to_owned());
    Ok(done)
}

fn parsed<T, E: std::fmt::Display>(
    raw: &[u8],
    parse: impl Fn(&serde_json::Value) -> Result<T, E>,
) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    parse(&value).map_err(|e| e.to_string())
}

async fn copy_brokers(store: &Store, router: &Router, done: &mut Migration) -> anyhow::Result<()> {
    for raw in store.brokers()? {
        let broker = match parsed(&raw, |v| Broker::parse(v, None)) {
            Ok(broker) => broker,
            Err(reason) => {
                done.failed.push(format!("a stored broker: {reason}"));
                continue;
            }
        };
        let what = format!("broker {}", broker.name);
        if router.cluster_has(Definition::Broker, &broker.name).await? {
            done.kept.push(what);
            continue;
        }
        router.put_broker(broker).await?;
        done.copied.push(what);
    }
    Ok(())
}

async fn copy_functions(
    store: &Store,
    cluster: &Cluster,
    done: &mut Migration,
) -> anyhow::Result<()> {
    for record in store.functions()? {
        let what = format!("function {}", record.name);
        if let Some(theirs) = cluster.function(&record.name).await? {
            done.kept
                .push(format!("{what} (the cluster's v{})", theirs.version));
            continue;
        }
        let Some(bytes) = store.blob(&record.digest)? else {
            done.failed.push(format!(
                "{what}: its component {} is missing",
                record.digest
            ));
            continue;
        };
        cluster
            .deploy_function(
                &record.name,
                &bytes,
                record.world,
                record.settings.clone(),
                None,
            )
            .await?;
        done.copied.push(what);
    }
    Ok(())
}

async fn copy_triggers(store: &Store, router: &Router, done: &mut Migration) -> anyhow::Result<()> {
    for raw in store.triggers()? {
        let trigger = match parsed(&raw, |v| Trigger::parse(v, None)) {
            Ok(trigger) => trigger,
            Err(reason) => {
                done.failed.push(format!("a stored trigger: {reason}"));
                continue;
            }
        };
        let what = format!("trigger {}", trigger.name);
        if router
            .cluster_has(Definition::Trigger, &trigger.name)
            .await?
        {
            done.kept.push(what);
            continue;
        }
        router.put_trigger(trigger).await?;
        done.copied.push(what);
    }
    Ok(())
}

async fn copy_schedules(
    store: &Store,
    router: &Router,
    done: &mut Migration,
) -> anyhow::Result<()> {
    for (raw, _mark) in store.schedules()? {
        let schedule = match parsed(&raw, |v| Schedule::parse(v, None)) {
            Ok(schedule) => schedule,
            Err(reason) => {
                done.failed.push(format!("a stored schedule: {reason}"));
                continue;
            }
        };
        let what = format!("schedule {} (fires from its next instant)", schedule.name);
        if router
            .cluster_has(Definition::Schedule, &schedule.name)
            .await?
        {
            done.kept.push(format!("schedule {}", schedule.name));
            continue;
        }
        router.put_schedule(schedule).await?;
        done.copied.push(what);
    }
    Ok(())
}

async fn copy_tokens(store: &Store, cluster: &Cluster, done: &mut Migration) -> anyhow::Result<()> {
    let catalog = cluster.catalog(Bucket::Tokens)?;
    for (hash, record) in store.tokens()? {
        // Named by its id in the record, never by the hash.
        let id = serde_json::from_slice::<serde_json::Value>(&record)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "(no id)".to_owned());
        let what = format!("token {id}");
        if catalog.get(&hash).await?.is_some() {
            done.kept.push(what);
            continue;
        }
        cluster.put_token(&hash, &record).await?;
        done.copied.push(what);
    }
    Ok(())
}

async fn copy_guest_data(
    store: &Store,
    cluster: &Cluster,
    done: &mut Migration,
) -> anyhow::Result<()> {
    let kv = GuestKv::new(cluster.clone());
    let (mut copied, mut kept) = (0usize, 0usize);
    for (bucket, key, value) in store.kv_entries()? {
        match kv.get(&bucket, &key).await {
            Ok(Some(_)) => {
                kept += 1;
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                done.failed
                    .push(format!("guest key {key:?} of bucket {bucket}: {error}"));
                continue;
            }
        }
        // The embedded store held it within the function's limits: no
        // limit refuses it here (the cluster's count still counts it).
        match kv.set(&bucket, &key, &value, u64::MAX).await {
            Ok(()) => copied += 1,
            Err(error @ (KvError::KeyTooLong { .. } | KvError::TooLarge { .. })) => {
                done.failed
                    .push(format!("guest key {key:?} of bucket {bucket}: {error}"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    if copied > 0 {
        done.copied.push(format!("{copied} guest keys"));
    }
    if kept > 0 {
        done.kept.push(format!("{kept} guest keys"));
    }
    Ok(())
}
