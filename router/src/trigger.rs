//! Triggers in Knative's shape: a broker, filters, a subscriber and a
//! delivery policy. Parsed and validated here; a trigger that parses is one
//! the router can run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backoff::{BackoffPolicy, format_iso8601, parse_iso8601};
use crate::event::CloudEvent;
use crate::filter::{Filter, MAX_FILTER_NODES, parse_attributes};

/// The broker of triggers and events that name none.
pub const DEFAULT_BROKER: &str = "default";
/// Default retry count (Knative's).
pub const DEFAULT_RETRY: u32 = 10;
/// Default backoff base delay (Knative's).
pub const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(200);
/// Largest `retry` accepted. Defends the queue against events retried
/// practically forever.
pub const MAX_RETRY: u32 = 100;
/// Most entries in `filters`.
pub const MAX_FILTERS: usize = 64;

/// Where deliveries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A function deployed on this server.
    Function(String),
    /// An external HTTP sink, sent the event in binary mode.
    Uri(String),
}

impl Destination {
    pub(crate) fn parse(value: &Value, path: &str) -> Result<Destination, TriggerError> {
        let Value::Object(map) = value else {
            return Err(invalid(
                path,
                "must be {\"function\": NAME} or {\"uri\": URL}",
            ));
        };
        if let (Some(reference), 1) = (map.get("ref"), map.len()) {
            return Destination::parse_ref(reference, &format!("{path}.ref"));
        }
        match (map.get("function"), map.get("uri"), map.len()) {
            (Some(Value::String(name)), None, 1) => {
                if !sluice_store::is_dns_label(name) {
                    return Err(invalid(path, format!("{name:?} is not a function name")));
                }
                Ok(Destination::Function(name.clone()))
            }
            (None, Some(Value::String(uri)), 1) => {
                let rest = uri
                    .strip_prefix("http://")
                    .or_else(|| uri.strip_prefix("https://"));
                if rest.is_none_or(str::is_empty) || !crate::event::is_uri_reference(uri) {
                    return Err(invalid(
                        path,
                        format!("{uri:?} is not an absolute http(s) URL"),
                    ));
                }
                Ok(Destination::Uri(uri.clone()))
            }
            _ => Err(invalid(
                path,
                "must be {\"function\": NAME} or {\"uri\": URL}",
            )),
        }
    }

    /// A Knative reference (`{"apiVersion", "kind", "name"}`) to a
    /// function: kind `Service` (Knative Serving's) or `Function`.
    fn parse_ref(value: &Value, path: &str) -> Result<Destination, TriggerError> {
        let Value::Object(map) = value else {
            return Err(invalid(path, "must be {\"kind\", \"name\"}"));
        };
        check_fields(map, &["apiVersion", "kind", "name", "namespace"], path)?;
        let text = |key: &str| map.get(key).and_then(Value::as_str);
        match text("kind") {
            Some("Service" | "Function") => {}
            Some(other) => {
                return Err(invalid(
                    &format!("{path}.kind"),
                    format!(
                        "{other:?} is not a kind Sluice delivers to; name a function with kind Service or Function"
                    ),
                ));
            }
            None => return Err(invalid(&format!("{path}.kind"), "is required")),
        }
        if let Some(namespace) = text("namespace").filter(|n| *n != "default") {
            return Err(invalid(
                &format!("{path}.namespace"),
                format!("{namespace:?}: Sluice has one namespace, `default`"),
            ));
        }
        match text("name") {
            Some(name) if sluice_store::is_dns_label(name) => {
                Ok(Destination::Function(name.to_string()))
            }
            Some(name) => Err(invalid(
                &format!("{path}.name"),
                format!("{name:?} is not a function name"),
            )),
            None => Err(invalid(&format!("{path}.name"), "is required")),
        }
    }

    /// The JSON form: `{"function": name}` or `{"uri": url}`.
    pub fn to_json(&self) -> Value {
        match self {
            Destination::Function(name) => json!({"function": name}),
            Destination::Uri(uri) => json!({"uri": uri}),
        }
    }
}

