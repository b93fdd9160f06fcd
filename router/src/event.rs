//! The CloudEvent model (spec v1.0.2), its validation, and its JSON format.
//!
//! Validation is our own, rule by rule, because the Rust SDK accepts empty
//! `id`/`type`. Every rule that fails has its own [`EventError`] variant and
//! error code. `data` keeps its exact bytes: binary data as given, JSON data
//! as the raw JSON text (so `"data": null` stays distinct from no data, and a
//! structured event reaches a guest byte-identical).
//!
//! Version 0.3 events are refused with [`EventError::UnsupportedSpecVersion`]:
//! Knative brokers convert them, but Sluice has no 0.3 users to serve and a
//! silent conversion would change attribute names (`schemaurl`).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde_json::value::RawValue;

/// The only accepted `specversion`.
pub const SPEC_VERSION: &str = "1.0";

/// Deepest JSON nesting accepted in a structured or batch body. Defends the
/// parser's stack (and every later reader's) against hostile input.
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in JSON `bytes` (strings are
/// skipped; the text need not be valid).
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Context attributes defined by the spec (everything else is an extension).
pub const CORE_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// A validated CloudEvent.
#[derive(Clone, Debug)]
pub struct CloudEvent {
    /// `id`: non-empty.
    pub id: String,
    /// `source`: a non-empty URI-reference.
    pub source: String,
    /// `specversion`: "1.0".
    pub specversion: String,
    /// `type`: non-empty.
    pub ty: String,
    /// `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// `dataschema`: an absolute URI.
    pub dataschema: Option<String>,
    /// `subject`: non-empty.
    pub subject: Option<String>,
    /// `time`: RFC 3339.
    pub time: Option<String>,
    /// Extension attributes, in their canonical string form.
    pub extensions: BTreeMap<String, String>,
    /// The payload.
    pub data: Option<Data>,
    /// `data` parsed as JSON, once, when a data condition first asks
    /// ([`CloudEvent::data_json`]).
    pub parsed_data: ParsedData,
}

/// The payload of a [`CloudEvent`] parsed as JSON, filled in on first use.
/// A clone starts empty (it is a cache: a copy of an event does not carry a
/// second parsed tree around).
#[derive(Debug, Default)]
pub struct ParsedData(pub(crate) std::sync::OnceLock<Option<serde_json::Value>>);

impl Clone for ParsedData {
    fn clone(&self) -> ParsedData {
        ParsedData::default()
    }
}

/// Event payload.
#[derive(Clone, Debug)]
pub enum Data {
    /// Bytes (binary mode, or `data_base64`).
    Binary(Vec<u8>),
    /// A JSON value, as its exact text (structured mode `data`).
    Json(Box<RawValue>),
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::Binary(a), Data::Binary(b)) => a == b,
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl PartialEq for CloudEvent {
    fn eq(&self, other: &CloudEvent) -> bool {
        self.id == other.id
            && self.source == other.source
            && self.specversion == other.specversion
            && self.ty == other.ty
            && self.datacontenttype == other.datacontenttype
            && self.dataschema == other.dataschema
            && self.subject == other.subject
            && self.time == other.time
            && self.extensions == other.extensions
            && self.data == other.data
    }
}

/// Why an event was refused. Each variant is one rule of the spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// A required attribute (`id`, `source`, `specversion`, `type`) is absent.
    #[error("required attribute `{0}` is missing")]
    MissingAttribute(String),
    /// An attribute that must be non-empty is empty.
    #[error("attribute `{0}` must not be empty")]
    EmptyAttribute(String),
    /// An attribute has the wrong JSON type.
    #[error("attribute `{name}` must be {expected}")]
    AttributeType {
        /// The attribute.
        name: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `specversion` is not "1.0".
    #[error("specversion {0:?} is not supported; send \"1.0\"")]
    UnsupportedSpecVersion(String),
    /// `source` is not a URI-reference.
    #[error("attribute `source` must be a URI-reference (RFC 3986): {0:?}")]
    InvalidSource(String),
    /// `dataschema` is not an absolute URI.
    #[error("attribute `dataschema` must be an absolute URI: {0:?}")]
    InvalidDataSchema(String),
    /// `time` is not RFC 3339.
    #[error("attribute `time` must be an RFC 3339 timestamp: {0:?}")]
    InvalidTime(String),
    /// An extension name is not lowercase a-z and 0-9.
    #[error("extension attribute name {0:?} must consist of lowercase letters a-z and digits 0-9")]
    InvalidExtensionName(String),
    /// An extension value is not a string, integer or boolean.
    #[error("extension attribute `{0}` must be a string, an integer or a boolean")]
    InvalidExtensionValue(String),
    /// A binary-mode header is not UTF-8 after percent-decoding.
    #[error("header `{0}` is not valid UTF-8 after percent-decoding")]
    InvalidUtf8(String),
    /// A binary-mode header has a malformed percent-encoding.
    #[error("header `{0}` has a malformed percent-encoding")]
    InvalidPercentEncoding(String),
    /// Both `data` and `data_base64` are present.
    #[error("an event must not have both `data` and `data_base64`")]
    DataConflict,
    /// `data_base64` is not valid base64.
    #[error("`data_base64` is not valid base64")]
    InvalidBase64,
    /// The body is not the JSON the mode needs.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A batch is empty.
    #[error("a batch must hold at least one event")]
    EmptyBatch,
    /// JSON nested deeper than [`MAX_JSON_DEPTH`].
    #[error("JSON nested {0} levels deep; the limit is {MAX_JSON_DEPTH}")]
    TooDeep(usize),
    /// A binary-mode request without `ce-specversion`.
    #[error(
        "not a CloudEvent: send binary mode (ce-* headers, at least ce-specversion, ce-id, ce-source, ce-type) or structured mode (Content-Type: application/cloudevents+json)"
    )]
    NotACloudEvent,
    /// One event of a batch is invalid (the whole batch is refused).
    #[error("event [{index}] of the batch: {error}")]
    InBatch {
        /// Its position.
        index: usize,
        /// Why.
        error: Box<EventError>,
    },
}

