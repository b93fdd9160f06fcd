//! `echo`: returns the request's method, path, headers and body as JSON-ish text,
//! and the body itself verbatim in the response body after a blank line. It
//! also prints the body to stdout, and with `ECHO_HEADERS_TO_STDERR` set,
//! each header to stderr (so the function's log shows what a delivery sent).

use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other,
        };
        let path = request.path_with_query().unwrap_or_default();
        let mut head = format!("method: {method}\npath: {path}\n");
        for (name, value) in request.headers().entries() {
            head.push_str(&format!(
                "header: {name}: {}\n",
                String::from_utf8_lossy(&value)
            ));
        }
        if std::env::var_os("ECHO_HEADERS_TO_STDERR").is_some() {
            for (name, value) in request.headers().entries() {
                eprintln!("header: {name}: {}", String::from_utf8_lossy(&value));
            }
        }
        let body = common::read_body(&request);
        // The body also goes to stdout, so the function's log shows it.
        // Rust's stdout is line-buffered inside the guest: without the flush
        // a last line with no newline would stay in the instance's memory
        // and vanish with it when the call ends.
        print!("{}", String::from_utf8_lossy(&body));
        let _ = std::io::Write::flush(&mut std::io::stdout());
        head.push('\n');
        let mut response = head.into_bytes();
        response.extend_from_slice(&body);
        common::respond(out, 200, &[("content-type", b"text/plain")], &response);
    }
}

wasip2::http::proxy::export!(Echo);
