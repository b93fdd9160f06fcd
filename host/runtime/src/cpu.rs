//! Fair CPU between functions: a short call is never queued behind long
//! ones.
//!
//! wasmtime interrupts a running guest at every epoch tick
//! ([`crate::engine::EPOCH_TICK`]), and the guest then yields to the async
//! runtime (a real `yield_now`: other tasks on the thread run). For its
//! first [`SLICE_TICKS`] ticks of running, a call runs where it started, on
//! the server's runtime with the connections and every other call. Past
//! that it is a long call: at its next pause it moves, whole, onto the
//! long-call pool, a runtime of its own whose threads run at a lower OS
//! priority (nice [`LONG_CALL_NICE`]). The kernel then gives the CPU to
//! short calls and to the server's I/O first and to long calls what is left,
//! all of it when nothing else wants it; long calls share their threads
//! round-robin, one tick at a time.
//!
//! Runtime tier: one [`LongCallPool`]. Invocation tier: one [`CpuSlot`] per
//! call, and [`Migrating`], the call's body that moves.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

/// Ticks of running a call may cross before it counts as a long call (4 to
/// 6 ms of running with the 2 ms tick): dozens of times what a request to
/// `hello` takes, and short enough that a burst of new busy calls costs the
/// server's runtime little before they move (measured in BENCHMARKS.md).
pub const SLICE_TICKS: u32 = 2;

/// The nice value of the long-call pool's threads (0 is normal, 19 the
/// least): under contention a thread at 5 gets about a third of what one
/// at 0 gets, so short calls go first and long ones still progress (at 10,
/// a tenth, a memory-hungry guest in the test suite ran past its 200 ms
/// timeout on a loaded machine).
pub const LONG_CALL_NICE: i32 = 5;

/// The runtime long calls move to, once per process.
#[derive(Clone, Debug)]
pub struct LongCallPool {
    handle: tokio::runtime::Handle,
    threads: usize,
    running: Arc<AtomicUsize>,
}

impl LongCallPool {
    /// A pool of `threads` threads (0: one per CPU).
    pub fn start(threads: usize) -> std::io::Result<LongCallPool> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-long-call")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        // It lives as long as the process (a runtime cannot be dropped from
        // async code, and the server is async until it exits).
        std::mem::forget(runtime);
        Ok(LongCallPool {
            handle,
            threads,
            running: Arc::default(),
        })
    }

    /// Threads of the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Long calls on the pool now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// Lowers the calling thread's scheduling priority to [`LONG_CALL_NICE`].
fn lower_priority() {
    #[allow(unsafe_code)]
    // SAFETY: `gettid` takes nothing; `setpriority` on this thread's own id
    // only changes its nice value (raising it needs no privilege).
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, LONG_CALL_NICE) != 0
    };
    if failed {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not lower the priority of a long-call thread"
        );
    }
}

/// One call's ticks of running.
#[derive(Debug, Default)]
pub struct CpuSlot {
    ticks: AtomicU32,
}

/// What the epoch callback hands wasmtime to await before the guest goes on.
pub type TickFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl CpuSlot {
    /// A fresh slot.
    pub fn new() -> Arc<CpuSlot> {
        Arc::default()
    }

    /// What the guest awaits at an epoch tick: a yield.
    pub fn on_tick(&self) -> TickFuture {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        Box::pin(tokio::task::yield_now())
    }

    /// Whether the call has run past its slice.
    pub fn is_long(&self) -> bool {
        self.ticks.load(Ordering::Relaxed) > SLICE_TICKS
    }
}

/// The boxed body of a call.
type Body<R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send>>;

/// A call's body, polled where the call runs until it becomes a long call,
/// then moved onto the [`LongCallPool`]; it adds the time its polls take to
/// the invocation's busy time either way (the monotonic clock around each poll, not the
/// thread CPU clock: reading `CLOCK_THREAD_CPUTIME_ID` is a system call on
/// Linux, and two per poll cost 6 % of event-pipeline throughput).
pub struct Migrating<R> {
    state: State<R>,
    usage: Arc<crate::engine::Usage>,
    cpu: Arc<CpuSlot>,
    pool: Option<LongCallPool>,
}