impl EventError {
    /// The rule that failed, as a stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::MissingAttribute(_) => "missing_attribute",
            EventError::EmptyAttribute(_) => "empty_attribute",
            EventError::AttributeType { .. } => "invalid_attribute_type",
            EventError::UnsupportedSpecVersion(_) => "unsupported_specversion",
            EventError::InvalidSource(_) => "invalid_source",
            EventError::InvalidDataSchema(_) => "invalid_dataschema",
            EventError::InvalidTime(_) => "invalid_time",
            EventError::InvalidExtensionName(_) => "invalid_extension_name",
            EventError::InvalidExtensionValue(_) => "invalid_extension_value",
            EventError::InvalidUtf8(_) => "invalid_utf8",
            EventError::InvalidPercentEncoding(_) => "invalid_percent_encoding",
            EventError::DataConflict => "data_and_data_base64",
            EventError::InvalidBase64 => "invalid_data_base64",
            EventError::MalformedJson(_) => "malformed_json",
            EventError::EmptyBatch => "empty_batch",
            EventError::TooDeep(_) => "json_too_deep",
            EventError::NotACloudEvent => "not_a_cloudevent",
            EventError::InBatch { error, .. } => error.code(),
        }
    }
}

/// True if `name` is a valid extension attribute name.
pub fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// True if `s` is an RFC 3986 URI-reference (parsed by `fluent-uri`:
/// `/orders`, `urn:x:y` and `https://a/b?c#d` are, `a#b#c` and `a b` are
/// not).
pub fn is_uri_reference(s: &str) -> bool {
    fluent_uri::UriRef::parse(s).is_ok()
}

fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    is_uri_reference(s)
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// True if `s` is an RFC 3339 timestamp.
pub fn is_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Attributes gathered from a binding before validation: name → string value.
#[derive(Debug, Default)]
pub(crate) struct RawAttributes {
    pub(crate) values: BTreeMap<String, String>,
}

