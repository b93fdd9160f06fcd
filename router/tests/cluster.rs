//! The dispatcher in cluster mode: several routers (nodes) on one real
//! nats-server, each with its own data directory, against a recording
//! invoker (the real one lives in host/; the sluice binary's end-to-end
//! tests cover it).

#[allow(dead_code)]
#[path = "../../store/tests/support/nats.rs"]
mod nats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nats::Nats;
use prometheus::Registry;
use serde_json::json;
use sluice_router::dispatch::{
    BoxFuture, DeliveryContext, DispatchLimits, Invoker, Outcome, Router,
};
use sluice_router::event::CloudEvent;
use sluice_router::trigger::{Destination, Trigger};
use sluice_store::Store;
use sluice_store::cluster::{Cluster, ClusterOptions};

const PATIENCE: Duration = Duration::from_secs(30);

/// Records every attempt (destination, event id, attempt); fails while
/// `failing` is set (retryably), or hangs for ever while `hang` is.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String, u32)>>,
    failing: AtomicBool,
    hang: AtomicBool,
}

impl Invoker for Recorder {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        event: &'a Arc<CloudEvent>,
        context: DeliveryContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let name = match destination {
                Destination::Function(f) => f.clone(),
                Destination::Uri(u) => u.clone(),
            };
            self.calls
                .lock()
                .unwrap()
                .push((name.clone(), event.id.clone(), context.attempt));
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if name == "enricher" {
                // A transform that keeps its cause's id and source.
                let mut reply = CloudEvent::clone(event);
                reply.ty = format!("{}.enriched", event.ty);
                return Outcome::Delivered(vec![reply]);
            }
            if self.failing.load(Ordering::SeqCst) && name != "dlq" {
                return Outcome::Failed {
                    retryable: true,
                    code: Some(503),
                    reason: format!("attempt {} failed", context.attempt),
                };
            }
            Outcome::Delivered(Vec::new())
        })
    }

    fn check(&self, _destination: &Destination) -> Result<(), String> {
        Ok(())
    }
}

impl Recorder {
    fn calls(&self) -> Vec<(String, String, u32)> {
        self.calls.lock().unwrap().clone()
    }
}

struct Node {
    router: Arc<Router>,
    recorder: Arc<Recorder>,
    _dir: tempfile::TempDir,
    run: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(nats: &Nats, name: &str) -> Node {
        let mut options = ClusterOptions::new(nats.urls());
        options.name = name.to_owned();
        options.ack_wait = Duration::from_secs(2);
        let cluster = Cluster::connect(options).await.unwrap();
        cluster.wait_ready(PATIENCE).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let recorder = Arc::new(Recorder::default());
        let router = Router::clustered(
            store,
            cluster,
            recorder.clone(),
            DispatchLimits::default(),
            &Registry::new(),
        );
        let run = tokio::spawn(router.clone().run());
        until("the node loaded the catalog", || {
            router.cluster_readiness().is_ok()
        })
        .await;
        Node {
            router,
            recorder,
            _dir: dir,
            run,
        }
    }

    /// Dies: pulls nothing more and finishes nothing it holds.
    fn kill(&self) {
        self.router.abandon();
        self.run.abort();
    }
}

fn trigger(name: &str, ty: &str, subscriber: &str, delivery: serde_json::Value) -> Trigger {
    Trigger::parse(
        &json!({"name": name, "filter": {"attributes": {"type": ty}}, "subscriber": {"function": subscriber}, "delivery": delivery}),
        None,
    )
    .unwrap()
}

