//! Guest output in cluster mode: one stream, `SLUICE_LOGS`, a subject per
//! function (`sluice.logs.<function>`) holding at most
//! `--log-lines-per-function` lines (JetStream drops a subject's oldest
//! line past it: the same ring as the embedded store's), so the logs of a
//! function are the same list through every node, whichever ran the call.
//! A line's `seq` is its stream sequence: increasing across the cluster,
//! the cursor for `since`. Lines are published without waiting for
//! JetStream's ack, as the embedded store does not flush them: logs are not
//! acknowledged data, and a call never waits on them.

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::stream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterOptions, connected};
use crate::{LogLine, StoreError};

/// The logs stream.
pub const LOGS_STREAM: &str = "SLUICE_LOGS";
/// Subject prefix of log lines: `sluice.logs.<function>`.
pub const LOGS_SUBJECT: &str = "sluice.logs";

/// A line as stored (its `seq` is the message's stream sequence).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    time: std::borrow::Cow<'a, str>,
    invocation: std::borrow::Cow<'a, str>,
    stream: std::borrow::Cow<'a, str>,
    line: std::borrow::Cow<'a, str>,
}

pub(super) fn logs_config(options: &ClusterOptions, replicas: usize) -> stream::Config {
    stream::Config {
        name: LOGS_STREAM.to_owned(),
        description: Some("Sluice: guest output, a bounded ring per function".to_owned()),
        subjects: vec![format!("{LOGS_SUBJECT}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_messages_per_subject: i64::try_from(options.log_lines.max(1)).unwrap_or(i64::MAX),
        // The server's default, said here so that a start finds the
        // stream as configured and leaves it alone.
        duplicate_window: std::time::Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The stream of recent calls.
pub const CALLS_STREAM: &str = "SLUICE_CALLS";
/// Subject prefix of recent calls: `sluice.calls.<function>`.
pub const CALLS_SUBJECT: &str = "sluice.calls";
/// Calls kept per function (the stream's limit per subject), as the
/// embedded mode keeps in memory.
pub const RECENT_CALLS: usize = 50;

pub(super) fn calls_config() -> stream::Config {
    stream::Config {
        name: CALLS_STREAM.to_owned(),
        description: Some("Sluice: each function's recent calls, the newest 50".to_owned()),
        subjects: vec![format!("{CALLS_SUBJECT}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_messages_per_subject: RECENT_CALLS as i64,
        duplicate_window: std::time::Duration::from_secs(120),
        num_replicas: 1,
        ..Default::default()
    }
}

fn calls_subject(function: &str) -> Result<String, StoreError> {
    subject(function)?;
    Ok(format!("{CALLS_SUBJECT}.{function}"))
}

/// One message [`read_ordered`] read.
pub(super) struct Read {
    /// Its stream sequence.
    pub(super) seq: u64,
    /// Its subject.
    pub(super) subject: async_nats::Subject,
    /// Its body.
    pub(super) payload: bytes::Bytes,
}

/// Up to `limit` messages of `filter_subject` in `stream` as
/// `deliver_policy` says, oldest first (an ordered consumer, removed
/// after; at once when nothing is pending). The caller bounds it in time.
pub(super) async fn read_ordered(
    cluster: &Cluster,
    stream: &stream::Stream,
    filter_subject: String,
    deliver_policy: DeliverPolicy,
    limit: usize,
) -> Result<Vec<Read>, Box<dyn std::error::Error + Send + Sync>> {
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.inner.client.new_inbox(),
            description: Some("sluice reader".to_owned()),
            filter_subject,
            replay_policy: ReplayPolicy::Instant,
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let _remove =
        super::catalog::RemoveConsumer(Some((stream.clone(), consumer.cached_info().name.clone())));
    if consumer.cached_info().num_pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info()?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        found.push(Read {
            seq,
            subject: message.subject.clone(),
            payload: message.payload.clone(),
        });
        if pending == 0 || found.len() >= limit {
            break;
        }
    }
    Ok(found)
}

fn subject(function: &str) -> Result<String, StoreError> {
    if !crate::is_dns_label(function) {
        return Err(StoreError::Corrupt(format!(
            "not a function name: {function:?}"
        )));
    }
    Ok(format!("{LOGS_SUBJECT}.{function}"))
}

impl Cluster {
    /// Appends `lines` (invocation, stream, text) to `function`'s log. Sent
    /// without waiting for an acknowledgement; dropped (with the reason)
    /// while the connection is down.
    pub async fn append_logs(
        &self,
        function: &str,
        lines: &[(&str, &str, &str)],
    ) -> Result<(), StoreError> {
        let subject = subject(function)?;
        if self.readiness().is_err() {
            return Err(StoreError::Unavailable(
                "not connected to NATS; the output is not kept".to_owned(),
            ));
        }
        let time = crate::now_rfc3339();
        for (invocation, stream, text) in lines {
            let payload = serde_json::to_vec(&Stored {
                time: time.as_str().into(),
                invocation: (*invocation).into(),
                stream: (*stream).into(),
                line: (*text).into(),
            })
            .expect("log lines serialize");
            self.inner
                .client
                .publish(subject.clone(), payload.into())
                .await
                .map_err(|e| StoreError::Unavailable(format!("publishing output: {e}")))?;
        }
        Ok(())
    }

    /// Up to `limit` lines of `function`'s log with `seq > since`, oldest
    /// first.
    pub async fn logs(
        &self,
        function: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let subject = subject(function)?;
        let logs = self.layout()?.logs.clone();
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("reading the logs of {function}: {e}"))
        };
        let read = async {
            let start_sequence = since.saturating_add(1).max(1);
            let policy = DeliverPolicy::ByStartSequence { start_sequence };
            let messages = read_ordered(self, &logs, subject, policy, limit)
                .await
                .map_err(|e| unavailable(&e))?;
            let lines = messages
                .into_iter()
                .filter_map(|read| {
                    let stored = serde_json::from_slice::<Stored>(&read.payload).ok()?;
                    Some(LogLine {
                        seq: read.seq,
                        time: stored.time.into_owned(),
                        invocation: stored.invocation.into_owned(),
                        stream: stored.stream.into_owned(),
                        line: stored.line.into_owned(),
                    })
                })
                .collect();
            Ok(lines)
        };
        match tokio::time::timeout(self.inner.options.request_timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(&"JetStream did not answer in time")),
        }
    }

    /// Keeps one finished call of `function` (a JSON record) in the
    /// cluster's recent list of it. Sent without waiting for an
    /// acknowledgement, as log lines are.
    pub async fn append_call(&self, function: &str, record: Vec<u8>) -> Result<(), StoreError> {
        let subject = calls_subject(function)?;
        if self.readiness().is_err() {
            return Err(StoreError::Unavailable(
                "not connected to NATS; the call is not kept".to_owned(),
            ));
        }
        self.inner
            .client
            .publish(subject, record.into())
            .await
            .map_err(|e| StoreError::Unavailable(format!("publishing a call: {e}")))
    }

    /// The newest [`RECENT_CALLS`] calls of `function` through every node,
    /// newest first (the records as [`Cluster::append_call`] got them).
    pub async fn recent_calls(&self, function: &str) -> Result<Vec<bytes::Bytes>, StoreError> {
        let subject = calls_subject(function)?;
        let calls = (self.layout()?.calls.clone()).ok_or_else(|| {
            StoreError::Unavailable("the recent-calls stream is not there".to_owned())
        })?;
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("reading the recent calls of {function}: {e}"))
        };
        let read = read_ordered(self, &calls, subject, DeliverPolicy::All, RECENT_CALLS);
        match tokio::time::timeout(self.inner.options.request_timeout, read).await {
            Ok(Ok(messages)) => Ok(messages.into_iter().rev().map(|m| m.payload).collect()),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(unavailable(&"JetStream did not answer in time")),
        }
    }

    /// Removes every log line and recent call of `function` (it was
    /// deleted).
    pub async fn delete_logs(&self, function: &str) -> Result<(), StoreError> {
        let subject = subject(function)?;
        let logs = self.layout()?.logs.clone();
        connected(&self.inner.client, self.inner.options.request_timeout).await?;
        let calls = self.layout()?.calls.clone();
        let purge = async {
            logs.purge().filter(subject).await?;
            if let Some(calls) = calls {
                calls.purge().filter(calls_subject(function)?).await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        match tokio::time::timeout(self.inner.options.request_timeout, purge).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "removing the logs of {function}: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "removing the logs of {function}: JetStream did not answer in time"
            ))),
        }
    }
}
