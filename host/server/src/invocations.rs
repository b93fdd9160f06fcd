//! Asynchronous invocations: `POST /v1/functions/{name}/invoke?async=true`
//! (the queue, its workers and the stored records; the route reading them
//! is `routes/invocations.rs`).
//!
//! The request is stored (flushed) before the 202, then queued for one of
//! `--async-workers` workers, which runs it like a synchronous invoke and
//! stores its response. At most `--max-async-invocations` are queued or
//! running at once, holding at most `--max-async-invocation-bytes` of
//! request bodies; past either the call is answered 503 with `Retry-After`.
//! The queue in memory holds ids; a worker reads the request back from the
//! store when it starts one.
//! Queued and running invocations are run again after a restart (at least
//! once). Finished ones are kept for `--invocation-retention-secs`, then
//! removed, from an index by finishing time (no record is read again for
//! it). Status: `queued`, `running`, `succeeded` (the function answered
//! below 400), `failed` (it answered 400 or more, or could not run),
//! `cancelled` (`DELETE`: a queued one never runs; a running one ends at
//! the guest's next epoch tick).
//!
//! In cluster mode the record is in the cluster's invocations bucket and
//! the request in its work queue (see `sluice_store::cluster` for the
//! layout): any node reads, lists and cancels an invocation, and any node
//! runs it; the queue's bounds are the stream's limits, the retention the
//! bucket's. A running one's node polls its record each second (and tells
//! JetStream it is still working on it): a `DELETE` through another node
//! asks it to stop by marking the record. A node that dies running one
//! leaves it to another node after the ack wait (run again, at least once,
//! as after an embedded restart).
//!
//! Ids are 128 random bits. An invocation is readable by admin tokens and
//! by the token that made it; one made without a token (of a public
//! function) by whoever holds its id. The stored request never holds a
//! Sluice token: the auth middleware removed it before (see `auth.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sluice_store::StoreError;
use sluice_store::cluster::{Arrival, Bucket, Catalog, Cluster, Expect, QueueRefusal};

use crate::auth::Caller;
use crate::body::read_body;
use crate::error::ApiError;
use crate::routes::invoke::run_invoke;
use crate::state::AppState;
use tokio_util::sync::CancellationToken;

/// How often a call refused as busy is tried again, at most.
const BUSY_RETRIES: u32 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub(crate) fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

/// The owner of a record written before invocations had owners: nobody
/// but an admin (those ids were sequential, so guessable).
fn legacy_owner() -> Option<String> {
    Some(String::new())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) function: String,
    pub(crate) status: Status,
    /// The public id of the token that made it; `None` when it was made
    /// without one.
    #[serde(default = "legacy_owner")]
    pub(crate) owner: Option<String>,
    pub(crate) method: String,
    pub(crate) path_and_query: String,
    pub(crate) request_headers: Vec<(String, String)>,
    pub(crate) request_body: String,
    pub(crate) response: Option<Stored>,
    pub(crate) created: String,
    pub(crate) finished: Option<String>,
    pub(crate) finished_ms: Option<u64>,
    /// Cluster mode: a `DELETE` asked the node running it to stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) cancel_requested: bool,
}

/// One queued invocation: its id, and the bytes of request body it holds
/// in the store until it runs.
struct Queued {
    id: String,
    bytes: u64,
}

/// The asynchronous invocations of one server: the queue, its bounds, and
/// the index by finishing time the retention reaper reads.
pub struct Invocations {
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    receiver: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Queued>>,
    /// Queued or running now.
    outstanding: AtomicUsize,
    max: usize,
    /// Request-body bytes of those queued or running.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Finished invocations by the time they finished (unix ms).
    finished: std::sync::Mutex<BTreeMap<u64, Vec<String>>>,
    /// What a `DELETE` acts on, under one lock with what the workers do.
    control: std::sync::Mutex<Control>,
}

/// The running invocations (to interrupt) and the queued ones a `DELETE`
/// took out of the queue (for their worker to skip).
#[derive(Default)]
struct Control {
    running: HashMap<String, CancellationToken>,
    cancelled: HashSet<String>,
}

