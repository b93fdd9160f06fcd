//! `deep` (hostile): recurses without bound until the wasm stack runs out.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Deep;

/// Recurses on the wasm stack only (no address-taken locals, so Rust's
/// shadow stack in linear memory is untouched): the host's `max_wasm_stack`
/// is what stops it.
#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    descend(std::hint::black_box(depth + 1)).wrapping_add(std::hint::black_box(depth))
}

impl wasip2::exports::http::incoming_handler::Guest for Deep {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let n = descend(0);
        common::respond(out, 200, &[], n.to_string().as_bytes());
    }
}

wasip2::http::proxy::export!(Deep);