/// How deliveries of a trigger are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySpec {
    /// Retries after the first attempt.
    pub retry: u32,
    /// How waits grow.
    pub backoff_policy: BackoffPolicy,
    /// Base wait.
    pub backoff_delay: Duration,
    /// Per-attempt timeout; `None` leaves the function's own.
    pub timeout: Option<Duration>,
    /// Knative's cap on a subscriber's `Retry-After`. Kept and shown, but
    /// Sluice does not wait for `Retry-After` yet (its backoff applies).
    pub retry_after_max: Option<Duration>,
    /// `maxConcurrency` (a Sluice extension): deliveries of the trigger in
    /// flight at once, below the server's `--max-deliveries-per-trigger`.
    pub max_concurrency: Option<u32>,
    /// Where an event goes after its last failed attempt.
    pub dead_letter_sink: Option<Destination>,
}

impl DeliverySpec {
    /// Parses a Knative `delivery` object at `path` (of a trigger or a
    /// broker).
    pub fn parse(value: &Value, path: &str) -> Result<DeliverySpec, TriggerError> {
        let Value::Object(d) = value else {
            return Err(invalid(path, "must be an object"));
        };
        let at = |field: &str| format!("{path}.{field}");
        check_fields(d, &DELIVERY_FIELDS, path)?;
        let retry = match d.get("retry") {
            None => DEFAULT_RETRY,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) if r <= u64::from(MAX_RETRY) => r as u32,
                _ => {
                    return Err(invalid(
                        &at("retry"),
                        format!("must be an integer from 0 to {MAX_RETRY}"),
                    ));
                }
            },
            Some(_) => return Err(invalid(&at("retry"), "must be an integer")),
        };
        let backoff_policy = match d.get("backoffPolicy") {
            None => BackoffPolicy::Exponential,
            Some(Value::String(p)) if p == "exponential" => BackoffPolicy::Exponential,
            Some(Value::String(p)) if p == "linear" => BackoffPolicy::Linear,
            Some(_) => {
                return Err(invalid(
                    &at("backoffPolicy"),
                    "must be \"exponential\" or \"linear\"",
                ));
            }
        };
        let backoff_delay =
            duration(d.get("backoffDelay"), &at("backoffDelay"))?.unwrap_or(DEFAULT_BACKOFF_DELAY);
        let timeout = duration(d.get("timeout"), &at("timeout"))?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid(&at("timeout"), "must be longer than zero"));
        }
        let dead_letter_sink = match d.get("deadLetterSink") {
            None | Some(Value::Null) => None,
            Some(sink) => Some(Destination::parse(sink, &at("deadLetterSink"))?),
        };
        let retry_after_max = duration(d.get("retryAfterMax"), &at("retryAfterMax"))?;
        let max_concurrency = match d.get("maxConcurrency") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n @ 1..=MAX_CONCURRENCY) => Some(n as u32),
                _ => {
                    return Err(invalid(
                        &at("maxConcurrency"),
                        format!("must be an integer from 1 to {MAX_CONCURRENCY}"),
                    ));
                }
            },
            Some(_) => return Err(invalid(&at("maxConcurrency"), "must be an integer")),
        };
        Ok(DeliverySpec {
            retry,
            backoff_policy,
            backoff_delay,
            timeout,
            retry_after_max,
            max_concurrency,
            dead_letter_sink,
        })
    }

    /// The Knative-shaped JSON, with defaults filled in.
    pub fn to_json(&self) -> Value {
        let mut delivery = json!({
            "retry": self.retry,
            "backoffPolicy": self.backoff_policy.as_str(),
            "backoffDelay": format_iso8601(self.backoff_delay),
        });
        if let Some(timeout) = self.timeout {
            delivery["timeout"] = json!(format_iso8601(timeout));
        }
        if let Some(max) = self.retry_after_max {
            delivery["retryAfterMax"] = json!(format_iso8601(max));
        }
        if let Some(max) = self.max_concurrency {
            delivery["maxConcurrency"] = json!(max);
        }
        if let Some(sink) = &self.dead_letter_sink {
            delivery["deadLetterSink"] = sink.to_json();
        }
        delivery
    }
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            retry: DEFAULT_RETRY,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: DEFAULT_BACKOFF_DELAY,
            timeout: None,
            retry_after_max: None,
            max_concurrency: None,
            dead_letter_sink: None,
        }
    }
}