impl Invocations {
    /// An empty set bounded at `max` queued or running, holding at most
    /// `max_bytes` of request bodies.
    pub fn new(max: usize, max_bytes: u64) -> Arc<Invocations> {
        let (queue, receiver) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Invocations {
            queue,
            receiver: tokio::sync::Mutex::new(receiver),
            outstanding: AtomicUsize::new(0),
            max,
            bytes: AtomicU64::new(0),
            max_bytes,
            finished: Default::default(),
            control: Default::default(),
        })
    }

    /// Takes a place for one more holding `bytes` (given back when the
    /// [`Admitted`] is dropped unless it names a queued invocation by then),
    /// or says which bound it would pass: 413 for a body no queue could
    /// hold, 503 with `Retry-After` for a full one.
    fn admit(&self, bytes: u64) -> Result<Admitted<'_>, ApiError> {
        self.fits(bytes)?;
        let full = |reason: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_invocations",
                reason,
            )
            .with_retry_after(1)
        };
        if self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(full(format!(
                "{} asynchronous invocations are queued or running, the server's limit; retry later",
                self.max
            )));
        }
        if self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n.saturating_add(bytes) <= self.max_bytes).then_some(n + bytes)
            })
            .is_err()
        {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(full(format!(
                "queued asynchronous invocations hold {} bytes of request bodies, the server's limit; retry later",
                self.max_bytes
            )));
        }
        Ok(Admitted {
            invocations: self,
            bytes,
            queue: None,
        })
    }

    /// 413 for a body no queue could hold.
    fn fits(&self, bytes: u64) -> Result<(), ApiError> {
        if bytes > self.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is {bytes} bytes; queued asynchronous invocations hold at most {} bytes of bodies in all (--max-async-invocation-bytes)",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Gives back a place taken by [`Invocations::admit`].
    fn release(&self, bytes: u64) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn push(&self, id: String, bytes: u64) {
        let _ = self.queue.send(Queued { id, bytes });
    }

    /// One queued or running invocation ended; `finished_ms` when its
    /// result was stored (and so is to expire).
    fn finish(&self, id: &str, bytes: u64, finished_ms: Option<u64>) {
        self.release(bytes);
        if let Some(at) = finished_ms {
            self.finished
                .lock()
                .unwrap()
                .entry(at)
                .or_default()
                .push(id.to_string());
        }
    }

    /// Queued or running now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// The ids that finished before `before_ms`, taken out of the index.
    fn expired(&self, before_ms: u64) -> Vec<String> {
        let mut finished = self.finished.lock().unwrap();
        let keep = finished.split_off(&before_ms);
        let expired = std::mem::replace(&mut *finished, keep);
        expired.into_values().flatten().collect()
    }
}

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn save(state: &AppState, record: &Record) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(record).expect("records serialize");
    state
        .functions
        .store()
        .put_invocation(&record.id, &bytes)
        .await?;
    Ok(())
}

/// An asynchronous invocation's place in the queue, until its record is
/// saved: queued when dropped if `queue` names it, else given back.
struct Admitted<'a> {
    invocations: &'a Invocations,
    bytes: u64,
    queue: Option<String>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        match self.queue.take() {
            Some(id) => self.invocations.push(id, self.bytes),
            None => self.invocations.release(self.bytes),
        }
    }
}

/// Stores the request as a queued invocation, queues it, answers 202.
pub async fn enqueue(state: &AppState, name: &str, request: Request) -> Result<Response, ApiError> {
    let function = crate::routes::functions::loaded(state, name).await?;
    let owner = request
        .extensions()
        .get::<Caller>()
        .and_then(|caller| caller.token_id().map(str::to_string));
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, function.limits.max_request_bytes).await?;
    if function.record.world == sluice_store::World::Event {
        // Refused now as the synchronous call would refuse it, not later.
        let events = sluice_router::binding::parse_request(&parts.headers, &body)?;
        if events.len() != 1 {
            return Err(ApiError::bad_request(
                "one_event",
                "invoke takes exactly one event; post batches to /v1/events",
            ));
        }
    }
    let bytes = body.len() as u64;
    let cluster = state.functions.cluster();
    let mut admitted = match cluster {
        Some(_) => {
            state.invocations.fits(bytes)?;
            None
        }
        None => Some(state.invocations.admit(bytes)?),
    };
    let record = Record {
        id: state.functions.new_invocation_id(),
        function: name.to_string(),
        status: Status::Queued,
        owner,
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        request_headers: header_pairs(&parts.headers),
        request_body: b64().encode(&body),
        response: None,
        created: sluice_store::now_rfc3339(),
        finished: None,
        finished_ms: None,
        cancel_requested: false,
    };
    if let Some(cluster) = &cluster {
        enqueue_clustered(cluster, &record).await?;
        return Ok(accepted(&record.id));
    }
    let mut admitted = admitted.take().expect("admitted unless in cluster mode");
    // From the save on, the invocation is queued when this request ends,
    // even one dropped mid-save by a client that hung up (the worker skips
    // a record that never got stored); its place is given back if not.
    admitted.queue = Some(record.id.clone());
    if let Err(error) = save(state, &record).await {
        admitted.queue = None;
        return Err(error);
    }
    drop(admitted);
    Ok(accepted(&record.id))
}

