//! The JetStream backend against real nats-server processes: one server,
//! and a three-node cluster whose servers are killed for real.

mod support;

use std::time::Duration;

use bytes::Bytes;
use sluice_store::StoreError;
use sluice_store::cluster::{
    Bucket, Change, Cluster, ClusterOptions, Delivery, Expect, Watcher, event_message_id,
};
use support::nats::Nats;

/// Generous: these bound waits for elections and reconnects, they do not
/// measure them.
const PATIENCE: Duration = Duration::from_secs(30);

async fn node(urls: Vec<String>, name: &str) -> Cluster {
    let mut options = ClusterOptions::new(urls);
    options.name = name.to_owned();
    options.request_timeout = Duration::from_secs(3);
    Cluster::connect(options).await.unwrap()
}

async fn ready_node(urls: Vec<String>, name: &str) -> Cluster {
    let cluster = node(urls, name).await;
    cluster.wait_ready(PATIENCE).await.unwrap();
    cluster
}

async fn next_change(watcher: &mut Watcher) -> Change {
    tokio::time::timeout(PATIENCE, watcher.next())
        .await
        .expect("a change within the patience window")
        .expect("the watch is open")
}

fn delivery(trigger: &str) -> Delivery<'_> {
    Delivery {
        broker: "default",
        trigger,
        dead_letter: None,
        trace: None,
    }
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_writes_compare_and_set_and_every_node_sees_them() {
    let nats = Nats::single();
    let a = ready_node(nats.urls(), "a").await;
    let b = ready_node(nats.urls(), "b").await;
    let on_a = a.catalog(Bucket::Triggers).unwrap();
    let on_b = b.catalog(Bucket::Triggers).unwrap();

    let (before, last) = on_b.snapshot().await.unwrap();
    assert!(before.is_empty());
    let mut watch = on_b.watch(last);

    let r1 = on_a.put("t1", bytes("v1"), Expect::Absent).await.unwrap();
    assert!(matches!(
        on_a.put("t1", bytes("again"), Expect::Absent).await,
        Err(StoreError::Changed(key)) if key == "t1"
    ));
    assert!(matches!(
        on_b.put("t1", bytes("stale"), Expect::Revision(r1 + 100))
            .await,
        Err(StoreError::Changed(_))
    ));
    let r2 = on_b
        .put("t1", bytes("v2"), Expect::Revision(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    // The loser of a race reads the winner's value, from either node.
    let read = on_a.get("t1").await.unwrap().unwrap();
    assert_eq!((read.value, read.revision), (bytes("v2"), r2));

    let change = next_change(&mut watch).await;
    assert_eq!(
        change,
        Change {
            key: "t1".into(),
            value: Some(bytes("v1")),
            revision: r1
        }
    );
    assert_eq!(next_change(&mut watch).await.value, Some(bytes("v2")));

    on_a.put("t2", bytes("w"), Expect::Any).await.unwrap();
    assert_eq!(next_change(&mut watch).await.key, "t2");
    assert!(on_a.delete("t1", Expect::Any).await.unwrap().is_some());
    let deleted = next_change(&mut watch).await;
    assert_eq!((deleted.key.as_str(), deleted.value), ("t1", None));
    assert_eq!(on_a.delete("t1", Expect::Any).await.unwrap(), None);
    assert_eq!(on_b.get("t1").await.unwrap(), None);
    // A deleted key can be created again.
    on_b.put("t1", bytes("v3"), Expect::Absent).await.unwrap();

    let (now, _) = on_a.snapshot().await.unwrap();
    let keys: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["t1", "t2"]);
    assert_eq!(now[0].1.value, bytes("v3"));

    // Buckets are separate.
    let functions = a.catalog(Bucket::Functions).unwrap();
    assert_eq!(functions.get("t2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_stored_once_per_broker_source_and_id() {
    let nats = Nats::single();
    let cluster = ready_node(nats.urls(), "a").await;
    let first = cluster
        .publish_event(
            "default",
            &event_message_id("default", "/s", "1"),
            bytes("{}"),
            0,
            None,
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = cluster
        .publish_event(
            "default",
            &event_message_id("default", "/s", "1"),
            bytes("{\"changed\":true}"),
            0,
            None,
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    for (broker, source, id) in [
        ("default", "/s", "2"),
        ("default", "/t", "1"),
        ("other", "/s", "1"),
    ] {
        let published = cluster
            .publish_event(
                broker,
                &event_message_id(broker, source, id),
                bytes("{}"),
                0,
                None,
            )
            .await
            .unwrap();
        assert!(!published.duplicate, "{broker} {source} {id}");
    }
    assert_eq!(cluster.event_count().await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_stored_by_digest_and_checked_on_read() {
    let nats = Nats::single();
    let cluster = ready_node(nats.urls(), "a").await;
    // Several chunks (128 KiB each) and a ragged end.
    let component: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = cluster.put_blob(&component).await.unwrap();
    assert_eq!(digest, sluice_store::digest_of(&component));
    assert_eq!(cluster.put_blob(&component).await.unwrap(), digest);
    let other = ready_node(nats.urls(), "b").await;
    assert_eq!(other.blob(&digest).await.unwrap(), Some(component));
    let empty = other.put_blob(b"").await.unwrap();
    assert_eq!(cluster.blob(&empty).await.unwrap(), Some(Vec::new()));
    let unknown = sluice_store::digest_of(b"never stored");
    assert_eq!(cluster.blob(&unknown).await.unwrap(), None);
    assert!(matches!(
        cluster.blob("md5:abc").await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_is_unavailable_with_a_reason_until_it_comes() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut nats = Nats::single_on(port);
    let cluster = node(nats.urls(), "a").await;
    let reason = cluster.readiness().unwrap_err();
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
    match cluster
        .publish_event(
            "default",
            &event_message_id("default", "/s", "1"),
            bytes("{}"),
            0,
            None,
        )
        .await
    {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("NATS"), "{why}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        cluster.catalog(Bucket::Functions),
        Err(StoreError::Unavailable(_))
    ));

    nats.spawn(0);
    cluster.wait_ready(PATIENCE).await.unwrap();
    cluster.probe().await.unwrap();
    assert_eq!(cluster.replicas(), Some(1));
    cluster
        .publish_event(
            "default",
            &event_message_id("default", "/s", "1"),
            bytes("{}"),
            0,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_rejoined_and_a_parked_watch_resumes() {
    let mut nats = Nats::single();
    let cluster = ready_node(nats.urls(), "a").await;
    let catalog = cluster.catalog(Bucket::Functions).unwrap();
    let (_, last) = catalog.snapshot().await.unwrap();
    let mut watch = catalog.watch(last);
    catalog.put("f", bytes("1"), Expect::Any).await.unwrap();
    assert_eq!(next_change(&mut watch).await.value, Some(bytes("1")));

    nats.kill(0);
    // Nobody polls the watch while the server is gone (async-nats issue
    // 1596 was exactly this).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cluster.readiness().is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loss was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.readiness().unwrap_err().contains("unreachable"));
    assert!(matches!(
        catalog.put("f", bytes("lost"), Expect::Any).await,
        Err(StoreError::Unavailable(_))
    ));

    nats.spawn(0);
    nats.wait_listening(0);
    cluster.wait_ready(PATIENCE).await.unwrap();
    // JetStream may need a moment after the port opens; retry the write
    // until it is accepted, as a client would.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match catalog.put("f", bytes("2"), Expect::Any).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The stored value survived the kill, and the parked watch reports the
    // new one (and nothing twice).
    assert_eq!(next_change(&mut watch).await.value, Some(bytes("2")));
    assert_eq!(catalog.get("f").await.unwrap().unwrap().value, bytes("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_and_survive_the_stream_leader_killed() {
    let mut nats = Nats::cluster();
    let a = ready_node(nats.urls(), "a").await;
    let b = ready_node(nats.urls(), "b").await;
    assert_eq!(a.replicas(), Some(3));

    // Compare-and-set on a replicated bucket: two nodes race from the same
    // revision; exactly one wins and the other is told it lost (R3 streams
    // answer the conflict with error 10164, not 10071).
    let on_a = a.catalog(Bucket::Triggers).unwrap();
    let on_b = b.catalog(Bucket::Triggers).unwrap();
    let base = on_a.put("t", bytes("0"), Expect::Absent).await.unwrap();
    let (ra, rb) = tokio::join!(
        on_a.put("t", bytes("a"), Expect::Revision(base)),
        on_b.put("t", bytes("b"), Expect::Revision(base)),
    );
    let lost = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Changed(_))))
        .count();
    assert_eq!(
        (ra.is_ok() as u8 + rb.is_ok() as u8, lost),
        (1, 1),
        "{ra:?} {rb:?}"
    );

    let (_, last) = on_b.snapshot().await.unwrap();
    let mut watch = on_b.watch(last);

    // Find the events stream's leader and kill it mid-traffic.
    let client = async_nats::connect(nats.urls()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut events = js.get_stream("SLUICE_EVENTS").await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    // The monitoring endpoint the end-to-end tests read says the same.
    assert_eq!(
        nats.stream_leader("SLUICE_EVENTS").as_deref(),
        Some(leader.as_str())
    );
    drop(js);

    // Sixty events, the leader killed after the tenth. Each is retried, as a
    // client told 503 would, until JetStream acknowledges it; no answer is
    // a 202 for an event that was not stored (checked below).
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        if i == 10 {
            nats.kill(nats.index_of(&leader));
        }
        let id = i.to_string();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match a
                .publish_event(
                    "default",
                    &event_message_id("default", "/kill", &id),
                    bytes("{}"),
                    0,
                    None,
                )
                .await
            {
                Ok(_) => break,
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("event {id}: {e}"),
            }
        }
        acknowledged.push(id);
    }
    eprintln!("{refused} publishes refused while the stream elected a new leader");
    // Every acknowledged event is stored: publishing it again is a duplicate.
    for id in &acknowledged {
        let again = a
            .publish_event(
                "default",
                &event_message_id("default", "/kill", id),
                bytes("{}"),
                0,
                None,
            )
            .await
            .unwrap();
        assert!(
            again.duplicate,
            "event {id} was acknowledged but not stored"
        );
    }

    // The catalog still takes writes and every node still sees them.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match on_a.put("after", bytes("kill"), Expect::Any).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let change = next_change(&mut watch).await;
    assert_eq!(
        (change.key.as_str(), change.value),
        ("after", Some(bytes("kill")))
    );
}

async fn quick_node(urls: Vec<String>, name: &str) -> Cluster {
    let mut options = ClusterOptions::new(urls);
    options.name = name.to_owned();
    options.request_timeout = Duration::from_secs(3);
    // A node that stops acking loses its messages to the others this soon.
    options.ack_wait = Duration::from_secs(2);
    let cluster = Cluster::connect(options).await.unwrap();
    cluster.wait_ready(PATIENCE).await.unwrap();
    cluster
}

async fn next_arrival(feed: &mut sluice_store::cluster::Feed) -> sluice_store::cluster::Arrival {
    tokio::time::timeout(PATIENCE, feed.next())
        .await
        .expect("a message within the patience window")
        .expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_once_and_an_unacked_one_goes_to_another_node() {
    let nats = Nats::single();
    let a = quick_node(nats.urls(), "a").await;
    let b = quick_node(nats.urls(), "b").await;
    for id in ["1", "2"] {
        a.publish_event(
            "default",
            &event_message_id("default", "/s", id),
            bytes(id),
            0,
            None,
        )
        .await
        .unwrap();
    }
    let mut on_a = a.event_feed(1);
    let first = next_arrival(&mut on_a).await;
    assert_eq!(first.subject, "sluice.events.default");
    assert_eq!((first.delivered, first.payload.clone()), (1, bytes("1")));
    // Capacity 1: the second waits until the first is finished.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), on_a.next())
            .await
            .is_err()
    );
    first.ack().await.unwrap();
    let second = next_arrival(&mut on_a).await;
    assert_eq!(second.payload, bytes("2"));
    // Node a "dies" holding the second: it is never acked.
    drop(second);
    drop(on_a);
    let mut on_b = b.event_feed(8);
    let again = next_arrival(&mut on_b).await;
    assert_eq!((again.payload.clone(), again.delivered), (bytes("2"), 2));
    again.ack().await.unwrap();
    // Fanned out events stay in the stream (retention), but are not handed
    // out again.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), on_b.next())
            .await
            .is_err()
    );
    assert_eq!(a.event_count().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_retry_with_a_delay_count_attempts_and_end_acked_or_terminated() {
    let nats = Nats::single();
    let a = quick_node(nats.urls(), "a").await;
    let first = a
        .enqueue_delivery(7, &delivery("orders"), "delivery", bytes("d1"))
        .await
        .unwrap();
    // Fanned out again (say by a node replacing a dead one): no duplicate.
    assert_eq!(
        a.enqueue_delivery(7, &delivery("orders"), "delivery", bytes("d1"))
            .await
            .unwrap(),
        first
    );
    a.enqueue_delivery(7, &delivery("audit"), "delivery", bytes("d2"))
        .await
        .unwrap();
    assert_eq!(a.delivery_count().await.unwrap(), 2);

    let mut feed = a.delivery_feed(8);
    let mut got = vec![next_arrival(&mut feed).await, next_arrival(&mut feed).await];
    got.sort_by_key(|m| m.subject.clone());
    let orders = got.pop().unwrap();
    let audit = got.pop().unwrap();
    assert_eq!(
        orders.subject,
        format!(
            "sluice.deliveries.{}.orders",
            sluice_store::cluster::shard_of("orders")
        )
    );
    assert_eq!((orders.sequence, orders.delivered), (first, 1));
    audit.ack().await.unwrap();

    // A retry after its backoff: attempt 2 arrives no sooner.
    let naked = std::time::Instant::now();
    orders.nak(Duration::from_millis(700)).await.unwrap();
    let retry = next_arrival(&mut feed).await;
    assert!(naked.elapsed() >= Duration::from_millis(700));
    assert_eq!((retry.sequence, retry.delivered), (first, 2));
    // Long work keeps its message with progress notes past the ack wait.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        retry.progress().await.unwrap();
    }
    retry.term().await.unwrap();
    // Nothing comes back, and the work queue is empty: terminated and acked
    // messages both leave it.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), feed.next())
            .await
            .is_err()
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while a.delivery_count().await.unwrap() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the work queue kept a finished message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_data_from_two_nodes_racing_keeps_the_key_limit_and_every_increment() {
    use sluice_store::{GuestKv, KvError};
    let nats = Nats::single();
    let a = GuestKv::Cluster(sluice_store::cluster::GuestKv::new(
        ready_node(nats.urls(), "a").await,
    ));
    let b = GuestKv::Cluster(sluice_store::cluster::GuestKv::new(
        ready_node(nats.urls(), "b").await,
    ));

    // 24 new keys from two nodes at once into a bucket that holds 10:
    // exactly 10 land, the rest are refused, and the bucket counts 10.
    let writes = (0..24).map(|i| {
        let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            kv.set("fn/racer", &[(format!("k{i:02}"), b"v".to_vec())], 10)
                .await
        }
    });
    let results = futures::future::join_all(writes).await;
    let landed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(landed, 10, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, KvError::TooManyKeys(10))),
        "{results:?}"
    );
    let (keys, next) = b.list("fn/racer", 0, 100).await.unwrap();
    assert_eq!((keys.len(), next), (10, None), "{keys:?}");
    // Overwrites are free; a delete gives a place back, once.
    a.set("fn/racer", &[(keys[0].clone(), b"again".to_vec())], 10)
        .await
        .unwrap();
    b.delete("fn/racer", &[keys[1].clone(), keys[1].clone()])
        .await
        .unwrap();
    a.set("fn/racer", &[("new".to_owned(), b"v".to_vec())], 10)
        .await
        .unwrap();
    assert!(matches!(
        a.set("fn/racer", &[("one-more".to_owned(), b"v".to_vec())], 10)
            .await,
        Err(KvError::TooManyKeys(10))
    ));
    assert_eq!(
        b.get("fn/racer", &keys[0]).await.unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert!(!a.exists("fn/racer", &keys[1]).await.unwrap());
    // The deleted key leaves nothing in the bucket once its marker expired:
    // the bucket's subjects are the live keys and the count.
    let client = async_nats::connect(nats.urls()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("KV_sluice_guest_kv")
        .await
        .unwrap();
    // The marker lives 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    loop {
        use futures::TryStreamExt;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects("$KV.sluice_guest_kv.data.fn.racer.>")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        if subjects.len() == 10 {
            assert!(subjects.iter().all(|(_, n)| *n == 1), "{subjects:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted key's marker never expired: {} subjects",
            subjects.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A deleted key can be written again, as new.
    b.set("fn/racer", &[(keys[1].clone(), b"back".to_vec())], 11)
        .await
        .unwrap();
    assert_eq!(
        a.get("fn/racer", &keys[1]).await.unwrap().as_deref(),
        Some(&b"back"[..])
    );
    b.delete("fn/racer", &[keys[1].clone()]).await.unwrap();

    // A count that ran high (as after writes whose outcome was unknown)
    // is recounted by a refused new key once no write touched it for the
    // recount time, and the key is taken.
    {
        let mut options = ClusterOptions::new(nats.urls());
        options.name = "recounter".to_owned();
        options.kv_recount_after = Duration::from_secs(2);
        let cluster = Cluster::connect(options).await.unwrap();
        cluster.wait_ready(PATIENCE).await.unwrap();
        let recounter = GuestKv::Cluster(sluice_store::cluster::GuestKv::new(cluster.clone()));
        recounter
            .set("fn/leaky", &[("only".to_owned(), b"v".to_vec())], 3)
            .await
            .unwrap();
        let catalog = cluster.catalog(Bucket::GuestKv).unwrap();
        catalog
            .put("count.fn.leaky", Bytes::from("3"), Expect::Any)
            .await
            .unwrap();
        let key = [("more".to_owned(), b"v".to_vec())];
        let more = || recounter.set("fn/leaky", &key, 3);
        assert!(
            matches!(more().await, Err(KvError::TooManyKeys(3))),
            "too soon to recount"
        );
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        more().await.unwrap();
        let count = catalog.get("count.fn.leaky").await.unwrap().unwrap();
        assert_eq!(
            &count.value[..],
            b"2",
            "recounted to the one key, plus the new one"
        );
    }

    // 40 increments of one key from both nodes: none lost.
    let increments = (0..40).map(|i| {
        let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { kv.increment("fn/counter", "n", 1, 10).await }
    });
    let results = futures::future::join_all(increments).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let mut seen: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    seen.sort();
    assert_eq!(seen, (1..=40).collect::<Vec<_>>(), "each saw its own value");
    assert_eq!(
        a.get("fn/counter", "n").await.unwrap().as_deref(),
        Some(&b"40"[..])
    );
    // The racers for the one new key gave their places back: it counts
    // once, so nine more keys fit and a tenth does not.
    for i in 0..9 {
        b.set("fn/counter", &[(format!("more{i}"), b"v".to_vec())], 10)
            .await
            .unwrap();
    }
    assert!(matches!(
        a.set("fn/counter", &[("tenth".to_owned(), b"v".to_vec())], 10)
            .await,
        Err(KvError::TooManyKeys(10))
    ));
    // Keys past what a NATS subject carries are refused with the reason.
    let long = "k".repeat(3000);
    let error = a
        .set("fn/counter", &[(long, b"v".to_vec())], 100)
        .await
        .unwrap_err();
    assert!(matches!(error, KvError::KeyTooLong { .. }), "{error}");

    // Another bucket is apart; keys of any text round-trip through listing.
    for key in ["", "a.b", "ü *>"] {
        b.set(
            "shared/team",
            &[(key.to_owned(), key.as_bytes().to_vec())],
            10,
        )
        .await
        .unwrap();
    }
    let (keys, _) = a.list("shared/team", 0, 2).await.unwrap();
    assert_eq!(keys, vec!["".to_owned(), "a.b".to_owned()]);
    let (rest, next) = a.list("shared/team", 2, 2).await.unwrap();
    assert_eq!((rest, next), (vec!["ü *>".to_owned()], None));
    assert_eq!(a.get("fn/team", "a.b").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_events_stream_refuses_with_the_reason_and_keeps_what_it_has() {
    let nats = Nats::single();
    let mut options = ClusterOptions::new(nats.urls());
    options.event_max_bytes = Some(8 * 1024);
    options.request_timeout = Duration::from_secs(3);
    let cluster = Cluster::connect(options).await.unwrap();
    cluster.wait_ready(PATIENCE).await.unwrap();
    let payload = Bytes::from(vec![b'x'; 1000]);
    let mut stored = 0;
    let refusal = loop {
        let id = event_message_id("default", "/full", &stored.to_string());
        match cluster
            .publish_event("default", &id, payload.clone(), 0, None)
            .await
        {
            Ok(_) => stored += 1,
            Err(error) => break error,
        }
        assert!(stored < 100, "an 8 KiB stream took 100 KB");
    };
    assert!(stored >= 4, "{stored} events before the refusal");
    assert!(
        matches!(&refusal, StoreError::Unavailable(reason) if reason.contains("the events stream is full")),
        "{refusal}"
    );
    assert_eq!(cluster.event_count().await.unwrap(), stored);
}

/// A node started with another invocation retention or de-duplication
/// window brings the existing bucket's age limit and the events stream's
/// duplicate window to its own; one that keeps the layout does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_layout_takes_a_later_nodes_retention_and_dedupe_window() {
    let nats = Nats::single();
    let started = |retention: u64, window: u64, keep_layout: bool| {
        let urls = nats.urls();
        async move {
            let mut options = ClusterOptions::new(urls);
            options.keep_layout = keep_layout;
            options.invocation_retention = Duration::from_secs(retention);
            options.dedupe_window = Duration::from_secs(window);
            options.request_timeout = Duration::from_secs(3);
            let cluster = Cluster::connect(options).await.unwrap();
            cluster.wait_ready(PATIENCE).await.unwrap();
            cluster
        }
    };
    let read = || {
        let url = nats.urls()[0].clone();
        async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut kv = js.get_stream("KV_sluice_invocations").await.unwrap();
            let max_age = kv.info().await.unwrap().config.max_age;
            let mut events = js.get_stream("SLUICE_EVENTS").await.unwrap();
            let window = events.info().await.unwrap().config.duplicate_window;
            (max_age, window)
        }
    };
    drop(started(600, 600, false).await);
    assert_eq!(
        read().await,
        (Duration::from_secs(600), Duration::from_secs(600))
    );
    drop(started(1800, 60, false).await);
    assert_eq!(
        read().await,
        (Duration::from_secs(1800), Duration::from_secs(60))
    );
    // A tool that keeps the layout (`sluice migrate`) changes neither.
    drop(started(7200, 30, true).await);
    assert_eq!(
        read().await,
        (Duration::from_secs(1800), Duration::from_secs(60))
    );
}
