//! Trigger matching with 10,000 triggers: the index against the linear
//! reference. A realistic mix over 100 domains and 2,000 event types: 60 %
//! exact `type`, 25 % `type` + `source`, 10 % `type` prefixes (a domain),
//! 5 % `subject` suffixes. The event matches 5 triggers.
//!
//! The `cesql` group is the same mix with 30 % of the triggers written as
//! CESQL: exact type (and source) tests with a condition the index cannot
//! use (`subject LIKE`, `LENGTH`, `IN`), and prefix tests with arithmetic;
//! the 5 triggers the event matches are all CESQL ones.
//!
//! The `data` group is the `cesql` mix with the triggers of the event's
//! types testing a field of its JSON `data` as well (`DATA('$.order.status')
//! = 'paid'` in CESQL, `{"exact": {"$.order.status": "paid"}}` as a
//! dialect); each iteration matches a fresh event, so the one parse of its
//! `data` (about 150 bytes) is in the figure.
//!
//! `cargo bench -p sluice-router --bench matching`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sluice_router::event::CloudEvent;
use sluice_router::index::{TriggerIndex, linear_matches};
use sluice_router::trigger::Trigger;

const TRIGGERS: usize = 10_000;

fn triggers(cesql: bool, data: bool) -> Vec<Arc<Trigger>> {
    (0..TRIGGERS)
        .map(|i| {
            let name = format!("t{i}");
            let ty = format!("com.example.domain{}.event{}", i % 100, i % 2000);
            let definition = match i % 20 {
                5 if data => json!({"filters": [{"cesql": format!(
                    "type = '{ty}' AND DATA('$.order.status') = 'paid'"
                )}]}),
                6 | 7 if data => json!({"filters": [
                    {"exact": {"type": ty}}, {"exact": {"$.order.status": "paid"}}
                ]}),
                5..=7 if cesql => json!({"filters": [{"cesql": format!(
                    "type = '{ty}' AND (subject LIKE 'order.%' OR subject IN ('a', 'b'))"
                )}]}),
                15 | 16 if cesql => json!({"filters": [{"cesql": format!(
                    "type = '{ty}' AND source = '/svc/{}' AND LENGTH(subject) > 3",
                    i % 30
                )}]}),
                18 if cesql => json!({"filters": [{"cesql": format!(
                    "type LIKE 'com.example.domain{}.%' AND INT('7') * 2 = 14",
                    i % 100
                )}]}),
                0..=11 => json!({"filter": {"attributes": {"type": ty}}}),
                12..=16 => json!({"filter": {"attributes": {"type": ty, "source": format!("/svc/{}", i % 30)}}}),
                17 | 18 => json!({"filters": [{"prefix": {"type": format!("com.example.domain{}.", i % 100)}}]}),
                _ => json!({"filters": [{"suffix": {"subject": format!(".{}", i % 100)}}]}),
            };
            let mut definition = definition;
            definition["subscriber"] = json!({"function": "f"});
            Arc::new(Trigger::parse(&definition, Some(&name)).unwrap())
        })
        .collect()
}

fn event() -> CloudEvent {
    let value = json!({"specversion": "1.0", "id": "1", "source": "/svc/7", "type": "com.example.domain7.event1207", "subject": "order.42",
        "data": {"order": {"id": "o-42", "status": "paid", "total": 250, "items": [{"sku": "A-1", "n": 2}, {"sku": "B-7", "n": 1}]}}});
    CloudEvent::from_json(value.to_string().as_bytes()).unwrap()
}

fn matching(c: &mut Criterion) {
    for (group, cesql, data) in [
        ("match_10k_triggers", false, false),
        ("match_10k_triggers_cesql", true, false),
        ("match_10k_triggers_data", true, true),
    ] {
        let triggers = triggers(cesql, data);
        let index = TriggerIndex::build(triggers.clone());
        let event = event();
        let indexed = index.matches("default", &event).len();
        let linear = linear_matches(&triggers, "default", &event).len();
        assert_eq!(indexed, linear, "the index and the reference agree");
        println!("{group}: the event matches {indexed} of {TRIGGERS} triggers");
        let mut group = c.benchmark_group(group);
        // A fresh event each time: a parsed `data` is kept in the event.
        group.bench_function("indexed", |b| {
            b.iter_batched_ref(
                || event.clone(),
                |event| std::hint::black_box(index.matches("default", std::hint::black_box(event))),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function("linear", |b| {
            b.iter(|| {
                std::hint::black_box(linear_matches(
                    &triggers,
                    "default",
                    std::hint::black_box(&event),
                ))
            })
        });
        group.finish();
    }
}

criterion_group!(benches, matching);
criterion_main!(benches);