impl CloudEvent {
    /// Validates `attributes` (all strings, from any binding) plus `data`.
    pub(crate) fn from_attributes(
        raw: RawAttributes,
        data: Option<Data>,
    ) -> Result<CloudEvent, EventError> {
        let mut values = raw.values;
        let mut required = |name: &str| -> Result<String, EventError> {
            match values.remove(name) {
                None => Err(EventError::MissingAttribute(name.into())),
                Some(v) if v.is_empty() => Err(EventError::EmptyAttribute(name.into())),
                Some(v) => Ok(v),
            }
        };
        let specversion = required("specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion(specversion));
        }
        let id = required("id")?;
        let source = required("source")?;
        let ty = required("type")?;
        if !is_uri_reference(&source) {
            return Err(EventError::InvalidSource(source));
        }
        let mut optional = |name: &str| -> Result<Option<String>, EventError> {
            match values.remove(name) {
                Some(v) if v.is_empty() => Err(EventError::EmptyAttribute(name.into())),
                other => Ok(other),
            }
        };
        let datacontenttype = optional("datacontenttype")?;
        let dataschema = optional("dataschema")?;
        let subject = optional("subject")?;
        let time = optional("time")?;
        if let Some(schema) = &dataschema
            && !is_absolute_uri(schema)
        {
            return Err(EventError::InvalidDataSchema(schema.clone()));
        }
        if let Some(t) = &time
            && !is_rfc3339(t)
        {
            return Err(EventError::InvalidTime(t.clone()));
        }
        if let Some(name) = values.keys().find(|name| !valid_extension_name(name)) {
            return Err(EventError::InvalidExtensionName(name.clone()));
        }
        if let Some(Data::Binary(bytes)) = &data {
            check_stored_depth(bytes, datacontenttype.as_deref())?;
        }
        Ok(CloudEvent {
            id,
            source,
            specversion,
            ty,
            datacontenttype,
            dataschema,
            subject,
            time,
            extensions: values,
            data,
            parsed_data: ParsedData::default(),
        })
    }

    /// Builds and validates an event from attribute (name, value) pairs and
    /// data bytes, as a function hands them over.
    pub fn build(
        attributes: impl IntoIterator<Item = (String, String)>,
        data: Option<Vec<u8>>,
    ) -> Result<CloudEvent, EventError> {
        let mut raw = RawAttributes::default();
        for (name, value) in attributes {
            if name == "data" || name == "data_base64" {
                return Err(EventError::InvalidExtensionName(name));
            }
            if raw.values.insert(name.clone(), value).is_some() {
                return Err(EventError::AttributeType {
                    name,
                    expected: "given once",
                });
            }
        }
        CloudEvent::from_attributes(raw, data.map(Data::Binary))
    }

    /// The value of attribute `name` (core or extension), if present.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "id" => Some(&self.id),
            "source" => Some(&self.source),
            "specversion" => Some(&self.specversion),
            "type" => Some(&self.ty),
            "datacontenttype" => self.datacontenttype.as_deref(),
            "dataschema" => self.dataschema.as_deref(),
            "subject" => self.subject.as_deref(),
            "time" => self.time.as_deref(),
            other => self.extensions.get(other).map(String::as_str),
        }
    }

    /// Every attribute as (name, value), core ones first.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        CORE_ATTRIBUTES
            .iter()
            .filter_map(|name| self.attribute(name).map(|v| (*name, v)))
            .chain(
                self.extensions
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
    }

    /// The payload's bytes as a receiver in binary mode sees them: binary
    /// data as is; JSON data as its JSON text, except a JSON string under a
    /// non-JSON content type, which is the string's text.
    pub fn data_bytes(&self) -> Option<Vec<u8>> {
        match self.data.as_ref()? {
            Data::Binary(bytes) => Some(bytes.clone()),
            Data::Json(raw) => {
                let text = raw.get();
                if !self.is_json_content()
                    && text.starts_with('"')
                    && let Ok(s) = serde_json::from_str::<String>(text)
                {
                    return Some(s.into_bytes());
                }
                Some(text.as_bytes().to_vec())
            }
        }
    }

    /// `data` as JSON, parsed on the first call only: `None` when there is
    /// none, its `datacontenttype` is not JSON, or it does not parse.
    pub fn data_json(&self) -> Option<&serde_json::Value> {
        self.parsed_data
            .0
            .get_or_init(|| {
                if !self.is_json_content() {
                    return None;
                }
                match self.data.as_ref()? {
                    Data::Json(raw) => serde_json::from_str(raw.get()).ok(),
                    Data::Binary(bytes) => serde_json::from_slice(bytes).ok(),
                }
            })
            .as_ref()
    }

    /// Drops the parsed `data` (matching is done: a delivery never needs
    /// the tree, which takes several times the JSON's bytes).
    pub fn forget_parsed_data(&mut self) {
        self.parsed_data = ParsedData::default();
    }

    /// True if `datacontenttype` is absent or a JSON media type.
    pub fn is_json_content(&self) -> bool {
        self.datacontenttype
            .as_deref()
            .is_none_or(is_json_media_type)
    }

    /// The event in the structured JSON format.
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (name, value) in self.attributes() {
            map.insert(
                name.to_string(),
                serde_json::Value::String(value.to_string()),
            );
        }
        let head = serde_json::Value::Object(map).to_string();
        let data = match &self.data {
            None => return head,
            Some(Data::Json(raw)) => format!("\"data\":{}", raw.get()),
            Some(Data::Binary(bytes)) => {
                if self.is_json_content()
                    && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
                {
                    // JSON bytes stay JSON so readers see the value.
                    format!("\"data\":{}", String::from_utf8_lossy(bytes))
                } else {
                    format!(
                        "\"data_base64\":{}",
                        serde_json::Value::String(
                            base64::engine::general_purpose::STANDARD.encode(bytes)
                        )
                    )
                }
            }
        };
        format!("{},{data}}}", &head[..head.len() - 1])
    }

    /// Parses one event in the structured JSON format.
    pub fn from_json(bytes: &[u8]) -> Result<CloudEvent, EventError> {
        check_depth(bytes)?;
        let object: HashMap<String, Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|e| EventError::MalformedJson(e.to_string()))?;
        from_json_object(object)
    }
}

