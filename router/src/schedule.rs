//! Schedules: a cron pattern that posts one CloudEvent into a broker at
//! each of its instants (Knative's `PingSource`).
//!
//! The event has type [`PING_TYPE`], source
//! `/apis/v1/namespaces/default/pingsources/{name}` (Knative's), and as its
//! id and `time` the instant in RFC 3339 (UTC): the id follows from the
//! schedule and the instant, so a firing repeated (after a crash, or by two
//! cluster nodes at once) is the same event, which de-duplication on
//! (source, id) does not deliver twice.
//!
//! Patterns are croner's: five fields (minute to weekday) as in Knative,
//! an optional leading seconds field and trailing year field, names
//! (`MON`, `JAN`), `L`, `W`, `#`, and nicknames (`@hourly`). They are
//! evaluated in `timezone` (an IANA name; UTC when absent).

use base64::Engine as _;
use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::event::{CloudEvent, Data};
use crate::trigger::{
    DeliverySpec, Destination, Trigger, TriggerError, check_fields, invalid, resource_name,
};

/// The type of every event a schedule posts (Knative's).
pub const PING_TYPE: &str = "dev.knative.sources.ping";
/// Most bytes of `data` (or of `dataBase64` decoded) a schedule carries.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Longest pattern, time zone or content type accepted.
const MAX_TEXT: usize = 256;

/// The fields of a schedule's definition besides `name` (a `PingSource`'s
/// `spec`).
pub const SPEC_FIELDS: [&str; 6] = [
    "schedule",
    "timezone",
    "contentType",
    "data",
    "dataBase64",
    "sink",
];
/// Fields of a schedule's view that a write ignores, so that a `GET` can
/// be `PUT` back unchanged.
const READ_ONLY_FIELDS: [&str; 3] = ["next", "lastFired", "status"];

/// A schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// DNS-label name.
    pub name: String,
    /// The cron pattern, as given.
    pub schedule: String,
    cron: Cron,
    /// The IANA time zone the pattern is read in, as given (`None`: UTC).
    pub timezone: Option<String>,
    zone: TimeZone,
    /// `contentType` as given.
    pub content_type: Option<String>,
    /// `data` as given: a string, or any JSON value (a Sluice extension).
    pub data: Option<Value>,
    /// `dataBase64` as given.
    pub data_base64: Option<String>,
    /// The broker its events are posted to (for a function or URL sink,
    /// its own: [`direct_broker`]).
    pub broker: String,
    /// Its function or URL sink, when it has one.
    pub direct: Option<Destination>,
    payload: Option<(Data, String)>,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.to_json() == other.to_json()
    }
}