/// The 202 of a queued invocation.
fn accepted(id: &str) -> Response {
    let url = format!("/v1/invocations/{id}");
    (
        StatusCode::ACCEPTED,
        [(http::header::LOCATION, url.clone())],
        axum::Json(json!({"id": id, "status": "queued", "url": url})),
    )
        .into_response()
}

/// What the cluster's bucket holds of `record`: all but its request body,
/// which only the queued message carries.
fn stored_form(record: &Record) -> bytes::Bytes {
    let mut value = serde_json::to_value(record).expect("records serialize");
    value["request_body"] = Value::String(String::new());
    bytes::Bytes::from(serde_json::to_vec(&value).expect("records serialize"))
}

/// Cluster mode: stores the record, then queues the request (the record
/// first, so that the node which pulls it finds it). A request that was
/// not queued, or not known to be, leaves its record failed, so that a
/// node that gets it anyway does not run what was answered 503.
async fn enqueue_clustered(cluster: &Cluster, record: &Record) -> Result<(), ApiError> {
    let request = bytes::Bytes::from(serde_json::to_vec(record).expect("records serialize"));
    let max = cluster.max_value_bytes()?;
    if request.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "in cluster mode an asynchronous invocation's request is one NATS message: {} bytes as stored (the body in base64), more than the server's max_payload allows ({} bytes)",
                request.len(),
                max
            ),
        ));
    }
    let catalog = cluster.catalog(Bucket::Invocations)?;
    let revision = catalog
        .put(&record.id, stored_form(record), Expect::Absent)
        .await?;
    let request_bytes = request.len() as u64;
    let refusal = match cluster.enqueue_invocation(&record.id, request).await {
        Ok(()) => return Ok(()),
        Err(refusal) => refusal,
    };
    let error = match refusal {
        QueueRefusal::Full(_) if request_bytes > cluster.options().max_invocation_bytes => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the invocation's request is {request_bytes} bytes as stored (the body in base64), more than the queue of asynchronous invocations holds in all (--max-async-invocation-bytes, {})",
                    cluster.options().max_invocation_bytes
                ),
            )
        }
        QueueRefusal::Full(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_invocations",
            reason,
        )
        .with_retry_after(1),
        QueueRefusal::Store(error) => ApiError::from(error),
    };
    let mut failed = record.clone();
    failed.status = Status::Failed;
    failed.response = Some(
        stored_error(ApiError::new(
            error.status,
            "not_queued",
            format!(
                "the invocation was answered {} ({}) and not run",
                error.status.as_u16(),
                error.code
            ),
        ))
        .await,
    );
    failed.finished = Some(sluice_store::now_rfc3339());
    failed.finished_ms = Some(unix_ms());
    if let Err(store) = catalog
        .put(&record.id, stored_form(&failed), Expect::Revision(revision))
        .await
    {
        tracing::warn!(id = %record.id, error = %store, "could not mark an invocation that was not queued as failed");
    }
    Err(error)
}

/// `error` as a stored response.
async fn stored_error(error: ApiError) -> Stored {
    let (parts, body) = error.into_response().into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Stored::of(&parts, &body)
}

impl Stored {
    /// A response's status, headers (those that are text) and body.
    fn of(parts: &http::response::Parts, body: &[u8]) -> Stored {
        Stored {
            status: parts.status.as_u16(),
            headers: header_pairs(&parts.headers),
            body: b64().encode(body),
        }
    }
}

