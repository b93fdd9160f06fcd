//! A `wasi:http` guest's response body, streamed to the caller as the guest
//! writes it ([`GuestBody`]).
//!
//! The call's bounds hold while it streams: past the function's response
//! cap the stream is cut (and the cut logged), at the call's deadline too;
//! either way the guest is stopped at once. The call succeeds only when
//! the body has ended and the guest has returned cleanly: a guest that
//! traps mid-body ends the stream with an error, so the client sees a cut
//! response (no final chunk), never a complete-looking one. The
//! invocation's metrics are recorded when the stream ends, however it ends
//! (a caller that goes away counts as `cancelled`).

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::engine::Usage;
use crate::functions::{Function, Functions};
use crate::invoke::{InvokeError, TASK_FAILED, TaskEnd};

/// What ends the call when the stream ends.
struct Ending {
    functions: Weak<Functions>,
    function: Arc<Function>,
    started: Instant,
    usage: Arc<Usage>,
    timeout_ms: u64,
    task: tokio::task::JoinHandle<TaskEnd<()>>,
}

/// The body of a streamed `wasi:http` response. Its error is the
/// [`InvokeError`] that cut it.
pub struct GuestBody {
    /// The guest's body, until it ends.
    inner: Option<HyperOutgoingBody>,
    /// Until the call has ended.
    ending: Option<Ending>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    sent: u64,
    cap: u64,
    /// The guest's body broke off (it failed while writing).
    broke: bool,
    /// The first frame, read by [`GuestBody::prime`] before the head went out.
    first: Option<Frame<Bytes>>,
    /// The length the guest declared (`content-length`), if it did.
    declared: Option<u64>,
    /// Trailers went out (they come last).
    trailers: bool,
    /// The call's deadline.
    deadline_at: tokio::time::Instant,
}

