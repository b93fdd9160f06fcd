//! The server's limits: connections, request bodies, event ingress and
//! dispatch, asynchronous invocations, shutdown. Plain data, made from one
//! table, as the runtime's are (`sluice_runtime::limits`); the CLI makes its
//! clap arguments from the same table.

/// The table of the server's limits, one entry per `sluice serve` flag:
/// `doc; field: type = default, "flag";`. `$callback` is a macro taking the
/// table.
#[macro_export]
macro_rules! server_limits {
    ($callback:ident) => {
        $callback! {
            ServerLimits;
            /// Seconds a client has to send a request head, counted from when the
            /// connection opened or the previous response ended. Defends
            /// connections against slowloris clients (a head sent a byte at a time)
            /// and bounds how long a kept-alive connection waits for its next
            /// request.
            header_read_timeout_secs: u64 = 10, "header-read-timeout-secs";
            /// Seconds a connection with no request in flight stays open after its
            /// last request ended (keep-alive idle timeout). Only requests keep a
            /// connection open, not bytes: it also closes connections that never
            /// send a byte and HTTP/2 connections kept up by pings alone.
            keepalive_timeout_secs: u64 = 5, "keepalive-timeout-secs";
            /// Seconds a response may make no progress (a client that stopped
            /// reading, or keeps its HTTP/2 window shut) before its connection is
            /// closed. Defends the host's memory against responses held for good.
            send_timeout_secs: u64 = 30, "send-timeout-secs";
            /// Client connections open at once. Past it, a new connection is
            /// answered 503 with `Retry-After` and closed; the process never runs
            /// out of file descriptors. Lowered at start to what the open-file limit
            /// allows.
            max_connections: usize = 10_000, "max-connections";
            /// Seconds of the windows `--min-body-rate` is measured over (so also
            /// the longest gap allowed between two chunks): a body that stops short
            /// is answered 408 after this.
            body_grace_secs: u64 = 10, "body-grace-secs";
            /// The least rate, in bytes a second, a request body must keep in every
            /// `--body-grace-secs` window (408 below it; a burst buys no time for
            /// a trickle after it). Defends against bodies trickled a byte at a
            /// time.
            min_body_rate: u64 = 1024, "min-body-rate";
            /// Bytes of request bodies the server holds at once, across all
            /// requests but component uploads (at least the largest request or
            /// event body allowed). Defends the host's memory against many clients
            /// that send large bodies and stall: past it, 503 with `Retry-After`.
            /// Component uploads share a budget of one largest component
            /// (`--max-component-bytes`) of their own.
            max_buffered_request_bytes: u64 = 64 << 20, "max-buffered-request-bytes";
            /// Largest event request body (one event or a batch), in bytes; 413
            /// past it, before it is all read.
            max_event_bytes: u64 = 1 << 20, "max-event-bytes";
            /// Deliveries in flight at once, across all triggers.
            max_deliveries_in_flight: usize = 256, "max-deliveries-in-flight";
            /// Deliveries in flight at once for one trigger; more wait in the queue
            /// without using up attempts.
            max_deliveries_per_trigger: usize = 32, "max-deliveries-per-trigger";
            /// Pending deliveries (accepted, not yet delivered or dead-lettered)
            /// past which event ingress answers 503 with `Retry-After`. Defends the
            /// disk, memory and delivery latency against a backlog that grows
            /// without end: backpressure, never a silent drop.
            max_pending_deliveries: usize = 1_000_000, "max-pending-deliveries";
            /// The same bound for the deliveries of one broker (0: only the
            /// server-wide one), so one broker's backlog cannot take it all.
            max_pending_per_broker: usize = 0, "max-pending-per-broker";
            /// Reply and publish steps an event may be from an outside event; past
            /// it, events are dropped and counted, so loops end.
            max_event_hops: u32 = 255, "max-event-hops";
            /// Asynchronous invocations queued or running at once. Defends the
            /// store and memory against a flood of `?async=true` calls: past it
            /// they are answered 503 with `Retry-After`.
            max_async_invocations: usize = 10_000, "max-async-invocations";
            /// Bytes of request bodies that queued or running asynchronous
            /// invocations hold in the store. Defends the disk against a flood of
            /// large `?async=true` calls: past it they are answered 503 with
            /// `Retry-After`.
            max_async_invocation_bytes: u64 = 1 << 30, "max-async-invocation-bytes";
            /// Workers running asynchronous invocations (each runs one at a time;
            /// the functions' own concurrency caps apply as well).
            async_workers: usize = 64, "async-workers";
            /// How long the result of an asynchronous invocation is kept, in seconds.
            invocation_retention_secs: u64 = 3_600, "invocation-retention-secs";
            /// De-duplication keys (broker, source, id) the window holds at most
            /// (about 77 bytes each in memory; embedded mode): past it the oldest
            /// are forgotten before their time (`sluice_dedupe_evicted_total`).
            /// Defends the host's memory against a flood of distinct events.
            dedupe_max_events: usize = 1_000_000, "dedupe-max-events";
            /// Triggers the server holds at most. Defends matching and the store.
            max_triggers: usize = 10_000, "max-triggers";
            /// Schedules the server holds at most. Defends the store and the
            /// scheduler (one loop fires them all, one after another).
            max_schedules: usize = 1_000, "max-schedules";
            /// Event traces kept at most (the oldest go first; each at most
            /// about 40 KiB, typically under 1 KiB). Defends the host's
            /// memory; in cluster mode the traces stream holds 4 KiB times
            /// this many bytes.
            trace_max_events: usize = 10_000, "trace-max-events";
            /// On SIGTERM or SIGINT: how long in-flight requests and deliveries may
            /// take to finish before the server exits anyway, in seconds. Pending
            /// deliveries are durable and resume at the next start either way.
            shutdown_timeout_secs: u64 = 30, "shutdown-timeout-secs";
        }
    };
}

server_limits!(plain_limits);

use sluice_runtime::plain_limits;
