//! What operators see: metrics that add up, per-trigger counts, recent
//! invocations, the live event stream.

use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Server, Sink, eventually};

fn sample(
    metrics: &std::collections::BTreeMap<(String, String), f64>,
    name: &str,
    labels: &str,
) -> f64 {
    metrics
        .get(&(name.to_string(), labels.to_string()))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_add_up_after_fan_out_retries_dead_letters_and_rejections() {
    let server = Server::start();
    server.deploy_ok("echo", guests::EVENT_ECHO, "").await;
    server
        .deploy_ok("retried", guests::FLAKY, "env=FAIL_FIRST=1")
        .await;
    server
        .deploy_ok("doomed", guests::FLAKY, "env=FAIL_FIRST=1000")
        .await;
    server
        .trigger(json!({"name": "echo", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "echo"}}))
        .await;
    server
        .trigger(json!({"name": "retried", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "retried"},
                        "delivery": {"retry": 3, "backoffDelay": "PT0.01S"}}))
        .await;
    server
        .trigger(json!({"name": "doomed", "filter": {"attributes": {"type": "doomed"}}, "subscriber": {"function": "doomed"},
                        "delivery": {"retry": 1, "backoffDelay": "PT0.01S"}}))
        .await;

    // 12 jobs (fan-out 2, one trigger retries each once), 4 doomed, 5 no
    // trigger wants; the replies of both job subscribers come back and
    // match nothing.
    for i in 0..12 {
        assert_eq!(
            server.send_event(&format!("j{i}"), "job", &[], b"{}").await,
            202
        );
    }
    for i in 0..4 {
        assert_eq!(
            server
                .send_event(&format!("d{i}"), "doomed", &[], b"")
                .await,
            202
        );
    }
    for i in 0..5 {
        assert_eq!(
            server
                .send_event(&format!("n{i}"), "nobody.cares", &[], b"")
                .await,
            202
        );
    }
    // Refused: 3 invalid, 2 without a token, 1 too large.
    for _ in 0..3 {
        let status = server
            .http()
            .post(server.url("/v1/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "x")
            .header("ce-type", "job")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 400);
    }
    for _ in 0..2 {
        let status = reqwest::Client::new()
            .post(server.url("/v1/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "x")
            .header("ce-source", "/e2e")
            .header("ce-type", "job")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    // A declared length past the limit is refused before the body is read.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nce-specversion: 1.0\r\nce-id: big\r\nce-source: /e2e\r\nce-type: job\r\ncontent-length: {}\r\n\r\n",
        server.admin_token(),
        64 << 20
    );
    let address = server.url("").trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 64];
    let read = socket.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );

    let metrics = eventually(Duration::from_secs(30), || async {
        let m = server.metrics().await;
        let settled = sample(&m, "sluice_deliveries_pending", "") == 0.0
            && sample(&m, "sluice_events_dead_lettered_total", "broker=default") == 4.0
            && sample(&m, "sluice_trigger_delivered_total", "trigger=retried") == 12.0;
        settled.then_some(m)
    })
    .await;
    let m = |name: &str, labels: &str| sample(&metrics, name, labels);

    // Per broker, at rest: accepted = delivered + dead-lettered + unmatched.
    let accepted = m("sluice_events_accepted_total", "broker=default");
    let delivered = m("sluice_events_delivered_total", "broker=default");
    let dead = m("sluice_events_dead_lettered_total", "broker=default");
    let unmatched = m("sluice_events_unmatched_total", "broker=default");
    // 21 posted + 12 echo replies + 12 flaky replies.
    assert_eq!(accepted, 45.0);
    assert_eq!((delivered, dead, unmatched), (12.0, 4.0, 29.0));
    assert_eq!(accepted, delivered + dead + unmatched);

    // Per trigger: matched = delivered + dead-lettered + in flight (0 now);
    // a retry is not a drop.
    for (trigger, matched, retried, dead) in [
        ("echo", 12.0, 0.0, 0.0),
        ("retried", 12.0, 12.0, 0.0),
        ("doomed", 4.0, 4.0, 4.0),
    ] {
        let labels = format!("trigger={trigger}");
        assert_eq!(
            m("sluice_trigger_matched_total", &labels),
            matched,
            "{trigger}"
        );
        assert_eq!(
            m("sluice_trigger_retried_total", &labels),
            retried,
            "{trigger}"
        );
        assert_eq!(
            m("sluice_trigger_dead_lettered_total", &labels),
            dead,
            "{trigger}"
        );
        assert_eq!(
            matched,
            m("sluice_trigger_delivered_total", &labels) + dead,
            "{trigger}"
        );
        assert_eq!(m("sluice_trigger_in_flight", &labels), 0.0);
    }

    // Refusals, by reason; none of them was accepted.
    assert_eq!(
        m(
            "sluice_events_rejected_total",
            "broker=default,reason=missing_attribute"
        ),
        3.0
    );
    assert_eq!(
        m(
            "sluice_events_rejected_total",
            "broker=default,reason=unauthorized"
        ),
        2.0
    );
    assert_eq!(
        m(
            "sluice_events_rejected_total",
            "broker=default,reason=body_too_large"
        ),
        1.0
    );

    // Function metrics: one cold start, then warm ones; busy time and memory seen.
    assert_eq!(m("sluice_function_cold_starts_total", "function=echo"), 1.0);
    assert_eq!(
        m(
            "sluice_function_invocations_total",
            "function=echo,outcome=ok"
        ),
        12.0
    );
    assert_eq!(
        m(
            "sluice_function_invocations_total",
            "function=doomed,outcome=guest_error"
        ),
        8.0
    );
    assert!(m("sluice_function_busy_seconds_total", "function=echo") > 0.0);
    // A Rust guest's linear memory starts above 1 MiB.
    assert!(m("sluice_function_memory_peak_bytes", "function=echo") >= 1048576.0);

    // The API shows the same counts.
    let (_, body) = server.get("/v1/triggers/retried").await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view["stats"],
        json!({"matched": 12, "delivered": 12, "retried": 12, "dead_lettered": 0, "in_flight": 0})
    );
    let (status, body) = server.get("/v1/functions/doomed/invocations").await;
    assert_eq!(status, 200);
    let recent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let recent = recent["invocations"].as_array().unwrap();
    assert_eq!(recent.len(), 8);
    assert!(recent.iter().all(|i| i["outcome"] == "guest_error"));
    assert_eq!(recent.iter().filter(|i| i["cold"] == true).count(), 1);
    let (status, _) = server.get("/v1/functions/nope/invocations").await;
    assert_eq!(status, 404);

    // A deleted function's series go with it.
    assert_eq!(server.delete("/v1/functions/doomed").await.0, 200);
    let (_, text) = server.get("/metrics").await;
    assert!(!text.contains("function=\"doomed\""), "{text}");
    assert!(text.contains("function=\"echo\""));

    // So do a deleted trigger's.
    assert!(text.contains("trigger=\"retried\""), "{text}");
    assert_eq!(server.delete("/v1/triggers/retried").await.0, 200);
    let (_, text) = server.get("/metrics").await;
    assert!(!text.contains("trigger=\"retried\""), "{text}");
    assert!(text.contains("trigger=\"echo\""), "{text}");
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// `(trace id, span id)` of a `traceparent` value, checking its shape.
fn trace_parts(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn traceparent_flows_from_requests_and_events_into_calls_and_published_events() {
    let server = Server::start();
    let sink = Sink::start().await;
    let host = sink.url.trim_start_matches("http://").to_string();
    server
        .deploy_ok("caller", guests::CALLER, &format!("allow_outbound={host}"))
        .await;

    // An HTTP call with a traceparent: the outbound call continues the trace
    // in a span of its own.
    let response = server
        .http()
        .get(server.url(&format!("/fn/caller/?url={}/out", sink.url)))
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = sink.wait_for(1).await;
    let (trace, span) = trace_parts(&got[0].headers["traceparent"]);
    assert_eq!(trace, TRACE_ID);
    assert_ne!(span, "00f067aa0ba902b7");

    // Without one (or with a malformed one), a new trace starts.
    for given in [None, Some("00-zz-zz-01")] {
        let mut request = server
            .http()
            .get(server.url(&format!("/fn/caller/?url={}/out", sink.url)));
        if let Some(given) = given {
            request = request.header("traceparent", given);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    let got = sink.wait_for(3).await;
    let (a, _) = trace_parts(&got[1].headers["traceparent"]);
    let (b, _) = trace_parts(&got[2].headers["traceparent"]);
    assert!(a != TRACE_ID && b != TRACE_ID && a != b);

    // An event with the traceparent extension: the delivery to an external
    // subscriber carries it as a header; an event the function publishes
    // carries it (same trace, the delivery's span) as its extension.
    server
        .deploy_ok("step3", guests::CHAIN_STEP, "env=STEP=3")
        .await;
    server
        .trigger(
            json!({"name": "step3", "filter": {"attributes": {"type": "com.example.chain.step3"}},
                        "subscriber": {"function": "step3"}}),
        )
        .await;
    server
        .trigger(json!({"name": "done", "filter": {"attributes": {"type": "com.example.chain.completed"}},
                        "subscriber": {"uri": format!("{}/done", sink.url)}}))
        .await;
    let status = server
        .send_event(
            "t1",
            "com.example.chain.step3",
            &[("ce-traceparent", PARENT)],
            b"x",
        )
        .await;
    assert_eq!(status, 202);
    let got = sink.wait_for(4).await;
    let done = &got[3];
    assert_eq!(done.path, "/done");
    let (extension_trace, published_span) = trace_parts(&done.ce("traceparent").unwrap());
    assert_eq!(extension_trace, TRACE_ID);
    assert_ne!(published_span, "00f067aa0ba902b7");
    let (header_trace, delivery_span) = trace_parts(&done.headers["traceparent"]);
    assert_eq!(header_trace, TRACE_ID);
    assert_ne!(delivery_span, published_span);

    // Every invocation's log lines carry its trace id (here: the warning
    // about a denied outbound call).
    let response = server
        .http()
        .get(server.url("/fn/caller/?url=http://denied.example.com/"))
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(
        server.log().contains(&format!("trace_id={TRACE_ID}")),
        "no trace_id in the log:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_served_route_is_documented() {
    let server = Server::start();
    let anonymous = reqwest::Client::new();
    let response = anonymous
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the document is anonymous");
    let document: serde_json::Value = response.json().await.unwrap();
    // `.ci/run` validates this copy with openapi-spec-validator.
    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/openapi.json");
    std::fs::write(copy, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();

    // Each documented operation reaches a handler: not the router's own 404
    // (`no_route`) or 405.
    let mut operations = 0;
    for (template, item) in paths {
        let path = template
            .replace("{name}", "nope")
            .replace("{id}", "0")
            .replace("{broker}", "b")
            .replace("{path}", "x");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let response = server
                .http()
                .request(method.to_uppercase().parse().unwrap(), server.url(&path))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let streaming = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            // The event stream never ends: its head is the answer.
            let body = if streaming {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            assert_ne!(status, 405, "{method} {template} is documented, not served");
            assert!(
                !(status == 404 && body.contains("no_route")),
                "{method} {template} is documented, not served"
            );
            // A handler that fails (or panics) on a request it should
            // refuse is not serving the route either.
            assert!(
                status < 500,
                "{method} {template}: {status} for {path}: {body}"
            );
        }
    }
    assert!(operations >= 30, "{operations} operations");

    // And the other way: every route the suite uses is documented (the
    // unit test `every_route_is_documented` keeps routes from being mounted
    // outside the documented router). The fallback stays a fallback.
    for path in [
        "/v1/functions/{name}",
        "/v1/functions/{name}/invocations",
        "/v1/triggers/{name}",
        "/v1/deadletters/{id}/replay",
        "/fn/{name}/{path}",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let (status, body) = server.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body.contains("no_route"), "{body}");
}

#[tokio::test]
async fn the_event_stream_shows_events_live_and_ends_at_shutdown() {
    let mut server = Server::start_with(&["--shutdown-timeout-secs", "10"]);
    server.deploy_ok("echo", guests::EVENT_ECHO, "").await;
    server
        .trigger(json!({"name": "echo", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "echo"}}))
        .await;
    let (status, _) = {
        let response = reqwest::Client::new()
            .get(server.url("/v1/events/stream"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 401, "the stream needs a token");

    let mut stream = server
        .http()
        .get(server.url("/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(server.send_event("live-1", "job", &[], b"{}").await, 202);
    let mut seen = String::new();
    let wanted = [
        "event: accepted",
        "\"id\":\"live-1\"",
        "\"matched\":[\"echo\"]",
        "event: delivered",
        "\"trigger\":\"echo\"",
    ];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !wanted.iter().all(|w| seen.contains(w)) {
            let chunk = stream
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all of {wanted:?} in:\n{seen}"));

    // An open stream does not hold up shutdown: the drain ends because
    // nothing is left in flight, not because its deadline passed.
    let (exit, log) = tokio::task::spawn_blocking(move || {
        let exit = server.terminate();
        (exit, server.log())
    })
    .await
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        !log.contains("shutdown deadline passed"),
        "shutdown waited for the stream until its deadline:\n{log}"
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ended");
}
