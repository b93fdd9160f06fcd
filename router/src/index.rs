//! The trigger index: which triggers an event matches, without visiting
//! every trigger.
//!
//! Each trigger is filed under the most selective key its filters imply,
//! looking only at conditions that must hold for it to match (the
//! `filter.attributes` map, and top-level or `all`-nested `exact`/`prefix`
//! filters, which are ANDed):
//! 1. exact `type` and exact `source`: looked up by (type, source);
//! 2. exact `type`: looked up by type;
//! 3. a `type` prefix: looked up by every prefix of the event's type;
//! 4. anything else: scanned.
//!
//! Candidates are then checked against the whole trigger, so the index only
//! ever narrows; [`linear_matches`] is the plain reference it must agree
//! with (a property test checks this).

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::CloudEvent;
use crate::filter::Filter;
use crate::trigger::Trigger;

/// Triggers of one broker, indexed.
#[derive(Debug, Default)]
pub struct BrokerIndex {
    triggers: Vec<Arc<Trigger>>,
    by_type_source: HashMap<(String, String), Vec<usize>>,
    by_type: HashMap<String, Vec<usize>>,
    by_type_prefix: HashMap<String, Vec<usize>>,
    /// Longest indexed type prefix, in bytes: no event type prefix longer
    /// than this needs a lookup.
    longest_prefix: usize,
    scan: Vec<usize>,
}

/// Every broker's index.
#[derive(Debug, Default)]
pub struct TriggerIndex {
    brokers: HashMap<String, BrokerIndex>,
}

enum Key {
    TypeSource(String, String),
    Type(String),
    TypePrefix(String),
    Scan,
}

/// Collects the exact and prefix conditions on `type` and `source` that must
/// hold for `filters` to match.
fn required(filters: &[Filter], exact: &mut HashMap<String, String>, prefix: &mut Option<String>) {
    for filter in filters {
        match filter {
            Filter::Exact(name, value) if name == "type" || name == "source" => {
                exact.entry(name.clone()).or_insert_with(|| value.clone());
            }
            // The longest required prefix is the most selective.
            Filter::Prefix(name, value)
                if name == "type" && prefix.as_ref().is_none_or(|p| p.len() < value.len()) =>
            {
                *prefix = Some(value.clone());
            }
            Filter::All(nested) => required(nested, exact, prefix),
            _ => {}
        }
    }
}

fn key(trigger: &Trigger) -> Key {
    let mut exact: HashMap<String, String> = HashMap::new();
    for name in ["type", "source"] {
        if let Some(value) = trigger.attributes.get(name) {
            exact.insert(name.to_string(), value.clone());
        }
    }
    let mut prefix = None;
    required(&trigger.filters, &mut exact, &mut prefix);
    match (exact.remove("type"), exact.remove("source"), prefix) {
        (Some(ty), Some(source), _) => Key::TypeSource(ty, source),
        (Some(ty), None, _) => Key::Type(ty),
        (None, _, Some(prefix)) => Key::TypePrefix(prefix),
        (None, _, None) => Key::Scan,
    }
}

impl BrokerIndex {
    fn build(triggers: Vec<Arc<Trigger>>) -> BrokerIndex {
        let mut index = BrokerIndex::default();
        for (i, trigger) in triggers.iter().enumerate() {
            match key(trigger) {
                Key::TypeSource(ty, source) => index
                    .by_type_source
                    .entry((ty, source))
                    .or_default()
                    .push(i),
                Key::Type(ty) => index.by_type.entry(ty).or_default().push(i),
                Key::TypePrefix(prefix) => {
                    index.longest_prefix = index.longest_prefix.max(prefix.len());
                    index.by_type_prefix.entry(prefix).or_default().push(i);
                }
                Key::Scan => index.scan.push(i),
            }
        }
        index.triggers = triggers;
        index
    }

    /// Calls `found` with every trigger `event` matches, in index order.
    pub fn for_each_match(&self, event: &CloudEvent, mut found: impl FnMut(&Arc<Trigger>)) {
        let mut check = |candidates: &[usize]| {
            for &i in candidates {
                let trigger = &self.triggers[i];
                if trigger.matches(event) {
                    found(trigger);
                }
            }
        };
        if !self.by_type_source.is_empty()
            && let Some(candidates) = self
                .by_type_source
                .get(&(event.ty.clone(), event.source.clone()))
        {
            check(candidates);
        }
        if let Some(candidates) = self.by_type.get(event.ty.as_str()) {
            check(candidates);
        }
        if !self.by_type_prefix.is_empty() {
            let ty = event.ty.as_str();
            for (end, _) in ty
                .char_indices()
                .skip(1)
                .chain(std::iter::once((ty.len(), ' ')))
            {
                if end > self.longest_prefix {
                    break;
                }
                if let Some(candidates) = self.by_type_prefix.get(&ty[..end]) {
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
        let mut v = json!({"specversion": "1.0", "id": "1", "source": source, "type": ty});
        if let Some(s) = subject {
            v["subject"] = json!(s);
        }
        CloudEvent::from_json(v.to_string().as_bytes()).unwrap()
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
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(Filter::All),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Filter::Any),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        })
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
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn indexed_matching_equals_linear_matching(
            triggers in prop::collection::vec(trigger(), 0..40),
            events in prop::collection::vec(
                (prop::sample::select(TYPES.to_vec()), prop::sample::select(SOURCES.to_vec()),
                 prop::option::of(prop::sample::select(SUBJECTS.to_vec()))),
                1..20),
        ) {
            let triggers: Vec<Arc<Trigger>> = triggers
                .into_iter()
                .enumerate()
                .map(|(i, mut t)| { t.name = format!("t{i}"); Arc::new(t) })
                .collect();
            let index = TriggerIndex::build(triggers.clone());
            for (ty, source, subject) in events {
                let e = event(ty, source, subject);
                for broker in ["default", "other", "none"] {
                    let indexed: BTreeSet<String> = index.matches(broker, &e).iter().map(|t| t.name.clone()).collect();
                    let linear: BTreeSet<String> = linear_matches(&triggers, broker, &e).iter().map(|t| t.name.clone()).collect();
                    prop_assert_eq!(&indexed, &linear);
                    // No trigger is reported twice.
                    prop_assert_eq!(index.matches(broker, &e).len(), linear.len());
                }
            }
        }
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
