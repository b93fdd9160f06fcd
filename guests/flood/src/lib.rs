//! `flood` (hostile): publishes events in a tight loop until the host
//! refuses one, or `FLOOD_N` of them when that is set, then answers how many
//! went through and why it stopped. It can also store a value of
//! `?kv_bytes=N` bytes in one host call (for the hostcall-fuel limit).

use caps::{kv, publisher};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Flood;

fn event(n: u64) -> caps::sluice::function::types::CloudEvent {
    caps::sluice::function::types::CloudEvent {
        id: format!("flood-{n}"),
        source: "sluice/flood".to_string(),
        specversion: "1.0".to_string(),
        type_: "com.example.flood".to_string(),
        datacontenttype: None,
        dataschema: None,
        subject: None,
        time: None,
        extensions: Vec::new(),
        data: None,
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Flood {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (_, query) = common::path_and_query(&request);
        if let Some(bytes) = query
            .strip_prefix("kv_bytes=")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let result = kv::open("").and_then(|b| b.set("blob", &vec![7u8; bytes]));
            let body = format!("stored: {result:?}");
            common::respond(out, 200, &[], body.as_bytes());
            return;
        }
        let limit: u64 = std::env::var("FLOOD_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let mut sent = 0;
        let mut stopped = String::from("limit reached");
        while sent < limit {
            if let Err(error) = publisher::publish(&event(sent)) {
                stopped = error;
                break;
            }
            sent += 1;
        }
        common::respond(
            out,
            200,
            &[],
            format!("published {sent}; stopped: {stopped}").as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Flood);
