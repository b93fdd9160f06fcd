//! `big` (hostile): answers with a 100 MiB body (or `BIG_KB` KiB when that is
//! set), written in 64 KiB chunks.

use std::io::Write;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Big;

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 64 << 10;

impl wasip2::exports::http::incoming_handler::Guest for Big {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let total = std::env::var("BIG_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(TOTAL, |kb| kb << 10);
        let chunk = vec![b'x'; CHUNK];
        {
            let mut stream = body.write().expect("body stream is taken once");
            for _ in 0..total.div_ceil(CHUNK) {
                // The host stops accepting past its response cap.
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Big);
