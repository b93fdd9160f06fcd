//! Conditions on an event's JSON `data` (a Sluice extension): a path such
//! as `$.order.items[0].sku` names one field of the payload, for the
//! `exact`/`prefix`/`suffix` dialects (a key starting with `$.`) and for
//! CESQL's `DATA('$.path')`.
//!
//! A path is `$` followed by one or more segments: `.name` (any characters
//! but `.`, `[` and `]`) or `[n]` (an array index from 0). The payload is
//! parsed once per event, the first time a condition asks for it
//! ([`crate::event::CloudEvent::data_json`]); an event whose data is not
//! JSON (by its `datacontenttype`) or does not parse has no fields, so a
//! data condition never matches it.

use std::borrow::Cow;

use serde_json::Value;

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// Most segments in one path.
pub const MAX_SEGMENTS: usize = 32;

/// A parsed path into `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl DataPath {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<DataPath, String> {
        if text.len() > MAX_PATH_BYTES {
            return Err(format!(
                "a data path is at most {MAX_PATH_BYTES} bytes; this one is {}",
                text.len()
            ));
        }
        let Some(mut rest) = text.strip_prefix('$') else {
            return Err(format!("a data path starts with `$.`: {text:?}"));
        };
        let mut segments = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[', ']']).unwrap_or(after.len());
                if end == 0 {
                    return Err(format!(
                        "an empty field name in data path {text:?} (after its character {})",
                        text[..text.len() - after.len()].chars().count()
                    ));
                }
                segments.push(Segment::Key(after[..end].to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let Some(end) = after.find(']') else {
                    return Err(format!("an unclosed `[` in data path {text:?}"));
                };
                let index = &after[..end];
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "`[{index}]` in data path {text:?} is not an array index (digits only)"
                    ));
                }
                let index = index
                    .parse()
                    .map_err(|_| format!("the index `[{index}]` in {text:?} is too large"))?;
                segments.push(Segment::Index(index));
                rest = &after[end + 1..];
            } else {
                return Err(format!(
                    "data path {text:?}: expected `.name` or `[n]` at its character {}",
                    text[..text.len() - rest.len()].chars().count() + 1
                ));
            }
            if segments.len() > MAX_SEGMENTS {
                return Err(format!("a data path has at most {MAX_SEGMENTS} segments"));
            }
        }
        if segments.is_empty() {
            return Err("a data path names a field: `$.name`, not `$` alone".to_owned());
        }
        Ok(DataPath {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value at this path in `data`, if there is one.
    pub fn lookup<'a>(&self, data: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(data, |value, segment| match segment {
                Segment::Key(key) => value.as_object()?.get(key),
                Segment::Index(i) => value.as_array()?.get(*i),
            })
    }
}

/// A field as the string dialects compare it: a string as it is, a number
/// as its JSON text (`42`, `1.5`), a boolean as `true`/`false`; `null`,
/// objects and arrays are no value.
pub fn text_of(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_name_nested_fields_and_array_items() {
        let data = json!({"order": {"id": "o-1", "items": [{"sku": "a"}, {"sku": "b", "n": 3}]}, "ok": true});
        let at = |path: &str| DataPath::parse(path).unwrap().lookup(&data).cloned();
        assert_eq!(at("$.order.id"), Some(json!("o-1")));
        assert_eq!(at("$.order.items[1].sku"), Some(json!("b")));
        assert_eq!(at("$.order.items[1].n"), Some(json!(3)));
        assert_eq!(at("$.ok"), Some(json!(true)));
        assert_eq!(at("$.order.items[2].sku"), None, "past the end");
        assert_eq!(at("$.order.id.more"), None, "into a string");
        assert_eq!(at("$.order[0]"), None, "an index into an object");
        assert_eq!(at("$.missing"), None);
        assert_eq!(DataPath::parse("$.a-b c").unwrap().text(), "$.a-b c");
    }

    #[test]
    fn malformed_paths_are_refused_with_the_reason() {
        for (path, says) in [
            ("order.id", "starts with"),
            ("$", "names a field"),
            ("$.", "empty field name"),
            ("$.a..b", "empty field name"),
            ("$.a[", "unclosed"),
            ("$.a[x]", "not an array index"),
            ("$.a[-1]", "not an array index"),
            ("$.a[99999999999999999999999]", "too large"),
            ("$.a]", "expected"),
            ("$x", "expected"),
        ] {
            let err = DataPath::parse(path).unwrap_err();
            assert!(err.contains(says), "{path}: {err}");
        }
        assert!(DataPath::parse(&format!("$.{}", "a".repeat(300))).is_err());
        assert!(DataPath::parse(&"$.a".repeat(40)).is_err());
    }

    #[test]
    fn fields_compare_as_text_numbers_in_their_json_form() {
        assert_eq!(text_of(&json!("x")).as_deref(), Some("x"));
        assert_eq!(text_of(&json!(42)).as_deref(), Some("42"));
        assert_eq!(text_of(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(text_of(&json!(false)).as_deref(), Some("false"));
        assert_eq!(text_of(&json!(null)), None);
        assert_eq!(text_of(&json!([1])), None);
        assert_eq!(text_of(&json!({"a": 1})), None);
    }
}
