//! `hello`: answers a greeting (`$GREETING`, or "Hello from Sluice!") and echoes
//! the path and query it was called with.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let greeting =
            std::env::var("GREETING").unwrap_or_else(|_| "Hello from Sluice!".to_string());
        let body = format!("{greeting} You asked for {path}\n");
        common::respond(
            out,
            200,
            &[("content-type", b"text/plain; charset=utf-8")],
            body.as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Hello);
