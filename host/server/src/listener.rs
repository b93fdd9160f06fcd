//! Accepting connections, and what one client connection may hold.
//!
//! Replaces `axum::serve`, which closes nothing: 2,000 slowloris sockets
//! stayed open for good. Every connection here is bounded:
//!
//! - `--header-read-timeout-secs`: a request head (and, between requests on
//!   a kept-alive connection, the next one) must arrive within this time
//!   (hyper's header read timer, which runs from the end of the previous
//!   response).
//! - `--keepalive-timeout-secs`: a connection with no request in flight for
//!   this long since its last request ended is closed. Bytes alone do not
//!   keep it open (HTTP/2 pings, settings or stray frames), only requests. It
//!   also covers what hyper's timer does not: a connection that sends nothing
//!   at all before the protocol is known (it gets the longer of this and the
//!   header timeout for its first request), and idle HTTP/2 connections.
//! - `--send-timeout-secs`: a response that makes no progress for this long
//!   (the client stopped reading, or keeps an HTTP/2 window shut) closes its
//!   connection, so a response's memory is not held for good. A body that
//!   has ended is not done: until hyper's write buffer drains, a blocked
//!   socket write counts as a stalled response.
//! - `--max-connections`: past it, a new connection is answered 503 with
//!   `Retry-After` and closed (at most [`OVERFLOW`] such answers at once;
//!   beyond those, connections wait in the kernel's accept queue), so the
//!   process never runs out of file descriptors.
//!
//! Both HTTP/1.1 and HTTP/2 without TLS (h2c with prior knowledge, as
//! Knative speaks it) are served on the same port.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// Connections over `--max-connections` answered 503 at once; more wait in
/// the kernel's accept queue.
pub const OVERFLOW: usize = 64;

/// File descriptors kept free of connections (the store's files, the
/// journal's, outbound sockets of guests).
const RESERVED_FDS: u64 = 512;

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 101\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the server holds its limit of open connections\"}}";

/// The bounds of client connections, from `sluice serve` flags.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// See the module's doc.
    pub header_read_timeout: Duration,
    /// See the module's doc.
    pub keepalive_timeout: Duration,
    /// See the module's doc.
    pub send_timeout: Duration,
    /// See the module's doc.
    pub max_connections: usize,
}

/// Raises this process's limit of open files to its hard limit and returns
/// how many connections fit in it (leaving [`RESERVED_FDS`] for the rest),
/// at most `wanted`.
pub fn connections_that_fit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `getrlimit` and `setrlimit` read and write the one `rlimit`
    // struct passed, which lives for both calls.
    let fds = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let room = fds.saturating_sub(RESERVED_FDS + OVERFLOW as u64).max(16);
    let fitting = usize::try_from(room).unwrap_or(usize::MAX).min(wanted);
    if fitting < wanted {
        tracing::warn!(
            wanted,
            fitting,
            open_files = fds,
            "--max-connections lowered to what the open-file limit allows"
        );
    }
    fitting
}

/// Serves `app` on `listener` until `shutdown` completes, then closes every
/// connection (after the request it is serving, within `grace`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let descriptors = Arc::new(Semaphore::new(limits.max_connections + OVERFLOW));
    let serving = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        // A descriptor is taken before `accept`, so there are never more
        // open than the limit and its overflow.
        let descriptor = tokio::select! {
            permit = descriptors.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if matches!(error.kind(),
                    io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset) => continue,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(place) = serving.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let _descriptor = descriptor;
                refuse(stream).await;
            });
            continue;
        };
        // The first request has the longer of the two to arrive.
        let activity = Arc::new(Activity::new(
            limits.keepalive_timeout.max(limits.header_read_timeout),
        ));
        let io = TokioIo::new(IdleIo::new(
            stream,
            limits.keepalive_timeout,
            limits.send_timeout,
            activity.clone(),
        ));
        let service = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            activity,
            idle: limits.keepalive_timeout,
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tasks.spawn(async move {
            let connection = builder.serve_connection(io, service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection closed");
            }
            drop((place, descriptor));
        });
    }
    // Refuse new connections while the open ones finish.
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
}

/// Answers a connection over the limit with 503 and closes it, within a
/// second.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the
        // connection before it has read the answer.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// What a connection is doing, shared between its service (which sees
/// requests start and responses end) and its socket (which sees bytes move
/// and owns the timer).
struct Activity {
    origin: Instant,
    /// Requests whose response body has not been dropped yet.
    busy: AtomicUsize,
    /// Responses handed to hyper and not yet all sent.
    sending: AtomicUsize,
    /// Of those, the ones whose body hyper is waiting on (a guest that has
    /// not written its next bytes yet): no client is slow there.
    producing: AtomicUsize,
    /// Milliseconds from `origin` until which the connection may sit with
    /// nothing in flight: moved on when a request starts or ends, never by
    /// bytes alone (pings and stray bytes do not keep a connection open).
    quiet_until: AtomicU64,
    /// Milliseconds from `origin` when a response last made progress (a
    /// frame taken from its body or bytes written to the socket).
    progress: AtomicU64,
    /// The last write to the socket could not go on (its buffer is full):
    /// hyper holds bytes the client has not taken, whether or not the
    /// response's body has ended.
    blocked: AtomicBool,
}

