//! Per-event traces: what became of an accepted event, through the API
//! and `sluice event trace`.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_artifacts as guests;

use crate::harness::{Backend, SLUICE, error_code, eventually};

crate::both_backends!(a_trace_shows_each_triggers_verdict_attempts_dead_letter_and_reply);

async fn a_trace_shows_each_triggers_verdict_attempts_dead_letter_and_reply(backend: Backend) {
    let server = backend.start().await;
    server.deploy_ok("echo", guests::EVENT_ECHO, "").await;
    server
        .deploy_ok("doomed", guests::FLAKY, "env=FAIL_FIRST=1000")
        .await;
    server
        .trigger(json!({"name": "ok", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "echo"}}))
        .await;
    server
        .trigger(json!({"name": "bad", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "doomed"},
                        "delivery": {"retry": 2, "backoffDelay": "PT0.02S"}}))
        .await;
    server
        .trigger(json!({"name": "other", "filters": [{"prefix": {"type": "other."}}], "subscriber": {"function": "echo"}}))
        .await;
    assert_eq!(server.send_event("t-1", "job", &[], b"{}").await, 202);
    eventually(Duration::from_secs(20), || async {
        let (_, body) = server.get("/v1/deadletters?trigger=bad").await;
        body.contains("t-1").then_some(())
    })
    .await;

    // A repeat is counted on the trace, not traced again.
    assert_eq!(server.send_event("t-1", "job", &[], b"{}").await, 202);
    let trace = eventually(Duration::from_secs(10), || async {
        let (status, body) = server.get("/v1/brokers/default/events/t-1").await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let trace = answer["traces"][0].clone();
        // The reply is recorded when the delivery ends; in cluster mode
        // each record reaches the stream a moment after its step.
        let has = |field: &str| trace[field].as_array().is_some_and(|c| !c.is_empty());
        let attempts = trace["attempts"].as_array().map_or(0, Vec::len);
        (has("caused") && has("dead_letters") && trace["duplicates"] == 1 && attempts == 4)
            .then_some(trace)
    })
    .await;
    assert_eq!(trace["source"], "/e2e");
    assert_eq!(trace["type"], "job");
    assert!(
        trace["accepted"].as_str().unwrap().ends_with('Z'),
        "{trace}"
    );
    assert_eq!(trace["matched"], json!(["bad", "ok"]), "{trace}");
    assert_eq!(trace["duplicates"], 1, "{trace}");
    let other = (trace["triggers"].as_array().unwrap().iter())
        .find(|t| t["name"] == "other")
        .expect("every trigger of the broker");
    assert_eq!(other["matched"], false);
    assert!(
        other["reason"]
            .as_str()
            .unwrap()
            .contains("filters[0].prefix.type"),
        "{other}"
    );
    let attempts = |trigger: &str| -> Vec<Value> {
        (trace["attempts"].as_array().unwrap().iter())
            .filter(|a| a["trigger"] == trigger)
            .cloned()
            .collect()
    };
    let bad = attempts("bad");
    assert_eq!(
        bad.iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3],
        "{trace}"
    );
    assert_eq!(
        bad.iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["retrying", "retrying", "failed"]
    );
    assert!(
        bad.iter()
            .all(|a| a["status"] == 500 && a["error"].is_string()),
        "{trace}"
    );
    assert!(
        bad.iter()
            .all(|a| a["duration_ms"].as_f64().unwrap() >= 0.0)
    );
    let ok = attempts("ok");
    assert_eq!(ok.len(), 1, "{trace}");
    assert_eq!(ok[0]["outcome"], "delivered");
    // Cluster mode names the node that ran each attempt.
    assert_eq!(
        ok[0]["node"].is_string(),
        backend == Backend::Nats,
        "{trace}"
    );
    let letters = trace["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{trace}");
    assert_eq!(letters[0]["trigger"], "bad");
    let (_, listed) = server.get("/v1/deadletters?trigger=bad").await;
    assert!(
        listed.contains(&format!("\"id\":{}", letters[0]["id"])),
        "the trace names the stored dead letter: {listed} {trace}"
    );
    assert_eq!(trace["caused"], json!(["t-1-echo"]));

    // Another source, or an unknown id: no trace, with the reason.
    let (status, body) = (server.get("/v1/brokers/default/events/t-1?source=%2Fnope")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), "trace_not_found");
    let (status, _) = server.get("/v1/brokers/default/events/never").await;
    assert_eq!(status, 404);

    // The CLI prints it as a timeline.
    let output = Command::new(SLUICE)
        .args(["event", "trace", "t-1"])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", server.admin_token())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "event t-1 (type job, source /e2e)",
        "  match  ok",
        "  miss   other",
        "bad                      attempt 3 failed",
        "dead letter",
        "caused event t-1-echo",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}
