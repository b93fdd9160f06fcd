//! The trigger index: which triggers an event matches, without visiting
//! every trigger.
//!
//! Each trigger is filed under the most selective key its filters imply,
//! looking only at conditions that must hold for it to match (the
//! `filter.attributes` map, and top-level or `all`-nested `exact`, `prefix`
//! and `suffix` filters, which are ANDed):
//! 1. exact `type` and exact `source`: looked up by (type, source);
//! 2. an exact value of any attribute (`type` first, then `source`, then the
//!    others): looked up by the event's value of that attribute;
//! 3. a prefix of an attribute: looked up by every prefix of the event's
//!    value (up to the longest indexed prefix);
//! 4. a suffix of an attribute: likewise, by every suffix;
//! 5. anything else (only `any`/`not` filters, or none): scanned.
//!
//! A trigger is filed once, so it is found at most once. Candidates are
//! then checked against the whole trigger, so the index only ever narrows;
//! [`linear_matches`] is the plain reference it must agree with (a property
//! test checks this). Lookups borrow the event's strings: matching does not
//! allocate except for the result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::event::CloudEvent;
use crate::filter::Filter;
use crate::trigger::Trigger;

/// Values of one attribute that some triggers need, by affix.
#[derive(Debug, Default)]
struct Affixes {
    by_value: HashMap<String, Vec<usize>>,
    /// Longest indexed affix, in bytes: longer ones need no lookup.
    longest: usize,
}

impl Affixes {
    fn insert(&mut self, value: String, trigger: usize) {
        self.longest = self.longest.max(value.len());
        self.by_value.entry(value).or_default().push(trigger);
    }
}

/// Triggers of one broker, indexed.
#[derive(Debug, Default)]
pub struct BrokerIndex {
    triggers: Vec<Arc<Trigger>>,
    /// type → source → triggers.
    by_type_source: HashMap<String, HashMap<String, Vec<usize>>>,
    /// attribute → value → triggers.
    exact: HashMap<String, HashMap<String, Vec<usize>>>,
    /// attribute → prefixes.
    prefix: HashMap<String, Affixes>,
    /// attribute → suffixes.
    suffix: HashMap<String, Affixes>,
    scan: Vec<usize>,
}

/// Every broker's index.
#[derive(Debug, Default)]
pub struct TriggerIndex {
    brokers: HashMap<String, BrokerIndex>,
}

enum Key {
    TypeSource(String, String),
    Exact(String, String),
    Prefix(String, String),
    Suffix(String, String),
    Scan,
}

/// Conditions that must hold for a trigger to match.
#[derive(Default)]
struct Required {
    exact: BTreeMap<String, String>,
    prefix: BTreeMap<String, String>,
    suffix: BTreeMap<String, String>,
}

impl Required {
    fn collect(&mut self, filters: &[Filter]) {
        for filter in filters {
            match filter {
                Filter::Exact(name, value) => {
                    self.exact
                        .entry(name.clone())
                        .or_insert_with(|| value.clone());
                }
                // The longest required affix is the most selective.
                Filter::Prefix(name, value) => keep_longest(&mut self.prefix, name, value),
                Filter::Suffix(name, value) => keep_longest(&mut self.suffix, name, value),
                Filter::All(nested) => self.collect(nested),
                // What the expression cannot match without.
                Filter::Cesql(expression) => self.collect(&expression.implied()),
                Filter::Any(_) | Filter::Not(_) | Filter::Data(..) => {}
            }
        }
    }
}

fn keep_longest(map: &mut BTreeMap<String, String>, name: &str, value: &str) {
    if map.get(name).is_none_or(|old| old.len() < value.len()) {
        map.insert(name.to_string(), value.to_string());
    }
}

/// Attribute preference for exact keys: the ones events most often differ in.
fn preference(name: &str) -> u8 {
    match name {
        "type" => 0,
        "source" => 1,
        "subject" => 2,
        "id" => 4,
        _ => 3,
    }
}