fn event(ty: &str, id: &str) -> CloudEvent {
    CloudEvent::from_json(
        json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deliveries per (destination, event id), over every node.
fn tally(nodes: &[&Node]) -> BTreeMap<(String, String), usize> {
    let mut tally = BTreeMap::new();
    for node in nodes {
        for (destination, id, _) in node.recorder.calls() {
            *tally.entry((destination, id)).or_default() += 1;
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_triggers_and_deliver_every_event_once_per_trigger() {
    let nats = Nats::single();
    let a = Node::start(&nats, "a").await;
    let b = Node::start(&nats, "b").await;
    assert!(
        !a.router
            .put_trigger(trigger("t1", "order", "f1", json!({})))
            .await
            .unwrap()
    );
    assert!(
        !b.router
            .put_trigger(trigger("t2", "order", "f2", json!({})))
            .await
            .unwrap()
    );
    // Replacing is seen as such from another node.
    assert!(
        b.router
            .put_trigger(trigger("t1", "order", "f1", json!({"retry": 3})))
            .await
            .unwrap()
    );
    until("both nodes know both triggers", || {
        [&a, &b].iter().all(|n| {
            n.router
                .trigger("t1")
                .is_some_and(|t| t.delivery.retry == 3)
                && n.router.trigger("t2").is_some()
        })
    })
    .await;

    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.router
            .accept(
                "default",
                vec![
                    event("order", &format!("e{i}")),
                    event("other", &format!("x{i}")),
                ],
            )
            .await
            .unwrap();
    }
    // A client retrying after a lost answer adds nothing.
    a.router
        .accept("default", vec![event("order", "e0")])
        .await
        .unwrap();
    until("40 deliveries", || tally(&[&a, &b]).len() == 40).await;
    // Let anything doubled show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = tally(&[&a, &b]);
    assert_eq!(tally.len(), 40);
    assert!(tally.values().all(|n| *n == 1), "{tally:?}");
    assert!(
        tally
            .keys()
            .all(|(f, id)| (f == "f1" || f == "f2") && id.starts_with('e'))
    );

    // A deleted trigger is gone on every node.
    assert!(a.router.delete_trigger("t2").await.unwrap());
    until("t2 gone from b", || b.router.trigger("t2").is_none()).await;
    assert!(!b.router.delete_trigger("t2").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts_across_nodes_then_dead_letter_and_replay() {
    let nats = Nats::single();
    let a = Node::start(&nats, "a").await;
    let b = Node::start(&nats, "b").await;
    for node in [&a, &b] {
        node.recorder.failing.store(true, Ordering::SeqCst);
    }
    let delivery = json!({"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.2S",
        "deadLetterSink": {"function": "dlq"}});
    a.router
        .put_trigger(trigger("t", "order", "f", delivery))
        .await
        .unwrap();
    until("b knows t", || b.router.trigger("t").is_some()).await;
    a.router
        .accept("default", vec![event("order", "e1")])
        .await
        .unwrap();

    until("the dead letter's sink delivery", || {
        tally(&[&a, &b]).contains_key(&("dlq".to_owned(), "e1".to_owned()))
    })
    .await;
    let mut attempts: Vec<u32> = [&a, &b]
        .iter()
        .flat_map(|n| n.recorder.calls())
        .filter(|(f, _, _)| f == "f")
        .map(|(_, _, attempt)| attempt)
        .collect();
    attempts.sort();
    // One first try and two retries, numbered by JetStream, whichever node
    // ran each.
    assert_eq!(attempts, [1, 2, 3]);
    let letters = a.router.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!((letter.trigger.as_str(), letter.attempts), ("t", 3));
    let stored = CloudEvent::from_json(letter.event.as_bytes()).unwrap();
    assert_eq!(
        stored
            .extensions
            .get("knativeerrorcode")
            .map(String::as_str),
        Some("503")
    );
    assert_eq!(
        stored
            .extensions
            .get("knativeerrordest")
            .map(String::as_str),
        Some("f")
    );

    // Replayed (from the other node) once the subscriber works again.
    for node in [&a, &b] {
        node.recorder.failing.store(false, Ordering::SeqCst);
    }
    assert!(b.router.replay(letter.id).await.unwrap());
    until("the replayed delivery", || {
        tally(&[&a, &b]).get(&("f".to_owned(), "e1".to_owned())) == Some(&4)
    })
    .await;
    assert!(a.router.dead_letters().await.unwrap().is_empty());
    assert!(!a.router.replay(letter.id).await.unwrap());
    let cluster = a.router.cluster().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cluster.delivery_count().await.unwrap() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the work queue kept finished deliveries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_by_a_node_that_dies_are_run_by_another() {
    let nats = Nats::single();
    let a = Node::start(&nats, "a").await;
    a.recorder.hang.store(true, Ordering::SeqCst);
    a.router
        .put_trigger(trigger("t", "order", "f", json!({})))
        .await
        .unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    let events = ids.iter().map(|id| event("order", id)).collect();
    a.router.accept("default", events).await.unwrap();
    until("a is running all five", || a.recorder.calls().len() == 5).await;
    // Long enough past the ack wait that a's progress notes are what keep
    // the deliveries its own.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        a.recorder.calls().len(),
        5,
        "a's held deliveries went elsewhere while it lived"
    );

    a.kill();
    let b = Node::start(&nats, "b").await;
    until("b ran all five", || b.recorder.calls().len() == 5).await;
    let mut got: Vec<(String, u32)> = b
        .recorder
        .calls()
        .into_iter()
        .map(|(_, id, attempt)| (id, attempt))
        .collect();
    got.sort();
    let want: Vec<(String, u32)> = ids.iter().map(|id| (id.clone(), 2)).collect();
    assert_eq!(got, want, "each redelivered once, as its second attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_keeping_its_causes_id_is_a_new_event_not_a_duplicate() {
    let nats = Nats::single();
    let a = Node::start(&nats, "a").await;
    a.router
        .put_trigger(trigger("t1", "order", "enricher", json!({})))
        .await
        .unwrap();
    a.router
        .put_trigger(trigger("t2", "order.enriched", "f2", json!({})))
        .await
        .unwrap();
    a.router
        .accept("default", vec![event("order", "e1")])
        .await
        .unwrap();
    until("the enriched reply is delivered", || {
        tally(&[&a]).contains_key(&("f2".to_owned(), "e1".to_owned()))
    })
    .await;
    // The client's own repeat of e1 is still a duplicate.
    a.router
        .accept("default", vec![event("order", "e1")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        tally(&[&a]).get(&("enricher".to_owned(), "e1".to_owned())),
        Some(&1)
    );
}
