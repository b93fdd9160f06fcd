//! Cluster mode end to end: several real `sluice` processes on real
//! nats-server processes (JetStream), killed for real.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_artifacts as guests;

use crate::harness::{Server, Sink, error_code, eventually};
#[allow(dead_code)]
#[path = "../../store/tests/support/nats.rs"]
mod nats;
use nats::Nats;

const PATIENCE: Duration = Duration::from_secs(60);

/// A node of the cluster at `nats`, its work moving to the others 2 s
/// after it stops answering.
fn node(nats: &Nats, extra: &[&str]) -> Server {
    let urls = nats.urls().join(",");
    let mut args = vec!["--nats", urls.as_str(), "--nats-ack-wait", "2s"];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

async fn ready(server: &Server) {
    eventually(PATIENCE, || async {
        let (status, _) = server.get("/readyz").await;
        (status == 200).then_some(())
    })
    .await;
}

/// How often the sink received each event id.
fn tally(sink: &[crate::harness::Received]) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for received in sink {
        *tally.entry(received.ce("id").unwrap()).or_default() += 1;
    }
    tally
}

#[tokio::test]
async fn two_nodes_are_one_sluice_functions_triggers_tokens_events_dead_letters() {
    let nats = Nats::single();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    ready(&a).await;
    ready(&b).await;

    // A function deployed on one node runs on the other.
    a.deploy_ok("hello", guests::HELLO, "visibility=public")
        .await;
    let (status, body) = eventually(PATIENCE, || async {
        let (status, body) = b.get("/fn/hello/from-b").await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("Hello from Sluice!"), "{body}");
    let (_, list) = b.get("/v1/functions").await;
    assert!(list.contains("\"hello\""), "{list}");

    // A token made on one node works on the other; revoked there, it stops
    // working on the first.
    let (status, made) = a
        .post_json("/v1/tokens", json!({"name": "ci", "scope": "deploy"}))
        .await;
    assert_eq!(status, 201, "{made}");
    let made: Value = serde_json::from_str(&made).unwrap();
    let (token, id) = (
        made["token"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    );
    let with_token = |server: &Server, path: &str| {
        reqwest::Client::new()
            .get(server.url(path))
            .bearer_auth(&token)
            .send()
    };
    let seen = eventually(PATIENCE, || async {
        let status = with_token(&b, "/v1/functions").await.unwrap().status();
        (status == 200).then_some(status)
    })
    .await;
    assert_eq!(seen, 200);
    let (status, _) = b.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(status, 200);
    eventually(PATIENCE, || async {
        let status = with_token(&a, "/v1/functions").await.unwrap().status();
        (status == 401).then_some(())
    })
    .await;

    // A trigger made on one node routes events posted to either.
    let sink = Sink::start().await;
    a.trigger(
        json!({"name": "orders", "filter": {"attributes": {"type": "order"}},
        "subscriber": {"uri": format!("{}/orders", sink.url)}}),
    )
    .await;
    eventually(PATIENCE, || async {
        let (status, _) = b.get("/v1/triggers/orders").await;
        (status == 200).then_some(())
    })
    .await;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            node.send_event(&format!("o{i}"), "order", &[], b"{}").await,
            202
        );
    }
    // A client that retries after a lost answer adds nothing.
    assert_eq!(b.send_event("o0", "order", &[], b"{}").await, 202);
    sink.wait_for(10).await;
    let got = sink.quiet().await;
    let tally = tally(&got);
    assert_eq!(tally.len(), 10, "{tally:?}");
    assert!(tally.values().all(|n| *n == 1), "each once: {tally:?}");

    // Deliveries that fail for good are dead letters every node lists.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    b.trigger(
        json!({"name": "broken", "filter": {"attributes": {"type": "doomed"}},
        "subscriber": {"uri": format!("http://127.0.0.1:{closed}/")},
        "delivery": {"retry": 1, "backoffDelay": "PT0.1S"}}),
    )
    .await;
    eventually(PATIENCE, || async {
        let (status, _) = a.get("/v1/triggers/broken").await;
        (status == 200).then_some(())
    })
    .await;
    assert_eq!(a.send_event("d1", "doomed", &[], b"{}").await, 202);
    let letters = eventually(PATIENCE, || async {
        let (_, body) = b.get("/v1/deadletters").await;
        let body: Value = serde_json::from_str(&body).unwrap();
        let letters = body["deadletters"].as_array().cloned().unwrap_or_default();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["trigger"], "broken");
    assert_eq!(letters[0]["attempts"], 2);
    assert_eq!(letters[0]["event"]["id"], "d1");
    let (_, on_a) = a.get("/v1/deadletters").await;
    assert!(on_a.contains("\"d1\""), "{on_a}");
    let id = letters[0]["id"].as_str().unwrap();
    let (status, _) = a.delete(&format!("/v1/deadletters/{id}")).await;
    assert_eq!(status, 200);
    let (_, after) = b.get("/v1/deadletters").await;
    assert!(!after.contains("\"d1\""), "{after}");
}

