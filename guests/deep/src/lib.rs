//! `deep` (hostile): recurses without bound until the wasm stack runs out,
//! or `DEPTH` levels when that is set (then answers).

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Deep;

/// Recurses on the wasm stack only (no address-taken locals, so Rust's
/// shadow stack in linear memory is untouched): the host's `max_wasm_stack`
/// is what stops it.
#[inline(never)]
fn descend(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    descend(std::hint::black_box(depth + 1), limit).wrapping_add(std::hint::black_box(1))
}

impl wasip2::exports::http::incoming_handler::Guest for Deep {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let limit = std::env::var("DEPTH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let n = descend(0, limit);
        common::respond(out, 200, &[], n.to_string().as_bytes());
    }
}

wasip2::http::proxy::export!(Deep);
