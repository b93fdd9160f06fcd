//! The dispatcher against a fake invoker, with tokio time paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use serde_json::json;

use super::*;

/// Records every attempt; fails the first `fail_first` attempts of each event.
#[derive(Default)]
struct Fake {
    fail_first: AtomicU32,
    permanent: bool,
    reply_type: Option<String>,
    delay: Option<Duration>,
    /// When set, each delivery waits for a permit of it (the test decides
    /// when deliveries end, whatever the paused clock does).
    gate: Option<Arc<Semaphore>>,
    calls: Mutex<Vec<(String, String, u32, tokio::time::Instant)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Invoker for Fake {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        event: &'a Arc<CloudEvent>,
        context: DeliveryContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let name = match destination {
                Destination::Function(f) => f.clone(),
                Destination::Uri(u) => u.clone(),
            };
            self.calls.lock().unwrap().push((
                name.clone(),
                event.id.clone(),
                context.attempt,
                tokio::time::Instant::now(),
            ));
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            if name == "dlq" || context.attempt > self.fail_first.load(Ordering::SeqCst) {
                let replies = match &self.reply_type {
                    Some(ty) => vec![event_of(ty, &format!("{}-r", event.id))],
                    None => Vec::new(),
                };
                return Outcome::Delivered(replies);
            }
            Outcome::Failed {
                retryable: !self.permanent,
                code: Some(if self.permanent { 400 } else { 503 }),
                reason: format!("attempt {} failed", context.attempt),
            }
        })
    }

    fn check(&self, _destination: &Destination) -> Result<(), String> {
        Ok(())
    }
}

fn event_of(ty: &str, id: &str) -> CloudEvent {
    CloudEvent::from_json(
        json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

fn trigger(name: &str, ty: &str, subscriber: &str, delivery: serde_json::Value) -> Trigger {
    Trigger::parse(
        &json!({"name": name, "filter": {"attributes": {"type": ty}}, "subscriber": {"function": subscriber}, "delivery": delivery}),
        None,
    )
    .unwrap()
}

struct Setup {
    router: Arc<Router>,
    fake: Arc<Fake>,
    registry: Registry,
    _dir: tempfile::TempDir,
    runner: tokio::task::JoinHandle<()>,
}

async fn setup(fake: Fake, limits: DispatchLimits, triggers: Vec<Trigger>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(fake);
    let registry = Registry::new();
    let router = Router::new(store, fake.clone(), limits, &registry).unwrap();
    for t in triggers {
        router.put_trigger(t).await.unwrap();
    }
    let runner = tokio::spawn(router.clone().run());
    Setup {
        router,
        fake,
        registry,
        _dir: dir,
        runner,
    }
}

/// Waits until no delivery is pending or queued.
///
/// The deadline is wall-clock time: tokio's paused clock jumps ahead whenever
/// the runtime idles, which it does while the journal's own thread syncs, so a
/// bound counted in (virtual) sleeps can run out before a slow disk has
/// finished one `fdatasync`.
async fn settle(router: &Router) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if router.store.delivery_count() == 0 && router.queue.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Let the journal thread run without the loop spinning a core.
        std::thread::sleep(Duration::from_micros(100));
    }
    panic!("deliveries did not settle");
}

/// The `trigger` label of every series in `registry`.
fn trigger_labels(registry: &Registry) -> Vec<String> {
    registry
        .gather()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .flat_map(|metric| metric.get_label().iter())
        .filter(|label| label.name() == "trigger")
        .map(|label| label.value().to_string())
        .collect()
}