impl Schedule {
    /// Parses a schedule definition (Knative's `PingSource` `spec`, with
    /// `name`); `name`, when given (from the URL), must agree with the
    /// body's.
    pub fn parse(value: &Value, name: Option<&str>) -> Result<Schedule, TriggerError> {
        let Value::Object(map) = value else {
            return Err(invalid("$", "a schedule must be a JSON object"));
        };
        let mut map = map.clone();
        map.retain(|key, _| !READ_ONLY_FIELDS.contains(&key.as_str()));
        let fields: Vec<&str> = std::iter::once("name").chain(SPEC_FIELDS).collect();
        check_fields(&map, &fields, "$")?;
        let name = resource_name(&map, name)?;
        let text = |field: &str| -> Result<Option<String>, TriggerError> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Err(invalid(field, "must not be empty")),
                Some(Value::String(s)) if s.len() > MAX_TEXT => {
                    Err(invalid(field, format!("is over {MAX_TEXT} bytes")))
                }
                Some(Value::String(s)) if s.chars().any(char::is_control) => {
                    Err(invalid(field, "holds a control character"))
                }
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(field, "must be a string")),
            }
        };
        let schedule = text("schedule")?.ok_or_else(|| {
            invalid(
                "schedule",
                "is required: a cron pattern such as \"*/5 * * * *\"",
            )
        })?;
        let cron: Cron = schedule.parse().map_err(|error| {
            invalid(
                "schedule",
                format!(
                    "{schedule:?}: {error} (the fields: [second] minute hour day-of-month month day-of-week [year], such as \"*/5 * * * *\" or \"0 30 2 * * MON-FRI\")"
                ),
            )
        })?;
        let timezone = text("timezone")?;
        let zone = match &timezone {
            None => TimeZone::UTC,
            Some(tz) => TimeZone::get(tz).map_err(|_| {
                invalid(
                    "timezone",
                    format!(
                        "{tz:?} is not an IANA time zone (such as \"Europe/Berlin\" or \"UTC\")"
                    ),
                )
            })?,
        };
        let content_type = text("contentType")?;
        let data = match map.get("data") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.clone()),
        };
        let data_base64 = text_unbounded(&map, "dataBase64")?;
        let payload = payload(
            data.as_ref(),
            data_base64.as_deref(),
            content_type.as_deref(),
        )?;
        let (broker, direct) = match sink(map.get("sink"))? {
            Sink::Broker(broker) => (broker, None),
            Sink::Direct(destination) => (direct_broker(&name), Some(destination)),
        };
        let parsed = Schedule {
            name,
            schedule,
            cron,
            timezone,
            zone,
            content_type,
            data,
            data_base64,
            broker,
            direct,
            payload,
        };
        Ok(parsed)
    }

    /// [`Schedule::parse`] for a new definition (from the API): also
    /// refused when its pattern has no instant after now. (A stored one
    /// that has fired its last instant still loads, so it can be read and
    /// deleted.)
    pub fn parse_new(value: &Value, name: Option<&str>) -> Result<Schedule, TriggerError> {
        let parsed = Schedule::parse(value, name)?;
        if parsed.next_after(Timestamp::now()).is_none() {
            return Err(invalid(
                "schedule",
                format!("{:?} never fires (no instant after now)", parsed.schedule),
            ));
        }
        Ok(parsed)
    }

    /// The JSON the API shows and the store keeps.
    pub fn to_json(&self) -> Value {
        let mut view = json!({"name": self.name, "schedule": self.schedule});
        if let Some(tz) = &self.timezone {
            view["timezone"] = json!(tz);
        }
        if let Some(content_type) = &self.content_type {
            view["contentType"] = json!(content_type);
        }
        if let Some(data) = &self.data {
            view["data"] = data.clone();
        }
        if let Some(data) = &self.data_base64 {
            view["dataBase64"] = json!(data);
        }
        view["sink"] = match &self.direct {
            Some(destination) => destination.to_json(),
            None => json!({"broker": self.broker}),
        };
        view
    }

    /// For a function or URL sink: the trigger its firings are delivered
    /// through (named as its broker, matching every event of it, with
    /// Knative's default retries). Not listed with the triggers.
    pub fn direct_trigger(&self) -> Option<Trigger> {
        let destination = self.direct.clone()?;
        Some(Trigger {
            name: self.broker.clone(),
            broker: self.broker.clone(),
            attributes: Default::default(),
            filters: Vec::new(),
            subscriber: destination,
            delivery: DeliverySpec::default(),
            own_delivery: false,
        })
    }

    /// The first instant strictly after `after`, if the pattern has one.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp())
    }

    /// The last instant at or before `at`, if the pattern has one.
    pub fn latest_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let zoned = at.to_zoned(self.zone.clone());
        let last = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        Some(last.timestamp())
    }

    /// The source of its events (Knative's form).
    pub fn source(&self) -> String {
        format!("/apis/v1/namespaces/default/pingsources/{}", self.name)
    }

    /// The event it posts for `instant`: its id and time are the instant.
    pub fn event(&self, instant: Timestamp) -> CloudEvent {
        let when = instant.to_string();
        let (data, content_type) = match &self.payload {
            Some((data, content_type)) => (Some(data.clone()), Some(content_type.clone())),
            None => (None, None),
        };
        CloudEvent {
            id: when.clone(),
            source: self.source(),
            specversion: "1.0".to_string(),
            ty: PING_TYPE.to_string(),
            datacontenttype: content_type,
            dataschema: None,
            subject: None,
            time: Some(when),
            extensions: Default::default(),
            data,
            parsed_data: Default::default(),
        }
    }
}