/// The headers that are text, as (name, value) pairs.
fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The record of invocation `id`, wherever this server keeps them.
pub(crate) async fn read(state: &AppState, id: &str) -> Result<Option<Record>, ApiError> {
    match state.functions.cluster() {
        Some(cluster) => Ok(read_clustered(&cluster.catalog(Bucket::Invocations)?, id)
            .await?
            .map(|(record, _)| record)),
        None => match state.functions.store().invocation(id)? {
            Some(raw) => Ok(Some(
                serde_json::from_slice(&raw).map_err(ApiError::internal)?,
            )),
            None => Ok(None),
        },
    }
}

/// True for an id Sluice makes (hex): only those are keys in the bucket.
fn is_invocation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The record of `id` in the cluster's bucket and its revision. An id that
/// is not one Sluice makes (hex) is no key: none is read for it.
async fn read_clustered(catalog: &Catalog, id: &str) -> Result<Option<(Record, u64)>, ApiError> {
    if !is_invocation_id(id) {
        return Ok(None);
    }
    let Some(stored) = catalog.get(id).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&stored.value).map_err(ApiError::internal)?;
    Ok(Some((record, stored.revision)))
}

/// Cancels invocation `id` (read by the caller already): a queued one is
/// stored as cancelled and never runs; a running one is interrupted, and
/// this waits (a few seconds at most) for its worker to store the end.
/// Returns the record as it then is; a finished one is left as it was.
pub(crate) async fn cancel(state: &AppState, id: &str) -> Result<Option<Record>, ApiError> {
    if let Some(cluster) = state.functions.cluster() {
        return cancel_clustered(&cluster.catalog(Bucket::Invocations)?, id).await;
    }
    let store = state.functions.store();
    let read = |id: &str| -> Result<Option<Record>, ApiError> {
        match store.invocation(id)? {
            Some(raw) => Ok(Some(
                serde_json::from_slice(&raw).map_err(ApiError::internal)?,
            )),
            None => Ok(None),
        }
    };
    let running = {
        let mut control = state.invocations.control.lock().unwrap();
        let Some(mut record) = read(id)? else {
            return Ok(None);
        };
        if record.status.is_finished() {
            return Ok(Some(record));
        }
        match control.running.get(id) {
            Some(token) => {
                token.cancel();
                None
            }
            None => {
                // Not started: its worker will skip it.
                control.cancelled.insert(id.to_string());
                record.status = Status::Cancelled;
                Some(record)
            }
        }
    };
    if let Some(mut record) = running {
        record.finished = Some(sluice_store::now_rfc3339());
        let at = unix_ms();
        record.finished_ms = Some(at);
        save(state, &record).await?;
        let invocations = &state.invocations;
        invocations
            .finished
            .lock()
            .unwrap()
            .entry(at)
            .or_default()
            .push(record.id.clone());
        tracing::info!(id = %record.id, function = %record.function, "queued invocation cancelled");
        return Ok(Some(record));
    }
    let give_up = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let record = read(id)?;
        let done = record.as_ref().is_none_or(|r| r.status.is_finished());
        if done || tokio::time::Instant::now() >= give_up {
            if let Some(record) = &record {
                tracing::info!(id = %record.id, function = %record.function, status = ?record.status, "running invocation cancelled");
            }
            return Ok(record);
        }
    }
}