fn attempts_of(fake: &Fake, destination: &str) -> Vec<(u32, tokio::time::Instant)> {
    fake.calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == destination)
        .map(|c| (c.2, c.3))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn n_matching_triggers_get_exactly_n_deliveries_and_others_none() {
    let triggers = vec![
        trigger("t1", "order.created", "a", json!({})),
        trigger("t2", "order.created", "b", json!({})),
        trigger("t3", "order.created", "c", json!({})),
        trigger("t4", "order.paid", "d", json!({})),
    ];
    let s = setup(Fake::default(), DispatchLimits::default(), triggers).await;
    s.router
        .publish("default", vec![event_of("order.created", "e1")])
        .await
        .unwrap();
    s.router
        .publish("default", vec![event_of("nothing.matches", "e2")])
        .await
        .unwrap();
    s.router
        .publish("other-broker", vec![event_of("order.created", "e3")])
        .await
        .unwrap();
    settle(&s.router).await;
    let mut got: Vec<_> = s
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.0.clone(), c.1.clone()))
        .collect();
    got.sort();
    let want: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|d| (d.to_string(), "e1".to_string()))
        .collect();
    assert_eq!(got, want);
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn k_failures_within_r_retries_give_k_plus_1_attempts_with_exponential_backoff() {
    let fake = Fake {
        fail_first: AtomicU32::new(3),
        ..Fake::default()
    };
    let t = trigger(
        "t",
        "x",
        "f",
        json!({"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}),
    );
    let s = setup(fake, DispatchLimits::default(), vec![t]).await;
    s.router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    settle(&s.router).await;
    let attempts = attempts_of(&s.fake, "f");
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // Knative: retry n waits backoffDelay * 2^n.
    for (n, pair) in attempts.windows(2).enumerate() {
        let waited = pair[1].1 - pair[0].1;
        let expected = Duration::from_millis(200 * 2u64.pow(n as u32 + 1));
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(50),
            "retry {}: waited {waited:?}, expected {expected:?}",
            n + 1
        );
    }
    assert!(s.router.store.dead_letters().unwrap().is_empty());
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_grows_linearly() {
    let fake = Fake {
        fail_first: AtomicU32::new(3),
        ..Fake::default()
    };
    let t = trigger(
        "t",
        "x",
        "f",
        json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT1S"}),
    );
    let s = setup(fake, DispatchLimits::default(), vec![t]).await;
    s.router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    settle(&s.router).await;
    let attempts = attempts_of(&s.fake, "f");
    assert_eq!(attempts.len(), 4);
    for (n, pair) in attempts.windows(2).enumerate() {
        let waited = pair[1].1 - pair[0].1;
        let expected = Duration::from_secs(n as u64 + 1);
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(50),
            "retry {}: {waited:?}",
            n + 1
        );
    }
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn more_failures_than_retries_give_r_plus_1_attempts_and_one_dead_letter_sent_to_the_sink() {
    let fake = Fake {
        fail_first: AtomicU32::new(10),
        ..Fake::default()
    };
    let t = trigger(
        "t",
        "x",
        "f",
        json!({"retry": 2, "backoffDelay": "PT0.1S", "deadLetterSink": {"function": "dlq"}}),
    );
    let s = setup(fake, DispatchLimits::default(), vec![t]).await;
    s.router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    settle(&s.router).await;
    assert_eq!(attempts_of(&s.fake, "f").len(), 3, "R+1 attempts");
    assert_eq!(
        attempts_of(&s.fake, "dlq").len(),
        1,
        "the sink gets the dead letter once"
    );
    let letters = s.router.store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    let event = CloudEvent::from_json(letters[0].event.as_bytes()).unwrap();
    assert_eq!(event.extensions["knativeerrordest"], "f");
    assert_eq!(event.extensions["knativeerrorcode"], "503");
    assert_eq!(event.extensions["knativeerrordata"], "attempt 3 failed");

    // The subscriber recovers; a replay redelivers the original event.
    s.fake.fail_first.store(0, Ordering::SeqCst);
    assert!(s.router.replay(letters[0].id).await.unwrap());
    assert!(
        !s.router.replay(letters[0].id).await.unwrap(),
        "a dead letter replays once"
    );
    settle(&s.router).await;
    assert!(s.router.store.dead_letters().unwrap().is_empty());
    assert_eq!(
        attempts_of(&s.fake, "f").len(),
        4,
        "one successful attempt from the replay"
    );
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_skip_retries() {
    let fake = Fake {
        fail_first: AtomicU32::new(10),
        permanent: true,
        ..Fake::default()
    };
    let s = setup(
        fake,
        DispatchLimits::default(),
        vec![trigger("t", "x", "f", json!({"retry": 5}))],
    )
    .await;
    s.router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    settle(&s.router).await;
    assert_eq!(attempts_of(&s.fake, "f").len(), 1);
    let letters = s.router.store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].event.contains("\"knativeerrorcode\":\"400\""),
        "{}",
        letters[0].event
    );
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn replies_re_enter_the_broker_and_loops_stop_at_the_hop_limit() {
    let fake = Fake {
        reply_type: Some("loop".into()),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_hops: 5,
        ..DispatchLimits::default()
    };
    let s = setup(fake, limits, vec![trigger("t", "loop", "f", json!({}))]).await;
    s.router
        .publish("default", vec![event_of("loop", "e")])
        .await
        .unwrap();
    settle(&s.router).await;
    // Hops 0..=5 are delivered; the reply at hop 6 is dropped.
    let calls = s.fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert_eq!(calls[1].1, "e-r", "a reply is a new event");
    assert_eq!(
        s.router
            .metrics
            .dropped
            .with_label_values(&["default", "hop_limit"])
            .get(),
        1
    );
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_trigger_holds_events_in_the_queue_without_burning_retries() {
    let fake = Fake {
        delay: Some(Duration::from_millis(100)),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_in_flight_per_trigger: 2,
        ..DispatchLimits::default()
    };
    let s = setup(
        fake,
        limits,
        vec![trigger("t", "x", "f", json!({"retry": 0}))],
    )
    .await;
    let events = (0..10).map(|i| event_of("x", &format!("e{i}"))).collect();
    s.router.publish("default", events).await.unwrap();
    settle(&s.router).await;
    assert_eq!(s.fake.max_running.load(Ordering::SeqCst), 2);
    let attempts = attempts_of(&s.fake, "f");
    assert_eq!(attempts.len(), 10);
    assert!(
        attempts.iter().all(|a| a.0 == 1),
        "no attempt was used up waiting"
    );
    assert!(s.router.store.dead_letters().unwrap().is_empty());
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn pending_deliveries_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let router = Router::new(
            store,
            Arc::new(Fake::default()),
            DispatchLimits::default(),
            &Registry::new(),
        )
        .unwrap();
        router
            .put_trigger(trigger("t", "x", "f", json!({})))
            .await
            .unwrap();
        // Accepted, never run: the process dies here, losing what a crash
        // loses (the journal writes nothing more, syncs nothing more).
        router
            .publish("default", vec![event_of("x", "e1"), event_of("x", "e2")])
            .await
            .unwrap();
        router.store().clone().crash();
    }
    let mut store = Store::open(dir.path());
    while store.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        store = Store::open(dir.path());
    }
    let fake = Arc::new(Fake::default());
    let router = Router::new(
        store.unwrap(),
        fake.clone(),
        DispatchLimits::default(),
        &Registry::new(),
    )
    .unwrap();
    let runner = tokio::spawn(router.clone().run());
    settle(&router).await;
    let mut ids: Vec<_> = fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.1.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["e1", "e2"]);
    runner.abort();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_triggers_pending_deliveries_are_dead_lettered_and_its_series_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    let registry = Registry::new();
    let router = Router::new(store, fake.clone(), DispatchLimits::default(), &registry).unwrap();
    router
        .put_trigger(trigger("gone", "x", "f", json!({})))
        .await
        .unwrap();
    router
        .put_trigger(trigger("kept", "x", "g", json!({})))
        .await
        .unwrap();
    // Accepted before the delete, not yet run.
    router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    assert!(router.delete_trigger("gone").await.unwrap());
    let runner = tokio::spawn(router.clone().run());
    settle(&router).await;
    assert!(attempts_of(&fake, "f").is_empty(), "nothing runs for it");
    assert_eq!(attempts_of(&fake, "g").len(), 1);
    let letters = router.store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].trigger, "gone");
    assert!(
        letters[0].reason.contains("deleted"),
        "{}",
        letters[0].reason
    );
    let labels = trigger_labels(&registry);
    assert!(labels.iter().all(|l| l != "gone"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "kept"), "{labels:?}");
    runner.abort();
}

