//! Who is in the cluster, and how JetStream is doing: for `/v1/status` and
//! the dashboard.
//!
//! Each node holds a lease in the `sluice_nodes` bucket: its entry,
//! rewritten every [`LEASE_EVERY`], which JetStream drops [`LEASE_TTL`]
//! after the last write (the bucket's `max_age`). The live nodes are the
//! bucket's keys. The delivery backlog is read from the consumers' own
//! counts: events not yet fanned out (the fan-out consumer's pending and
//! unacked), deliveries waiting and in flight (the eight shard consumers').

use std::time::Duration;

use async_nats::jetstream::stream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Bucket, Cluster, Expect, FANOUT_CONSUMER, SHARDS};
use crate::StoreError;

/// How often a node renews its lease.
pub const LEASE_EVERY: Duration = Duration::from_secs(3);
/// How soon a node tries again to renew a lease it could not.
const LEASE_RETRY: Duration = Duration::from_millis(250);
/// How long a lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// One node, as its lease describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique per process: the lease's key.
    pub id: String,
    /// The node's name (its NATS connection name).
    pub name: String,
    /// The address it serves HTTP on.
    pub listen: String,
    /// Its Sluice version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started: String,
}

/// One stream's state.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStatus {
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Replicas configured.
    pub replicas: usize,
    /// The server leading it, when clustered.
    pub leader: Option<String>,
    /// Replicas (other than the leader) that are current.
    pub replicas_current: usize,
}

/// The delivery backlog, from the consumers' counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Backlog {
    /// Accepted events no node has fanned out yet (pending or being fanned
    /// out).
    pub events_to_fan_out: u64,
    /// Deliveries queued, not yet taken by a node.
    pub deliveries_waiting: u64,
    /// Deliveries a node holds (running, waiting out a backoff, or held
    /// under a trigger's `maxConcurrency`).
    pub deliveries_held: u64,
}

/// JetStream as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct JetStreamStatus {
    /// True when JetStream answered.
    pub healthy: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The accepted-events stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<StreamStatus>,
    /// The deliveries work queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<StreamStatus>,
    /// The backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Backlog>,
}

fn stream_status(info: &stream::Info) -> StreamStatus {
    let cluster = info.cluster.as_ref();
    StreamStatus {
        messages: info.state.messages,
        bytes: info.state.bytes,
        replicas: info.config.num_replicas,
        leader: cluster.and_then(|c| c.leader.clone()),
        replicas_current: cluster.map_or(0, |c| c.replicas.iter().filter(|p| p.current).count()),
    }
}

impl Cluster {
    /// Keeps this node's lease for as long as the returned task runs
    /// (abort it to stop; the lease then lapses within [`LEASE_TTL`]).
    pub fn hold_lease(&self, node: NodeInfo) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let value = Bytes::from(serde_json::to_vec(&node).expect("node info serializes"));
            loop {
                let renewed = match cluster.catalog(Bucket::Nodes) {
                    Ok(nodes) => match nodes.put(&node.id, value.clone(), Expect::Any).await {
                        Ok(_) => true,
                        Err(error) => {
                            tracing::debug!(%error, "could not renew this node's lease");
                            false
                        }
                    },
                    // The layout is still being made (at start).
                    Err(_) => false,
                };
                // Not renewed: again soon, so that a node starting (or
                // back from an outage) is listed within a moment.
                tokio::time::sleep(if renewed { LEASE_EVERY } else { LEASE_RETRY }).await;
            }
        })
    }

    /// The nodes whose leases are live, this one included once its first
    /// renewal landed; by name.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.readiness().map_err(StoreError::Unavailable)?;
        let (entries, _) = self.catalog(Bucket::Nodes)?.snapshot().await?;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(nodes)
    }

    /// JetStream's health, the two streams and the delivery backlog (a few
    /// round trips; each bounded by the request timeout).
    pub async fn jetstream_status(&self) -> JetStreamStatus {
        let unhealthy = |reason: String| JetStreamStatus {
            healthy: false,
            reason: Some(reason),
            events: None,
            deliveries: None,
            backlog: None,
        };
        if let Err(reason) = self.probe().await {
            return unhealthy(reason);
        }
        let Ok(layout) = self.layout() else {
            return unhealthy("JetStream layout not ready".to_owned());
        };
        let timeout = self.inner.options.request_timeout;
        let read = async {
            let events = layout.events.get_info().await?;
            let deliveries = layout.deliveries.get_info().await?;
            let mut backlog = Backlog::default();
            // No consumer yet (no node pulled): nothing fanned out or held.
            // Any other failure is the answer's: a backlog read in part
            // would look smaller than it is.
            if let Some(fanout) =
                unless_missing(layout.events.consumer_info(FANOUT_CONSUMER).await)?
            {
                backlog.events_to_fan_out = fanout.num_pending + fanout.num_ack_pending as u64;
            }
            for shard in 0..SHARDS {
                let info = layout
                    .deliveries
                    .consumer_info(format!("sluice_dispatch_{shard}"))
                    .await;
                if let Some(info) = unless_missing(info)? {
                    backlog.deliveries_waiting += info.num_pending;
                    backlog.deliveries_held += info.num_ack_pending as u64;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((events, deliveries, backlog))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok((events, deliveries, backlog))) => JetStreamStatus {
                healthy: true,
                reason: None,
                events: Some(stream_status(&events)),
                deliveries: Some(stream_status(&deliveries)),
                backlog: Some(backlog),
            },
            Ok(Err(error)) => unhealthy(format!("reading stream state: {error}")),
            Err(_) => unhealthy("JetStream did not answer in time".to_owned()),
        }
    }
}

/// A consumer's info; `None` if the consumer does not exist (yet).
fn unless_missing<T, E: std::error::Error + Send + Sync + 'static>(
    result: Result<T, E>,
) -> Result<Option<T>, Box<dyn std::error::Error + Send + Sync>> {
    match result {
        Ok(info) => Ok(Some(info)),
        // JetStream's "consumer not found".
        Err(error)
            if super::jetstream_code(&error) == Some(10014)
                || error.to_string().contains("consumer not found") =>
        {
            Ok(None)
        }
        Err(error) => Err(Box::new(error)),
    }
}
