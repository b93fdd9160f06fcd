//! `inventory`: a `wasi:http` function subscribed to events. It receives each
//! event as a binary-mode POST (as Knative delivers) and answers 200 with a
//! binary-mode reply event `com.example.inventory.reserved` that carries every
//! `ce-*` attribute and the body it got, except `id` and `type`.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Inventory;

impl wasip2::exports::http::incoming_handler::Guest for Inventory {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        let mut id = String::new();
        for (name, value) in request.headers().entries() {
            match name.as_str() {
                "ce-id" => id = String::from_utf8_lossy(&value).into_owned(),
                "ce-type" => {}
                n if n.starts_with("ce-") || n == "content-type" => headers.push((name, value)),
                _ => {}
            }
        }
        if id.is_empty() {
            common::respond(
                out,
                400,
                &[("content-type", b"text/plain")],
                b"not a binary-mode CloudEvent",
            );
            return;
        }
        let body = common::read_body(&request);
        headers.push(("ce-id".into(), format!("{id}-reserved").into_bytes()));
        headers.push(("ce-type".into(), b"com.example.inventory.reserved".to_vec()));
        let refs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        common::respond(out, 200, &refs, &body);
    }
}

wasip2::http::proxy::export!(Inventory);
