//! Accepted events: the `SLUICE_EVENTS` stream.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::{Cluster, EVENTS_SUBJECT, PublishFailure};
use crate::StoreError;

/// The header carrying the publishing node's trigger-catalog revision.
pub const CATALOG_REVISION_HEADER: &str = "Sluice-Catalog-Revision";

/// What JetStream answered for a published event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's sequence in the events stream (the original one for a
    /// duplicate).
    pub sequence: u64,
    /// True when (broker, source, id) was already stored within the dedupe
    /// window: nothing new was stored.
    pub duplicate: bool,
}

/// The `Nats-Msg-Id` of an event: a digest of (broker, source, id), each
/// length-prefixed so no two triples share one.
pub fn event_message_id(broker: &str, source: &str, id: &str) -> String {
    let digest = crate::triple_digest(broker, source, id);
    format!("ev-{}", &hex::encode(digest)[..32])
}

impl Cluster {
    /// Stores one event for `broker` under `message_id` (an
    /// [`event_message_id`] for an event a client sent, so a retry of it is
    /// a duplicate; a [`Cluster::unique_message_id`] for one Sluice made) and returns
    /// once JetStream has
    /// acknowledged it (on a quorum of the stream's replicas): the only
    /// point at which ingress may answer 202.
    ///
    /// `catalog_revision` is the newest trigger-catalog revision the
    /// publishing node had applied: a node fanning the event out first
    /// catches up to it, so a trigger made before the event was accepted
    /// sees the event, whichever node fans it out. `trace` is the event's
    /// trace key, when it is traced (see `traces.rs`).
    ///
    /// An unanswered publish may or may not have been stored; it is retried
    /// with the same message id until the request timeout has passed, so a
    /// retry that lands is answered as the duplicate it is. Past that, the
    /// error is [`StoreError::Unavailable`] and the client's own retry (with
    /// the same source and id) is just as safe.
    pub async fn publish_event(
        &self,
        broker: &str,
        message_id: &str,
        payload: Bytes,
        catalog_revision: u64,
        trace: Option<&str>,
    ) -> Result<Published, StoreError> {
        self.layout()?;
        let subject = format!("{EVENTS_SUBJECT}.{broker}");
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        headers.insert(
            CATALOG_REVISION_HEADER,
            catalog_revision.to_string().as_str(),
        );
        if let Some(trace) = trace {
            headers.insert(super::TRACE_HEADER, trace);
        }
        let budget = self.inner.options.request_timeout;
        match self.publish_idempotent(&subject, &headers, &payload).await {
            Ok(ack) => Ok(Published {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(PublishFailure::TooLarge) => Err(StoreError::TooLarge(format!(
                "the event is {} bytes as JSON, more than the NATS server takes in one message (max_payload, {} bytes)",
                payload.len(),
                self.inner.client.server_info().max_payload
            ))),
            Err(PublishFailure::Full(reason)) => Err(StoreError::Unavailable(format!(
                "the events stream is full ({reason}): the event was not stored; room comes back as events pass the stream's retention (--event-retention) or its limit is raised (--event-max-bytes)"
            ))),
            Err(PublishFailure::NotSent(error)) => Err(error),
            Err(PublishFailure::Unanswered(failure)) => Err(StoreError::Unavailable(format!(
                "JetStream did not acknowledge the event within {budget:?} ({failure}); it may or may not be stored: retry with the same source and id"
            ))),
        }
    }

    /// A message id no other message has (for events Sluice itself makes:
    /// replies and events guests publish, which must never be taken for a
    /// client's retry of another event).
    pub fn unique_message_id(&self) -> String {
        let inbox = self.inner.client.new_inbox();
        format!("gen-{}", inbox.rsplit('.').next().unwrap_or(&inbox))
    }

    /// Events stored in the events stream now (for tests and metrics).
    pub async fn event_count(&self) -> Result<u64, StoreError> {
        let mut events = self.layout()?.events.clone();
        match tokio::time::timeout(self.inner.options.request_timeout, events.info()).await {
            Ok(Ok(info)) => Ok(info.state.messages),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "reading the events stream: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "reading the events stream: no answer".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_message_id;

    #[test]
    fn message_ids_tell_every_triple_apart_and_are_header_safe() {
        let a = event_message_id("default", "ab", "c");
        assert_eq!(a, event_message_id("default", "ab", "c"));
        assert_ne!(a, event_message_id("default", "a", "bc"));
        assert_ne!(a, event_message_id("other", "ab", "c"));
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(a.len(), 35);
    }
}