#[tokio::test(start_paused = true)]
async fn a_delivery_running_while_its_trigger_is_deleted_recreates_no_series() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let s = setup(
        fake,
        DispatchLimits::default(),
        vec![trigger("gone", "x", "f", json!({}))],
    )
    .await;
    let (router, fake) = (&s.router, &s.fake);
    router
        .publish("default", vec![event_of("x", "e")])
        .await
        .unwrap();
    // Wait (wall clock: the journal syncs on its own thread) until the
    // delivery is running inside the fake, then delete its trigger.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fake.running.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(router.delete_trigger("gone").await.unwrap());
    gate.add_permits(1);
    settle(router).await;
    assert_eq!(attempts_of(fake, "f").len(), 1, "it ran to its end");
    assert_eq!(fake.running.load(Ordering::SeqCst), 0);
    let labels = trigger_labels(&s.registry);
    assert!(labels.iter().all(|l| l != "gone"), "{labels:?}");
    assert_eq!(router.trigger_stats("gone"), TriggerStats::default());
    s.runner.abort();
}

/// Waits (wall clock: the journal syncs on its own thread) until `ready`.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn gauge(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .map_or(0.0, |family| family.get_metric()[0].get_gauge().get_value())
}

#[tokio::test(start_paused = true)]
async fn deliveries_at_their_triggers_limit_are_parked_not_polled() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_in_flight_per_trigger: 1,
        ..DispatchLimits::default()
    };
    let s = setup(fake, limits, vec![trigger("t", "x", "f", json!({}))]).await;
    let events = (0..10).map(|i| event_of("x", &format!("e{i}"))).collect();
    s.router.publish("default", events).await.unwrap();
    until("one running, nine parked", || {
        s.fake.running.load(Ordering::SeqCst) == 1
            && gauge(&s.registry, "sluice_deliveries_parked") == 9.0
    })
    .await;
    // A long wait at the limit: nothing is looked at again meanwhile (the
    // parked deliveries are not in the queue, so nothing wakes for them).
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        s.router.queue.lock().unwrap().is_empty(),
        "parked deliveries were re-queued"
    );
    assert_eq!(attempts_of(&s.fake, "f").len(), 1);
    // Each end lets the next one go.
    gate.add_permits(10);
    settle(&s.router).await;
    let attempts = attempts_of(&s.fake, "f");
    assert_eq!(attempts.len(), 10);
    assert!(
        attempts.iter().all(|a| a.0 == 1),
        "no attempt was used up waiting"
    );
    assert_eq!(s.fake.max_running.load(Ordering::SeqCst), 1);
    assert_eq!(gauge(&s.registry, "sluice_deliveries_parked"), 0.0);
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_triggers_parked_deliveries_are_dead_lettered() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_in_flight_per_trigger: 1,
        ..DispatchLimits::default()
    };
    let s = setup(fake, limits, vec![trigger("t", "x", "f", json!({}))]).await;
    let events = (0..3).map(|i| event_of("x", &format!("e{i}"))).collect();
    s.router.publish("default", events).await.unwrap();
    until("one running, two parked", || {
        gauge(&s.registry, "sluice_deliveries_parked") == 2.0
    })
    .await;
    assert!(s.router.delete_trigger("t").await.unwrap());
    gate.add_permits(1);
    settle(&s.router).await;
    assert_eq!(
        attempts_of(&s.fake, "f").len(),
        1,
        "only the running one ran"
    );
    let letters = s.router.store.dead_letters().unwrap();
    assert_eq!(letters.len(), 2, "the parked ones were dead-lettered");
    assert_eq!(gauge(&s.registry, "sluice_deliveries_parked"), 0.0);
    s.runner.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_that_cannot_be_stored_stays_pending_and_is_stored_later() {
    let fake = Fake {
        permanent: true,
        fail_first: AtomicU32::new(u32::MAX),
        ..Fake::default()
    };
    let s = setup(
        fake,
        DispatchLimits::default(),
        vec![trigger("t", "x", "f", json!({"retry": 0}))],
    )
    .await;
    // The disk refuses the dead letter three times, then takes it.
    s.router.store.fail_next_dead_letters(3);
    s.router
        .publish("default", vec![event_of("x", "e1")])
        .await
        .unwrap();
    settle(&s.router).await;
    assert_eq!(
        attempts_of(&s.fake, "f").len(),
        1,
        "storing the dead letter again is not another attempt"
    );
    let letters = s.router.store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0].event.contains("knativeerrordest"),
        "{}",
        letters[0].event
    );
    assert_eq!(s.router.pending(), 0, "the pending gauge is back to zero");
    assert!(
        s.router.groups.lock().unwrap().is_empty(),
        "its event's group ended"
    );
    s.runner.abort();
}

