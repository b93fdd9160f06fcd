//! `spin` (hostile): computes without yielding, forever, or for `SPIN_MS`
//! milliseconds when that is set (then answers). The host's deadline stops
//! the endless one.

use std::time::{Duration, Instant};

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let limit = std::env::var("SPIN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let start = Instant::now();
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
            if x % 1_000_000 == 0 && limit.is_some_and(|l| start.elapsed() >= l) {
                break;
            }
        }
        common::respond(out, 200, &[], b"spun");
    }
}

wasip2::http::proxy::export!(Spin);
