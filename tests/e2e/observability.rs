//! What operators see: metrics that add up, per-trigger counts, recent
//! invocations, the live event stream.

use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Server, eventually};

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

    // Function metrics: one cold start, then warm ones; CPU and memory seen.
    assert_eq!(
        m("sluice_function_starts_total", "function=echo,start=cold"),
        1.0
    );
    assert_eq!(
        m("sluice_function_starts_total", "function=echo,start=warm"),
        11.0
    );
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
    assert!(m("sluice_function_cpu_seconds_total", "function=echo") > 0.0);
    assert_eq!(
        m("sluice_function_memory_peak_bytes_count", "function=echo"),
        12.0
    );
    assert!(m("sluice_function_memory_peak_bytes_sum", "function=echo") >= 12.0 * 65536.0);

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
}
