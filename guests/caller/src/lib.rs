//! `caller`: makes one outbound HTTP GET and reports what happened. The URL
//! comes from `?url=...` or the `CALL` environment variable; the request
//! carries `authorization: <CALL_AUTHORIZATION>` when that is set. With
//! `?repeat=N` it makes the call N times (answering for the last). Answers
//! 200 with `status: N` and the body it got, or 502 with `error: CODE`.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Caller;

impl wasip2::exports::http::incoming_handler::Guest for Caller {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (_, query) = common::path_and_query(&request);
        let url = query
            .split('&')
            .find_map(|p| p.strip_prefix("url="))
            .map(str::to_string)
            .or_else(|| std::env::var("CALL").ok());
        let Some(url) = url else {
            common::respond(out, 400, &[], b"give ?url= or env CALL");
            return;
        };
        println!("caller: GET {url}");
        let repeat: usize = query
            .split('&')
            .find_map(|p| p.strip_prefix("repeat="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        for _ in 1..repeat {
            let _ = common::fetch("GET", &url, &[], b"");
        }
        let authorization = std::env::var("CALL_AUTHORIZATION").ok();
        let headers: Vec<(&str, &[u8])> = authorization
            .iter()
            .map(|value| ("authorization", value.as_bytes()))
            .collect();
        match common::fetch("GET", &url, &headers, b"") {
            Ok((status, body)) => {
                let mut text = format!("status: {status}\n").into_bytes();
                text.extend_from_slice(&body);
                common::respond(out, 200, &[], &text);
            }
            Err(error) => {
                eprintln!("caller: {url} failed: {error}");
                common::respond(out, 502, &[], format!("error: {error}").as_bytes());
            }
        }
    }
}

wasip2::http::proxy::export!(Caller);