/// Cluster mode: a queued one is stored as cancelled (compare-and-set
/// against the node that would start it); a running one's record is
/// marked for its node to see, and this waits as [`cancel`] does.
async fn cancel_clustered(catalog: &Catalog, id: &str) -> Result<Option<Record>, ApiError> {
    loop {
        let Some((mut record, revision)) = read_clustered(catalog, id).await? else {
            return Ok(None);
        };
        if record.status.is_finished() {
            return Ok(Some(record));
        }
        let queued = record.status == Status::Queued;
        if queued {
            record.status = Status::Cancelled;
            record.finished = Some(sluice_store::now_rfc3339());
            record.finished_ms = Some(unix_ms());
        } else if record.cancel_requested {
            break;
        } else {
            record.cancel_requested = true;
        }
        match catalog
            .put(id, stored_form(&record), Expect::Revision(revision))
            .await
        {
            Ok(_) if queued => {
                tracing::info!(id = %record.id, function = %record.function, "queued invocation cancelled");
                return Ok(Some(record));
            }
            Ok(_) => break,
            // It started, or another cancel landed: look again.
            Err(StoreError::Changed(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    let give_up = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let record = read_clustered(catalog, id).await?.map(|(r, _)| r);
        let done = record.as_ref().is_none_or(|r| r.status.is_finished());
        if done || tokio::time::Instant::now() >= give_up {
            if let Some(record) = &record {
                tracing::info!(id = %record.id, function = %record.function, status = ?record.status, "running invocation cancelled");
            }
            return Ok(record);
        }
    }
}

/// How long a `DELETE` waits for a running invocation to end.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// What a list shows of an invocation: read without its request and
/// response bodies (serde skips them without keeping them).
#[derive(Deserialize)]
struct Summary {
    id: String,
    function: String,
    status: Status,
    #[serde(default = "legacy_owner")]
    owner: Option<String>,
    created: String,
    finished: Option<String>,
    response: Option<SummaryResponse>,
}

#[derive(Deserialize)]
struct SummaryResponse {
    status: u16,
}

/// The invocations `caller` made (every one for an admin), newest first,
/// at most `limit`, of `function` (any when `None`). One made without a
/// token is listed to admins only: its id is its only protection. The
/// scan keeps at most `limit` at a time; the embedded store's runs off the
/// async threads, the cluster's is one pass over its bucket.
pub(crate) async fn list(
    state: &AppState,
    caller: &Caller,
    function: Option<String>,
    limit: usize,
) -> Result<Vec<Value>, ApiError> {
    let mut newest = Newest {
        kept: Default::default(),
        limit,
        admin: caller.is_admin(),
        token: caller.token_id().map(str::to_string),
        function,
    };
    let newest = match state.functions.cluster() {
        Some(cluster) => {
            cluster
                .catalog(Bucket::Invocations)?
                .values_under("", |_, raw| newest.offer(raw))
                .await?;
            newest
        }
        None => {
            let store = state.functions.store().clone();
            let scan = tokio::task::spawn_blocking(move || {
                store.each_invocation(|raw| newest.offer(raw))?;
                Ok::<_, StoreError>(newest)
            });
            scan.await.map_err(ApiError::internal)??
        }
    };
    let mut kept: Vec<Summary> = newest
        .kept
        .into_iter()
        .map(|std::cmp::Reverse((_, _, s))| s.0)
        .collect();
    kept.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    Ok(kept
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "function": s.function,
                "status": s.status,
                "created": s.created,
                "finished": s.finished,
                "response_status": s.response.map(|r| r.status),
            })
        })
        .collect())
}

/// The newest `limit` of a caller's invocations, by (created, id), the
/// oldest of them on top.
struct Newest {
    kept: std::collections::BinaryHeap<std::cmp::Reverse<(String, String, SummaryView)>>,
    limit: usize,
    admin: bool,
    token: Option<String>,
    function: Option<String>,
}

impl Newest {
    fn offer(&mut self, raw: &[u8]) {
        let Ok(summary) = serde_json::from_slice::<Summary>(raw) else {
            return;
        };
        let mine = self.admin || summary.owner.is_some() && summary.owner == self.token;
        if !mine
            || self
                .function
                .as_ref()
                .is_some_and(|f| *f != summary.function)
        {
            return;
        }
        self.kept.push(std::cmp::Reverse((
            summary.created.clone(),
            summary.id.clone(),
            SummaryView(summary),
        )));
        if self.kept.len() > self.limit {
            self.kept.pop();
        }
    }
}

/// A summary in the heap (ordered by the key beside it only).
struct SummaryView(Summary);