impl std::fmt::Debug for GuestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBody")
            .field("sent", &self.sent)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl GuestBody {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: HyperOutgoingBody,
        functions: Weak<Functions>,
        function: Arc<Function>,
        started: Instant,
        usage: Arc<Usage>,
        task: tokio::task::JoinHandle<TaskEnd<()>>,
        deadline: tokio::time::Instant,
        timeout_ms: u64,
        declared: Option<u64>,
    ) -> GuestBody {
        GuestBody {
            declared,
            trailers: false,
            deadline_at: deadline,
            inner: Some(inner),
            cap: function.limits.max_response_bytes,
            ending: Some(Ending {
                functions,
                function,
                started,
                usage,
                timeout_ms,
                task,
            }),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            sent: 0,
            broke: false,
            first: None,
        }
    }

    /// Waits for the guest's first bytes (or the body's end), so that a
    /// call failing before it wrote any body is answered with its error
    /// instead of a head and a cut body.
    pub(crate) async fn prime(&mut self) -> Result<(), InvokeError> {
        let first = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
        match first {
            Some(Err(error)) => Err(error),
            Some(Ok(frame)) => {
                self.first = Some(frame);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Ends the call with `outcome` (stopping the guest if it still runs).
    fn end(&mut self, outcome: Result<(), &InvokeError>) {
        let Some(ending) = self.ending.take() else {
            return;
        };
        ending.task.abort();
        self.inner = None;
        if let Some(functions) = ending.functions.upgrade() {
            let label = outcome.map_or_else(InvokeError::outcome, |()| "ok");
            functions.record(&ending.function, ending.started, label, &ending.usage);
        }
    }

    fn cut(&mut self, error: InvokeError) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        self.end(Err(&error));
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(ending) = &this.ending else {
            return Poll::Ready(None);
        };
        let name = || ending.function.record.name.clone();
        if this.deadline.as_mut().poll(cx).is_ready() {
            let (function, timeout_ms) = (name(), ending.timeout_ms);
            tracing::warn!(%function, sent = this.sent, "response stream cut at the call's timeout");
            return this.cut(InvokeError::Timeout {
                name: function,
                timeout_ms,
            });
        }
        if let Some(inner) = &mut this.inner {
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    this.trailers |= frame.is_trailers();
                    if let Some(data) = frame.data_ref() {
                        this.sent += data.len() as u64;
                        if this.sent > this.cap {
                            tracing::warn!(function = %name(), limit = this.cap, "response stream cut at the function's max_response_bytes");
                            let error = InvokeError::ResponseTooLarge {
                                name: name(),
                                limit: this.cap,
                            };
                            return this.cut(error);
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(_))) => {
                    this.broke = true;
                    this.inner = None;
                }
                Poll::Ready(None) => this.inner = None,
            }
        }
        // The body ended: the call counts once the guest has returned.
        let Some(ending) = &mut this.ending else {
            return Poll::Ready(None);
        };
        let end = match Pin::new(&mut ending.task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(end) => end.map_err(|_| TASK_FAILED),
        };
        let error = match end {
            Ok(TaskEnd::Done(())) if !this.broke => {
                this.end(Ok(()));
                return Poll::Ready(None);
            }
            Ok(TaskEnd::Done(())) => InvokeError::Failed {
                name: name_of(ending),
                reason: "the guest's response body broke off".into(),
            },
            end => match ending.functions.upgrade() {
                Some(functions) => {
                    let exceeded = ending
                        .usage
                        .memory_exceeded
                        .load(std::sync::atomic::Ordering::Relaxed);
                    functions.classify(&ending.function, ending.timeout_ms, end, exceeded)
                }
                None => InvokeError::Internal("the server is shutting down".into()),
            },
        };
        this.cut(error)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.ending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Known once the whole body was read while priming (a small answer
        // then goes out with its length); unknown while the guest writes.
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        if self.ending.is_none() {
            SizeHint::with_exact(first)
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        let Some(ending) = self.ending.take() else {
            return;
        };
        // hyper drops a body it has sent all of without asking for its end
        // (a declared length reached, trailers sent): the response is
        // complete, so the guest may finish its call (its log kept, its
        // outcome counted as it ends), within its deadline. Otherwise the
        // caller went away: the guest is stopped now.
        let complete = self.inner.is_none() || self.trailers || self.declared == Some(self.sent);
        let runtime = tokio::runtime::Handle::try_current();
        match (complete && !self.broke, runtime) {
            (true, Ok(runtime)) => {
                self.inner = None;
                let deadline = self.deadline_at;
                runtime.spawn(async move {
                    let Ending {
                        functions,
                        function,
                        started,
                        usage,
                        timeout_ms,
                        task,
                    } = ending;
                    let abort = task.abort_handle();
                    let end = match tokio::time::timeout_at(deadline, task).await {
                        Ok(end) => end.map_err(|_| TASK_FAILED),
                        Err(_) => {
                            abort.abort();
                            Ok(TaskEnd::TimedOut)
                        }
                    };
                    let Some(functions) = functions.upgrade() else {
                        return;
                    };
                    let outcome = match end {
                        Ok(TaskEnd::Done(())) => "ok",
                        end => {
                            let exceeded = usage
                                .memory_exceeded
                                .load(std::sync::atomic::Ordering::Relaxed);
                            functions
                                .classify(&function, timeout_ms, end, exceeded)
                                .outcome()
                        }
                    };
                    functions.record(&function, started, outcome, &usage);
                });
            }
            _ => {
                let cancelled = InvokeError::Cancelled {
                    name: name_of(&ending),
                };
                self.ending = Some(ending);
                self.end(Err(&cancelled));
            }
        }
    }
}

fn name_of(ending: &Ending) -> String {
    ending.function.record.name.clone()
}

/// A request body on its way into a guest: past `limit` bytes it ends in
/// `HttpRequestBodySize` (the guest's read fails); its own errors reach the
/// guest as internal errors.
pub(crate) struct RequestBody<B> {
    inner: B,
    received: u64,
    limit: u64,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, limit: u64) -> RequestBody<B> {
        RequestBody {
            inner,
            received: 0,
            limit,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.limit)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(
                wasmtime_wasi_http::Error::InternalError(Some(error.to_string())),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
