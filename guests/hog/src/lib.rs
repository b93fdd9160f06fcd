//! `hog` (hostile): grows its memory 1 MiB at a time, touching every page,
//! without end, or up to `HOG_MB` MiB when that is set (then answers). The
//! host's memory cap stops the endless one.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hog;

impl wasip2::exports::http::incoming_handler::Guest for Hog {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let limit: usize = std::env::var("HOG_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        while hoard.len() < limit {
            hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
        }
        common::respond(
            out,
            200,
            &[],
            format!("held {} MiB", hoard.len()).as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Hog);