impl PartialEq for SummaryView {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for SummaryView {}
impl PartialOrd for SummaryView {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SummaryView {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// True when `caller` may read `record`: an admin, the token that made
/// it, or anyone for one made without a token.
pub(crate) fn readable(caller: &Caller, record: &Record) -> bool {
    match &record.owner {
        None => true,
        Some(owner) => caller.is_admin() || caller.token_id() == Some(owner.as_str()),
    }
}

fn rebuild(record: &Record) -> Result<Request, String> {
    let mut request = http::Request::builder()
        .method(record.method.as_str())
        .uri(record.path_and_query.as_str());
    for (k, v) in &record.request_headers {
        request = request.header(k, v);
    }
    let body = b64()
        .decode(&record.request_body)
        .map_err(|e| e.to_string())?;
    request.body(Body::from(body)).map_err(|e| e.to_string())
}

/// Runs one invocation and stores its result; returns when it finished,
/// if the result was stored (otherwise it stays queued or running in the
/// store, and runs again after a restart).
async fn run(state: AppState, id: &str) -> Option<u64> {
    let cancel = CancellationToken::new();
    {
        let mut control = state.invocations.control.lock().unwrap();
        if control.cancelled.remove(id) {
            // Its `DELETE` stores it as cancelled (and indexes it).
            return None;
        }
        control.running.insert(id.to_string(), cancel.clone());
    }
    /// Takes the invocation off the running list however `run` ends.
    struct Off<'a>(&'a Invocations, &'a str);
    impl Drop for Off<'_> {
        fn drop(&mut self) {
            self.0.control.lock().unwrap().running.remove(self.1);
        }
    }
    let _off = Off(&state.invocations, id);
    let mut record = match state.functions.store().invocation(id) {
        Ok(Some(raw)) => match serde_json::from_slice::<Record>(&raw) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%id, %error, "an invocation's record does not parse; it is not run");
                return None;
            }
        },
        // Removed meanwhile (the function was deleted).
        Ok(None) => return None,
        Err(error) => {
            tracing::error!(%id, ?error, "could not read an invocation; it stays queued");
            return None;
        }
    };
    if record.status.is_finished() {
        // Cancelled before a restart, then queued again by an old copy.
        return record.finished_ms;
    }
    record.status = Status::Running;
    if let Err(error) = save(&state, &record).await {
        tracing::error!(id = %record.id, ?error, "could not mark an invocation running; it stays queued");
        return None;
    }
    execute(&state, &mut record, &cancel).await;
    if let Err(error) = save(&state, &record).await {
        tracing::error!(id = %record.id, ?error, "could not store an invocation's result");
        return None;
    }
    record.finished_ms
}

/// Runs `record`'s request (again, after a second, while the function is
/// busy, up to [`BUSY_RETRIES`] times) and sets how it ended: its status,
/// response and finishing time.
async fn execute(state: &AppState, record: &mut Record, cancel: &CancellationToken) {
    let mut tries = 0;
    let response = loop {
        let response = match rebuild(record) {
            Ok(mut request) => {
                request.extensions_mut().insert(cancel.clone());
                match run_invoke(state, &record.function, request).await {
                    Ok(response) => response,
                    Err(error) => error.into_response(),
                }
            }
            Err(reason) => ApiError::internal(reason).into_response(),
        };
        let busy = matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && response.headers().contains_key(http::header::RETRY_AFTER);
        tries += 1;
        if !busy || tries >= BUSY_RETRIES || cancel.is_cancelled() {
            break response;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = cancel.cancelled() => {}
        }
    };
    let (mut parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The guest's response broke off midway (it trapped, ran out of
        // time or past its cap while writing): the call failed, as such.
        Err(error) => {
            let error = match error
                .into_inner()
                .downcast::<sluice_runtime::invoke::InvokeError>()
            {
                Ok(error) => ApiError::from(*error),
                Err(other) => ApiError::internal(other),
            };
            let (failed, body) = error.into_response().into_parts();
            parts = failed;
            body.collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default()
        }
    };
    // A call that finished before the cancel reached it keeps its result.
    record.status = if cancel.is_cancelled() && parts.status.as_u16() >= 400 {
        Status::Cancelled
    } else if parts.status.as_u16() < 400 {
        Status::Succeeded
    } else {
        Status::Failed
    };
    record.response = (record.status != Status::Cancelled).then(|| Stored::of(&parts, &body));
    record.finished = Some(sluice_store::now_rfc3339());
    record.finished_ms = Some(unix_ms());
}

/// How long a node waits before another try of an invocation whose
/// record it could not read or write.
const CLUSTER_RETRY: Duration = Duration::from_secs(1);

/// Cluster mode: runs the queued invocations this node pulls, at most
/// `workers` at once, until the feed ends.
async fn work_clustered(state: AppState, cluster: Cluster, workers: usize) {
    let mut feed = cluster.invocation_feed(workers.max(1));
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            arrival = feed.next() => {
                let Some(arrival) = arrival else { return };
                let (state, cluster) = (state.clone(), cluster.clone());
                running.spawn(async move { run_clustered(&state, &cluster, arrival).await });
            }
            Some(done) = running.join_next() => {
                if let Err(error) = done {
                    tracing::error!(%error, "an invocation's task failed; JetStream hands it out again after the ack wait");
                }
            }
        }
    }
}

