//! `sleepy`: waits `SLEEP_MS` milliseconds (env, default 1000) on the WASI
//! clock, then answers `slept N ms`. For tests of slow but well-behaved
//! functions.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Sleepy;

impl wasip2::exports::http::incoming_handler::Guest for Sleepy {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let ms: u64 = std::env::var("SLEEP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        common::respond(out, 200, &[], format!("slept {ms} ms").as_bytes());
    }
}

wasip2::http::proxy::export!(Sleepy);
