//! `big` (hostile): answers with a 100 MiB body (or `BIG_KB` KiB when that is
//! set), written in 64 KiB chunks, `BIG_PAUSE_MS` apart (0 by default). With
//! `BIG_DECLARE` set it declares the length in `content-length` first.

use std::io::Write;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Big;

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 64 << 10;

impl wasip2::exports::http::incoming_handler::Guest for Big {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let total = std::env::var("BIG_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(TOTAL, |kb| kb << 10);
        let pause = std::env::var("BIG_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let fields = Fields::new();
        if std::env::var_os("BIG_DECLARE").is_some() {
            let length = (total.div_ceil(CHUNK) * CHUNK).to_string();
            fields
                .append("content-length", length.as_bytes())
                .expect("a valid header");
        }
        let response = OutgoingResponse::new(fields);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let chunk = vec![b'x'; CHUNK];
        {
            let mut stream = body.write().expect("body stream is taken once");
            for n in 0..total.div_ceil(CHUNK) {
                if n > 0 && pause > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
                // The host stops accepting past its response cap.
                if stream.write_all(&chunk).is_err() {
                    return;
                }
                let _ = stream.flush();
            }
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Big);