/// An HTTP sink that takes `delay` to answer each request, recording it
/// when it arrives.
struct SlowSink {
    url: String,
    ids: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowSink {
    async fn start(delay: Duration) -> SlowSink {
        let ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = ids.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let log = log.clone();
            async move {
                let id = request
                    .headers()
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                log.lock().unwrap().push(id);
                tokio::time::sleep(delay).await;
                http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SlowSink { url, ids, task }
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

impl Drop for SlowSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_node_killed_mid_delivery_loses_no_acknowledged_event() {
    let nats = Nats::single();
    let sink = SlowSink::start(Duration::from_millis(1500)).await;
    let mut a = node(&nats, &[]);
    ready(&a).await;
    a.trigger(
        json!({"name": "slow", "filter": {"attributes": {"type": "job"}},
        "subscriber": {"uri": format!("{}/job", sink.url)},
        // Two at a time: at the kill most of a's deliveries are held, not
        // running, and must move to b without running twice.
        "delivery": {"maxConcurrency": 2}}),
    )
    .await;
    let ids: Vec<String> = (0..12).map(|i| format!("j{i}")).collect();
    for id in &ids {
        assert_eq!(a.send_event(id, "job", &[], b"{}").await, 202);
    }
    // a is mid-delivery (the sink holds each for 1.5 s) when it dies.
    eventually(PATIENCE, || async {
        (!sink.ids().is_empty()).then_some(())
    })
    .await;
    a.kill();
    // What a sent before it died has reached the sink by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight_at_kill = sink.ids().len();
    assert!(
        in_flight_at_kill < ids.len(),
        "a finished everything before the kill"
    );

    let b = node(&nats, &[]);
    ready(&b).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    let got = loop {
        let got = sink.ids();
        if ids.iter().all(|id| got.contains(id)) {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every event was delivered: {got:?}\n--- a:\n{}\n--- b:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeats: usize = counts.values().map(|n| n - 1).sum();
    assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
    // Only what a was running when it died runs twice.
    assert!(
        repeats <= in_flight_at_kill,
        "{repeats} repeats, {in_flight_at_kill} were in flight: {counts:?}"
    );
    drop(b);
}

#[tokio::test]
async fn nats_down_is_503_with_a_reason_and_sluice_resumes_by_itself() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut nats = Nats::single_on(port);
    // Sluice starts without NATS: serving, not ready, saying why.
    let a = node(&nats, &[]);
    let (status, body) = a.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(error_code(&body), "cluster_unavailable");
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    let refused = a
        .http()
        .post(a.url("/v1/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "early")
        .header("ce-source", "/e2e")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let (status, _) = a
        .post_json(
            "/v1/triggers",
            json!({"name": "t", "subscriber": {"uri": "http://127.0.0.1:1/"}}),
        )
        .await;
    assert_eq!(status, 503);

    nats.spawn(0);
    ready(&a).await;
    let sink = Sink::start().await;
    a.trigger(json!({"name": "t", "filter": {"attributes": {"type": "t"}},
        "subscriber": {"uri": format!("{}/t", sink.url)}}))
        .await;
    assert_eq!(a.send_event("e1", "t", &[], b"{}").await, 202);
    sink.wait_for(1).await;

    let (status, made) = a
        .post_json("/v1/tokens", json!({"name": "reader", "scope": "deploy"}))
        .await;
    assert_eq!(status, 201, "{made}");
    let made: Value = serde_json::from_str(&made).unwrap();
    let token = made["token"].as_str().unwrap().to_owned();
    let with_token = || {
        reqwest::Client::new()
            .get(a.url("/v1/functions"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(with_token().await.unwrap().status(), 200);

    // NATS goes away mid-run: not ready (saying why), ingress and writes
    // refused; then back.
    nats.kill(0);
    let reason = eventually(PATIENCE, || async {
        let (status, body) = a.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(error_code(&reason), "cluster_unavailable");
    assert_eq!(a.send_event("e2", "t", &[], b"{}").await, 503);
    let (status, body) = a.delete("/v1/triggers/t").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "cluster_unavailable")
    );
    // Past a few seconds cut off, this node cannot know whether a token was
    // revoked elsewhere: 503 for API tokens, the admin token still works.
    let refused = eventually(PATIENCE, || async {
        let response = with_token().await.unwrap();
        (response.status() == 503).then_some(response.text().await.unwrap())
    })
    .await;
    assert_eq!(error_code(&refused), "cluster_unavailable");
    let (status, _) = a.get("/v1/functions").await;
    assert_eq!(status, 200);
    nats.spawn(0);
    ready(&a).await;
    let accepted = eventually(PATIENCE, || async {
        let status = a.send_event("e3", "t", &[], b"{}").await;
        (status == 202).then_some(status)
    })
    .await;
    assert_eq!(accepted, 202);
    sink.wait_for(2).await;
    let got = sink.quiet().await;
    let ids: Vec<String> = got.iter().map(|r| r.ce("id").unwrap()).collect();
    assert!(ids.contains(&"e3".to_owned()), "{ids:?}");
    assert!(
        !ids.contains(&"e2".to_owned()),
        "a refused event was delivered: {ids:?}"
    );
}

#[tokio::test]
async fn a_killed_nats_stream_leader_costs_503s_never_a_202_for_an_unstored_event() {
    let mut nats = Nats::cluster();
    let a = node(&nats, &[]);
    ready(&a).await;
    let sink = Sink::start().await;
    a.trigger(json!({"name": "t", "filter": {"attributes": {"type": "t"}},
        "subscriber": {"uri": format!("{}/t", sink.url)}}))
        .await;
    let leader = eventually(PATIENCE, || async { nats.stream_leader("SLUICE_EVENTS") }).await;

    // Thirty events, the events stream's leader killed after the tenth.
    // The client retries each on 503 (which must say when to), as a
    // CloudEvents sender would, until it gets its 202.
    let mut refused = 0;
    for i in 0..30 {
        if i == 10 {
            let index = nats.index_of(&leader);
            nats.kill(index);
        }
        let id = format!("e{i}");
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let response = a
                .http()
                .post(a.url("/v1/events"))
                .header("ce-specversion", "1.0")
                .header("ce-id", &id)
                .header("ce-source", "/e2e")
                .header("ce-type", "t")
                .send()
                .await;
            // A connection that closed under the request (a kept-alive one
            // the server had just let go): retried, as any client would;
            // the event's id makes the retry safe.
            let Ok(response) = response else {
                assert!(std::time::Instant::now() < deadline, "{id} never accepted");
                continue;
            };
            match response.status().as_u16() {
                202 => break,
                503 => {
                    assert!(response.headers().contains_key("retry-after"));
                    refused += 1;
                    assert!(std::time::Instant::now() < deadline, "{id} never accepted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("{id}: {other} {}", response.text().await.unwrap()),
            }
        }
    }
    eprintln!("{refused} answers were 503 while JetStream elected a new leader");
    // Every accepted event is delivered; a delivery whose ack was lost in
    // the election may run twice (at least once), never more.
    let deadline = std::time::Instant::now() + PATIENCE;
    while tally(&sink.received()).len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered {:?}\n{}",
            tally(&sink.received()),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = sink.quiet().await;
    let tally = tally(&got);
    assert_eq!(tally.len(), 30, "{tally:?}");
    assert!(tally.values().all(|n| *n <= 2), "{tally:?}");
}
