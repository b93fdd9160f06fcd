//! Start-up and shutdown: graceful drain on SIGTERM, refusal of a corrupt
//! store, and the schema check.

use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;

use crate::harness::{SLUICE, Server, Sink, error_code, eventually};

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
    // Time for the call to reach the guest: the server shows no sign of a
    // call in flight to poll for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = server.url.clone();
    let http = server.http().clone();
    let terminator = tokio::task::spawn_blocking(move || server.terminate().code());
    // Answered until the signal lands; refused from then on, while the
    // in-flight call drains.
    let refused = eventually(Duration::from_secs(10), || async {
        let response = http
            .get(format!("{url}/v1/functions"))
            .send()
            .await
            .unwrap();
        (response.status() != 200).then_some(response)
    })
    .await;
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
    let delivered = eventually(Duration::from_secs(30), || async {
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

/// Mounts a small tmpfs (needs root) and returns its path; `None` where
/// mounting is not permitted.
fn small_filesystem(megabytes: u32) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
        .arg(dir.path())
        .status()
        .ok()?;
    status.success().then_some(dir)
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_makes_ingress_answer_503_never_202() {
    let Some(mount) = small_filesystem(24) else {
        // CI runs as root (`.ci/run`); a developer machine may not.
        assert!(
            std::env::var_os("CI").is_none(),
            "the full-disk test needs to mount a tmpfs (run as root)"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    };
    let _unmount = Unmount(mount.path().to_path_buf());
    let data = mount.path().join("data");
    let token = "full-disk-test-token";
    let mut child = std::process::Command::new(SLUICE)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            token,
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines
            .find_map(|l| {
                l.ok()?
                    .strip_prefix("sluice listening on ")
                    .map(str::to_string)
            })
            .unwrap()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |id: String, body: Vec<u8>| {
        http.post(format!("{url}/v1/events"))
            .bearer_auth(token)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/disk")
            .header("ce-type", "t")
            .body(body)
            .send()
    };
    let response = http
        .post(format!("{url}/v1/triggers"))
        .bearer_auth(token)
        .json(&json!({"name": "t", "subscriber": {"uri": "http://127.0.0.1:9/"}, "delivery": {"retry": 100, "backoffDelay": "PT60S"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        post("before".into(), b"x".to_vec()).await.unwrap().status(),
        202
    );

    // Fill the disk.
    let filler = mount.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    for i in 0..5 {
        let status = post(format!("full-{i}"), vec![b'y'; 100_000])
            .await
            .unwrap()
            .status();
        assert_eq!(
            status, 503,
            "a write that cannot be flushed is never acknowledged"
        );
    }
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the failed store");
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `sluice serve` on `data` with admin token `token`: the child and
/// its URL, or, if it exits first, its stderr.
fn serve_on(data: &std::path::Path, token: &str) -> Result<(std::process::Child, String), String> {
    use std::io::{BufRead, Read};
    let mut child = std::process::Command::new(SLUICE)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            token,
            "--data-dir",
        ])
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = std::io::BufReader::new(stdout).lines().find_map(|l| {
        l.ok()?
            .strip_prefix("sluice listening on ")
            .map(str::to_string)
    });
    match url {
        Some(url) => Ok((child, url)),
        None => {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            let _ = child.wait();
            Err(stderr)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_disk_fails_cleanly_and_once_space_is_freed_every_acknowledged_event_is_delivered()
 {
    let Some(mount) = small_filesystem(24) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the full-disk test needs to mount a tmpfs (run as root)"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    };
    let _unmount = Unmount(mount.path().to_path_buf());
    let data = mount.path().join("data");
    let token = "full-disk-restart-token";
    let sink = Sink::start().await;
    let (mut child, url) = tokio::task::block_in_place(|| serve_on(&data, token)).unwrap();
    let http = reqwest::Client::new();
    let post = |id: String| {
        http.post(format!("{url}/v1/events"))
            .bearer_auth(token)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/disk")
            .header("ce-type", "t")
            .body(vec![b'y'; 20_000])
            .send()
    };
    // Deliveries wait for the restart: their subscriber is not there yet.
    let response = http
        .post(format!("{url}/v1/triggers"))
        .bearer_auth(token)
        .json(&json!({"name": "t", "subscriber": {"uri": "http://127.0.0.1:9/"}, "delivery": {"retry": 100, "backoffDelay": "PT1S"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(post(id.clone()).await.unwrap().status(), 202);
        acknowledged.push(id);
    }
    // Fill the disk, and post until the server refuses.
    let filler = mount.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    for i in 0..50 {
        let id = format!("full-{i}");
        match post(id.clone()).await.unwrap().status().as_u16() {
            202 => acknowledged.push(id),
            503 => break,
            other => panic!("status {other}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // A start on the full disk fails, saying why: not "corrupt".
    let error = tokio::task::block_in_place(|| serve_on(&data, token))
        .map(|(mut child, _)| {
            let _ = child.kill();
            let _ = child.wait();
        })
        .expect_err("a start on a full disk cannot succeed");
    assert!(error.contains("No space left"), "{error}");
    assert!(!error.contains("corrupt"), "{error}");
    assert!(!error.contains("panicked"), "{error}");
    // Space freed: the next start recovers, and every acknowledged event
    // reaches the subscriber, now pointed at the sink.
    std::fs::remove_file(&filler).unwrap();
    let (mut child, url) = tokio::task::block_in_place(|| serve_on(&data, token))
        .unwrap_or_else(|error| panic!("the start after freeing space failed: {error}"));
    let response = http
        .put(format!("{url}/v1/triggers/t"))
        .bearer_auth(token)
        .json(&json!({"name": "t", "subscriber": {"uri": format!("{}/", sink.url)}, "delivery": {"retry": 100, "backoffDelay": "PT0.1S"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let got: std::collections::BTreeSet<String> =
            sink.received().iter().filter_map(|r| r.ce("id")).collect();
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|id| !got.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged events not delivered: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
