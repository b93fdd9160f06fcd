//! `leak` (hostile): creates resource handles (header maps) and never drops
//! them, without end, or `LEAK_N` of them when that is set (then answers).
//! The host's per-call resource limit stops the endless one.

use wasip2::http::types::{Fields, IncomingRequest, ResponseOutparam};

struct Leak;

impl wasip2::exports::http::incoming_handler::Guest for Leak {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let limit: u64 = std::env::var("LEAK_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let mut n = 0;
        while n < limit {
            std::mem::forget(Fields::new());
            n += 1;
        }
        common::respond(out, 200, &[], format!("leaked {n}").as_bytes());
    }
}

wasip2::http::proxy::export!(Leak);
