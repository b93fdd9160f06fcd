//! The event router end to end: ingress validation, fan-out, replies,
//! chains, retries, dead letters, restart and crash recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;

use crate::harness::{Backend, QUIET, Received, Server, Sink, error_code, eventually, quiet_for};

crate::both_backends!(
    fan_out_reaches_each_subscriber_once_and_replies_re_enter_the_broker,
    attributes_and_data_arrive_at_the_guest_byte_identical,
    a_chain_of_three_functions_linked_by_published_events_completes,
    retries_follow_the_trigger_policy_then_dead_letter_and_replay,
    permanent_failures_are_dead_lettered_without_retries,
    ingress_validation_rejects_each_broken_rule_with_its_code,
    triggers_validate_report_readiness_and_survive_restart,
    an_event_function_can_be_invoked_directly_with_an_event,
    a_cesql_trigger_gets_the_events_its_expression_selects,
    data_conditions_route_by_fields_of_json_data,
    explain_names_each_triggers_verdict_and_delivers_nothing,
    a_repeat_of_source_and_id_is_a_duplicate_delivered_once_also_after_a_crash,
    a_full_backlog_answers_503_with_retry_after_and_takes_events_again_once_it_drains,
);

fn sink_trigger(
    name: &str,
    sink: &Sink,
    path: &str,
    filters: serde_json::Value,
) -> serde_json::Value {
    json!({"name": name, "filters": filters, "subscriber": {"uri": format!("{}{path}", sink.url)}})
}

