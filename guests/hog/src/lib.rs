//! `hog` (hostile): grows its memory without end, 1 MiB at a time, touching
//! every page. The host's memory cap stops it.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hog;

impl wasip2::exports::http::incoming_handler::Guest for Hog {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
            if hoard.len() == usize::MAX {
                break;
            }
        }
        common::respond(out, 200, &[], b"unreachable");
    }
}

wasip2::http::proxy::export!(Hog);
