//! `counter`: increments a global and returns its value. With a fresh instance
//! per request, every call answers 1.

use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        common::respond(
            out,
            200,
            &[("content-type", b"text/plain")],
            n.to_string().as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Counter);
