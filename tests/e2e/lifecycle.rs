//! Start-up and shutdown: graceful drain on SIGTERM, refusal of a corrupt
//! store, and the schema check.

use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;

use crate::harness::{SLUICE, Server, Sink, error_code};

#[tokio::test]
async fn sigterm_refuses_new_work_finishes_in_flight_calls_and_exits_zero() {
    let mut server = Server::start();
    let sink = Sink::start().await;
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=1500")
        .await;
    server
        .trigger(
            json!({"name": "t", "filters": [], "subscriber": {"uri": format!("{}/", sink.url)}}),
        )
        .await;
    let slow = {
        let request = server.http().get(server.url("/fn/sleepy/"));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = server.url.clone();
    let http = server.http().clone();
    let terminator = tokio::task::spawn_blocking(move || server.terminate().code());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = http
        .get(format!("{url}/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503, "new work is refused while draining");
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(error_code(&refused.text().await.unwrap()), "shutting_down");

    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slept 1500 ms"),
        "the in-flight call finished"
    );
    assert_eq!(terminator.await.unwrap(), Some(0), "a clean exit");
}

#[tokio::test]
async fn events_accepted_before_shutdown_are_delivered_after_the_restart() {
    let mut server = Server::start_with(&["--max-deliveries-per-trigger", "2"]);
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=200")
        .await;
    let sink = Sink::start().await;
    // Slow deliveries, one at a time: most are still queued at SIGTERM.
    server
        .trigger(json!({"name": "slow", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "sleepy"}}))
        .await;
    server
        .trigger(json!({"name": "copy", "filter": {"attributes": {"type": "job"}}, "subscriber": {"uri": format!("{}/", sink.url)}}))
        .await;
    for i in 0..20 {
        assert_eq!(
            server.send_event(&format!("j{i}"), "job", &[], b"").await,
            202
        );
    }
    let code = tokio::task::spawn_blocking(move || {
        let code = server.terminate().code();
        (server, code)
    });
    let (mut server, code) = code.await.unwrap();
    assert_eq!(code, Some(0));
    server.start_again();
    let got = sink.wait_for(20).await;
    let mut ids: Vec<String> = got.iter().map(|r| r.ce("id").unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every acknowledged event reached the sink");
    let delivered = crate::harness::eventually(Duration::from_secs(30), || async {
        let (_, metrics) = server.get("/metrics").await;
        metrics
            .contains("sluice_deliveries_pending 0")
            .then_some(metrics)
    })
    .await;
    assert!(
        delivered.contains("sluice_trigger_delivered_total{trigger=\"slow\"}"),
        "deliveries queued at shutdown ran after the restart: {delivered}"
    );
    let (_, letters) = server.get("/v1/deadletters").await;
    assert_eq!(letters, r#"{"deadletters":[]}"#);
}

#[tokio::test]
async fn a_corrupt_store_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(
        dir.path().join("db/conf"),
        b"this is not sled's configuration",
    )
    .unwrap();
    std::fs::write(dir.path().join("db/db"), vec![0xAB; 4096]).unwrap();
    let output = std::process::Command::new(SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.contains("store"), "names the store: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
