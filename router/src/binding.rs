//! The CloudEvents HTTP protocol binding (v1.0.2): binary, structured and
//! batch modes, in and out.
//!
//! In: [`parse_request`] takes the headers and the whole body (the caller
//! caps its size) and returns every event or the first broken rule; a batch
//! is all-or-nothing. Out: [`to_binary`] gives the `ce-*` headers, with
//! values percent-encoded as the binding requires, and the body.

use std::collections::HashMap;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde_json::value::RawValue;

use crate::event::{CloudEvent, Data, EventError, RawAttributes, from_json_object};

/// Media type of a structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Which mode a request uses, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ce-*` headers and the data as the body.
    Binary,
    /// One event as `application/cloudevents+json`.
    Structured,
    /// A JSON array of events as `application/cloudevents-batch+json`.
    Batch,
}

fn essence(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// The mode of a request with `headers`.
pub fn mode(headers: &HeaderMap) -> Mode {
    match essence(headers).as_deref() {
        Some(STRUCTURED) => Mode::Structured,
        Some(BATCH) => Mode::Batch,
        _ => Mode::Binary,
    }
}

/// Parses the events of one HTTP request.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
    match mode(headers) {
        Mode::Structured => Ok(vec![CloudEvent::from_json(body)?]),
        Mode::Batch => {
            crate::event::check_depth(body)?;
            let items: Vec<HashMap<String, Box<RawValue>>> = serde_json::from_slice(body)
                .map_err(|e| EventError::MalformedJson(e.to_string()))?;
            if items.is_empty() {
                return Err(EventError::EmptyBatch);
            }
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    from_json_object(item).map_err(|error| EventError::InBatch {
                        index,
                        error: Box::new(error),
                    })
                })
                .collect()
        }
        Mode::Binary => Ok(vec![parse_binary(headers, body)?]),
    }
}

/// Parses a binary-mode event.
pub fn parse_binary(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, EventError> {
    if !headers.contains_key("ce-specversion") {
        return Err(EventError::NotACloudEvent);
    }
    let mut raw = RawAttributes::default();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attribute == "datacontenttype" || attribute == "data" || attribute == "data_base64" {
            // `datacontenttype` travels as Content-Type in binary mode.
            return Err(EventError::InvalidExtensionName(attribute.to_string()));
        }
        let decoded = percent_decode(value.as_bytes())
            .ok_or_else(|| EventError::InvalidPercentEncoding(name.to_string()))?;
        let text =
            String::from_utf8(decoded).map_err(|_| EventError::InvalidUtf8(name.to_string()))?;
        if raw.values.insert(attribute.to_string(), text).is_some() {
            return Err(EventError::AttributeType {
                name: attribute.to_string(),
                expected: "given once",
            });
        }
    }
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        let text = String::from_utf8(content_type.as_bytes().to_vec())
            .map_err(|_| EventError::InvalidUtf8(CONTENT_TYPE.to_string()))?;
        raw.values.insert("datacontenttype".into(), text);
    }
    let data = (!body.is_empty()).then(|| Data::Binary(body.to_vec()));
    CloudEvent::from_attributes(raw, data)
}

