//! Trigger filters: Knative's `filter.attributes` (an AND of exact matches)
//! and the CloudEvents Subscriptions API dialects in `filters` (`exact`,
//! `prefix`, `suffix`, `all`, `any`, `not`, nesting allowed, and `cesql`,
//! a CloudEvents SQL expression: see [`crate::cesql`]).
//!
//! Matching is case-sensitive; an attribute the event lacks matches nothing
//! (so `not` of it matches). Invalid filters are refused at creation with
//! the reason, never at match time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::event::{CloudEvent, valid_extension_name};

/// Deepest nesting of `all`/`any`/`not` accepted. Defends the matcher's
/// stack against a hostile trigger definition.
pub const MAX_FILTER_DEPTH: usize = 16;

/// Most filter expressions (every node counted) in one trigger.
pub const MAX_FILTER_NODES: usize = 256;

/// One Subscriptions API filter expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// The attribute equals the value.
    Exact(String, String),
    /// The attribute starts with the value.
    Prefix(String, String),
    /// The attribute ends with the value.
    Suffix(String, String),
    /// Every nested filter matches.
    All(Vec<Filter>),
    /// At least one nested filter matches.
    Any(Vec<Filter>),
    /// The nested filter does not match.
    Not(Box<Filter>),
    /// A CloudEvents SQL expression is `TRUE` (with no error).
    Cesql(Arc<crate::cesql::Expression>),
    /// A field of the JSON `data` passes `exact`, `prefix` or `suffix` (a
    /// key `$.path` in those dialects: a Sluice extension).
    Data(Affix, crate::data::DataPath, String),
}

/// How a [`Filter::Data`] compares its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affix {
    /// Equal to the value.
    Exact,
    /// Starts with the value.
    Prefix,
    /// Ends with the value.
    Suffix,
}

impl Affix {
    fn dialect(self) -> &'static str {
        match self {
            Affix::Exact => "exact",
            Affix::Prefix => "prefix",
            Affix::Suffix => "suffix",
        }
    }

    /// `field: wanted ..., got "..."`.
    fn wanted(self, field: &str, value: &str, got: &str) -> String {
        let wanted = match self {
            Affix::Exact => format!("{value:?}"),
            Affix::Prefix => format!("a value starting with {value:?}"),
            Affix::Suffix => format!("a value ending with {value:?}"),
        };
        format!("{field}: wanted {wanted}, got {got:?}")
    }

    fn test(self, field: &str, value: &str) -> bool {
        match self {
            Affix::Exact => field == value,
            Affix::Prefix => field.starts_with(value),
            Affix::Suffix => field.ends_with(value),
        }
    }
}

