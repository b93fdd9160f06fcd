//! `trap` (hostile): executes `unreachable` before answering.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl wasip2::exports::http::incoming_handler::Guest for Trap {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        core::arch::wasm32::unreachable()
    }
}

wasip2::http::proxy::export!(Trap);