#[test]
fn a_throttled_warning_is_logged_once_a_second_with_what_it_skipped() {
    let throttle = Throttle::default();
    assert_eq!(throttle.allow(5_000), Some(0));
    assert_eq!(throttle.allow(5_001), None);
    assert_eq!(throttle.allow(5_999), None);
    assert_eq!(throttle.allow(6_000), Some(2));
    assert_eq!(throttle.allow(6_001), None);
}

#[tokio::test(start_paused = true)]
async fn queued_deliveries_past_the_resident_bound_read_their_event_back_from_the_journal() {
    let limits = DispatchLimits {
        max_resident_event_bytes: 300,
        ..DispatchLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    let router = Router::new(store, fake.clone(), limits, &Registry::new()).unwrap();
    router
        .put_trigger(trigger("t", "x", "f", json!({})))
        .await
        .unwrap();
    // Twenty events, queued before the dispatcher runs: a few fit the
    // bound, the rest keep only their place.
    let events = (0..20).map(|i| event_of("x", &format!("e{i}"))).collect();
    router.publish("default", events).await.unwrap();
    let dropped = router
        .queue
        .lock()
        .unwrap()
        .iter()
        .filter(|Reverse(Waiting(q))| q.record.event.is_empty())
        .count();
    assert!(dropped >= 15, "{dropped} of 20 let go of their event");
    assert!(router.resident.load(Ordering::Relaxed) <= 300);
    let runner = tokio::spawn(router.clone().run());
    settle(&router).await;
    let mut ids: Vec<String> = fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.1.clone())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "each delivered once, with its own event");
    assert_eq!(router.resident.load(Ordering::Relaxed), 0);
    runner.abort();
}

