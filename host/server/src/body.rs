//! Request bodies: how fast they must arrive, and how many bytes of them
//! the server holds at once.
//!
//! Every request body is wrapped in a [`GuardedBody`] before any handler
//! reads it:
//! - Bytes must keep arriving at [`BodyLimits::min_rate`] bytes a second,
//!   measured over windows of [`BodyLimits::grace`]: each window must bring
//!   `min_rate × grace` bytes (or the body's end) before it closes, and the
//!   next window opens when it has. A body trickled at a byte a second, one
//!   that stops one byte short, or one that sends a burst and then trickles
//!   (an average over the whole body would let 16 MiB sent at once buy
//!   hours of trickle) ends in 408. A window's time is the time spent
//!   waiting for the client's bytes: a reader that takes its time (a guest
//!   the body streams into) does not use up the client's grace.
//! - Every byte read counts against a server-wide budget until the
//!   request's response is ready: past it, 503 with `Retry-After`. Forty
//!   clients that each send 15 MiB and stall cannot pin 600 MiB. Component
//!   uploads (deploys, which need a `deploy` token) have a budget of their
//!   own ([`BodyLimits::upload_budget_bytes`], one largest component), so
//!   the one every other request shares ([`BodyLimits::budget_bytes`]) can
//!   be far smaller than a component.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The bounds on request bodies, from `sluice serve` flags.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// The window the rate is measured over (so also the longest gap
    /// allowed between two chunks).
    pub grace: Duration,
    /// The least rate a body must keep in every window, in bytes a second.
    pub min_rate: u64,
    /// Bytes of request bodies held at once, server-wide, except uploads.
    pub budget_bytes: usize,
    /// Bytes of component uploads held at once.
    pub upload_budget_bytes: usize,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefused {
    /// It arrived too slowly (or stopped).
    #[error("the request body arrived too slowly")]
    TooSlow,
    /// The server holds its budget of request bytes.
    #[error("the server holds its limit of request bytes being received")]
    Budget,
}

impl BodyRefused {
    /// The refusal somewhere in `error`'s chain of sources, if any.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<BodyRefused> {
        let mut at = Some(error);
        while let Some(error) = at {
            if let Some(refused) = error.downcast_ref::<BodyRefused>() {
                return Some(*refused);
            }
            at = error.source();
        }
        None
    }
}

/// The budget of request bytes, and what one request holds of it.
#[derive(Clone)]
pub struct BodyBudget {
    limits: BodyLimits,
    bytes: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

/// What one request holds of the budget; released when dropped.
#[derive(Default, Clone)]
pub struct Held(Arc<Mutex<Vec<OwnedSemaphorePermit>>>);

impl BodyBudget {
    /// A budget for `limits`.
    pub fn new(limits: BodyLimits) -> BodyBudget {
        let bytes = limits.budget_bytes.min(Semaphore::MAX_PERMITS);
        let uploads = limits.upload_budget_bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes)),
            uploads: Arc::new(Semaphore::new(uploads)),
            limits,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &BodyLimits {
        &self.limits
    }

