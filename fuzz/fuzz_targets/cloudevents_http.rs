//! The CloudEvents HTTP binding: arbitrary headers and body. Parsing must
//! never panic, and an accepted event must survive the binary-mode round
//! trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_router::binding;

fuzz_target!(|input: &[u8]| {
    // Layout: header lines `name:value\n` up to a blank line, then the body.
    let split = input.windows(2).position(|w| w == b"\n\n").unwrap_or(input.len());
    let (head, body) = (&input[..split], input.get(split + 2..).unwrap_or_default());
    let mut headers = http::HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Ok(events) = binding::parse_request(&headers, body) else { return };
    for event in events {
        let (out_headers, out_body) = binding::to_binary(&event);
        let mut again = http::HeaderMap::new();
        for (name, value) in out_headers {
            again.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("we write valid names"),
                http::HeaderValue::from_str(&value).expect("we write valid values"),
            );
        }
        let parsed = binding::parse_binary(&again, &out_body).expect("our own output parses");
        assert_eq!(parsed.attributes().collect::<Vec<_>>(), event.attributes().collect::<Vec<_>>());
        assert_eq!(parsed.data_bytes().unwrap_or_default(), event.data_bytes().unwrap_or_default());
        // The structured form parses too.
        sluice_router::event::CloudEvent::from_json(event.to_json().as_bytes()).expect("our own JSON parses");
    }
});
