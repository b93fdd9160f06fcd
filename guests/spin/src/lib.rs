//! `spin` (hostile): loops forever without yielding. The host's deadline stops it.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

wasip2::http::proxy::export!(Spin);