    /// Wraps `body` (a component upload's, with `upload`); what it reads
    /// is held in `held`.
    pub fn guard(&self, body: axum::body::Body, held: Held, upload: bool) -> axum::body::Body {
        let now = Instant::now();
        let budget = if upload { &self.uploads } else { &self.bytes };
        axum::body::Body::new(GuardedBody {
            inner: body,
            budget: budget.clone(),
            held,
            in_window: 0,
            per_window: self
                .limits
                .min_rate
                .max(1)
                .saturating_mul(self.limits.grace.as_secs().max(1)),
            grace: self.limits.grace,
            deadline: Box::pin(tokio::time::sleep_until(now + self.limits.grace)),
            waited: Duration::ZERO,
            waiting_since: None,
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body with a minimum rate and a share of the byte budget.
    struct GuardedBody {
        #[pin]
        inner: axum::body::Body,
        budget: Arc<Semaphore>,
        held: Held,
        // Bytes that arrived in the window open now.
        in_window: u64,
        // Bytes each window must bring.
        per_window: u64,
        grace: Duration,
        // When the window open now closes, counting only the time spent
        // waiting on the client: a reader that takes its time (a guest the
        // body streams into) does not use up the client's grace.
        deadline: Pin<Box<Sleep>>,
        // Time this window spent waiting for bytes.
        waited: Duration,
        // Since when it waits now.
        waiting_since: Option<Instant>,
    }
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let poll = this.inner.poll_frame(cx);
        if poll.is_ready()
            && let Some(since) = this.waiting_since.take()
        {
            *this.waited += since.elapsed();
        }
        match poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    match this.budget.clone().try_acquire_many_owned(len) {
                        Ok(permit) => this.held.0.lock().unwrap().push(permit),
                        Err(_) => {
                            return Poll::Ready(Some(Err(axum::Error::new(BodyRefused::Budget))));
                        }
                    }
                    *this.in_window += data.len() as u64;
                    // The window brought its share: the next one opens.
                    if *this.in_window >= *this.per_window {
                        *this.in_window = 0;
                        *this.waited = Duration::ZERO;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    let now = Instant::now();
                    *this.waiting_since = Some(now);
                    let left = this.grace.saturating_sub(*this.waited);
                    this.deadline.as_mut().reset(now + left);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(axum::Error::new(BodyRefused::TooSlow))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The most a body's buffer is given before its bytes arrive.
const INITIAL_CAPACITY: usize = 1 << 20;

/// Reads a body up to `limit` bytes; 413 past it (before reading it all
/// when `Content-Length` says so).
pub async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: u64,
) -> Result<Bytes, crate::error::ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(crate::error::ApiError::body_too_large(limit));
    }
    // Copied into one buffer as the chunks arrive, each dropped at once: the
    // memory a body holds is the bytes that arrived (what the body budget
    // counts), not those plus the chunks' buffers, nor twice that at the end.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = Limited::new(body, limit);
    // Sized for the declared length up to 1 MiB: a client declaring 16 MiB
    // and sending nothing gets no 16 MiB buffer for it.
    let capacity = declared.map_or(0, |len| {
        usize::try_from(len)
            .unwrap_or(0)
            .min(limit)
            .min(INITIAL_CAPACITY)
    });
    let mut buffer = bytes::BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    // Grown to the declared length once the client has
                    // sent a buffer's worth (it is sending), never to twice
                    // what has come by doubling.
                    if buffer.capacity() - buffer.len() < data.len()
                        && let Some(len) = declared.and_then(|l| usize::try_from(l).ok())
                        && len >= buffer.len() + data.len()
                    {
                        buffer.reserve(len - buffer.len());
                    }
                    buffer.extend_from_slice(data);
                }
            }
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(crate::error::ApiError::body_too_large(limit as u64));
            }
            Err(error) => return Err(crate::error::ApiError::body_error(&*error)),
        }
    }
    Ok(buffer.freeze())
}

pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Why a request body streamed into a guest was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Too slow, or past the byte budget.
    Refused(BodyRefused),
    /// Past the function's `max_request_bytes` (this many).
    TooLarge(u64),
}

/// A request body passed on to a guest as it arrives, remembering whether
/// it was cut (too slow, past the byte budget, past `limit` bytes), so that
/// the answer can say so (408, 503, 413) whatever the guest made of its
/// failed read.
pub struct Watched {
    inner: axum::body::Body,
    received: u64,
    limit: u64,
    cut: Arc<Mutex<Option<Cut>>>,
}