/// Hands `arrival` back for another try in a second, after `error`.
async fn retry_later(arrival: &Arrival, id: &str, error: impl Into<ApiError>, what: &str) {
    let error = error.into();
    tracing::warn!(%id, ?error, "{what}; trying again in a second");
    let _ = arrival.nak(CLUSTER_RETRY).await;
}

/// Cluster mode: runs one pulled invocation unless its record says it was
/// cancelled or finished meanwhile, stores the result, then acks it.
async fn run_clustered(state: &AppState, cluster: &Cluster, arrival: Arrival) {
    let mut record = match serde_json::from_slice::<Record>(&arrival.payload) {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(sequence = arrival.sequence, %error, "a queued invocation does not parse; dropped");
            let _ = arrival.term().await;
            return;
        }
    };
    let catalog = match cluster.catalog(Bucket::Invocations) {
        Ok(catalog) => catalog,
        Err(error) => {
            return retry_later(&arrival, &record.id, error, "invocations bucket not ready").await;
        }
    };
    if !is_invocation_id(&record.id) {
        tracing::error!(
            sequence = arrival.sequence,
            "a queued invocation has no valid id; dropped"
        );
        let _ = arrival.term().await;
        return;
    }
    // Marked running, unless a `DELETE` or another node got there first.
    let mut revision = loop {
        let found = match catalog.get(&record.id).await {
            Ok(found) => found,
            Err(error) => {
                return retry_later(&arrival, &record.id, error, "could not read an invocation")
                    .await;
            }
        };
        // Gone: it passed the retention while queued (cancelled or not).
        // Never run without a record.
        let Some(found) = found else {
            tracing::warn!(id = %record.id, function = %record.function, "a queued invocation has no record (past its retention); not run");
            let _ = arrival.term().await;
            return;
        };
        let stored = match serde_json::from_slice::<Record>(&found.value) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(id = %record.id, %error, "an invocation's record does not parse; it is not run");
                let _ = arrival.term().await;
                return;
            }
        };
        let expect = match (stored, found.revision) {
            (stored, _) if stored.status.is_finished() => {
                let _ = arrival.ack().await;
                return;
            }
            (mut stored, revision) if stored.cancel_requested => {
                // Cancelled while the node that ran it was gone.
                stored.status = Status::Cancelled;
                stored.finished = Some(sluice_store::now_rfc3339());
                stored.finished_ms = Some(unix_ms());
                match catalog
                    .put(&stored.id, stored_form(&stored), Expect::Revision(revision))
                    .await
                {
                    Ok(_) => {
                        let _ = arrival.ack().await;
                        return;
                    }
                    Err(StoreError::Changed(_)) => continue,
                    Err(error) => {
                        return retry_later(
                            &arrival,
                            &record.id,
                            error,
                            "could not cancel an invocation",
                        )
                        .await;
                    }
                }
            }
            (_, revision) => Expect::Revision(revision),
        };
        if arrival.delivered > 1 {
            tracing::info!(id = %record.id, function = %record.function, attempt = arrival.delivered, "running an invocation again (the node that had it went away)");
        }
        record.status = Status::Running;
        match catalog.put(&record.id, stored_form(&record), expect).await {
            Ok(revision) => break revision,
            Err(StoreError::Changed(_)) => continue,
            Err(error) => {
                return retry_later(
                    &arrival,
                    &record.id,
                    error,
                    "could not mark an invocation running",
                )
                .await;
            }
        }
    };
    let cancel = CancellationToken::new();
    let id = record.id.clone();
    // Each second: still working on it (for JetStream), and asked to stop?
    let watch = async {
        // Well inside the ack wait, however short it was set.
        let ack_wait = cluster.options().ack_wait;
        let mut every = tokio::time::interval((ack_wait / 3).min(Duration::from_secs(1)));
        every.tick().await;
        loop {
            every.tick().await;
            let _ = arrival.progress().await;
            if let Ok(Some((stored, _))) = read_clustered(&catalog, &id).await
                && (stored.cancel_requested || stored.status.is_finished())
            {
                cancel.cancel();
            }
        }
    };
    tokio::select! {
        () = execute(state, &mut record, &cancel) => {}
        () = watch => {}
    }
    // The result is stored before the ack, or the invocation runs again;
    // over this node's own `running` write only (or a cancel request made
    // since): a record another node finished meanwhile stays as it is.
    let mut tries = 0;
    loop {
        let stored = match cluster.max_value_bytes() {
            Ok(max) => {
                keep_within(&mut record, max).await;
                catalog
                    .put(&id, stored_form(&record), Expect::Revision(revision))
                    .await
                    .map(|_| ())
            }
            Err(error) => Err(error),
        };
        let error = match stored {
            Ok(()) => break,
            Err(StoreError::Changed(_)) => match read_clustered(&catalog, &id).await {
                Ok(Some((now, _))) if now.status.is_finished() => {
                    tracing::info!(%id, status = ?now.status, "an invocation was finished elsewhere meanwhile; its record stays");
                    break;
                }
                Ok(Some((_, now))) => {
                    // A cancel request landed: the result replaces it.
                    revision = now;
                    continue;
                }
                Ok(None) => {
                    tracing::warn!(%id, "an invocation's record went away while it ran");
                    break;
                }
                Err(error) => StoreError::Unavailable(format!("{error:?}")),
            },
            Err(error) => error,
        };
        tries += 1;
        if tries >= 20 {
            tracing::error!(%id, %error, "could not store an invocation's result; it will run again");
            let _ = arrival.nak(CLUSTER_RETRY).await;
            return;
        }
        let _ = arrival.progress().await;
        tokio::time::sleep(CLUSTER_RETRY).await;
    }
    if let Err(error) = arrival.ack().await {
        tracing::warn!(%id, %error, "could not ack a finished invocation; the node that gets it again will see it finished");
    }
}