async fn fan_out_reaches_each_subscriber_once_and_replies_re_enter_the_broker(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server
        .deploy_ok("order-processor", guests::ORDER_PROCESSOR, "")
        .await;
    server.deploy_ok("inventory", guests::INVENTORY, "").await;
    for (name, function) in [("orders", "order-processor"), ("stock", "inventory")] {
        server
            .trigger(json!({
                "name": name,
                "filter": {"attributes": {"type": "com.example.order.created"}},
                "subscriber": {"function": function},
            }))
            .await;
    }
    server
        .trigger(sink_trigger(
            "replies",
            &sink,
            "/replies",
            json!([{"any": [{"exact": {"type": "com.example.order.processed"}}, {"exact": {"type": "com.example.inventory.reserved"}}]}]),
        ))
        .await;

    let status = server
        .send_event(
            "order-1",
            "com.example.order.created",
            &[
                ("content-type", "application/json"),
                ("ce-subject", "cart-9"),
            ],
            br#"{"sku":"A1","qty":2}"#,
        )
        .await;
    assert_eq!(status, 202);
    let got = sink.wait_for(2).await;
    let types: BTreeSet<String> = got.iter().map(|r| r.ce("type").unwrap()).collect();
    assert_eq!(
        types,
        [
            "com.example.inventory.reserved",
            "com.example.order.processed"
        ]
        .map(String::from)
        .into()
    );
    for reply in &got {
        assert_eq!(reply.body, br#"{"sku":"A1","qty":2}"#);
        assert_eq!(reply.ce("subject").as_deref(), Some("cart-9"));
        assert_eq!(
            reply.ce("sluicecause").as_deref(),
            Some("order-1"),
            "a reply carries its cause"
        );
        assert_eq!(reply.ce("sluicehops").as_deref(), Some("1"));
    }
    // A non-matching event reaches nobody.
    assert_eq!(
        server
            .send_event("x-1", "com.example.unrelated", &[], b"")
            .await,
        202
    );
    let sample = |metrics: &BTreeMap<(String, String), f64>, name: &str, labels: &str| {
        metrics
            .get(&(name.to_string(), labels.to_string()))
            .copied()
    };
    eventually(Duration::from_secs(30), || async {
        let metrics = server.metrics().await;
        let unmatched = sample(&metrics, "sluice_events_unmatched_total", "broker=default");
        (unmatched == Some(1.0)).then_some(())
    })
    .await;
    // Routed (as unmatched); now nothing else arrives, and the counters stay.
    let (got, delivered) = quiet_for(QUIET, Duration::from_secs(30), || async {
        let metrics = server.metrics().await;
        let delivered = ["orders", "stock"].map(|t| {
            sample(
                &metrics,
                "sluice_trigger_delivered_total",
                &format!("trigger={t}"),
            )
        });
        (sink.received(), delivered)
    })
    .await;
    assert_eq!(
        got.len(),
        2,
        "each subscriber got the event once, and nothing else arrived: {got:#?}"
    );
    assert_eq!(delivered, [Some(1.0), Some(1.0)], "orders, stock");
}

async fn attributes_and_data_arrive_at_the_guest_byte_identical(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server.deploy_ok("event-echo", guests::EVENT_ECHO, "").await;
    server
        .trigger(json!({"name": "echo", "filters": [{"prefix": {"type": "rt."}}, {"not": {"suffix": {"type": ".echo"}}}], "subscriber": {"function": "event-echo"}}))
        .await;
    server
        .trigger(sink_trigger(
            "out",
            &sink,
            "/",
            json!([{"suffix": {"type": ".echo"}}]),
        ))
        .await;

    // Binary mode, non-UTF-8 data, percent-encoded unicode, every optional attribute.
    let data: Vec<u8> = vec![0, 159, 146, 150, 255, b'\n', b'x'];
    let status = server
        .send_event(
            "rt-1",
            "rt.binary",
            &[
                ("content-type", "application/octet-stream"),
                ("ce-subject", "caf%C3%A9 %25 %22q%22"),
                ("ce-time", "2026-11-22T10:00:00.123+01:00"),
                ("ce-dataschema", "https://example.com/schema.json"),
                ("ce-myext", "Mixed Case value"),
            ],
            &data,
        )
        .await;
    assert_eq!(status, 202);

    // Structured mode: JSON data with its own spacing must survive as is.
    let structured = r#"{"specversion":"1.0","id":"rt-2","source":"/e2e","type":"rt.structured","datacontenttype":"application/json","data":{ "a" : [1,  2.50, "ü"] }}"#;
    let response = server
        .http()
        .post(server.url("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(structured)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let got = sink.wait_for(2).await;
    let by_id: BTreeMap<String, &Received> = got.iter().map(|r| (r.ce("id").unwrap(), r)).collect();
    let binary = by_id["rt-1-echo"];
    assert_eq!(binary.body, data);
    assert_eq!(binary.headers["content-type"], "application/octet-stream");
    assert_eq!(binary.ce("subject").as_deref(), Some("café % \"q\""));
    assert_eq!(
        binary.ce("time").as_deref(),
        Some("2026-11-22T10:00:00.123+01:00")
    );
    assert_eq!(
        binary.ce("dataschema").as_deref(),
        Some("https://example.com/schema.json")
    );
    assert_eq!(binary.ce("myext").as_deref(), Some("Mixed Case value"));
    assert_eq!(binary.ce("source").as_deref(), Some("/e2e"));
    let structured = by_id["rt-2-echo"];
    assert_eq!(structured.body, r#"{ "a" : [1,  2.50, "ü"] }"#.as_bytes());
}

async fn a_chain_of_three_functions_linked_by_published_events_completes(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    for step in 1..=3 {
        server
            .deploy_ok(
                &format!("step{step}"),
                guests::CHAIN_STEP,
                &format!("env=STEP={step}"),
            )
            .await;
        server
            .trigger(json!({
                "name": format!("to-step{step}"),
                "filter": {"attributes": {"type": format!("com.example.chain.step{step}")}},
                "subscriber": {"function": format!("step{step}")},
            }))
            .await;
    }
    server
        .trigger(sink_trigger(
            "done",
            &sink,
            "/done",
            json!([{"exact": {"type": "com.example.chain.completed"}}]),
        ))
        .await;
    assert_eq!(
        server
            .send_event(
                "job-7",
                "com.example.chain.step1",
                &[("content-type", "text/plain")],
                b"payload"
            )
            .await,
        202
    );
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].ce("id").as_deref(), Some("job-7-s1-s2-s3"));
    assert_eq!(got[0].ce("sluicehops").as_deref(), Some("3"));
    assert_eq!(got[0].ce("sluicecause").as_deref(), Some("job-7-s1-s2"));
    assert_eq!(got[0].body, b"payload");
}

async fn retries_follow_the_trigger_policy_then_dead_letter_and_replay(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    // k = 2 failures, R = 3 retries: k + 1 = 3 attempts, then success.
    server
        .deploy_ok("flaky", guests::FLAKY, "env=FAIL_FIRST=2")
        .await;
    server
        .trigger(json!({"name": "flaky", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "flaky"},
                        "delivery": {"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}}))
        .await;
    // k = 5 failures, R = 2 retries: R + 1 = 3 attempts, then a dead letter.
    server
        .deploy_ok("doomed", guests::FLAKY, "env=FAIL_FIRST=5")
        .await;
    server
        .trigger(json!({"name": "doomed", "filter": {"attributes": {"type": "doomed-job"}}, "subscriber": {"function": "doomed"},
                        "delivery": {"retry": 2, "backoffDelay": "PT0.05S", "deadLetterSink": {"uri": format!("{}/dlq", sink.url)}}}))
        .await;
    server
        .trigger(sink_trigger(
            "ok",
            &sink,
            "/ok",
            json!([{"exact": {"type": "com.example.flaky.succeeded"}}]),
        ))
        .await;

    assert_eq!(server.send_event("j1", "job", &[], b"").await, 202);
    assert_eq!(server.send_event("j2", "doomed-job", &[], b"").await, 202);
    let got = sink.wait_for(2).await;
    let ok = got
        .iter()
        .find(|r| r.path == "/ok")
        .expect("the flaky job succeeded");
    assert_eq!(ok.ce("subject").as_deref(), Some("j1"));
    assert_eq!(ok.body, b"3", "succeeded on attempt k + 1");
    let dlq = got
        .iter()
        .find(|r| r.path == "/dlq")
        .expect("the dead letter reached the sink");
    assert_eq!(dlq.ce("id").as_deref(), Some("j2"));
    assert_eq!(dlq.ce("knativeerrordest").as_deref(), Some("doomed"));
    assert_eq!(dlq.ce("knativeerrorcode").as_deref(), Some("500"));
    assert!(
        dlq.ce("knativeerrordata").unwrap().contains("attempt 3"),
        "{dlq:?}"
    );

    let (_, letters) = server.get("/v1/deadletters?trigger=doomed").await;
    let letters: serde_json::Value = serde_json::from_str(&letters).unwrap();
    let letters = letters["deadletters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["attempts"], 3, "R + 1 attempts");
    let (_, none) = server.get("/v1/deadletters?trigger=flaky").await;
    assert_eq!(none, r#"{"deadletters":[]}"#);

    // Fix the function, replay the dead letter: it is delivered.
    let response = server
        .http()
        .patch(server.url("/v1/functions/doomed"))
        .body(r#"{"env": {"FAIL_FIRST": "0"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = letters[0]["id"].as_str().unwrap();
    let (status, body) = server
        .post_json(&format!("/v1/deadletters/{id}/replay"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let got = sink.wait_for(3).await;
    let replayed = got
        .iter()
        .filter(|r| r.path == "/ok")
        .find(|r| r.ce("subject").as_deref() == Some("j2"));
    assert!(replayed.is_some(), "{got:#?}");
    let (_, after) = server.get("/v1/deadletters").await;
    assert_eq!(after, r#"{"deadletters":[]}"#);
    let (status, _) = server
        .post_json(&format!("/v1/deadletters/{id}/replay"), json!({}))
        .await;
    assert_eq!(status, 404, "a dead letter replays once");
}

async fn permanent_failures_are_dead_lettered_without_retries(backend: Backend) {
    let server = backend.start().await;
    server.deploy_ok("flaky", guests::FLAKY, "").await;
    server
        .trigger(json!({"name": "p", "filter": {"attributes": {"type": "x.permanent"}}, "subscriber": {"function": "flaky"},
                        "delivery": {"retry": 5, "backoffDelay": "PT5S"}}))
        .await;
    assert_eq!(server.send_event("p1", "x.permanent", &[], b"").await, 202);
    let letters = eventually(Duration::from_secs(10), || async {
        let (_, body) = server.get("/v1/deadletters").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let letters = v["deadletters"].as_array().unwrap().clone();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["event"]["knativeerrorcode"], "400");
}

#[tokio::test]
async fn finished_deliveries_and_deleted_dead_letters_stay_finished_after_a_crash_while_idle() {
    let mut server = Server::start();
    let sink = Sink::start().await;
    server.deploy_ok("flaky", guests::FLAKY, "").await;
    server
        .trigger(sink_trigger(
            "ok",
            &sink,
            "/ok",
            json!([{"exact": {"type": "x.ok"}}]),
        ))
        .await;
    server
        .trigger(json!({"name": "p", "filter": {"attributes": {"type": "x.permanent"}}, "subscriber": {"function": "flaky"}}))
        .await;
    assert_eq!(server.send_event("d1", "x.ok", &[], b"").await, 202);
    assert_eq!(server.send_event("p1", "x.permanent", &[], b"").await, 202);
    sink.wait_for(1).await;
    let letters = eventually(Duration::from_secs(10), || async {
        let (_, body) = server.get("/v1/deadletters").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let letters = v["deadletters"].as_array().unwrap().clone();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let (status, body) = server.delete(&format!("/v1/deadletters/{id}")).await;
    assert_eq!(status, 200, "{body}");
    // Both deliveries ended; from here on nothing reaches the server, so
    // nothing but the journal's own idle write records that they did.
    eventually(Duration::from_secs(10), || async {
        (server.metric("sluice_deliveries_pending").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(sink.quiet().await.len(), 1);
    server.restart(); // SIGKILL, then start again
    let got = sink.quiet().await;
    assert_eq!(got.len(), 1, "the finished delivery ran again: {got:#?}");
    let (_, body) = server.get("/v1/deadletters").await;
    assert_eq!(
        body, r#"{"deadletters":[]}"#,
        "the deleted dead letter came back"
    );
    assert_eq!(server.metric("sluice_deliveries_pending").await, 0.0);
}

/// Posts one event to `broker`; its status and body.
async fn post_to(server: &Server, broker: &str, id: &str) -> (u16, bool, String) {
    let response = server
        .http()
        .post(server.url(&format!("/v1/brokers/{broker}/events")))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    (status, retry_after, response.text().await.unwrap())
}

/// Embedded mode counts each delivery as it is stored, so the bounds are
/// exact; a cluster node checks them against the backlog it read at most a
/// second ago, so events posted in that second may pass them: there the
/// test posts until it is refused, slowly once past the bound. An event no
/// trigger matches is taken in both.
async fn a_full_backlog_answers_503_with_retry_after_and_takes_events_again_once_it_drains(
    backend: Backend,
) {
    let server = backend
        .start_with(&[
            "--max-pending-deliveries",
            "10",
            "--max-pending-per-broker",
            "6",
        ])
        .await;
    // Nothing takes the deliveries yet: they stay pending, waiting out a
    // retry delay far longer than the test.
    for (name, broker) in [("stuck", "default"), ("stuck-side", "side")] {
        server
            .trigger(json!({"name": name, "broker": broker, "filter": {"attributes": {"type": "t"}}, "subscriber": {"uri": "http://127.0.0.1:9/"}, "delivery": {"retry": 100, "backoffDelay": "PT10M", "backoffPolicy": "linear"}}))
            .await;
    }
    let exact = backend == Backend::Embedded;
    // Posts to `broker` until refused (at most `accepted` times when the
    // bound is exact); the refusal's body.
    let fill = |broker: &'static str, accepted: usize, prefix: &'static str| {
        let server = &server;
        async move {
            let mut sent = 0;
            loop {
                let (status, retry_after, body) =
                    post_to(server, broker, &format!("{prefix}{sent}")).await;
                if status == 202 {
                    sent += 1;
                    assert!(!exact || sent <= accepted, "accepted past the bound");
                    assert!(sent < accepted + 20, "never refused");
                    if sent >= accepted && !exact {
                        // Past the bound: give the node time to read the
                        // backlog again (it does every second).
                        tokio::time::sleep(Duration::from_millis(2_500)).await;
                    }
                    continue;
                }
                assert_eq!(status, 503, "{body}");
                assert!(retry_after, "503 without Retry-After");
                assert_eq!(error_code(&body), "backlog_full", "{body}");
                assert!(
                    !exact || sent == accepted,
                    "refused early, after {sent}: {body}"
                );
                return body;
            }
        }
    };
    // One broker's bound first, then the server's.
    let body = fill("default", 6, "d").await;
    let message = |body: &str| {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        body["error"]["message"].as_str().unwrap().to_owned()
    };
    assert!(message(&body).contains("at broker \"default\""), "{body}");
    // The CLI says why, and when to try again.
    let cli = std::process::Command::new(crate::harness::SLUICE)
        .args(["event", "send", "--type", "t", "--source", "/cli"])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", server.admin_token())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "{stderr}");
    assert!(
        stderr.contains("(backlog_full)") && stderr.contains("s (Retry-After)"),
        "{stderr}"
    );
    // An event no trigger matches adds nothing: taken.
    assert_eq!(server.send_event("unmatched", "other", &[], b"").await, 202);
    // The other broker still takes events while the whole is not full.
    assert_eq!(post_to(&server, "side", "s-first").await.0, 202);
    let body = fill("side", 3, "s").await;
    assert!(!body.contains("at broker"), "the server's bound: {body}");
    let metrics = server.metrics().await;
    assert!(
        metrics
            .get(&(
                "sluice_events_rejected_total".to_string(),
                "broker=side,reason=backlog_full".to_string()
            ))
            .is_some_and(|n| *n >= 1.0),
        "{metrics:?}"
    );
    // Drained (a deleted trigger's deliveries end at once in embedded mode,
    // and count no more in cluster mode, where they wait out their delay
    // in the stream): accepted again.
    for name in ["stuck", "stuck-side"] {
        let (status, _) = server.delete(&format!("/v1/triggers/{name}")).await;
        assert_eq!(status, 200);
    }
    // A new trigger on the broker: its events count again, and are taken
    // (the deleted ones' deliveries, still waiting out their delay in
    // cluster mode, hold nothing back).
    server
        .trigger(json!({"name": "fresh", "broker": "default", "filter": {"attributes": {"type": "t"}}, "subscriber": {"uri": "http://127.0.0.1:9/"}, "delivery": {"retry": 0}}))
        .await;
    eventually(Duration::from_secs(30), || async {
        (post_to(&server, "default", "again").await.0 == 202).then_some(())
    })
    .await;
}

async fn ingress_validation_rejects_each_broken_rule_with_its_code(backend: Backend) {
    let server = backend.start_with(&["--max-event-bytes", "4096"]).await;
    let sink = Sink::start().await;
    server
        .trigger(sink_trigger("all", &sink, "/", json!([])))
        .await;
    let binary = |headers: &[(&str, &str)]| {
        let mut all: Vec<(String, String)> = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in headers {
            all.retain(|(name, _)| name != k);
            if !v.is_empty() || *k == "ce-id" || *k == "ce-type" {
                all.push((k.to_string(), v.to_string()));
            }
        }
        all
    };
    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "binary_mode_missing_ce_id_is_400",
            binary(&[])
                .into_iter()
                .filter(|(k, _)| k != "ce-id")
                .collect(),
            "missing_attribute",
        ),
        (
            "binary_mode_missing_ce_source_is_400",
            binary(&[])
                .into_iter()
                .filter(|(k, _)| k != "ce-source")
                .collect(),
            "missing_attribute",
        ),
        (
            "binary_mode_empty_ce_type_is_400",
            binary(&[("ce-type", "")]),
            "empty_attribute",
        ),
        (
            "binary_mode_specversion_0_3_is_400",
            binary(&[("ce-specversion", "0.3")]),
            "unsupported_specversion",
        ),
        (
            "binary_mode_source_not_a_uri_reference_is_400",
            binary(&[("ce-source", "a%20b c")]),
            "invalid_source",
        ),
        (
            "binary_mode_time_not_rfc3339_is_400",
            binary(&[("ce-time", "yesterday")]),
            "invalid_time",
        ),
        (
            "binary_mode_extension_name_not_lowercase_alnum_is_400",
            binary(&[("ce-my_ext", "v")]),
            "invalid_extension_name",
        ),
        (
            "binary_mode_invalid_utf8_after_decoding_is_400",
            binary(&[("ce-subject", "%C3%28")]),
            "invalid_utf8",
        ),
        (
            "binary_mode_bad_percent_encoding_is_400",
            binary(&[("ce-subject", "50%")]),
            "invalid_percent_encoding",
        ),
        (
            "binary_mode_signed_percent_escape_is_400",
            binary(&[("ce-subject", "%+f")]),
            "invalid_percent_encoding",
        ),
        (
            "binary_mode_source_with_two_fragments_is_400",
            binary(&[("ce-source", "a#b#c")]),
            "invalid_source",
        ),
        (
            "binary_mode_without_ce_headers_is_400",
            vec![],
            "not_a_cloudevent",
        ),
    ];
    for (name, headers, code) in cases {
        let mut request = server.http().post(server.url("/v1/events"));
        for (k, v) in &headers {
            request = request.header(k, v);
        }
        let response = request.body("{}").send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(
            (status, error_code(&body).as_str()),
            (400, code),
            "{name}: {body}"
        );
    }

    // Binary-mode JSON data is held to the depth structured mode is (the
    // stored event must read back): one level less than the limit, as
    // `data` sits inside the event.
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for (depth, expected) in [(63, 202), (64, 400)] {
        let mut request = server.http().post(server.url("/v1/events"));
        for (k, v) in binary(&[("ce-id", &format!("deep-{depth}"))]) {
            request = request.header(k, v);
        }
        let response = request
            .header("content-type", "application/json")
            .body(deep(depth))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(
            status, expected,
            "binary_mode_json_data_{depth}_deep: {body}"
        );
        if status == 400 {
            assert_eq!(error_code(&body), "json_too_deep");
        }
    }

    let structured = |body: &str| {
        server
            .http()
            .post(server.url("/v1/events"))
            .header("content-type", "application/cloudevents+json")
            .body(body.to_string())
            .send()
    };
    let cases = [
        (
            "structured_mode_missing_id_is_400",
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            "missing_attribute",
        ),
        (
            "structured_mode_empty_id_is_400",
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            "empty_attribute",
        ),
        (
            "structured_mode_numeric_type_is_400",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":7}"#,
            "invalid_attribute_type",
        ),
        (
            "structured_mode_data_and_data_base64_is_400",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
            "data_and_data_base64",
        ),
        (
            "structured_mode_invalid_base64_is_400",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"*"}"#,
            "invalid_data_base64",
        ),
        (
            "structured_mode_malformed_json_is_400",
            r#"{"specversion":"1.0""#,
            "malformed_json",
        ),
        (
            "structured_mode_bad_extension_name_is_400",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Ext":"v"}"#,
            "invalid_extension_name",
        ),
    ];
    for (name, body, code) in cases {
        let response = structured(body).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(
            (status, error_code(&text).as_str()),
            (400, code),
            "{name}: {text}"
        );
    }

    let batch = |body: &str| {
        server
            .http()
            .post(server.url("/v1/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(body.to_string())
            .send()
    };
    let response = batch("[]").await.unwrap();
    assert_eq!(response.status(), 400, "batch_mode_empty_array_is_400");
    assert_eq!(error_code(&response.text().await.unwrap()), "empty_batch");
    let response = batch(r#"[{"specversion":"1.0","id":"b1","source":"/s","type":"t"},{"specversion":"1.0","id":"","source":"/s","type":"t"}]"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "batch_mode_is_all_or_nothing");
    let response = batch(r#"[{"specversion":"1.0","id":"b2","source":"/s","type":"t"},{"specversion":"1.0","id":"b3","source":"/s","type":"t"}]"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let response = server
        .http()
        .post(server.url("/v1/events"))
        .header("ce-specversion", "1.0")
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "body_over_the_cap_is_413");
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = server
            .http()
            .request(method.clone(), server.url("/v1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}_on_ingress_is_405");
    }
    let response = server
        .http()
        .post(server.url("/v1/brokers/Not_A_Broker/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Only the valid batch and the deep-but-allowed event got through:
    // nothing of the rejected ones.
    sink.wait_for(3).await;
    let got = sink.quiet().await;
    let ids: BTreeSet<String> = got.iter().map(|r| r.ce("id").unwrap()).collect();
    assert_eq!(
        ids,
        ["b2", "b3", "deep-63"].map(String::from).into(),
        "{got:?}"
    );
    assert_eq!(got.len(), 3, "each once: {got:?}");
    let accepted = got
        .iter()
        .find(|r| r.ce("id").as_deref() == Some("deep-63"))
        .unwrap();
    assert_eq!(accepted.body, deep(63).into_bytes(), "delivered as sent");
}

async fn triggers_validate_report_readiness_and_survive_restart(backend: Backend) {
    let mut server = backend.start().await;
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "bad", "filters": [{"exact": {}}], "subscriber": {"function": "f"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_trigger"),
        "{body}"
    );
    assert!(body.contains("filters[0].exact"), "{body}");
    server
        .trigger(json!({"name": "later", "broker": "b2", "filter": {"attributes": {"type": "t"}}, "subscriber": {"function": "not-yet"}}))
        .await;
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "later", "subscriber": {"function": "x"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "trigger_exists")
    );
    let (_, body) = server.get("/v1/triggers/later").await;
    let trigger: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trigger["status"]["ready"], false);
    assert!(
        trigger["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("not-yet"),
        "{body}"
    );
    assert!(trigger.get("delivery").is_none(), "it sets none: {body}");
    assert_eq!(
        trigger["status"]["delivery"]["retry"], 10,
        "Knative's default in force"
    );

    server.restart();
    server.wait_ready().await;
    server.deploy_ok("not-yet", guests::EVENT_ECHO, "").await;
    let (_, body) = server.get("/v1/triggers/later").await;
    let trigger: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trigger["status"]["ready"], true, "{body}");
    assert_eq!(trigger["broker"], "b2");
    assert_eq!(server.delete("/v1/triggers/later").await.0, 200);
    let (status, _) = server.get("/v1/triggers/later").await;
    assert_eq!(status, 404);
}

async fn an_event_function_can_be_invoked_directly_with_an_event(backend: Backend) {
    let server = backend.start().await;
    server
        .deploy_ok("order-processor", guests::ORDER_PROCESSOR, "")
        .await;
    let response = server
        .http()
        .post(server.url("/v1/functions/order-processor/invoke"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"o1","source":"/shop","type":"com.example.order.created","data":{"n":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["replies"][0]["type"], "com.example.order.processed");
    assert_eq!(answer["replies"][0]["data"], json!({"n": 1}));
    let response = server
        .http()
        .post(server.url("/v1/functions/order-processor/invoke"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"o2","source":"/shop","type":"other"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "a permanent guest error");
}

/// The crash harness: numbered events fan out to two sinks, a function
/// that fails once then succeeds (retries; its replies go to a third sink),
/// and a function that always fails (dead letters), while the server is
/// SIGKILLed at a random moment, sometimes again during start-up and
/// recovery. Every event that got a 202 must reach both sinks and the
/// retried function, and be dead-lettered by the failing one; duplicates
/// are counted. `SLUICE_CRASH_CYCLES` (default 3) sets the cycles,
/// `SLUICE_CRASH_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_fan_out_retries_and_dead_letters_loses_no_acknowledged_event() {
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cycles: u64 = std::env::var("SLUICE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("crash test seed {seed} ({cycles} cycles); rerun with SLUICE_CRASH_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };

    let mut server = Server::start();
    let sink = Sink::start().await;
    for path in ["a", "b"] {
        server
            .trigger(sink_trigger(
                path,
                &sink,
                &format!("/{path}"),
                json!([{"prefix": {"type": "crash."}}]),
            ))
            .await;
    }
    server
        .deploy_ok("retried", guests::FLAKY, "env=FAIL_FIRST=1")
        .await;
    server
        .deploy_ok("doomed", guests::FLAKY, "env=FAIL_FIRST=1000")
        .await;
    server
        .trigger(json!({"name": "retried", "filters": [{"prefix": {"type": "crash."}}], "subscriber": {"function": "retried"},
                        "delivery": {"retry": 3, "backoffDelay": "PT0.01S"}}))
        .await;
    server
        .trigger(json!({"name": "doomed", "filters": [{"prefix": {"type": "crash."}}], "subscriber": {"function": "doomed"},
                        "delivery": {"retry": 1, "backoffDelay": "PT0.01S"}}))
        .await;
    server
        .trigger(sink_trigger(
            "ok",
            &sink,
            "/ok",
            json!([{"exact": {"type": "com.example.flaky.succeeded"}}]),
        ))
        .await;

    let mut acknowledged = BTreeSet::new();
    let mut sent = 0u64;
    let mut kills = 0u64;
    for cycle in 0..cycles {
        // After the cycle's first 202, so that every kill has acknowledged
        // events to lose (a kill before any would prove nothing).
        let kill_after = Duration::from_millis(next() % 400);
        let url = server.url("/v1/events");
        let client = server.http().clone();
        let start = sent;
        let (first_ack, first_acked) = tokio::sync::oneshot::channel();
        let sender = tokio::spawn(async move {
            let mut first_ack = Some(first_ack);
            let mut acked = Vec::new();
            for n in start..start + 10_000 {
                let result = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("e{n}"))
                    .header("ce-source", "/crash")
                    .header("ce-type", "crash.test")
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status() == 202 => {
                        acked.push(format!("e{n}"));
                        if let Some(first_ack) = first_ack.take() {
                            let _ = first_ack.send(());
                        }
                    }
                    Ok(response) => panic!("unexpected status {}", response.status()),
                    Err(_) => break, // the server died
                }
            }
            acked
        });
        tokio::time::timeout(Duration::from_secs(30), first_acked)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}, cycle {cycle}: no 202 within 30 s"))
            .unwrap_or_else(|_| {
                panic!("seed {seed}, cycle {cycle}: the sender stopped before any 202")
            });
        tokio::time::sleep(kill_after).await;
        server.kill();
        kills += 1;
        let acked = sender.await.unwrap();
        sent += 10_000;
        assert!(
            !acked.is_empty(),
            "seed {seed}, cycle {cycle}: killed with nothing acknowledged"
        );
        acknowledged.extend(acked.iter().cloned());
        let during_start = next() % 2 == 0;
        if during_start {
            let delay = Duration::from_millis(next() % 150);
            let server_ref = &mut server;
            tokio::task::block_in_place(|| server_ref.crash_during_start(delay));
            kills += 1;
        }
        println!(
            "cycle {cycle}: killed {kill_after:?} after the first 202, {} events acknowledged{}",
            acked.len(),
            if during_start {
                ", killed again during start-up"
            } else {
                ""
            }
        );
        server.restart();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = sink.received();
        let delivered: BTreeSet<(String, String)> = got
            .iter()
            .map(|r| {
                let id = if r.path == "/ok" {
                    r.ce("subject").unwrap()
                } else {
                    r.ce("id").unwrap()
                };
                (r.path.clone(), id)
            })
            .collect();
        let (_, letters) = server.get("/v1/deadletters?trigger=doomed").await;
        let letters: serde_json::Value = serde_json::from_str(&letters).unwrap();
        let dead: BTreeSet<String> = letters["deadletters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["event"]["id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<String> = acknowledged
            .iter()
            .flat_map(|id| ["/a", "/b", "/ok"].map(|p| (p.to_string(), id.clone())))
            .filter(|key| !delivered.contains(key))
            .map(|(p, id)| format!("{id} at {p}"))
            .chain(
                acknowledged
                    .iter()
                    .filter(|id| !dead.contains(*id))
                    .map(|id| format!("{id} not dead-lettered")),
            )
            .collect();
        if missing.is_empty() {
            let duplicates = got.len() - delivered.len();
            println!(
                "all {} acknowledged events arrived everywhere; {} sink requests, {duplicates} duplicates over {kills} kills",
                acknowledged.len(),
                got.len()
            );
            // At-least-once: a duplicate is a delivery that was in flight at a kill.
            assert!(
                duplicates as u64 <= kills * 256,
                "more duplicates than could have been in flight"
            );
            break;
        }
        if std::time::Instant::now() >= deadline {
            let metrics = server.metrics().await;
            panic!(
                "seed {seed}: {} acknowledged deliveries missing, such as {:?}; pending {:?}, in flight {:?}",
                missing.len(),
                &missing[..missing.len().min(5)],
                metrics.get(&("sluice_deliveries_pending".to_string(), String::new())),
                metrics.get(&("sluice_deliveries_in_flight".to_string(), String::new())),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_cesql_trigger_gets_the_events_its_expression_selects(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server
        .trigger(sink_trigger(
            "big-orders",
            &sink,
            "/big",
            json!([{"cesql": "type LIKE 'shop.order.%' AND INT(amount) > 100 AND region IN ('eu', 'uk')"}]),
        ))
        .await;
    let send = |id: &'static str, ty: &'static str, amount: &'static str, region: &'static str| {
        let server = &server;
        async move {
            let status = server
                .send_event(id, ty, &[("ce-amount", amount), ("ce-region", region)], b"")
                .await;
            assert_eq!(status, 202);
        }
    };
    send("1", "shop.order.created", "250", "eu").await;
    send("2", "shop.order.created", "50", "eu").await; // too small
    send("3", "shop.order.created", "250", "us").await; // elsewhere
    send("4", "shop.refund", "250", "uk").await; // another type
    send("5", "shop.order.created", "lots", "uk").await; // a failed cast matches nothing
    send("6", "shop.order.paid", "101", "uk").await;
    sink.wait_for(2).await;
    let got = sink.quiet().await;
    let ids: BTreeSet<String> = got.iter().map(|r| r.ce("id").unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["1".to_string(), "6".to_string()]));
    // The trigger reads back as written.
    let (status, body) = server.get("/v1/triggers/big-orders").await;
    assert_eq!(status, 200);
    assert!(body.contains("INT(amount) > 100"), "{body}");
    // A broken expression is refused at creation, naming where.
    for (expression, says) in [
        ("type = 'a' AND", "at character 15"),
        ("NOPE(type)", "no function NOPE taking 1 argument"),
        ("LENGTH(type)", "yields an Integer"),
        ("type LIKE 5", "a string literal pattern"),
    ] {
        let (status, body) = server
            .post_json(
                "/v1/triggers",
                json!({"name": "broken", "filters": [{"cesql": expression}], "subscriber": {"uri": format!("{}/x", sink.url)}}),
            )
            .await;
        assert_eq!(status, 400, "{expression}: {body}");
        assert!(body.contains(says), "{expression}: {body}");
        assert!(body.contains("filters[0].cesql"), "{body}");
    }
    assert_eq!(server.get("/v1/triggers/broken").await.0, 404);
}

async fn data_conditions_route_by_fields_of_json_data(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server
        .trigger(sink_trigger(
            "paid",
            &sink,
            "/paid",
            json!([{"exact": {"$.order.status": "paid"}}, {"cesql": "DATA('$.order.total') > 100"}]),
        ))
        .await;
    server
        .trigger(sink_trigger(
            "first-item",
            &sink,
            "/items",
            json!([{"prefix": {"$.items[0].sku": "A-"}}]),
        ))
        .await;
    let binary = |id: &'static str, content_type: &'static str, data: serde_json::Value| {
        let server = &server;
        async move {
            let status = server
                .send_event(
                    id,
                    "shop.order",
                    &[("content-type", content_type)],
                    data.to_string().as_bytes(),
                )
                .await;
            assert_eq!(status, 202);
        }
    };
    let paid = json!({"order": {"status": "paid", "total": 250}, "items": [{"sku": "A-1"}]});
    binary("1", "application/json", paid.clone()).await;
    binary(
        "2",
        "application/json",
        json!({"order": {"status": "open", "total": 250}}),
    )
    .await;
    binary(
        "3",
        "application/json",
        json!({"order": {"status": "paid", "total": 50}, "items": [{"sku": "B-1"}]}),
    )
    .await;
    // Not JSON by its content type: no fields to match.
    binary("4", "text/plain", paid).await;
    let structured = json!({"specversion": "1.0", "id": "5", "source": "/e2e", "type": "shop.order",
        "data": {"order": {"status": "paid", "total": 101}}});
    let response = server
        .http()
        .post(server.url("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    sink.wait_for(3).await;
    let got = sink.quiet().await;
    let mut routed: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.path.clone(), r.ce("id").unwrap()))
        .collect();
    routed.sort();
    assert_eq!(
        routed,
        [("/items", "1"), ("/paid", "1"), ("/paid", "5")]
            .map(|(p, i)| (p.to_string(), i.to_string()))
    );
    let (_, body) = server.get("/v1/triggers/first-item").await;
    assert!(body.contains("$.items[0].sku"), "{body}");
    for (filter, says) in [
        (json!({"exact": {"$order": "x"}}), "filters[0].exact"),
        (json!({"cesql": "DATA('order') = 'x'"}), "filters[0].cesql"),
    ] {
        let (status, body) = server
            .post_json(
                "/v1/triggers",
                json!({"name": "broken", "filters": [filter], "subscriber": {"uri": format!("{}/x", sink.url)}}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(says), "{body}");
        assert!(body.contains("data path"), "{body}");
    }
}

/// `explain` takes events as ingress does and answers, for every trigger
/// of the broker, matched or the first condition that failed; it stores and
/// delivers nothing, and what it says matched is what a real post reaches.
async fn explain_names_each_triggers_verdict_and_delivers_nothing(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server
        .trigger(json!({"name": "a-attrs", "filter": {"attributes": {"type": "shop.order", "source": "/e2e"}},
                        "subscriber": {"uri": format!("{}/a", sink.url)}}))
        .await;
    server
        .trigger(sink_trigger(
            "b-cesql",
            &sink,
            "/b",
            json!([{"cesql": "DATA('$.total') > 100"}]),
        ))
        .await;
    server
        .trigger(sink_trigger(
            "c-not",
            &sink,
            "/c",
            json!([{"not": {"exact": {"subject": "x"}}}]),
        ))
        .await;
    server
        .trigger(json!({"name": "elsewhere", "broker": "other", "subscriber": {"uri": format!("{}/o", sink.url)}}))
        .await;
    let explain =
        |content_type: &'static str, headers: Vec<(&'static str, &'static str)>, body: String| {
            let server = &server;
            async move {
                let mut request = server
                    .http()
                    .post(server.url("/v1/brokers/default/explain"))
                    .header("content-type", content_type);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = request.body(body).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<serde_json::Value>().await.unwrap())
            }
        };
    let verdicts = |event: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        event["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t.get("reason").cloned().unwrap_or(json!(null)),
                )
            })
            .collect()
    };
    let binary = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "x-1"),
        ("ce-source", "/e2e"),
        ("ce-type", "shop.order"),
    ];
    let (status, answer) = explain(
        "application/json",
        binary.clone(),
        r#"{"total": 50}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["broker"], "default");
    let event = &answer["events"][0];
    assert_eq!(event["id"], "x-1");
    assert_eq!(event["matched"], json!(["a-attrs", "c-not"]), "{answer}");
    assert_eq!(
        verdicts(event),
        [
            ("a-attrs".to_string(), json!(null)),
            (
                "b-cesql".to_string(),
                json!("filters[0].cesql: evaluated to FALSE")
            ),
            ("c-not".to_string(), json!(null)),
        ],
        "the other broker's trigger is not listed: {answer}"
    );
    assert_eq!(event["triggers"][0]["matched"], true);
    assert_eq!(event["triggers"][1]["matched"], false);
    assert_eq!(
        event["triggers"][0]["subscriber"]["uri"],
        format!("{}/a", sink.url)
    );

    // A batch: one answer per event, in order.
    let batch = json!([
        {"specversion": "1.0", "id": "y-1", "source": "/e2e", "type": "shop.refund", "subject": "x", "data": {"total": 500}},
        {"specversion": "1.0", "id": "y-2", "source": "/other", "type": "shop.order", "datacontenttype": "text/plain", "data": "total"},
    ]);
    let (status, answer) = explain(
        "application/cloudevents-batch+json",
        vec![],
        batch.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        verdicts(&answer["events"][0]),
        [
            (
                "a-attrs".to_string(),
                json!(r#"filter.attributes.type: wanted "shop.order", got "shop.refund""#)
            ),
            ("b-cesql".to_string(), json!(null)),
            (
                "c-not".to_string(),
                json!("filters[0].not: the filter inside matched")
            ),
        ],
        "{answer}"
    );
    assert_eq!(
        verdicts(&answer["events"][1]),
        [
            (
                "a-attrs".to_string(),
                json!(r#"filter.attributes.source: wanted "/e2e", got "/other""#)
            ),
            (
                "b-cesql".to_string(),
                json!(
                    "filters[0].cesql: evaluating it met a missingAttribute error (the result is FALSE)"
                )
            ),
            ("c-not".to_string(), json!(null)),
        ],
        "text data has no fields: {answer}"
    );

    // Refused as ingress refuses.
    let (status, answer) = explain("application/json", binary[..3].to_vec(), "{}".into()).await;
    assert_eq!(status, 400, "no type: {answer}");
    let response = server
        .http()
        .post(server.url("/v1/brokers/Not_A_Broker/explain"))
        .header("content-type", "application/cloudevents+json")
        .body(batch[0].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("invalid_broker"));

    // Nothing was delivered; the real post reaches exactly what explain said.
    assert!(sink.quiet().await.is_empty(), "explain delivered something");
    assert_eq!(
        server
            .send_event(
                "x-1",
                "shop.order",
                &[("content-type", "application/json")],
                br#"{"total": 50}"#
            )
            .await,
        202
    );
    sink.wait_for(2).await;
    let mut paths: Vec<String> = sink.quiet().await.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/c"]);
}

/// A client's repeat of (broker, source, id) within the window is answered
/// 202 `"duplicate": true` and not delivered again, also after a `kill -9`
/// and a restart; the same id from another source is another event; a
/// broker with `"dedupe": false` delivers every post.
async fn a_repeat_of_source_and_id_is_a_duplicate_delivered_once_also_after_a_crash(
    backend: Backend,
) {
    let mut server = backend.start().await;
    let sink = Sink::start().await;
    server
        .trigger(sink_trigger(
            "one",
            &sink,
            "/one",
            json!([{"exact": {"type": "order"}}]),
        ))
        .await;
    server
        .trigger(sink_trigger(
            "two",
            &sink,
            "/two",
            json!([{"prefix": {"type": "ord"}}]),
        ))
        .await;
    let response = server
        .http()
        .put(server.url("/v1/brokers/raw"))
        .header("content-type", "application/json")
        .body(r#"{"dedupe": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["dedupe"], false, "{view}");
    server
        .trigger(
            json!({"name": "raw", "broker": "raw", "filter": {"attributes": {"type": "order"}},
                        "subscriber": {"uri": format!("{}/raw", sink.url)}}),
        )
        .await;
    let event = |source: &str, id: &str| json!({"specversion": "1.0", "id": id, "source": source, "type": "order"});
    let first = post_events(&server, "default", event("/shop", "o-1")).await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["duplicates"], json!([]));
    for _ in 0..2 {
        let again = post_events(&server, "default", event("/shop", "o-1")).await;
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["duplicates"], json!(["o-1"]));
        assert_eq!(again["accepted"], 1);
    }
    let other = post_events(&server, "default", event("/other", "o-1")).await;
    assert_eq!(other["duplicate"], false, "another source: {other}");
    // A batch: a repeat inside it and one of an earlier request.
    let batch = post_events(
        &server,
        "default",
        json!([
            event("/shop", "o-2"),
            event("/shop", "o-2"),
            event("/shop", "o-1")
        ]),
    )
    .await;
    assert_eq!(batch["duplicate"], false, "o-2 is new: {batch}");
    assert_eq!(batch["duplicates"], json!(["o-2", "o-1"]));
    for _ in 0..2 {
        let raw = post_events(&server, "raw", event("/shop", "o-1")).await;
        assert_eq!(raw["duplicate"], false, "dedupe is off there: {raw}");
    }
    // Two triggers each for o-1 from /shop, o-1 from /other and o-2; the
    // raw broker's trigger twice.
    let got = sink.wait_for(8).await;
    assert_eq!(sink.quiet().await.len(), 8, "{got:#?}");
    assert_eq!(
        server
            .metric(r#"sluice_events_duplicate_total{broker="default"}"#)
            .await,
        4.0
    );
    assert_eq!(
        server
            .metric(r#"sluice_events_accepted_total{broker="default"}"#)
            .await,
        3.0,
        "duplicates are not counted as accepted"
    );

    // The window survives a crash.
    server.restart();
    server.wait_ready().await;
    for id in ["o-1", "o-2"] {
        let again = post_events(&server, "default", event("/shop", id)).await;
        assert_eq!(again["duplicate"], true, "{id} after kill -9: {again}");
    }
    let new = post_events(&server, "default", event("/shop", "o-3")).await;
    assert_eq!(new["duplicate"], false, "{new}");
    let got = sink.wait_for(10).await;
    let mut ids: Vec<(String, String)> = sink
        .quiet()
        .await
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                format!("{} {}", r.ce("source").unwrap(), r.ce("id").unwrap()),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 10, "{got:#?}");
    assert_eq!(
        ids.iter().filter(|(path, _)| path == "/raw").count(),
        2,
        "{ids:?}"
    );
    assert!(
        ids.contains(&("/one".into(), "/shop o-3".into())),
        "{ids:?}"
    );
}

/// Posts `body` (an event, or an array: a batch) to `broker` in structured
/// or batch mode; expects 202 and returns the answer.
async fn post_events(server: &Server, broker: &str, body: serde_json::Value) -> serde_json::Value {
    let media = if body.is_array() {
        "application/cloudevents-batch+json"
    } else {
        "application/cloudevents+json"
    };
    let response = server
        .http()
        .post(server.url(&format!("/v1/brokers/{broker}/events")))
        .header("content-type", media)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}
