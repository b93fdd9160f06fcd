//! Asynchronous invocations in cluster mode.
//!
//! An invocation is two things: its record (status, owner, response) in the
//! bucket `sluice_invocations`, readable and cancellable through any node,
//! and its request, one message in the work-queue stream
//! `SLUICE_INVOCATIONS` (subject `sluice.invocations`, message id the
//! invocation's id), which every node pulls from one durable consumer. The
//! node that pulls it runs it, sends progress notes while it runs, stores
//! the result in the record and only then acks the message: a node that
//! dies meanwhile leaves the message to be handed to another node after the
//! ack wait (at least once, as the embedded mode runs an unfinished one
//! again after a restart).
//!
//! The stream's limits are the queue's bounds: `discard: new` with
//! `max_msgs` (`--max-async-invocations`) and `max_bytes`
//! (`--max-async-invocation-bytes`) refuse a call past them, as
//! [`QueueRefusal::Full`]. The bucket's `max_age` (`--invocation-retention`)
//! expires a record that long after its last write. Both are set by the
//! node that creates them (later nodes' flags do not change them).

use async_nats::jetstream::stream;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{Cluster, ClusterOptions, PublishFailure, queue::Feed};
use crate::StoreError;

/// The work-queue stream of asynchronous invocations' requests.
pub const INVOCATIONS_STREAM: &str = "SLUICE_INVOCATIONS";
/// The subject of queued invocations.
const INVOCATIONS_SUBJECT: &str = "sluice.invocations";
/// The durable consumer every node pulls invocations from.
pub const INVOKERS_CONSUMER: &str = "sluice_invokers";

pub(super) fn invocations_config(options: &ClusterOptions, replicas: usize) -> stream::Config {
    stream::Config {
        name: INVOCATIONS_STREAM.to_owned(),
        description: Some("Sluice: queued asynchronous invocations".to_owned()),
        subjects: vec![INVOCATIONS_SUBJECT.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: i64::try_from(options.max_invocations.max(1)).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(options.max_invocation_bytes.max(1)).unwrap_or(i64::MAX),
        // The server's default, said here so that a start finds the
        // stream as configured and leaves it alone.
        duplicate_window: std::time::Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Why an invocation was not queued.
#[derive(Debug)]
pub enum QueueRefusal {
    /// The queue holds as many invocations or bytes as it may (this says
    /// which): retry later.
    Full(String),
    /// Anything else: too large for one message, or JetStream unavailable.
    Store(StoreError),
}

impl Cluster {
    /// Queues the request of invocation `id` (`request`, opaque here) for
    /// any node to run; returns once JetStream stored it. A retry with the
    /// same id within two minutes adds nothing.
    pub async fn enqueue_invocation(&self, id: &str, request: Bytes) -> Result<(), QueueRefusal> {
        self.layout().map_err(QueueRefusal::Store)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        match self
            .publish_idempotent(INVOCATIONS_SUBJECT, &headers, &request)
            .await
        {
            Ok(_) => Ok(()),
            Err(PublishFailure::Full(reason)) => {
                let options = &self.inner.options;
                Err(QueueRefusal::Full(format!(
                    "the queue of asynchronous invocations is full ({reason}): it holds at most {} invocations queued or running and {} bytes of requests as stored, bodies in base64 (--max-async-invocations, --max-async-invocation-bytes, as set by the node that made the queue); retry later",
                    options.max_invocations, options.max_invocation_bytes
                )))
            }
            Err(PublishFailure::TooLarge) => {
                Err(QueueRefusal::Store(StoreError::TooLarge(format!(
                    "the invocation's request is {} bytes as stored, more than the NATS server takes in one message (max_payload, {} bytes)",
                    request.len(),
                    self.inner.client.server_info().max_payload
                ))))
            }
            Err(PublishFailure::NotSent(error)) => Err(QueueRefusal::Store(error)),
            Err(PublishFailure::Unanswered(failure)) => {
                Err(QueueRefusal::Store(StoreError::Unavailable(format!(
                    "JetStream did not acknowledge the invocation ({failure}); it may or may not be queued"
                ))))
            }
        }
    }

    /// Queued invocations for this node to run, at most `capacity` held at
    /// once (each [`super::Arrival`] is a request given to
    /// [`Cluster::enqueue_invocation`]; ack it once its result is stored).
    pub fn invocation_feed(&self, capacity: usize) -> Feed {
        let permits = std::sync::Arc::new(Semaphore::new(capacity.max(1)));
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let cluster = self.clone();
        let task = tokio::spawn(async move {
            cluster
                .pull(
                    INVOCATIONS_STREAM,
                    INVOKERS_CONSUMER,
                    String::new(),
                    permits,
                    tx,
                )
                .await
        });
        Feed::new(rx, vec![task])
    }

    /// The most bytes one stored value may have (the server's
    /// `max_payload`, less room for headers). Unknown (unavailable) until a
    /// server has said, and while the layout is not ready.
    pub fn max_value_bytes(&self) -> Result<usize, StoreError> {
        self.readiness().map_err(StoreError::Unavailable)?;
        Ok(self
            .inner
            .client
            .server_info()
            .max_payload
            .saturating_sub(1024))
    }
}
