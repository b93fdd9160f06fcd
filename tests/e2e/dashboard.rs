//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by
//! `tests/ui/dashboard.mjs` with playwright-core): sign-in, functions,
//! recent invocations, the live event stream, triggers, dead letters with
//! replay and delete, charts. Screenshots go to `target/dashboard*.png`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_test_artifacts as guests;

use crate::harness::{Backend, eventually};

crate::both_backends!(the_dashboard_shows_functions_events_and_dead_letters);

async fn the_dashboard_shows_functions_events_and_dead_letters(backend: Backend) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/ui/dashboard.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = root.join("tests/ui/node_modules/playwright-core").exists()
        && Path::new(&chromium).exists();
    if !ready {
        // CI installs both (`.ci/run`); a developer machine may not have them.
        assert!(
            std::env::var_os("CI").is_none(),
            "the dashboard test needs chromium and `npm ci` in tests/ui"
        );
        eprintln!("skipped: install chromium and run `npm ci` in tests/ui (scripts/test does)");
        return;
    }

    let server = backend.start().await;
    server.deploy_ok("echo", guests::EVENT_ECHO, "").await;
    server
        .deploy_ok("doomed", guests::FLAKY, "env=FAIL_FIRST=1000")
        .await;
    server
        .trigger(json!({"name": "echo", "filter": {"attributes": {"type": "job"}}, "subscriber": {"function": "echo"}}))
        .await;
    server
        .trigger(json!({"name": "doomed", "filter": {"attributes": {"type": "doomed"}}, "subscriber": {"function": "doomed"},
                        "delivery": {"retry": 0}}))
        .await;
    // A schedule that will not fire while the test runs (its broker has no
    // trigger either): the dashboard lists it with its next firing.
    let response = (server.http())
        .put(server.url("/v1/schedules/nightly"))
        .json(&json!({"schedule": "0 3 * * *", "timezone": "Europe/Berlin", "sink": {"broker": "reports"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // And one whose function sink is not deployed: listed as not ready.
    let (status, body) = server
        .put_json(
            "/v1/schedules/orphan",
            json!({"schedule": "0 0 1 1 *", "sink": {"function": "nobody"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.send_event("before-1", "job", &[], b"{}").await, 202);
    assert_eq!(server.send_event("d-1", "doomed", &[], b"").await, 202);
    eventually(Duration::from_secs(10), || async {
        let (_, body) = server.get("/v1/deadletters").await;
        body.contains("d-1").then_some(())
    })
    .await;

    // Each backend's screenshots apart: the two tests run at once.
    let shots = match backend {
        Backend::Embedded => root.join("target"),
        Backend::Nats => root.join("target/dashboard-cluster"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(server.url(""))
        .arg(server.admin_token())
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .env(
            "EXPECT_CLUSTER",
            if backend == Backend::Nats { "1" } else { "0" },
        )
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the dashboard checks failed:\n{stdout}\n{stderr}\n(see {}/dashboard-failure.png)",
        shots.display()
    );
    assert!(stdout.contains("ok: no errors in the page"), "{stdout}");
    assert!(shots.join("dashboard.png").exists());
}