/// Why an attribute condition (`exact`, `prefix`, `suffix`) fails, if it
/// does.
fn affix_miss(
    affix: Affix,
    path: &str,
    name: &str,
    value: &str,
    got: Option<&str>,
) -> Option<String> {
    let field = format!("{path}.{}.{name}", affix.dialect());
    match got {
        None => Some(format!("{field}: attribute {name} missing")),
        Some(got) => (!affix.test(got, value)).then(|| affix.wanted(&field, value, got)),
    }
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at {path}: {reason}")]
pub struct FilterError {
    /// Where in the trigger, such as `filters[0].all[1]`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn error(path: &str, reason: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl Filter {
    /// True if `event` passes this filter.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        match self {
            Filter::Exact(name, value) => event.attribute(name) == Some(value.as_str()),
            Filter::Prefix(name, value) => event
                .attribute(name)
                .is_some_and(|a| a.starts_with(value.as_str())),
            Filter::Suffix(name, value) => event
                .attribute(name)
                .is_some_and(|a| a.ends_with(value.as_str())),
            Filter::All(filters) => filters.iter().all(|f| f.matches(event)),
            Filter::Any(filters) => filters.iter().any(|f| f.matches(event)),
            Filter::Not(filter) => !filter.matches(event),
            Filter::Cesql(expression) => expression.matches(event),
            Filter::Data(affix, path, value) => event
                .data_json()
                .and_then(|data| path.lookup(data))
                .and_then(crate::data::text_of)
                .is_some_and(|field| affix.test(&field, value)),
        }
    }

    /// Why `event` does not pass this filter, naming the first condition
    /// that failed under `path` (where this filter sits in its trigger,
    /// such as `filters[0]`); `None` if it passes. Agrees with
    /// [`Filter::matches`], which stays the fast path.
    pub fn why_not(&self, event: &CloudEvent, path: &str) -> Option<String> {
        match self {
            Filter::Exact(name, value) => {
                affix_miss(Affix::Exact, path, name, value, event.attribute(name))
            }
            Filter::Prefix(name, value) => {
                affix_miss(Affix::Prefix, path, name, value, event.attribute(name))
            }
            Filter::Suffix(name, value) => {
                affix_miss(Affix::Suffix, path, name, value, event.attribute(name))
            }
            Filter::All(filters) => filters
                .iter()
                .enumerate()
                .find_map(|(i, f)| f.why_not(event, &format!("{path}.all[{i}]"))),
            Filter::Any(filters) => {
                let mut misses = Vec::with_capacity(filters.len());
                for (i, filter) in filters.iter().enumerate() {
                    misses.push(filter.why_not(event, &format!("{path}.any[{i}]"))?);
                }
                Some(if misses.is_empty() {
                    format!("{path}.any: has no filter to match")
                } else {
                    format!("{path}.any: none matched ({})", misses.join("; "))
                })
            }
            Filter::Not(filter) => filter
                .matches(event)
                .then(|| format!("{path}.not: the filter inside matched")),
            Filter::Cesql(expression) => {
                if expression.matches(event) {
                    return None;
                }
                Some(match expression.evaluate(event) {
                    (value, Some(kind)) => format!(
                        "{path}.cesql: evaluating it met a {} error (the result is {value})",
                        kind.as_str()
                    ),
                    (value, None) => format!("{path}.cesql: evaluated to {value}"),
                })
            }
            Filter::Data(affix, data_path, value) => {
                let field = format!("{path}.{}.{}", affix.dialect(), data_path.text());
                let Some(data) = event.data_json() else {
                    let empty = match &event.data {
                        None => true,
                        Some(crate::event::Data::Binary(bytes)) => bytes.is_empty(),
                        Some(crate::event::Data::Json(_)) => false,
                    };
                    if empty {
                        return Some(format!("{field}: the event has no data"));
                    }
                    return Some(format!("{field}: the event's data is not JSON"));
                };
                let Some(found) = data_path.lookup(data) else {
                    return Some(format!("{field}: data has no such field"));
                };
                let Some(text) = crate::data::text_of(found) else {
                    let kind = match found {
                        Value::Null => "null",
                        Value::Array(_) => "an array",
                        _ => "an object",
                    };
                    return Some(format!("{field}: the field is {kind}, not a value"));
                };
                (!affix.test(&text, value)).then(|| affix.wanted(&field, value, &text))
            }
        }
    }

    /// Parses one dialect object, such as `{"prefix": {"type": "com."}}`.
    pub fn parse(value: &Value, path: &str) -> Result<Filter, FilterError> {
        let mut nodes = 0;
        parse_node(value, path, 0, &mut nodes)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        let single = |name: &str, value: &str| {
            let mut map = serde_json::Map::new();
            map.insert(name.to_string(), Value::String(value.to_string()));
            Value::Object(map)
        };
        match self {
            Filter::Exact(n, v) => serde_json::json!({"exact": single(n, v)}),
            Filter::Prefix(n, v) => serde_json::json!({"prefix": single(n, v)}),
            Filter::Suffix(n, v) => serde_json::json!({"suffix": single(n, v)}),
            Filter::All(fs) => {
                serde_json::json!({"all": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
            Filter::Any(fs) => {
                serde_json::json!({"any": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
            Filter::Not(f) => serde_json::json!({"not": f.to_json()}),
            Filter::Cesql(e) => serde_json::json!({"cesql": e.text()}),
            Filter::Data(affix, path, value) => {
                serde_json::json!({affix.dialect(): single(path.text(), value)})
            }
        }
    }
}

fn parse_node(
    value: &Value,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, FilterError> {
    *nodes += 1;
    if *nodes > MAX_FILTER_NODES {
        return Err(error(
            path,
            format!("more than {MAX_FILTER_NODES} filter expressions"),
        ));
    }
    if depth > MAX_FILTER_DEPTH {
        return Err(error(
            path,
            format!("nested deeper than {MAX_FILTER_DEPTH} levels"),
        ));
    }
    let Value::Object(object) = value else {
        return Err(error(
            path,
            "a filter must be a JSON object with one dialect key",
        ));
    };
    if object.len() != 1 {
        return Err(error(
            path,
            format!(
                "a filter must have exactly one dialect key (exact, prefix, suffix, all, any, not, cesql); found {}",
                object.len()
            ),
        ));
    }
    let (dialect, body) = object.iter().next().expect("one key");
    let here = format!("{path}.{dialect}");
    match dialect.as_str() {
        "exact" | "prefix" | "suffix" => {
            let (name, value) = single_attribute(body, &here)?;
            if dialect != "exact" && value.is_empty() {
                return Err(error(
                    &here,
                    format!("the {dialect} value must not be empty"),
                ));
            }
            if name.starts_with('$') {
                let path = crate::data::DataPath::parse(&name).map_err(|e| error(&here, e))?;
                let affix = match dialect.as_str() {
                    "exact" => Affix::Exact,
                    "prefix" => Affix::Prefix,
                    _ => Affix::Suffix,
                };
                return Ok(Filter::Data(affix, path, value));
            }
            Ok(match dialect.as_str() {
                "exact" => Filter::Exact(name, value),
                "prefix" => Filter::Prefix(name, value),
                _ => Filter::Suffix(name, value),
            })
        }
        "all" | "any" => {
            let Value::Array(items) = body else {
                return Err(error(&here, "must be an array of filters"));
            };
            if items.is_empty() {
                return Err(error(&here, "must hold at least one filter"));
            }
            let filters = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_node(item, &format!("{here}[{i}]"), depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if dialect == "all" {
                Filter::All(filters)
            } else {
                Filter::Any(filters)
            })
        }
        "not" => Ok(Filter::Not(Box::new(parse_node(
            body,
            &here,
            depth + 1,
            nodes,
        )?))),
        "cesql" => {
            let Value::String(text) = body else {
                return Err(error(&here, "must be a CESQL expression in a string"));
            };
            let expression = crate::cesql::parse(text)
                .map_err(|e| error(&here, format!("{}: {e}", e.kind.as_str())))?;
            if let Some(kind) = expression
                .result_type()
                .filter(|kind| *kind != crate::cesql::Type::Boolean)
            {
                return Err(error(
                    &here,
                    format!(
                        "the expression yields {kind}; a filter must yield a Boolean (compare it: `x = TRUE`, or cast it: `BOOL(x)`)"
                    ),
                ));
            }
            Ok(Filter::Cesql(Arc::new(expression)))
        }
        other => Err(error(
            path,
            format!("unknown dialect {other:?}; use exact, prefix, suffix, all, any, not or cesql"),
        )),
    }
}

fn single_attribute(body: &Value, path: &str) -> Result<(String, String), FilterError> {
    let Value::Object(map) = body else {
        return Err(error(
            path,
            "must be an object of one attribute name to a string",
        ));
    };
    if map.len() != 1 {
        return Err(error(
            path,
            format!("must name exactly one attribute; found {}", map.len()),
        ));
    }
    let (name, value) = map.iter().next().expect("one key");
    if !name.starts_with('$') {
        check_attribute_name(name, path).map_err(|mut e| {
            e.reason.push_str(" nor a data path (`$.field`)");
            e
        })?;
    }
    let Value::String(value) = value else {
        return Err(error(
            path,
            format!("the value of {name:?} must be a string"),
        ));
    };
    Ok((name.clone(), value.clone()))
}

/// Attribute names in filters follow the extension naming rule, which also
/// covers every core attribute name.
pub fn check_attribute_name(name: &str, path: &str) -> Result<(), FilterError> {
    if valid_extension_name(name) {
        Ok(())
    } else {
        Err(error(
            path,
            format!("{name:?} is not an attribute name (lowercase a-z and 0-9)"),
        ))
    }
}

/// Parses Knative's `filter.attributes` map: an AND of exact matches.
pub fn parse_attributes(
    value: &Value,
    path: &str,
) -> Result<BTreeMap<String, String>, FilterError> {
    let Value::Object(map) = value else {
        return Err(error(
            path,
            "must be an object of attribute names to strings",
        ));
    };
    if map.len() > MAX_FILTER_NODES {
        return Err(error(
            path,
            format!("more than {MAX_FILTER_NODES} attributes"),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        check_attribute_name(name, path)?;
        let Value::String(value) = value else {
            return Err(error(
                path,
                format!("the value of {name:?} must be a string"),
            ));
        };
        if value.is_empty() {
            return Err(error(
                path,
                format!(
                    "the value of {name:?} is empty, which no event attribute has; leave the key out to match any value"
                ),
            ));
        }
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(pairs: &[(&str, &str)]) -> CloudEvent {
        let mut object = serde_json::Map::new();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", "1"),
            ("source", "/s"),
            ("type", "t"),
        ]
        .iter()
        .chain(pairs)
        {
            object.insert(k.to_string(), json!(v));
        }
        CloudEvent::from_json(Value::Object(object).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn dialects_match_as_specified() {
        let e = event(&[("type", "com.example.order.created"), ("myext", "Value")]);
        let parse = |v: Value| Filter::parse(&v, "filters[0]").unwrap();
        assert!(parse(json!({"exact": {"type": "com.example.order.created"}})).matches(&e));
        assert!(
            !parse(json!({"exact": {"myext": "value"}})).matches(&e),
            "case-sensitive"
        );
        assert!(parse(json!({"prefix": {"type": "com.example."}})).matches(&e));
        assert!(parse(json!({"suffix": {"type": ".created"}})).matches(&e));
        assert!(
            !parse(json!({"prefix": {"missing": "x"}})).matches(&e),
            "absent attribute matches nothing"
        );
        assert!(parse(json!({"not": {"exact": {"missing": "x"}}})).matches(&e));
        assert!(
            parse(json!({"all": [{"prefix": {"type": "com."}}, {"exact": {"myext": "Value"}}]}))
                .matches(&e)
        );
        assert!(
            !parse(json!({"all": [{"prefix": {"type": "com."}}, {"exact": {"myext": "no"}}]}))
                .matches(&e)
        );
        assert!(
            parse(json!({"any": [{"prefix": {"type": "org."}}, {"exact": {"myext": "Value"}}]}))
                .matches(&e)
        );
        assert!(!parse(json!({"any": [{"prefix": {"type": "org."}}]})).matches(&e));
        let nested = json!({"not": {"any": [{"all": [{"suffix": {"type": "x"}}]}, {"not": {"exact": {"id": "1"}}}]}});
        assert!(parse(nested.clone()).matches(&e));
        assert_eq!(parse(nested.clone()).to_json(), nested, "JSON round trip");
        let cesql = json!({"all": [{"cesql": "type LIKE 'com.%' AND myext = 'Value'"}]});
        assert!(parse(cesql.clone()).matches(&e));
        assert_eq!(parse(cesql.clone()).to_json(), cesql, "JSON round trip");
        // An error is no match, even where the result would be TRUE without it.
        assert!(!parse(json!({"cesql": "missing = 'x' OR TRUE"})).matches(&e));
    }

    fn with_data(data: &str, content_type: Option<&str>) -> CloudEvent {
        let ct = content_type.map_or(String::new(), |ct| format!(r#","datacontenttype":"{ct}""#));
        let text = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{data}{ct}}}"#
        );
        CloudEvent::from_json(text.as_bytes()).unwrap()
    }

    #[test]
    fn data_conditions_test_fields_of_json_data() {
        let e = with_data(
            r#"{"order":{"id":"o-17","total":42,"paid":true,"items":[{"sku":"A-1"},{"sku":"B-2"}]}}"#,
            None,
        );
        let parse = |v: Value| Filter::parse(&v, "filters[0]").unwrap();
        assert!(parse(json!({"exact": {"$.order.id": "o-17"}})).matches(&e));
        assert!(parse(json!({"prefix": {"$.order.id": "o-"}})).matches(&e));
        assert!(parse(json!({"suffix": {"$.order.items[1].sku": "-2"}})).matches(&e));
        assert!(!parse(json!({"exact": {"$.order.items[2].sku": "B-2"}})).matches(&e));
        // A number or boolean compares as its JSON text.
        assert!(parse(json!({"exact": {"$.order.total": "42"}})).matches(&e));
        assert!(!parse(json!({"exact": {"$.order.total": "42.0"}})).matches(&e));
        assert!(parse(json!({"exact": {"$.order.paid": "true"}})).matches(&e));
        // Missing fields and objects match nothing (so `not` of them does).
        assert!(!parse(json!({"exact": {"$.order.missing": "x"}})).matches(&e));
        assert!(!parse(json!({"prefix": {"$.order.items": "["}})).matches(&e));
        assert!(parse(json!({"not": {"exact": {"$.order.missing": "x"}}})).matches(&e));
        // CESQL reads the same fields with their JSON types.
        assert!(
            parse(json!({"cesql": "DATA('$.order.total') > 40 AND DATA('$.order.paid')"}))
                .matches(&e)
        );
        assert!(parse(json!({"cesql": "data('$.order.items[0].sku') LIKE 'A-%'"})).matches(&e));
        assert!(
            !parse(json!({"cesql": "DATA('$.order.none') = 'x' OR TRUE"})).matches(&e),
            "a missing field is an error"
        );
        let round = json!({"suffix": {"$.order.items[1].sku": "-2"}});
        assert_eq!(parse(round.clone()).to_json(), round, "JSON round trip");

        // Data that is not JSON has no fields.
        let text = with_data(r#""{\"order\":{\"id\":\"o-17\"}}""#, Some("text/plain"));
        assert!(!parse(json!({"exact": {"$.order.id": "o-17"}})).matches(&text));
        let binary = CloudEvent::build(
            [
                ("specversion", "1.0"),
                ("id", "1"),
                ("source", "/s"),
                ("type", "t"),
                ("datacontenttype", "application/json"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
            Some(br#"{"order":{"id":"o-17"}}"#.to_vec()),
        )
        .unwrap();
        assert!(
            parse(json!({"exact": {"$.order.id": "o-17"}})).matches(&binary),
            "binary mode JSON"
        );
        let broken = CloudEvent::build(
            [
                ("specversion", "1.0"),
                ("id", "1"),
                ("source", "/s"),
                ("type", "t"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
            Some(b"{not json".to_vec()),
        )
        .unwrap();
        assert!(!parse(json!({"exact": {"$.order.id": "o-17"}})).matches(&broken));
    }

    #[test]
    fn data_is_parsed_only_for_a_data_condition_and_once() {
        let e = with_data(r#"{"a":"x"}"#, None);
        let plain = Filter::parse(&json!({"exact": {"type": "t"}}), "f").unwrap();
        assert!(plain.matches(&e));
        assert!(
            e.parsed_data.0.get().is_none(),
            "no data condition, no parse"
        );
        let data = Filter::parse(&json!({"exact": {"$.a": "x"}}), "f").unwrap();
        assert!(data.matches(&e));
        assert!(e.parsed_data.0.get().is_some(), "matching filled the cache");
        let first = e.data_json().unwrap() as *const Value;
        assert!(data.matches(&e));
        assert_eq!(
            e.data_json().unwrap() as *const Value,
            first,
            "parsed once, kept"
        );
    }

    #[test]
    fn bad_data_paths_are_refused_at_creation() {
        for (filter, says) in [
            (json!({"exact": {"$order": "x"}}), "expected"),
            (json!({"exact": {"$.a[x]": "x"}}), "not an array index"),
            (json!({"cesql": "DATA('order') = 'x'"}), "starts with"),
            (json!({"cesql": "DATA(type) = 'x'"}), "string literal"),
            (
                json!({"cesql": "DATA('$.a', '$.b') = 'x'"}),
                "no function DATA taking 2",
            ),
        ] {
            let err = Filter::parse(&filter, "filters[0]").unwrap_err();
            assert!(err.reason.contains(says), "{filter}: {err}");
        }
        let err =
            Filter::parse(&json!({"cesql": "type = 'a' AND DATA('x') = 'y'"}), "f").unwrap_err();
        assert!(err.reason.starts_with("parse: "), "{err}");
        assert!(err.reason.contains("at character 16"), "{err}");
    }

    #[test]
    fn a_cesql_refusal_names_the_kind_and_position() {
        let err = Filter::parse(&json!({"cesql": "type = 'a' AND"}), "filters[0]").unwrap_err();
        assert_eq!(err.path, "filters[0].cesql");
        assert!(err.reason.starts_with("parse: "), "{err}");
        assert!(err.reason.contains("at character 15"), "{err}");
        let err = Filter::parse(&json!({"cesql": "LENGTH(type)"}), "f").unwrap_err();
        assert!(err.reason.contains("an Integer"), "{err}");
    }

    #[test]
    fn invalid_filters_are_refused_with_the_path() {
        let cases = [
            json!("exact"),
            json!({}),
            json!({"exact": {"type": "a"}, "prefix": {"type": "b"}}),
            json!({"exact": {"type": "a", "source": "b"}}),
            json!({"exact": {}}),
            json!({"exact": {"type": 1}}),
            json!({"exact": {"Type": "a"}}),
            json!({"prefix": {"type": ""}}),
            json!({"all": []}),
            json!({"any": {"exact": {"type": "a"}}}),
            json!({"regex": {"type": "a"}}),
            json!({"cesql": "type = 'a' AND"}),
            json!({"cesql": "NOPE(type)"}),
            json!({"cesql": "LENGTH(type)"}),
            json!({"cesql": 1}),
        ];
        for case in cases {
            let err = Filter::parse(&case, "filters[0]").unwrap_err();
            assert!(err.path.starts_with("filters[0]"), "{err}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = json!({"exact": {"type": "a"}});
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = json!({"not": deep});
        }
        let err = Filter::parse(&deep, "f").unwrap_err();
        assert!(err.reason.contains("deeper"), "{err}");
    }

    #[test]
    fn attributes_filter_rules() {
        let parsed =
            parse_attributes(&json!({"type": "a", "source": "b"}), "filter.attributes").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parse_attributes(&json!({}), "f").unwrap().is_empty());
        assert!(parse_attributes(&json!({"type": ""}), "f").is_err());
        assert!(parse_attributes(&json!({"type": 1}), "f").is_err());
        assert!(parse_attributes(&json!(["type"]), "f").is_err());
    }
}