enum State<R> {
    Here(Body<R>),
    Moved(AbortOnDrop<wasmtime::Result<R>>),
    Gone,
}

/// A task on the pool, aborted when its caller stops waiting (a timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<R: Send + 'static> Migrating<R> {
    /// `body`, which may move onto `pool` once `cpu` says the call is long.
    pub fn new(
        body: impl Future<Output = wasmtime::Result<R>> + Send + 'static,
        usage: Arc<crate::engine::Usage>,
        cpu: Arc<CpuSlot>,
        pool: Option<LongCallPool>,
    ) -> Migrating<R> {
        Migrating {
            state: State::Here(Box::pin(body)),
            usage,
            cpu,
            pool,
        }
    }
}

/// Polls `body`, adding the time it takes to `usage.busy_ns`.
fn timed_poll<R>(
    body: &mut Body<R>,
    usage: &crate::engine::Usage,
    cx: &mut Context<'_>,
) -> Poll<wasmtime::Result<R>> {
    let before = Instant::now();
    let poll = body.as_mut().poll(cx);
    usage
        .busy_ns
        .fetch_add(before.elapsed().as_nanos() as u64, Ordering::Relaxed);
    poll
}

impl<R: Send + 'static> Future for Migrating<R> {
    type Output = wasmtime::Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Here(body) => {
                    let poll = timed_poll(body, &this.usage, cx);
                    let move_to = match (&poll, &this.pool) {
                        (Poll::Pending, Some(pool)) if this.cpu.is_long() => pool.clone(),
                        _ => return poll,
                    };
                    let State::Here(mut body) = std::mem::replace(&mut this.state, State::Gone)
                    else {
                        unreachable!("the body is here")
                    };
                    let usage = this.usage.clone();
                    let running = move_to.running.clone();
                    running.fetch_add(1, Ordering::Relaxed);
                    let task = move_to.handle.spawn(async move {
                        /// Counts the call off the pool however it ends.
                        struct Running(Arc<AtomicUsize>);
                        impl Drop for Running {
                            fn drop(&mut self) {
                                self.0.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        let _running = Running(running);
                        std::future::poll_fn(|cx| timed_poll(&mut body, &usage, cx)).await
                    });
                    this.state = State::Moved(AbortOnDrop(task));
                }
                State::Moved(task) => {
                    return match Pin::new(&mut task.0).poll(cx) {
                        Poll::Ready(Ok(result)) => Poll::Ready(result),
                        Poll::Ready(Err(error)) => Poll::Ready(Err(wasmtime::Error::msg(format!(
                            "the long call's task ended abnormally: {error}"
                        )))),
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Gone => unreachable!("polled after it moved or ended"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_its_slice_moves_to_the_pool_and_a_short_one_stays() {
        let pool = LongCallPool::start(1).unwrap();
        let here = std::thread::current().id();
        let busy = Arc::<crate::engine::Usage>::default();
        // Short: never past its slice.
        let cpu = CpuSlot::new();
        let short = Migrating::new(
            async move {
                tokio::task::yield_now().await;
                Ok(std::thread::current().id())
            },
            busy.clone(),
            cpu,
            Some(pool.clone()),
        );
        assert_eq!(short.await.unwrap(), here);
        // Long: ticks past its slice, then pauses.
        let cpu = CpuSlot::new();
        let ticking = cpu.clone();
        let long = Migrating::new(
            async move {
                for _ in 0..=SLICE_TICKS {
                    ticking.on_tick().await;
                }
                let name = std::thread::current().name().map(str::to_string);
                Ok(name)
            },
            busy,
            cpu.clone(),
            Some(pool.clone()),
        );
        assert_eq!(long.await.unwrap().as_deref(), Some("sluice-long-call"));
        assert!(cpu.is_long());
        assert_eq!(pool.running(), 0, "counted off once it ended");
    }
}