impl Activity {
    fn new(first_request: Duration) -> Activity {
        Activity {
            origin: Instant::now(),
            busy: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            producing: AtomicUsize::new(0),
            quiet_until: AtomicU64::new(millis(first_request)),
            progress: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    fn request_edge(&self, idle: Duration) {
        self.quiet_until
            .fetch_max(self.now() + millis(idle), Ordering::AcqRel);
    }

    fn progressed(&self) {
        self.progress.fetch_max(self.now(), Ordering::AcqRel);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The service of one connection, telling its [`Activity`] when requests
/// start and when their responses are ready and done.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    idle: Duration,
}

/// One request in flight, until its response body is dropped.
struct InFlight {
    activity: Arc<Activity>,
    idle: Duration,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.request_edge(self.idle);
        self.activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response being sent, until its body is dropped.
struct Sending(Arc<Activity>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.busy.fetch_add(1, Ordering::AcqRel);
        self.activity.request_edge(self.idle);
        let in_flight = InFlight {
            activity: self.activity.clone(),
            idle: self.idle,
        };
        let activity = self.activity.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            activity.sending.fetch_add(1, Ordering::AcqRel);
            activity.progressed();
            let sending = Sending(activity.clone());
            Ok(response.map(move |body| {
                axum::body::Body::new(Outgoing {
                    inner: body,
                    activity,
                    waiting: false,
                    _in_flight: in_flight,
                    _sending: sending,
                })
            }))
        })
    }
}

/// A response body on its way out: each frame is progress, and while it
/// has no next frame yet the response is waiting on its producer, not on
/// the client.
struct Outgoing {
    inner: axum::body::Body,
    activity: Arc<Activity>,
    waiting: bool,
    _in_flight: InFlight,
    _sending: Sending,
}

impl Outgoing {
    fn waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            if waiting {
                self.activity.producing.fetch_add(1, Ordering::AcqRel);
            } else {
                self.activity.producing.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl hyper::body::Body for Outgoing {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Pending => self.waiting(true),
            Poll::Ready(_) => {
                self.waiting(false);
                self.activity.progressed();
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.waiting(false);
    }
}

pin_project_lite::pin_project! {
    /// A connection's socket that fails with `TimedOut` once the connection
    /// has sat with nothing in flight for `idle`, or a response has made no
    /// progress for `send_timeout` (a client that stopped reading).
    struct IdleIo<T> {
        #[pin]
        inner: T,
        sleep: Pin<Box<Sleep>>,
        idle: Duration,
        send_timeout: Duration,
        activity: Arc<Activity>,
    }
}

impl<T> IdleIo<T> {
    fn new(inner: T, idle: Duration, send_timeout: Duration, activity: Arc<Activity>) -> IdleIo<T> {
        let first = activity.at(activity.quiet_until.load(Ordering::Acquire));
        IdleIo {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            idle,
            send_timeout,
            activity,
        }
    }
}

/// Whether the connection's time ran out: idle with nothing in flight, or a
/// response stalled. Re-arms the timer at the next moment either could.
fn expired(
    sleep: &mut Pin<Box<Sleep>>,
    idle: Duration,
    send_timeout: Duration,
    activity: &Activity,
    cx: &mut Context<'_>,
) -> Option<&'static str> {
    loop {
        let now = activity.now();
        // A response hyper holds back (the socket is full, or an HTTP/2
        // window is shut) stalls; one waiting for its body's next bytes
        // does not: a server-sent event stream may pause for minutes.
        let stalled = activity.blocked.load(Ordering::Acquire)
            || activity.sending.load(Ordering::Acquire)
                > activity.producing.load(Ordering::Acquire);
        let until = if stalled {
            let until = activity.progress.load(Ordering::Acquire) + millis(send_timeout);
            if until <= now {
                return Some("the client stopped reading the response");
            }
            until
        } else if activity.busy.load(Ordering::Acquire) == 0 {
            let until = activity.quiet_until.load(Ordering::Acquire);
            if until <= now {
                return Some("connection idle");
            }
            until
        } else {
            // A request being served, however long it takes.
            now + millis(idle.min(send_timeout))
        };
        // What the connection is doing changes without the timer knowing
        // (a response starts, the client stops reading): at every wait the
        // timer is moved earlier if it must fire sooner. A later deadline
        // waits for it to fire (then all is checked again), so a busy
        // connection does not re-register its timer at every poll.
        let at = activity.at(until);
        if at < sleep.deadline() || sleep.deadline() <= activity.at(now) {
            sleep.as_mut().reset(at);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
    }
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_read(cx, buf) {
            Poll::Pending => match expired(
                this.sleep,
                *this.idle,
                *this.send_timeout,
                this.activity,
                cx,
            ) {
                Some(why) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T> IdleIo<T> {
    /// What a write's outcome means for the timers.
    fn wrote(
        self: Pin<&mut Self>,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                this.activity.progressed();
                if this.activity.blocked.swap(false, Ordering::AcqRel) {
                    // A response the client was slow to take may have
                    // ended long ago: the keep-alive counts from now.
                    this.activity.request_edge(*this.idle);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.activity.blocked.store(true, Ordering::Release);
                match expired(
                    this.sleep,
                    *this.idle,
                    *this.send_timeout,
                    this.activity,
                    cx,
                ) {
                    Some(why) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                    None => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.as_mut().project().inner.poll_write(cx, bytes);
        self.wrote(written, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.wrote(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