/// A trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// DNS-label name, unique on the server.
    pub name: String,
    /// The broker whose events it sees.
    pub broker: String,
    /// `filter.attributes`: exact matches, ANDed.
    pub attributes: BTreeMap<String, String>,
    /// `filters`: Subscriptions API expressions, ANDed with `attributes`.
    pub filters: Vec<Filter>,
    /// Where matching events go.
    pub subscriber: Destination,
    /// Retry policy: its own, or (when its definition has none) its
    /// broker's default, or Knative's defaults.
    pub delivery: DeliverySpec,
    /// True when its definition sets `delivery`; false when it takes its
    /// broker's (see [`crate::dispatch::Router::put_broker`]).
    pub own_delivery: bool,
}

/// Why a trigger definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trigger: {path}: {reason}")]
pub struct TriggerError {
    /// Which field.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The DNS-label `name` of a trigger or broker definition; `url`, when
/// given (from the path), must agree with the body's.
pub(crate) fn resource_name(
    map: &serde_json::Map<String, Value>,
    url: Option<&str>,
) -> Result<String, TriggerError> {
    let name = match (map.get("name"), url) {
        (Some(Value::String(body)), Some(url)) if body != url => {
            return Err(invalid(
                "name",
                format!("{body:?} differs from {url:?} in the URL"),
            ));
        }
        (Some(Value::String(body)), _) => body.clone(),
        (None, Some(url)) => url.to_string(),
        (None, None) => return Err(invalid("name", "is required")),
        (Some(_), _) => return Err(invalid("name", "must be a string")),
    };
    if !sluice_store::is_dns_label(&name) {
        return Err(invalid(
            "name",
            format!("{name:?} must be 1 to 63 lowercase letters, digits and `-`"),
        ));
    }
    Ok(name)
}

pub(crate) fn invalid(path: &str, reason: impl Into<String>) -> TriggerError {
    TriggerError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl From<crate::filter::FilterError> for TriggerError {
    fn from(error: crate::filter::FilterError) -> TriggerError {
        TriggerError {
            path: error.path,
            reason: error.reason,
        }
    }
}

const FIELDS: [&str; 6] = [
    "name",
    "broker",
    "filter",
    "filters",
    "subscriber",
    "delivery",
];
/// Fields of a trigger's view that a write ignores, so that a `GET` can be
/// `PUT` back unchanged.
const READ_ONLY_FIELDS: [&str; 2] = ["status", "stats"];
const DELIVERY_FIELDS: [&str; 7] = [
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "timeout",
    "retryAfterMax",
    "maxConcurrency",
    "deadLetterSink",
];

/// The largest `delivery.maxConcurrency`.
const MAX_CONCURRENCY: u64 = 100_000;

pub(crate) fn check_fields(
    map: &serde_json::Map<String, Value>,
    known: &[&str],
    path: &str,
) -> Result<(), TriggerError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(
            path,
            format!("unknown field {unknown:?}; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn duration(value: Option<&Value>, path: &str) -> Result<Option<Duration>, TriggerError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        // Whole milliseconds, as a definition is stored (`PT0.0001S` would be
        // stored as `PT0S`, which a restart would then refuse).
        Some(Value::String(text)) => parse_iso8601(text)
            .map(|d| Some(Duration::from_millis(d.as_millis() as u64)))
            .ok_or_else(|| {
                invalid(
                    path,
                    format!("{text:?} is not an ISO 8601 duration such as PT0.2S"),
                )
            }),
        Some(_) => Err(invalid(
            path,
            "must be an ISO 8601 duration string such as PT0.2S",
        )),
    }
}

impl Trigger {
    /// Parses and validates a trigger. `name`, when given (from the URL),
    /// must agree with the body's.
    pub fn parse(value: &Value, name: Option<&str>) -> Result<Trigger, TriggerError> {
        let Value::Object(map) = value else {
            return Err(invalid("$", "a trigger must be a JSON object"));
        };
        let mut map = map.clone();
        map.retain(|key, _| !READ_ONLY_FIELDS.contains(&key.as_str()));
        let map = &map;
        check_fields(map, &FIELDS, "$")?;
        let name = resource_name(map, name)?;
        let broker = match map.get("broker") {
            None => DEFAULT_BROKER.to_string(),
            Some(Value::String(b)) if sluice_store::is_dns_label(b) => b.clone(),
            Some(_) => {
                return Err(invalid(
                    "broker",
                    "must be a broker name (lowercase letters, digits, `-`)",
                ));
            }
        };
        let attributes = match map.get("filter") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(filter)) => {
                check_fields(filter, &["attributes"], "filter")?;
                match filter.get("attributes") {
                    None => BTreeMap::new(),
                    Some(attributes) => parse_attributes(attributes, "filter.attributes")?,
                }
            }
            Some(_) => return Err(invalid("filter", "must be {\"attributes\": {...}}")),
        };
        let filters = match map.get("filters") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_FILTERS {
                    return Err(invalid(
                        "filters",
                        format!("more than {MAX_FILTERS} filters"),
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Filter::parse(item, &format!("filters[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err(invalid("filters", "must be an array of filters")),
        };
        if attributes.len() + filters.len() > MAX_FILTER_NODES {
            return Err(invalid(
                "filters",
                format!("more than {MAX_FILTER_NODES} filter expressions"),
            ));
        }
        let subscriber = Destination::parse(
            map.get("subscriber")
                .ok_or_else(|| invalid("subscriber", "is required"))?,
            "subscriber",
        )?;
        let delivery = match map.get("delivery") {
            None | Some(Value::Null) => DeliverySpec::default(),
            Some(d) => DeliverySpec::parse(d, "delivery")?,
        };
        // A trigger sets its own delivery unless it leaves `delivery` out,
        // empty, or at Knative's defaults (as every trigger stored before
        // brokers had defaults is): then its broker's applies.
        let own_delivery = delivery != DeliverySpec::default();
        Ok(Trigger {
            name,
            broker,
            attributes,
            filters,
            subscriber,
            delivery,
            own_delivery,
        })
    }

    /// True if `event` passes every filter of this trigger.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        self.attributes
            .iter()
            .all(|(name, value)| event.attribute(name) == Some(value.as_str()))
            && self.filters.iter().all(|f| f.matches(event))
    }

    /// Why `event` does not pass this trigger's filters: the first
    /// condition that failed (`filter.attributes` in name order, then
    /// `filters` in order), such as `filter.attributes.type: wanted "a",
    /// got "b"`; `None` if it passes. Agrees with [`Trigger::matches`].
    pub fn why_not(&self, event: &CloudEvent) -> Option<String> {
        for (name, value) in &self.attributes {
            let field = format!("filter.attributes.{name}");
            match event.attribute(name) {
                None => return Some(format!("{field}: attribute {name} missing")),
                Some(got) if got != value => {
                    return Some(format!("{field}: wanted {value:?}, got {got:?}"));
                }
                Some(_) => {}
            }
        }
        self.filters
            .iter()
            .enumerate()
            .find_map(|(i, f)| f.why_not(event, &format!("filters[{i}]")))
    }

    /// The Knative-shaped JSON, with defaults filled in; without
    /// `delivery` when it takes its broker's.
    pub fn to_json(&self) -> Value {
        let mut view = json!({
            "name": self.name,
            "broker": self.broker,
            "filter": {"attributes": self.attributes},
            "filters": self.filters.iter().map(Filter::to_json).collect::<Vec<_>>(),
            "subscriber": self.subscriber.to_json(),
        });
        if self.own_delivery {
            view["delivery"] = self.delivery.to_json();
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_not_names_the_first_failing_condition_of_each_dialect() {
        let event = CloudEvent::from_json(
            br#"{"specversion":"1.0","id":"1","source":"/shop","type":"order.paid","data":{"total":12,"items":[{"sku":"a"}],"note":null}}"#,
        )
        .unwrap();
        let why = |filters: Value| {
            let mut trigger = json!({"subscriber": {"function": "f"}});
            for (key, value) in filters.as_object().unwrap() {
                trigger[key] = value.clone();
            }
            Trigger::parse(&trigger, Some("t")).unwrap().why_not(&event)
        };
        let cases = [
            (
                json!({"filter": {"attributes": {"type": "a"}}}),
                r#"filter.attributes.type: wanted "a", got "order.paid""#,
            ),
            (
                json!({"filter": {"attributes": {"subject": "x"}}}),
                "filter.attributes.subject: attribute subject missing",
            ),
            (
                json!({"filters": [{"exact": {"source": "/shop"}}, {"prefix": {"type": "invoice."}}]}),
                r#"filters[1].prefix.type: wanted a value starting with "invoice.", got "order.paid""#,
            ),
            (
                json!({"filters": [{"suffix": {"type": ".sent"}}]}),
                r#"filters[0].suffix.type: wanted a value ending with ".sent", got "order.paid""#,
            ),
            (
                json!({"filters": [{"all": [{"exact": {"source": "/shop"}}, {"exact": {"source": "/x"}}]}]}),
                r#"filters[0].all[1].exact.source: wanted "/x", got "/shop""#,
            ),
            (
                json!({"filters": [{"any": [{"exact": {"type": "a"}}, {"exact": {"subject": "b"}}]}]}),
                r#"filters[0].any: none matched (filters[0].any[0].exact.type: wanted "a", got "order.paid"; filters[0].any[1].exact.subject: attribute subject missing)"#,
            ),
            (
                json!({"filters": [{"not": {"exact": {"type": "order.paid"}}}]}),
                "filters[0].not: the filter inside matched",
            ),
            (
                json!({"filters": [{"cesql": "type = 'order.shipped'"}]}),
                "filters[0].cesql: evaluated to FALSE",
            ),
            (
                json!({"filters": [{"cesql": "subject = 'x'"}]}),
                "filters[0].cesql: evaluating it met a missingAttribute error (the result is FALSE)",
            ),
            (
                json!({"filters": [{"exact": {"$.total": "13"}}]}),
                r#"filters[0].exact.$.total: wanted "13", got "12""#,
            ),
            (
                json!({"filters": [{"exact": {"$.items[1].sku": "a"}}]}),
                "filters[0].exact.$.items[1].sku: data has no such field",
            ),
            (
                json!({"filters": [{"exact": {"$.items": "a"}}]}),
                "filters[0].exact.$.items: the field is an array, not a value",
            ),
            (
                json!({"filters": [{"exact": {"$.note": "a"}}]}),
                "filters[0].exact.$.note: the field is null, not a value",
            ),
        ];
        for (filters, reason) in cases {
            assert_eq!(why(filters.clone()).as_deref(), Some(reason), "{filters}");
        }
        assert_eq!(
            why(json!({"filter": {"attributes": {"type": "order.paid"}},
                       "filters": [{"any": [{"exact": {"type": "a"}}, {"exact": {"$.total": "12"}}]}, {"cesql": "source LIKE '/sh%'"}]})),
            None
        );
        let binary = CloudEvent::from_json(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"x"}"#,
        )
        .unwrap();
        let trigger = Trigger::parse(
            &json!({"subscriber": {"function": "f"}, "filters": [{"exact": {"$.a": "x"}}]}),
            Some("t"),
        )
        .unwrap();
        assert_eq!(
            trigger.why_not(&binary).as_deref(),
            Some("filters[0].exact.$.a: the event's data is not JSON")
        );
        let bare =
            CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
                .unwrap();
        assert_eq!(
            trigger.why_not(&bare).as_deref(),
            Some("filters[0].exact.$.a: the event has no data")
        );
    }

    #[test]
    fn the_design_example_parses_and_round_trips() {
        let value = json!({
            "name": "order-processor-trigger",
            "broker": "default",
            "filter": {"attributes": {"type": "com.example.order.created", "source": "payment-service"}},
            "filters": [{"prefix": {"type": "com.example."}}],
            "subscriber": {"function": "order-processor"},
            "delivery": {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S",
                         "timeout": "PT30S", "deadLetterSink": {"function": "dlq-handler"}}
        });
        let trigger = Trigger::parse(&value, None).unwrap();
        assert_eq!(trigger.delivery.retry, 3);
        assert_eq!(trigger.delivery.timeout, Some(Duration::from_secs(30)));
        assert_eq!(Trigger::parse(&trigger.to_json(), None).unwrap(), trigger);
        // A Knative reference names a function as `function` does.
        let mut knative = value.clone();
        knative["subscriber"] = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "order-processor"}});
        knative["delivery"]["deadLetterSink"] =
            json!({"ref": {"kind": "Function", "name": "dlq-handler", "namespace": "default"}});
        assert_eq!(Trigger::parse(&knative, None).unwrap(), trigger);
        let mut tiny = value.clone();
        tiny["delivery"]["timeout"] = json!("PT0.0001S");
        assert!(
            Trigger::parse(&tiny, None).is_err(),
            "a timeout that would be stored as PT0S is refused"
        );
        for bad in [
            json!({"ref": {"kind": "Broker", "name": "x"}}),
            json!({"ref": {"kind": "Service", "name": "x", "namespace": "prod"}}),
            json!({"ref": {"kind": "Service"}}),
            json!({"ref": {"kind": "Service", "name": "x"}, "uri": "http://a/"}),
        ] {
            let mut broken = value.clone();
            broken["subscriber"] = bad.clone();
            assert!(Trigger::parse(&broken, None).is_err(), "{bad}");
        }
        // A view as the API answers it (read-only fields included) is
        // accepted back as it is; the read-only fields change nothing.
        let mut view = trigger.to_json();
        view["status"] = json!({"ready": false, "reason": "no such function"});
        view["stats"] = json!({"matched": 7});
        assert_eq!(Trigger::parse(&view, None).unwrap(), trigger);
    }

    #[test]
    fn defaults_are_knatives() {
        let trigger = Trigger::parse(
            &json!({"subscriber": {"uri": "http://127.0.0.1:9/x"}}),
            Some("t"),
        )
        .unwrap();
        assert_eq!(trigger.broker, DEFAULT_BROKER);
        assert_eq!(trigger.delivery, DeliverySpec::default());
        assert!(trigger.attributes.is_empty() && trigger.filters.is_empty());
    }

    #[test]
    fn invalid_definitions_name_the_field() {
        let cases = [
            (json!({"subscriber": {"function": "f"}}), None, "name"),
            (
                json!({"name": "a", "subscriber": {"function": "f"}}),
                Some("b"),
                "name",
            ),
            (
                json!({"name": "Bad", "subscriber": {"function": "f"}}),
                None,
                "name",
            ),
            (json!({"name": "a"}), None, "subscriber"),
            (
                json!({"name": "a", "subscriber": {"function": "f", "uri": "http://x"}}),
                None,
                "subscriber",
            ),
            (
                json!({"name": "a", "subscriber": {"uri": "ftp://x"}}),
                None,
                "subscriber",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "broker": "B"}),
                None,
                "broker",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "filters": [{"exact": {}}]}),
                None,
                "filters[0].exact",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "filter": {"attributes": {"type": ""}}}),
                None,
                "filter.attributes",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "delivery": {"retry": -1}}),
                None,
                "delivery.retry",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "delivery": {"retry": 1000}}),
                None,
                "delivery.retry",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "delivery": {"backoffPolicy": "random"}}),
                None,
                "delivery.backoffPolicy",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "delivery": {"backoffDelay": "0.2s"}}),
                None,
                "delivery.backoffDelay",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "delivery": {"retries": 1}}),
                None,
                "delivery",
            ),
            (
                json!({"name": "a", "subscriber": {"function": "f"}, "extra": 1}),
                None,
                "$",
            ),
        ];
        for (value, name, path) in cases {
            let error = Trigger::parse(&value, name).unwrap_err();
            assert_eq!(error.path, path, "{value}: {error}");
        }
    }
}