fn text_unbounded(
    map: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, TriggerError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// The data of each event and its content type: `dataBase64` as bytes;
/// `data` that is JSON (any value but a string, or a string holding JSON)
/// as JSON; other text as bytes. The content type defaults to
/// `application/json`, `text/plain` or `application/octet-stream` by that.
fn payload(
    data: Option<&Value>,
    data_base64: Option<&str>,
    content_type: Option<&str>,
) -> Result<Option<(Data, String)>, TriggerError> {
    let (data, default_type) = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid("data", "give data or dataBase64, not both"));
        }
        (None, None) => {
            if content_type.is_some() {
                return Err(invalid("contentType", "is set, but there is no data"));
            }
            return Ok(None);
        }
        (None, Some(encoded)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|error| invalid("dataBase64", format!("is not base64: {error}")))?;
            if bytes.len() > MAX_DATA_BYTES {
                return Err(invalid(
                    "dataBase64",
                    format!("decodes to over {MAX_DATA_BYTES} bytes"),
                ));
            }
            (Data::Binary(bytes), "application/octet-stream")
        }
        (Some(Value::String(text)), None) => {
            if text.len() > MAX_DATA_BYTES {
                return Err(invalid("data", format!("is over {MAX_DATA_BYTES} bytes")));
            }
            let json = content_type.is_none_or(is_json_type)
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            match json {
                true => (raw_json(text.clone()), "application/json"),
                false => (Data::Binary(text.as_bytes().to_vec()), "text/plain"),
            }
        }
        (Some(value), None) => {
            let text = value.to_string();
            if text.len() > MAX_DATA_BYTES {
                return Err(invalid("data", format!("is over {MAX_DATA_BYTES} bytes")));
            }
            if content_type.is_some_and(|t| !is_json_type(t)) {
                return Err(invalid(
                    "contentType",
                    "JSON data needs a JSON content type (or data as a string)",
                ));
            }
            (raw_json(text), "application/json")
        }
    };
    Ok(Some((
        data,
        content_type.unwrap_or(default_type).to_string(),
    )))
}

fn raw_json(text: String) -> Data {
    Data::Json(serde_json::value::RawValue::from_string(text).expect("checked to be JSON"))
}

fn is_json_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// Where a schedule's firings go.
enum Sink {
    /// Into a broker, like any event.
    Broker(String),
    /// Straight to a function or URL (through the schedule's own
    /// trigger, see [`Schedule::direct_trigger`]).
    Direct(Destination),
}

/// The prefix of the broker, and trigger, that a schedule with a function
/// or URL sink posts into and delivers through: no name a client can give
/// (those are DNS labels) starts with it.
pub const DIRECT_PREFIX: &str = "_schedule_";

/// The broker (and trigger) of schedule `name`'s direct sink.
pub fn direct_broker(name: &str) -> String {
    format!("{DIRECT_PREFIX}{name}")
}