impl Watched {
    /// `body`, cut past `limit` bytes, and where its cut will be.
    pub fn new(body: axum::body::Body, limit: u64) -> (Watched, Arc<Mutex<Option<Cut>>>) {
        let cut = Arc::new(Mutex::new(None));
        (
            Watched {
                inner: body,
                received: 0,
                limit,
                cut: cut.clone(),
            },
            cut,
        )
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Err(error))) => {
                if let Some(refused) = BodyRefused::find(error) {
                    *self.cut.lock().unwrap() = Some(Cut::Refused(refused));
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.received += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.received > self.limit {
                    *self.cut.lock().unwrap() = Some(Cut::TooLarge(self.limit));
                    return Poll::Ready(Some(Err(axum::Error::new(format!(
                        "the request body is larger than {} bytes",
                        self.limit
                    )))));
                }
            }
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn budget(bytes: usize) -> BodyBudget {
        BodyBudget::new(BodyLimits {
            grace: Duration::from_secs(10),
            min_rate: 1000,
            budget_bytes: bytes,
            upload_budget_bytes: bytes,
        })
    }

    #[tokio::test]
    async fn bytes_are_held_until_the_request_ends_and_past_the_budget_refused() {
        let budget = budget(100);
        let first = Held::default();
        let body = budget.guard(axum::body::Body::from(vec![0u8; 60]), first.clone(), false);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 60);
        let second = budget.guard(
            axum::body::Body::from(vec![0u8; 60]),
            Held::default(),
            false,
        );
        let error = second.collect().await.unwrap_err();
        assert_eq!(BodyRefused::find(&error), Some(BodyRefused::Budget));
        drop(first);
        let third = budget.guard(
            axum::body::Body::from(vec![0u8; 60]),
            Held::default(),
            false,
        );
        assert_eq!(third.collect().await.unwrap().to_bytes().len(), 60);
    }

    /// A body fed by hand, and its sender.
    fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        axum::body::Body,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (tx, axum::body::Body::from_stream(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_cut_after_the_grace() {
        let budget = budget(1 << 20);
        let (tx, body) = channel();
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let started = Instant::now();
        let error = budget
            .guard(body, Held::default(), false)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(BodyRefused::find(&error), Some(BodyRefused::TooSlow));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "the grace after the last chunk"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_below_the_rate_is_cut_and_one_at_the_rate_is_not() {
        let budget = budget(1 << 20);
        // A byte every 5 s: each gap within the grace, the average far below
        // 1,000 bytes a second.
        let elapsed = cut_after(&budget, 0).await;
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
        // 2,000 bytes a second for 20 s: above the rate, never cut.
        let (tx, body) = channel();
        let steady = tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Ok(Bytes::from(vec![0u8; 2000]))).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let got = budget
            .guard(body, Held::default(), false)
            .collect()
            .await
            .unwrap();
        assert_eq!(got.to_bytes().len(), 40_000);
        steady.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_its_time_does_not_use_up_the_clients_grace() {
        let budget = budget(1 << 20);
        let (tx, body) = channel();
        let mut body = budget.guard(body, Held::default(), false);
        // The client sends 8 KB at once, then 1 KB 100 ms after each ask:
        // it never makes the reader wait long. The reader takes 1 KB every
        // 3 s (a guest doing work per chunk): 30 s for the first window's
        // worth, far past the 10 s grace, yet it waited on the client only
        // 100 ms at a time.
        for _ in 0..8 {
            tx.send(Ok(Bytes::from(vec![0u8; 1000]))).await.unwrap();
        }
        let mut got = 0;
        for round in 0..12 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if round >= 8 {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tx.send(Ok(Bytes::from(vec![0u8; 1000]))).await.unwrap();
                });
            }
            let frame = body.frame().await.expect("a frame").expect("not cut");
            got += frame.data_ref().map_or(0, |d| d.len());
        }
        assert_eq!(got, 12_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_buys_no_time_for_a_trickle_after_it() {
        let budget = budget(1 << 20);
        // 100 KB at once (100 s at the rate), then a byte every 5 s.
        assert_eq!(
            cut_after(&budget, 100_000).await,
            Duration::from_secs(10),
            "the window after the burst brought 2 bytes of its 10,000"
        );
    }

    /// Sends `burst` bytes at once, then a byte every 5 s, through a guard
    /// of `budget`; how long until the body was cut as too slow.
    async fn cut_after(budget: &BodyBudget, burst: usize) -> Duration {
        let (tx, body) = channel();
        let sender = tokio::spawn(async move {
            if burst > 0 {
                tx.send(Ok(Bytes::from(vec![0u8; burst]))).await.unwrap();
            }
            while tx.send(Ok(Bytes::from_static(b"x"))).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let started = Instant::now();
        let error = budget
            .guard(body, Held::default(), false)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(BodyRefused::find(&error), Some(BodyRefused::TooSlow));
        sender.abort();
        started.elapsed()
    }
}