fn key(trigger: &Trigger) -> Key {
    let mut required = Required::default();
    required.exact.extend(
        trigger
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    required.collect(&trigger.filters);
    if let (Some(ty), Some(source)) = (required.exact.get("type"), required.exact.get("source")) {
        return Key::TypeSource(ty.clone(), source.clone());
    }
    if let Some((name, value)) = required
        .exact
        .iter()
        .min_by_key(|(name, _)| preference(name))
    {
        return Key::Exact(name.clone(), value.clone());
    }
    if let Some((name, value)) = required.prefix.iter().max_by_key(|(_, v)| v.len()) {
        return Key::Prefix(name.clone(), value.clone());
    }
    if let Some((name, value)) = required.suffix.iter().max_by_key(|(_, v)| v.len()) {
        return Key::Suffix(name.clone(), value.clone());
    }
    Key::Scan
}

impl BrokerIndex {
    fn build(triggers: Vec<Arc<Trigger>>) -> BrokerIndex {
        let mut index = BrokerIndex::default();
        for (i, trigger) in triggers.iter().enumerate() {
            match key(trigger) {
                Key::TypeSource(ty, source) => index
                    .by_type_source
                    .entry(ty)
                    .or_default()
                    .entry(source)
                    .or_default()
                    .push(i),
                Key::Exact(name, value) => index
                    .exact
                    .entry(name)
                    .or_default()
                    .entry(value)
                    .or_default()
                    .push(i),
                Key::Prefix(name, value) => index.prefix.entry(name).or_default().insert(value, i),
                Key::Suffix(name, value) => index.suffix.entry(name).or_default().insert(value, i),
                Key::Scan => index.scan.push(i),
            }
        }
        index.triggers = triggers;
        index
    }

    /// Calls `found` with every trigger `event` matches, each once.
    pub fn for_each_match(&self, event: &CloudEvent, mut found: impl FnMut(&Arc<Trigger>)) {
        let mut check = |candidates: &[usize]| {
            for &i in candidates {
                let trigger = &self.triggers[i];
                if trigger.matches(event) {
                    found(trigger);
                }
            }
        };
        if let Some(candidates) = self
            .by_type_source
            .get(event.ty.as_str())
            .and_then(|sources| sources.get(event.source.as_str()))
        {
            check(candidates);
        }
        for (name, values) in &self.exact {
            if let Some(candidates) = event.attribute(name).and_then(|value| values.get(value)) {
                check(candidates);
            }
        }
        for (name, affixes) in &self.prefix {
            let Some(value) = event.attribute(name) else {
                continue;
            };
            for (end, _) in value
                .char_indices()
                .skip(1)
                .chain(std::iter::once((value.len(), ' ')))
            {
                if end > affixes.longest {
                    break;
                }
                if let Some(candidates) = affixes.by_value.get(&value[..end]) {
                    check(candidates);
                }
            }
        }
        for (name, affixes) in &self.suffix {
            let Some(value) = event.attribute(name) else {
                continue;
            };
            for (start, _) in value.char_indices().rev() {
                if value.len() - start > affixes.longest {
                    break;
                }
                if let Some(candidates) = affixes.by_value.get(&value[start..]) {
                    check(candidates);
                }
            }
        }
        check(&self.scan);
    }

    /// Number of triggers.
    pub fn len(&self) -> usize {
        self.triggers.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }
}

impl TriggerIndex {
    /// Indexes `triggers` by broker.
    pub fn build(triggers: impl IntoIterator<Item = Arc<Trigger>>) -> TriggerIndex {
        let mut by_broker: HashMap<String, Vec<Arc<Trigger>>> = HashMap::new();
        for trigger in triggers {
            by_broker
                .entry(trigger.broker.clone())
                .or_default()
                .push(trigger);
        }
        TriggerIndex {
            brokers: by_broker
                .into_iter()
                .map(|(broker, triggers)| (broker, BrokerIndex::build(triggers)))
                .collect(),
        }
    }

    /// The triggers of `broker` that `event` matches.
    pub fn matches(&self, broker: &str, event: &CloudEvent) -> Vec<Arc<Trigger>> {
        let mut out = Vec::new();
        if let Some(index) = self.brokers.get(broker) {
            index.for_each_match(event, |trigger| out.push(trigger.clone()));
        }
        out
    }

    /// The index of one broker.
    pub fn broker(&self, broker: &str) -> Option<&BrokerIndex> {
        self.brokers.get(broker)
    }

    /// Whether any trigger is on `broker`.
    pub fn has_broker(&self, broker: &str) -> bool {
        self.brokers.contains_key(broker)
    }
}

/// The reference matcher: every trigger of `broker`, checked one by one.
pub fn linear_matches<'a>(
    triggers: &'a [Arc<Trigger>],
    broker: &str,
    event: &CloudEvent,
) -> Vec<&'a Arc<Trigger>> {
    triggers
        .iter()
        .filter(|t| t.broker == broker && t.matches(event))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::filter::Affix;

    const TYPES: [&str; 5] = [
        "com.example.order.created",
        "com.example.order.paid",
        "com.other.x",
        "a",
        "a.b",
    ];
    const SOURCES: [&str; 3] = ["/payments", "/orders", "payment-service"];
    const SUBJECTS: [&str; 3] = ["s1", "s2", "s3"];

    fn event(ty: &str, source: &str, subject: Option<&str>) -> CloudEvent {
        with_data(ty, source, subject, 0)
    }

    /// Payloads the property test posts: none, two JSON ones, and one that
    /// is not JSON.
    const DATA: usize = 4;

    fn with_data(ty: &str, source: &str, subject: Option<&str>, data: usize) -> CloudEvent {
        let mut v = json!({"specversion": "1.0", "id": "1", "source": source, "type": ty});
        if let Some(s) = subject {
            v["subject"] = json!(s);
        }
        match data {
            1 => v["data"] = json!({"a": "x", "b": {"c": ["p", "q"]}}),
            2 => v["data"] = json!({"a": 42, "b": {"c": [true]}}),
            3 => {
                v["data"] = json!("a");
                v["datacontenttype"] = json!("text/plain");
            }
            _ => {}
        }
        CloudEvent::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn data_condition() -> impl Strategy<Value = Filter> {
        (
            prop_oneof![Just(Affix::Exact), Just(Affix::Prefix), Just(Affix::Suffix)],
            prop::sample::select(vec!["$.a", "$.b.c[0]", "$.b.c[1]", "$.b.c[5]", "$.missing"]),
            prop::sample::select(vec!["x", "42", "4", "q", "true", "p"]),
        )
            .prop_map(|(affix, path, value)| {
                Filter::Data(
                    affix,
                    crate::data::DataPath::parse(path).unwrap(),
                    value.into(),
                )
            })
    }

    fn attr() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("type"), Just("source"), Just("subject"), Just("id")]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(TYPES.to_vec()).prop_map(String::from),
            prop::sample::select(SOURCES.to_vec()).prop_map(String::from),
            prop::sample::select(SUBJECTS.to_vec()).prop_map(String::from),
            Just("com.example.".to_string()),
            Just("com.".to_string()),
            Just(".created".to_string()),
            Just("1".to_string()),
        ]
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let leaf = prop_oneof![
            (attr(), value()).prop_map(|(a, v)| Filter::Exact(a.into(), v)),
            (attr(), value()).prop_map(|(a, v)| Filter::Prefix(a.into(), v)),
            (attr(), value()).prop_map(|(a, v)| Filter::Suffix(a.into(), v)),
            data_condition(),
        ];
        let tree = leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(Filter::All),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Filter::Any),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        });
        // The same trees as CESQL expressions too, which the index narrows
        // by their top-level AND chain.
        prop_oneof![
            2 => tree.clone(),
            1 => tree.prop_map(|f| Filter::Cesql(Arc::new(crate::cesql::parse(&cesql_of(&f)).unwrap()))),
        ]
    }

    /// `filter` written in CESQL.
    fn cesql_of(filter: &Filter) -> String {
        let quoted = |v: &str| format!("'{}'", v.replace('\'', "\\'"));
        let like = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        };
        match filter {
            Filter::Exact(a, v) => format!("{a} = {}", quoted(v)),
            Filter::Prefix(a, v) => format!("{a} LIKE {}", quoted(&format!("{}%", like(v)))),
            Filter::Suffix(a, v) => format!("{a} LIKE {}", quoted(&format!("%{}", like(v)))),
            Filter::All(fs) => format!(
                "({})",
                fs.iter().map(cesql_of).collect::<Vec<_>>().join(" AND ")
            ),
            Filter::Any(fs) => format!(
                "({})",
                fs.iter().map(cesql_of).collect::<Vec<_>>().join(" OR ")
            ),
            Filter::Not(f) => format!("NOT ({})", cesql_of(f)),
            Filter::Cesql(e) => format!("({})", e.text()),
            Filter::Data(affix, path, v) => {
                let data = format!("DATA({})", quoted(path.text()));
                match affix {
                    Affix::Exact => format!("{data} = {}", quoted(v)),
                    Affix::Prefix => format!("{data} LIKE {}", quoted(&format!("{}%", like(v)))),
                    Affix::Suffix => format!("{data} LIKE {}", quoted(&format!("%{}", like(v)))),
                }
            }
        }
    }

    fn trigger() -> impl Strategy<Value = Trigger> {
        (
            prop::collection::btree_map(attr().prop_map(String::from), value(), 0..3),
            prop::collection::vec(filter(), 0..3),
            prop_oneof![Just("default"), Just("other")],
        )
            .prop_map(|(attributes, filters, broker)| Trigger {
                name: String::new(),
                broker: broker.to_string(),
                attributes,
                filters,
                subscriber: crate::trigger::Destination::Function("f".into()),
                delivery: Default::default(),
                own_delivery: true,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn indexed_matching_equals_linear_matching(
            triggers in prop::collection::vec(trigger(), 0..40),
            events in prop::collection::vec(
                (prop::sample::select(TYPES.to_vec()), prop::sample::select(SOURCES.to_vec()),
                 prop::option::of(prop::sample::select(SUBJECTS.to_vec())), 0..DATA),
                1..20),
        ) {
            let triggers: Vec<Arc<Trigger>> = triggers
                .into_iter()
                .enumerate()
                .map(|(i, mut t)| { t.name = format!("t{i}"); Arc::new(t) })
                .collect();
            let index = TriggerIndex::build(triggers.clone());
            for (ty, source, subject, data) in events {
                let e = with_data(ty, source, subject, data);
                for broker in ["default", "other", "none"] {
                    let indexed: BTreeSet<String> = index.matches(broker, &e).iter().map(|t| t.name.clone()).collect();
                    let linear: BTreeSet<String> = linear_matches(&triggers, broker, &e).iter().map(|t| t.name.clone()).collect();
                    prop_assert_eq!(&indexed, &linear);
                    // No trigger is reported twice.
                    prop_assert_eq!(index.matches(broker, &e).len(), linear.len());
                }
                // Explain's reasons agree with matching: a reason exactly
                // for the triggers the event does not pass.
                for t in &triggers {
                    let reason = t.why_not(&e);
                    prop_assert_eq!(reason.is_none(), t.matches(&e), "{:?}", reason);
                }
            }
        }
    }

    #[test]
    fn data_is_parsed_only_for_an_event_a_data_trigger_could_match() {
        let trigger = Trigger::parse(
            &json!({"filters": [{"exact": {"type": "a"}}, {"exact": {"$.a": "x"}}], "subscriber": {"function": "f"}}),
            Some("d"),
        )
        .unwrap();
        let index = TriggerIndex::build(vec![Arc::new(trigger)]);
        let other = with_data("a.b", "/payments", None, 1);
        assert!(index.matches("default", &other).is_empty());
        assert!(
            other.parsed_data.0.get().is_none(),
            "ruled out by type: not parsed"
        );
        let candidate = with_data("a", "/payments", None, 1);
        assert_eq!(index.matches("default", &candidate).len(), 1);
        assert!(candidate.parsed_data.0.get().is_some());
    }

    #[test]
    fn n_matching_triggers_give_n_matches_and_others_none() {
        let make = |name: &str, value: serde_json::Value| {
            Arc::new(Trigger::parse(&value, Some(name)).unwrap())
        };
        let triggers = vec![
            make(
                "a",
                json!({"filter": {"attributes": {"type": "com.example.order.created"}}, "subscriber": {"function": "f"}}),
            ),
            make(
                "b",
                json!({"filters": [{"prefix": {"type": "com.example."}}], "subscriber": {"function": "f"}}),
            ),
            make("c", json!({"subscriber": {"function": "f"}})),
            make(
                "d",
                json!({"filter": {"attributes": {"type": "other"}}, "subscriber": {"function": "f"}}),
            ),
            make(
                "e",
                json!({"broker": "b2", "subscriber": {"function": "f"}}),
            ),
        ];
        let index = TriggerIndex::build(triggers);
        let names = |e: &CloudEvent| {
            index
                .matches("default", e)
                .iter()
                .map(|t| t.name.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            names(&event("com.example.order.created", "/s", None)),
            ["a", "b", "c"].map(String::from).into()
        );
        assert_eq!(
            names(&event("nothing", "/s", None)),
            ["c"].map(String::from).into()
        );
        assert_eq!(index.matches("b2", &event("x", "/s", None)).len(), 1);
        assert!(index.matches("unknown", &event("x", "/s", None)).is_empty());
    }
}