/// Refuses binary data that the structured form would store as JSON nested
/// deeper than [`MAX_JSON_DEPTH`] (one level below the event itself): an
/// accepted event must read back. One rule with structured mode, whose
/// whole body is checked.
fn check_stored_depth(bytes: &[u8], content_type: Option<&str>) -> Result<(), EventError> {
    if content_type.is_some_and(|t| !is_json_media_type(t)) {
        return Ok(());
    }
    let depth = json_depth(bytes) + 1;
    if depth > MAX_JSON_DEPTH && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(EventError::TooDeep(depth));
    }
    Ok(())
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`].
pub fn check_depth(bytes: &[u8]) -> Result<(), EventError> {
    match json_depth(bytes) {
        depth if depth > MAX_JSON_DEPTH => Err(EventError::TooDeep(depth)),
        _ => Ok(()),
    }
}

/// True for `application/json`, `text/json` and `*/*+json` media types.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

pub(crate) fn from_json_object(
    object: HashMap<String, Box<RawValue>>,
) -> Result<CloudEvent, EventError> {
    let mut raw = RawAttributes::default();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in object {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                let value: serde_json::Value = serde_json::from_str(value.get())
                    .map_err(|e| EventError::MalformedJson(e.to_string()))?;
                let text = match value {
                    serde_json::Value::Null => continue, // null is absent
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Bool(b) if !CORE_ATTRIBUTES.contains(&name.as_str()) => {
                        b.to_string()
                    }
                    serde_json::Value::Number(n)
                        if !CORE_ATTRIBUTES.contains(&name.as_str()) && n.is_i64() =>
                    {
                        n.to_string()
                    }
                    _ if CORE_ATTRIBUTES.contains(&name.as_str()) => {
                        return Err(EventError::AttributeType {
                            name,
                            expected: "a string",
                        });
                    }
                    _ if !valid_extension_name(&name) => {
                        return Err(EventError::InvalidExtensionName(name));
                    }
                    _ => return Err(EventError::InvalidExtensionValue(name)),
                };
                raw.values.insert(name, text);
            }
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(EventError::DataConflict),
        (Some(json), None) => Some(Data::Json(json)),
        (None, Some(encoded)) => {
            let text: Option<String> =
                serde_json::from_str(encoded.get()).map_err(|_| EventError::InvalidBase64)?;
            match text {
                None => None,
                Some(text) => Some(Data::Binary(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.as_bytes())
                        .map_err(|_| EventError::InvalidBase64)?,
                )),
            }
        }
        (None, None) => None,
    };
    CloudEvent::from_attributes(raw, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> String {
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#.to_string()
    }

    fn with(field: &str) -> Vec<u8> {
        let base = minimal();
        format!("{},{field}}}", &base[..base.len() - 1]).into_bytes()
    }

    #[test]
    fn json_depth_skips_strings_and_is_bounded() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        let deep = "[".repeat(MAX_JSON_DEPTH + 1) + &"]".repeat(MAX_JSON_DEPTH + 1);
        assert_eq!(
            check_depth(deep.as_bytes()).unwrap_err().code(),
            "json_too_deep"
        );
        let ok = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert!(check_depth(ok.as_bytes()).is_ok());
    }

    #[test]
    fn uri_references() {
        for ok in [
            "/s",
            "https://example.com/a?b=c#d",
            "urn:uuid:123",
            "mailto:x@y",
            "a%20b",
            "payment-service",
            "",
        ] {
            assert!(is_uri_reference(ok), "{ok}");
        }
        for bad in [
            "a b",
            "%zz",
            "%2",
            "with\"quote",
            "tab\t",
            "ü",
            "a#b#c",
            "http://[::1",
        ] {
            assert!(!is_uri_reference(bad), "{bad}");
        }
    }

    #[test]
    fn structured_round_trip_keeps_data_bytes() {
        let input =
            with(r#""data":{ "b" : [1, 2 ] },"datacontenttype":"application/json","myext":"v""#);
        let event = CloudEvent::from_json(&input).unwrap();
        assert_eq!(event.data_bytes().unwrap(), br#"{ "b" : [1, 2 ] }"#);
        let again = CloudEvent::from_json(event.to_json().as_bytes()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn null_data_is_distinct_from_absent_data() {
        let null = CloudEvent::from_json(&with(r#""data":null"#)).unwrap();
        assert_eq!(null.data_bytes().as_deref(), Some(&b"null"[..]));
        let absent = CloudEvent::from_json(minimal().as_bytes()).unwrap();
        assert_eq!(absent.data, None);
        assert!(
            CloudEvent::from_json(null.to_json().as_bytes())
                .unwrap()
                .data
                .is_some()
        );
    }

    #[test]
    fn data_base64_decodes_and_round_trips() {
        let event = CloudEvent::from_json(&with(
            r#""data_base64":"AAEC/w==","datacontenttype":"application/octet-stream""#,
        ))
        .unwrap();
        assert_eq!(event.data_bytes().unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(
            CloudEvent::from_json(event.to_json().as_bytes()).unwrap(),
            event
        );
    }

    #[test]
    fn text_data_under_text_content_type_is_the_text() {
        let event =
            CloudEvent::from_json(&with(r#""data":"héllo","datacontenttype":"text/plain""#))
                .unwrap();
        assert_eq!(event.data_bytes().unwrap(), "héllo".as_bytes());
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                br#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_vec(),
                "missing_attribute",
            ),
            (
                br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#.to_vec(),
                "empty_attribute",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":""}"#.to_vec(),
                "empty_attribute",
            ),
            (
                br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#.to_vec(),
                "unsupported_specversion",
            ),
            (
                br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#.to_vec(),
                "invalid_attribute_type",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"a b","type":"t"}"#.to_vec(),
                "invalid_source",
            ),
            (with(r#""time":"yesterday""#), "invalid_time"),
            (
                with(r#""dataschema":"relative/path""#),
                "invalid_dataschema",
            ),
            (with(r#""Bad_Ext":"x""#), "invalid_extension_name"),
            (with(r#""ext":{"a":1}"#), "invalid_extension_value"),
            (with(r#""ext":1.5"#), "invalid_extension_value"),
            (
                with(r#""data":1,"data_base64":"AA==""#),
                "data_and_data_base64",
            ),
            (with(r#""data_base64":"!!!""#), "invalid_data_base64"),
            (with(r#""subject":"""#), "empty_attribute"),
            (b"[1]".to_vec(), "malformed_json"),
            (b"{".to_vec(), "malformed_json"),
        ];
        for (input, code) in cases {
            let error = CloudEvent::from_json(&input).unwrap_err();
            assert_eq!(
                error.code(),
                code,
                "{}: {error}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn valid_optional_attributes_and_extensions() {
        let event = CloudEvent::from_json(&with(
            r#""time":"2026-11-22T10:00:00.5+01:00","dataschema":"https://x/s.json","subject":"s","flag":true,"count":42"#,
        ))
        .unwrap();
        assert_eq!(event.attribute("flag"), Some("true"));
        assert_eq!(event.attribute("count"), Some("42"));
        assert_eq!(event.attribute("subject"), Some("s"));
        assert_eq!(event.attribute("missing"), None);
    }
}