/// The value of one hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (exactly two hex digits); `None` for a malformed
/// one.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let high = hex_digit(*input.get(i + 1)?)?;
            let low = hex_digit(*input.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Encodes a header value as the binding requires: space, `"`, `%` and
/// anything outside printable ASCII become `%XX` of their UTF-8 bytes.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The binary-mode form of `event`: headers (`ce-*` and `content-type`) and
/// body.
pub fn to_binary(event: &CloudEvent) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers = Vec::new();
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            headers.push(("content-type".to_string(), value.to_string()));
        } else {
            headers.push((format!("ce-{name}"), percent_encode(value)));
        }
    }
    (headers, event.data_bytes().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    const REQUIRED: [(&str, &[u8]); 4] = [
        ("ce-specversion", b"1.0"),
        ("ce-id", b"42"),
        ("ce-source", b"/orders"),
        ("ce-type", b"com.example.order.created"),
    ];

    fn binary(extra: &[(&str, &[u8])]) -> HeaderMap {
        let mut pairs = REQUIRED.to_vec();
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    #[test]
    fn binary_mode_round_trip_is_byte_identical() {
        let h = binary(&[
            ("content-type", b"application/json"),
            ("ce-subject", b"caf%C3%A9 %22x%22 100%25"),
            ("ce-traceparent", b"00-abc-01"),
        ]);
        let body = br#"{"amount": 5}"#;
        let event = parse_request(&h, body).unwrap().remove(0);
        assert_eq!(event.subject.as_deref(), Some("café \"x\" 100%"));
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.extensions["traceparent"], "00-abc-01");
        let (out_headers, out_body) = to_binary(&event);
        assert_eq!(out_body, body);
        let back: Vec<(&str, &[u8])> = out_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let again = parse_request(&headers(&back), &out_body).unwrap().remove(0);
        assert_eq!(again, event);
    }

    #[test]
    fn binary_mode_missing_ce_id_is_rejected() {
        let h = headers(&[
            ("ce-specversion", b"1.0"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
        ]);
        assert_eq!(
            parse_request(&h, b"").unwrap_err(),
            EventError::MissingAttribute("id".into())
        );
    }

    #[test]
    fn binary_mode_without_specversion_is_not_a_cloudevent() {
        let h = headers(&[("ce-id", b"1")]);
        assert_eq!(
            parse_request(&h, b"x").unwrap_err().code(),
            "not_a_cloudevent"
        );
    }

    #[test]
    fn binary_mode_invalid_utf8_after_decoding_is_rejected() {
        let h = binary(&[("ce-subject", b"%FF%FE")]);
        assert_eq!(parse_request(&h, b"").unwrap_err().code(), "invalid_utf8");
    }

    #[test]
    fn binary_mode_malformed_percent_encoding_is_rejected() {
        // A sign is not a hex digit: `%+f` is not `%0F`.
        for bad in [&b"100%"[..], b"%4", b"%zz", b"%+f", b"%-1", b"% a"] {
            let h = binary(&[("ce-subject", bad)]);
            assert_eq!(
                parse_request(&h, b"").unwrap_err().code(),
                "invalid_percent_encoding",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let h = binary(&[("ce-subject", b"%4a%4A")]);
        assert_eq!(
            parse_request(&h, b"").unwrap()[0].subject.as_deref(),
            Some("JJ")
        );
    }

    #[test]
    fn binary_mode_json_data_too_deep_to_store_is_rejected_at_ingress() {
        // Stored as the event's `data`, one level deeper than sent: the
        // same limit as structured mode, checked before the 202.
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let h = binary(&[("content-type", b"application/json")]);
        let ok = deep(crate::event::MAX_JSON_DEPTH - 1);
        let event = parse_request(&h, ok.as_bytes()).unwrap().remove(0);
        // What was accepted reads back from its stored form.
        CloudEvent::from_json(event.to_json().as_bytes()).unwrap();
        let error = parse_request(&h, deep(crate::event::MAX_JSON_DEPTH).as_bytes()).unwrap_err();
        assert_eq!(error.code(), "json_too_deep");
        // Not JSON to a receiver (another content type): bytes, not checked.
        let h = binary(&[("content-type", b"application/octet-stream")]);
        parse_request(&h, deep(100).as_bytes()).unwrap();
    }

    #[test]
    fn binary_mode_uppercase_extension_header_is_lowercased_by_http() {
        // Header names are case-insensitive: CE-MyExt arrives as ce-myext.
        let h = binary(&[("CE-MyExt", b"v")]);
        assert_eq!(parse_request(&h, b"").unwrap()[0].extensions["myext"], "v");
    }

    #[test]
    fn binary_mode_invalid_extension_name_is_rejected() {
        let h = binary(&[("ce-my_ext", b"v")]);
        assert_eq!(
            parse_request(&h, b"").unwrap_err().code(),
            "invalid_extension_name"
        );
    }

    #[test]
    fn structured_and_batch_modes() {
        let h = headers(&[(
            "content-type",
            b"application/cloudevents+json; charset=utf-8",
        )]);
        let events = parse_request(
            &h,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null}"#,
        )
        .unwrap();
        assert_eq!(events.len(), 1);

        let h = headers(&[("content-type", b"application/cloudevents-batch+json")]);
        let two = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
        assert_eq!(parse_request(&h, two).unwrap().len(), 2);
        assert_eq!(
            parse_request(&h, b"[]").unwrap_err(),
            EventError::EmptyBatch
        );
        let one_bad = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"","source":"/s","type":"t"}]"#;
        let error = parse_request(&h, one_bad).unwrap_err();
        assert_eq!(error.code(), "empty_attribute");
        assert!(error.to_string().contains("[1]"), "{error}");
    }

    #[test]
    fn percent_encoding_covers_what_the_binding_names() {
        assert_eq!(percent_encode("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("plain-ASCII_~"), "plain-ASCII_~");
    }
}