#[tokio::test(start_paused = true)]
async fn ingress_past_the_backlog_bound_is_refused_and_nothing_stored() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_pending: 5,
        max_pending_per_broker: 3,
        ..DispatchLimits::default()
    };
    let triggers = vec![
        trigger("t", "x", "f", json!({})),
        Trigger::parse(
            &json!({"name": "p", "broker": "pay", "filter": {"attributes": {"type": "x"}}, "subscriber": {"function": "g"}}),
            None,
        )
        .unwrap(),
    ];
    let s = setup(fake, limits, triggers).await;
    let accept = |broker: &'static str, id: String| {
        let router = s.router.clone();
        async move { router.accept(broker, vec![event_of("x", &id)]).await }
    };
    for i in 0..3 {
        accept("pay", format!("p{i}")).await.unwrap();
    }
    let error = accept("pay", "p3".into()).await.unwrap_err();
    assert!(error.is_backlog(), "{error}");
    assert!(error.to_string().contains("\"pay\""), "{error}");
    for i in 0..2 {
        accept("default", format!("d{i}")).await.unwrap();
    }
    let error = accept("default", "d2".into()).await.unwrap_err();
    assert!(error.is_backlog(), "the server-wide bound: {error}");
    assert_eq!(
        s.router.store.delivery_count(),
        5,
        "nothing of the refused stored"
    );
    // One request whose deliveries alone pass the bound could never be
    // accepted: told so, not told to retry.
    let batch = (0..6).map(|i| event_of("x", &format!("b{i}"))).collect();
    let error = s.router.accept("default", batch).await.unwrap_err();
    assert!(error.is_too_many(), "{error}");
    // Replies and guests' events are held to twice the bounds, not the
    // bounds: "default" takes 4 more (2 × 3), then the server 1 more (2 × 5).
    let publish = |broker: &'static str, id: &str| {
        let router = s.router.clone();
        let event = event_of("x", id);
        async move { router.publish(broker, vec![event]).await }
    };
    for i in 0..4 {
        publish("default", &format!("reply{i}")).await.unwrap();
    }
    let error = publish("default", "reply4").await.unwrap_err();
    assert!(error.is_backlog(), "{error}");
    assert!(error.to_string().contains("limit is 6"), "{error}");
    assert!(error.to_string().contains("\"default\""), "{error}");
    publish("pay", "reply5").await.unwrap();
    assert_eq!(s.router.pending(), 10);
    let error = publish("pay", "reply6").await.unwrap_err();
    assert!(error.is_backlog(), "{error}");
    assert!(error.to_string().contains("limit is 10"), "{error}");
    assert_eq!(s.router.store.delivery_count(), 10);
    gate.add_permits(100);
    settle(&s.router).await;
    accept("pay", "p4".into()).await.unwrap();
    gate.add_permits(1);
    settle(&s.router).await;
    s.runner.abort();
}