/// `{"broker": NAME}`, Knative's `{"ref": {"kind": "Broker", "name":
/// NAME}}`, or a destination as a trigger's subscriber takes it:
/// `{"function": NAME}`, `{"uri": URL}`, `{"ref": {"kind": "Service",
/// "name": NAME}}`.
fn sink(value: Option<&Value>) -> Result<Sink, TriggerError> {
    const SHAPE: &str = "must be {\"broker\": NAME}, {\"function\": NAME}, {\"uri\": URL} or {\"ref\": {\"kind\": \"Broker\" (or \"Service\"), \"name\": NAME}}";
    let Some(Value::Object(map)) = value else {
        return Err(match value {
            None | Some(Value::Null) => invalid("sink", format!("is required: it {SHAPE}")),
            Some(_) => invalid("sink", SHAPE),
        });
    };
    let name = match (map.get("broker"), map.get("ref"), map.len()) {
        (Some(Value::String(name)), None, 1) => name.as_str(),
        (None, Some(Value::Object(reference)), 1)
            if reference.get("kind").and_then(Value::as_str) == Some("Broker") =>
        {
            check_fields(
                reference,
                &["apiVersion", "kind", "name", "namespace"],
                "sink.ref",
            )?;
            let text = |key: &str| reference.get(key).and_then(Value::as_str);
            if let Some(namespace) = text("namespace").filter(|n| *n != "default") {
                return Err(invalid(
                    "sink.ref.namespace",
                    format!("{namespace:?}: Sluice has one namespace, `default`"),
                ));
            }
            text("name").ok_or_else(|| invalid("sink.ref.name", "is required"))?
        }
        (None, Some(_), 1) => {
            // A function, by Knative reference (kind Service or Function).
            return Ok(Sink::Direct(Destination::parse(
                &Value::Object(map.clone()),
                "sink",
            )?));
        }
        (None, None, 1) if map.contains_key("function") || map.contains_key("uri") => {
            return Ok(Sink::Direct(Destination::parse(
                &Value::Object(map.clone()),
                "sink",
            )?));
        }
        _ => return Err(invalid("sink", SHAPE)),
    };
    if !sluice_store::is_dns_label(name) {
        return Err(invalid("sink", format!("{name:?} is not a broker name")));
    }
    Ok(Sink::Broker(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_schedule_round_trips_and_names_its_instants() {
        let value = json!({"name": "nightly", "schedule": "30 2 * * *", "timezone": "Europe/Berlin",
            "data": {"hello": "world"}, "sink": {"broker": "jobs"}});
        let schedule = Schedule::parse(&value, Some("nightly")).unwrap();
        assert_eq!(
            Schedule::parse(&schedule.to_json(), None).unwrap(),
            schedule
        );
        assert_eq!(schedule.to_json(), value);
        // 02:30 in Berlin is 01:30 UTC in winter, 00:30 UTC in summer.
        assert_eq!(
            schedule.next_after(at("2026-12-03T08:00:00Z")),
            Some(at("2026-12-04T01:30:00Z"))
        );
        assert_eq!(
            schedule.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T00:30:00Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-12-04T01:30:00Z")),
            Some(at("2026-12-04T01:30:00Z")),
            "inclusive"
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-12-04T01:29:59Z")),
            Some(at("2026-12-03T01:30:00Z"))
        );
        let event = schedule.event(at("2026-12-04T01:30:00Z"));
        assert_eq!(event.id, "2026-12-04T01:30:00Z");
        assert_eq!(event.time.as_deref(), Some("2026-12-04T01:30:00Z"));
        assert_eq!(event.ty, PING_TYPE);
        assert_eq!(
            event.source,
            "/apis/v1/namespaces/default/pingsources/nightly"
        );
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        let json: Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["data"], json!({"hello": "world"}));
        assert!(
            CloudEvent::from_json(event.to_json().as_bytes()).is_ok(),
            "a valid event"
        );
    }

    #[test]
    fn seconds_knative_refs_and_each_kind_of_data() {
        let every_second = Schedule::parse(
            &json!({"schedule": "* * * * * *", "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}}),
            Some("tick"),
        )
        .unwrap();
        assert_eq!(every_second.broker, "default");
        assert_eq!(
            every_second.next_after(at("2026-12-03T08:00:00.300Z")),
            Some(at("2026-12-03T08:00:01Z"))
        );
        let event = every_second.event(at("2026-12-03T08:00:01Z"));
        assert!(event.data.is_none() && event.datacontenttype.is_none());
        let data = |fields: Value| {
            let mut value = json!({"schedule": "@hourly", "sink": {"broker": "b"}});
            value
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            let schedule = Schedule::parse(&value, Some("s")).unwrap();
            let event = schedule.event(at("2026-12-03T08:00:00Z"));
            (event.data.unwrap(), event.datacontenttype.unwrap())
        };
        assert_eq!(
            data(json!({"data": "{\"a\": 1}"})),
            (raw_json("{\"a\": 1}".into()), "application/json".into())
        );
        assert_eq!(
            data(json!({"data": "hello"})),
            (Data::Binary(b"hello".to_vec()), "text/plain".into())
        );
        assert_eq!(
            data(json!({"data": "{\"a\": 1}", "contentType": "text/plain"})),
            (Data::Binary(b"{\"a\": 1}".to_vec()), "text/plain".into())
        );
        assert_eq!(
            data(json!({"dataBase64": "AAE=", "contentType": "image/x-icon"})),
            (Data::Binary(vec![0, 1]), "image/x-icon".into())
        );
    }

    #[test]
    fn invalid_schedules_name_the_field() {
        let sink = json!({"broker": "b"});
        for (bad, field) in [
            (json!({"sink": sink}), "schedule"),
            (json!({"schedule": "every day", "sink": sink}), "schedule"),
            (json!({"schedule": "61 * * * *", "sink": sink}), "schedule"),
            (json!({"schedule": "0 0 30 2 *", "sink": sink}), "schedule"),
            (json!({"schedule": 5, "sink": sink}), "schedule"),
            (
                json!({"schedule": "* * * * *", "timezone": "Mars/Olympus", "sink": sink}),
                "timezone",
            ),
            (json!({"schedule": "* * * * *"}), "sink"),
            (
                json!({"schedule": "* * * * *", "sink": {"function": "Bad"}}),
                "sink",
            ),
            (
                json!({"schedule": "* * * * *", "sink": {"uri": "ftp://x"}}),
                "sink",
            ),
            (
                json!({"schedule": "* * * * *", "sink": {"ref": {"kind": "Channel", "name": "f"}}}),
                "sink.ref.kind",
            ),
            (
                json!({"schedule": "* * * * *", "sink": {"function": "f", "broker": "b"}}),
                "sink",
            ),
            (
                json!({"schedule": "* * * * *", "sink": {"broker": "Bad"}}),
                "sink",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "data": "a", "dataBase64": "YQ=="}),
                "data",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "dataBase64": "***"}),
                "dataBase64",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "data": "x".repeat(MAX_DATA_BYTES + 1)}),
                "data",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "contentType": "text/plain"}),
                "contentType",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "data": {"a": 1}, "contentType": "text/plain"}),
                "contentType",
            ),
            (
                json!({"schedule": "* * * * *", "sink": sink, "colour": 1}),
                "$",
            ),
            (
                json!({"name": "other", "schedule": "* * * * *", "sink": sink}),
                "name",
            ),
        ] {
            let error = Schedule::parse_new(&bad, Some("s")).unwrap_err();
            assert_eq!(error.path, field, "{bad}: {}", error.reason);
        }
        let never =
            Schedule::parse_new(&json!({"schedule": "0 0 30 2 *", "sink": sink}), Some("s"))
                .unwrap_err();
        assert!(never.reason.contains("never fires"), "{}", never.reason);
        // One that fired its last instant still loads from the store.
        let past = json!({"schedule": "0 0 0 1 1 * 2020", "sink": sink});
        assert!(Schedule::parse_new(&past, Some("s")).is_err());
        let stored = Schedule::parse(&past, Some("s")).unwrap();
        assert_eq!(stored.next_after(Timestamp::now()), None);
    }

    #[test]
    fn a_function_or_url_sink_has_a_broker_and_trigger_of_its_own() {
        for (sink, shown) in [
            (json!({"function": "f"}), json!({"function": "f"})),
            (
                json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "f"}}),
                json!({"function": "f"}),
            ),
            (json!({"uri": "http://x/y"}), json!({"uri": "http://x/y"})),
        ] {
            let parsed = Schedule::parse_new(
                &json!({"schedule": "* * * * *", "sink": sink}),
                Some("tick"),
            )
            .unwrap();
            assert_eq!(parsed.broker, "_schedule_tick");
            assert!(
                !sluice_store::is_dns_label(&parsed.broker),
                "no client's broker"
            );
            assert_eq!(parsed.to_json()["sink"], shown);
            let trigger = parsed.direct_trigger().expect("a trigger of its own");
            assert_eq!(
                (trigger.name.as_str(), trigger.broker.as_str()),
                ("_schedule_tick", "_schedule_tick")
            );
            assert!(trigger.filters.is_empty() && trigger.attributes.is_empty());
            let again = Schedule::parse(&parsed.to_json(), None).unwrap();
            assert_eq!(again, parsed, "stored and loaded the same");
        }
        let broker = Schedule::parse_new(
            &json!({"schedule": "* * * * *", "sink": {"broker": "b"}}),
            Some("t"),
        )
        .unwrap();
        assert!(broker.direct_trigger().is_none());
    }
}