/// Makes `record` fit `max` bytes as stored: a response too large for
/// one NATS message is replaced by a failure saying so.
async fn keep_within(record: &mut Record, max: usize) {
    let bytes = stored_form(record).len();
    if bytes <= max {
        return;
    }
    record.status = Status::Failed;
    record.response = Some(
        stored_error(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response_not_kept",
            format!(
                "the function answered {bytes} bytes with its record, more than an invocation's record holds in cluster mode (the NATS server's max_payload, {max} bytes, less headers); call it synchronously for responses this large"
            ),
        ))
        .await,
    );
}

/// How many invocations in `store` are queued or running (which cluster
/// mode would never run).
pub fn unfinished(store: &sluice_store::Store) -> anyhow::Result<usize> {
    let mut count = 0;
    store.each_invocation(|raw| {
        if serde_json::from_slice::<Record>(raw).is_ok_and(|r| !r.status.is_finished()) {
            count += 1;
        }
    })?;
    Ok(count)
}

/// Resumes unfinished invocations, starts `workers` workers and the
/// retention reaper.
pub fn start(state: AppState, workers: usize) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(cluster) = state.functions.cluster() {
        // JetStream holds the queue and the bucket the retention: nothing
        // to resume or reap here.
        return Ok(tokio::spawn(work_clustered(state, cluster, workers)));
    }
    let retention = state.limits.invocation_retention_secs * 1000;
    let invocations = state.invocations.clone();
    state.functions.store().each_invocation(|raw| {
        let Ok(record) = serde_json::from_slice::<Record>(raw) else {
            return;
        };
        match (record.status, record.finished_ms) {
            (Status::Queued | Status::Running, _) => {
                tracing::info!(id = %record.id, function = %record.function, "resuming invocation");
                // Accepted before the restart: queued whatever the bounds.
                let bytes = (record.request_body.len() as u64) / 4 * 3;
                invocations.outstanding.fetch_add(1, Ordering::AcqRel);
                invocations.bytes.fetch_add(bytes, Ordering::AcqRel);
                invocations.push(record.id, bytes);
            }
            (_, Some(at)) => invocations
                .finished
                .lock()
                .unwrap()
                .entry(at)
                .or_default()
                .push(record.id),
            (_, None) => {}
        }
    })?;
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = state.invocations.receiver.lock().await.recv().await;
                let Some(Queued { id, bytes }) = next else {
                    return;
                };
                let finished = run(state.clone(), &id).await;
                state.invocations.finish(&id, bytes, finished);
            }
        }));
    }
    Ok(tokio::spawn(async move {
        struct Abort(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for Abort {
            fn drop(&mut self) {
                for task in &self.0 {
                    task.abort();
                }
            }
        }
        let _workers = Abort(tasks);
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            let store = state.functions.store();
            for id in state
                .invocations
                .expired(unix_ms().saturating_sub(retention))
            {
                let _ = store.delete_invocation(&id);
            }
        }
    }))
}