#[tokio::test]
async fn a_trigger_without_delivery_takes_its_brokers_default_live_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let inherits = Trigger::parse(
        &json!({"name": "inherits", "broker": "payments", "subscriber": {"function": "f"}}),
        None,
    )
    .unwrap();
    let own = trigger("own", "t", "f", json!({"retry": 1}));
    let broker = |retry: u32| {
        Broker::parse(
            &json!({"name": "payments", "delivery": {"retry": retry}}),
            None,
        )
        .unwrap()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let router = Router::new(
            store,
            Arc::new(Fake::default()),
            DispatchLimits::default(),
            &Registry::new(),
        )
        .unwrap();
        router.put_broker(broker(2)).await.unwrap();
        router.put_trigger(inherits.clone()).await.unwrap();
        router.put_trigger(own.clone()).await.unwrap();
        assert_eq!(router.trigger("inherits").unwrap().delivery.retry, 2);
        assert!(
            router
                .trigger("inherits")
                .unwrap()
                .to_json()
                .get("delivery")
                .is_none(),
            "its view says it sets none"
        );
        router.put_broker(broker(5)).await.unwrap();
        assert_eq!(
            router.trigger("inherits").unwrap().delivery.retry,
            5,
            "live"
        );
        assert_eq!(
            router.trigger("own").unwrap().delivery.retry,
            1,
            "its own stays"
        );
    }
    let store = reopen(dir.path());
    let router = Router::new(
        store,
        Arc::new(Fake::default()),
        DispatchLimits::default(),
        &Registry::new(),
    )
    .unwrap();
    assert_eq!(
        router.trigger("inherits").unwrap().delivery.retry,
        5,
        "after a restart"
    );
    assert!(router.delete_broker("payments").await.unwrap());
    assert_eq!(
        router.trigger("inherits").unwrap().delivery,
        crate::trigger::DeliverySpec::default(),
        "Knative's defaults once the broker is gone"
    );
}

/// Opens the store in `dir` again once the previous handle's lock is gone.
fn reopen(dir: &std::path::Path) -> Store {
    for _ in 0..100 {
        if let Ok(store) = Store::open(dir) {
            return store;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Store::open(dir).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_triggers_max_concurrency_caps_its_deliveries_below_the_servers_limit() {
    let fake = Fake {
        delay: Some(Duration::from_millis(100)),
        ..Fake::default()
    };
    let limits = DispatchLimits {
        max_in_flight_per_trigger: 4,
        ..DispatchLimits::default()
    };
    let s = setup(
        fake,
        limits,
        vec![trigger(
            "t",
            "x",
            "f",
            json!({"retry": 0, "maxConcurrency": 1}),
        )],
    )
    .await;
    assert_eq!(
        s.router.trigger("t").unwrap().to_json()["delivery"]["maxConcurrency"],
        1
    );
    let events = (0..6).map(|i| event_of("x", &format!("e{i}"))).collect();
    s.router.publish("default", events).await.unwrap();
    settle(&s.router).await;
    assert_eq!(
        s.fake.max_running.load(Ordering::SeqCst),
        1,
        "one at a time"
    );
    let attempts = attempts_of(&s.fake, "f");
    assert_eq!(attempts.len(), 6, "every event delivered, none lost parked");
    assert!(
        attempts.iter().all(|a| a.0 == 1),
        "no attempt used up waiting"
    );
    s.runner.abort();
    for bad in [json!({"maxConcurrency": 0}), json!({"maxConcurrency": "2"})] {
        assert!(
            Trigger::parse(
                &json!({"name": "b", "subscriber": {"function": "f"}, "delivery": bad}),
                None
            )
            .is_err()
        );
    }
}
