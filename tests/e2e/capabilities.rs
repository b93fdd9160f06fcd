//! Guest capabilities end to end: function-to-function calls, outbound
//! allow-list, key-value storage, configuration and secrets, logs, and
//! asynchronous invocation.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_artifacts as guests;

use crate::harness::{Backend, Server, Sink, eventually};

crate::both_backends!(
    three_functions_called_by_cluster_local_urls_keep_balances_and_an_audit_log,
    a_call_chain_stops_at_the_depth_limit_and_unknown_targets_are_404,
    a_guest_looping_over_a_denied_request_causes_a_few_host_warnings_and_a_count,
    outbound_http_reaches_only_allowed_hosts,
    config_returns_settings_and_secrets_are_never_shown,
    logs_are_kept_per_function_bounded_and_cut_per_call,
    async_invocations_past_the_queue_bound_are_503_and_the_rest_all_run,
    async_invocations_are_listed_and_cancelled_queued_or_running,
    async_invocations_past_the_byte_bound_are_503_naming_it,
    an_async_invocation_survives_a_restart_between_202_and_completion,
    key_value_data_persists_is_namespaced_and_bounded,
);

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = server
        .http()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The logs of `function` once `done` holds for them (a call's output is
/// stored as the guest ends, which may be just after its response went
/// out), or as they are after 10 s.
async fn logs_until(
    server: &Server,
    function: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = logs(server, function).await;
        if done(&lines) || std::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logs(server: &Server, function: &str) -> Vec<String> {
    let (status, body) = server
        .get(&format!("/v1/functions/{function}/logs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    value["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

async fn three_functions_called_by_cluster_local_urls_keep_balances_and_an_audit_log(
    backend: Backend,
) {
    let mut server = backend.start().await;
    server
        .deploy_ok("transaction-processor", guests::TRANSACTION_PROCESSOR, "")
        .await;
    server
        .deploy_ok("balance-manager", guests::BALANCE_MANAGER, "")
        .await;
    server
        .deploy_ok("audit-logger", guests::AUDIT_LOGGER, "")
        .await;

    let (status, first) = post(
        &server,
        "/fn/transaction-processor/",
        json!({"account": "acc-1", "amount": 100.50}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "completed");
    assert_eq!(
        first["new_balance"], 100.5,
        "the seed guide's decimal amount"
    );
    let (status, second) = post(
        &server,
        "/fn/transaction-processor/",
        json!({"account": "acc-1", "amount": -30.25}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["new_balance"], 70.25,
        "the balance outlived the fresh instance of each request"
    );
    for field in [
        "account",
        "amount",
        "new_balance",
        "status",
        "transaction_id",
        "timestamp",
    ] {
        assert!(!second[field].is_null(), "{field} missing in {second}");
    }
    assert_ne!(first["transaction_id"], second["transaction_id"]);

    let (_, entries) = server.get("/fn/audit-logger/entries").await;
    let entries: Value = serde_json::from_str(&entries).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["transaction_id"], first["transaction_id"]);
    assert_eq!(entries[1]["new_balance"], 70.25);
    let (status, refused) = post(
        &server,
        "/fn/transaction-processor/",
        json!({"account": "acc-1", "amount": 0.001}),
    )
    .await;
    assert_eq!(status, 400, "money has two decimals at most: {refused}");

    for (function, needle) in [
        ("transaction-processor", "transaction-processor: txn-000002"),
        ("balance-manager", "balance-manager: acc-1 -30.25 -> 70.25"),
        ("audit-logger", "audit-logger: logged entry 2"),
    ] {
        let lines = logs(&server, function).await;
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{function} log: {lines:?}"
        );
    }

    server.restart();
    server.wait_ready().await;
    let (_, balance) = server.get("/fn/balance-manager/balance/acc-1").await;
    assert_eq!(
        serde_json::from_str::<Value>(&balance).unwrap()["balance"],
        70.25,
        "balances survive a restart"
    );
}

async fn a_call_chain_stops_at_the_depth_limit_and_unknown_targets_are_404(backend: Backend) {
    let server = backend.start_with(&["--max-call-depth", "5"]).await;
    server
        .deploy_ok("ping", guests::CALLER, "env=CALL=http://pong.internal/")
        .await;
    server
        .deploy_ok(
            "pong",
            guests::CALLER,
            "env=CALL=http://ping.default.svc.cluster.local/",
        )
        .await;
    let (status, body) = server.get("/fn/ping/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("LoopDetected"), "{body}");
    assert_eq!(
        body.matches("status: ").count(),
        5,
        "five nested calls succeeded, the sixth was refused: {body}"
    );

    let (_, body) = server.get("/fn/ping/?url=http://nope.internal/").await;
    assert!(body.starts_with("status: 404"), "{body}");
    assert!(body.contains("function_not_found"), "{body}");
    let (_, body) = server
        .get("/fn/ping/?url=http://pong.other.svc.cluster.local/")
        .await;
    assert!(body.starts_with("status: 404"), "{body}");
}

async fn a_guest_looping_over_a_denied_request_causes_a_few_host_warnings_and_a_count(
    backend: Backend,
) {
    let server = backend.start().await;
    server
        .deploy_ok(
            "caller",
            guests::CALLER,
            "env=CALL=http://denied.example.com/",
        )
        .await;
    let (status, body) = server.get("/fn/caller/?repeat=2000").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let log = eventually(Duration::from_secs(10), || async {
        let log = server.log();
        log.contains("the rest were counted").then_some(log)
    })
    .await;
    let denied = log
        .lines()
        .filter(|l| l.contains("outbound request denied"))
        .count();
    assert_eq!(denied, 5, "the first few are logged");
    assert!(
        log.contains("suppressed=1995"),
        "and the rest counted:\n{log}"
    );
}

async fn outbound_http_reaches_only_allowed_hosts(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    let host = sink.url.trim_start_matches("http://").to_string();
    server
        .deploy_ok("allowed", guests::CALLER, &format!("allow_outbound={host}"))
        .await;
    server
        .deploy_ok("denied", guests::CALLER, "allow_outbound=api.example.com")
        .await;

    let (status, body) = server
        .get(&format!("/fn/allowed/?url={}/hello", sink.url))
        .await;
    assert_eq!(
        (status, body.lines().next()),
        (200, Some("status: 200")),
        "{body}"
    );
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].path, "/hello");

    let (status, body) = server
        .get(&format!("/fn/denied/?url={}/hello", sink.url))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("HttpRequestDenied"),
        "the guest sees why: {body}"
    );
    assert_eq!(
        sink.received().len(),
        1,
        "nothing left the machine for the denied call"
    );
    assert!(
        server.log().contains("outbound request denied"),
        "the host logs it"
    );
}

async fn key_value_data_persists_is_namespaced_and_bounded(backend: Backend) {
    let mut server = backend
        .start_with(&[
            "--kv-max-value-bytes",
            "16",
            "--kv-max-key-bytes",
            "8",
            "--kv-max-keys",
            "3",
        ])
        .await;
    server.deploy_ok("kv-a", guests::KV, "kv_bucket=team").await;
    server.deploy_ok("kv-b", guests::KV, "kv_bucket=team").await;
    server.deploy_ok("kv-c", guests::KV, "").await;
    let refused = server.deploy("kv-d", guests::KV, "kv_bucket=Team_1").await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("kv_buckets") && body.contains("Team_1"),
        "{body}"
    );
    let put = |path: &str, body: &str| {
        server
            .http()
            .put(server.url(path))
            .body(body.to_string())
            .send()
    };
    assert_eq!(put("/fn/kv-a/set/k", "v1").await.unwrap().status(), 200);
    assert_eq!(server.get("/fn/kv-a/get/k").await, (200, "v1".to_string()));
    assert_eq!(
        server.get("/fn/kv-b/get/k").await.0,
        404,
        "kv-b cannot read kv-a's own bucket"
    );

    assert_eq!(
        put("/fn/kv-a/set/s?bucket=team", "shared")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server.get("/fn/kv-b/get/s?bucket=team").await,
        (200, "shared".to_string())
    );
    let (status, body) = server.get("/fn/kv-c/get/s?bucket=team").await;
    assert_eq!(status, 400);
    assert!(body.contains("AccessDenied"), "{body}");

    let response = put("/fn/kv-a/set/big", &"x".repeat(17)).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("larger than the limit of 16 bytes")
    );
    let response = put("/fn/kv-a/set/longkey99", "v").await.unwrap();
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("longer than the limit of 8 bytes")
    );
    assert_eq!(server.get("/fn/kv-a/incr/n").await, (200, "1".to_string()));
    assert_eq!(
        server.get("/fn/kv-a/incr/n?by=4").await,
        (200, "5".to_string())
    );
    assert_eq!(put("/fn/kv-a/set/third", "v").await.unwrap().status(), 200);
    let response = put("/fn/kv-a/set/fourth", "v").await.unwrap();
    assert!(response.text().await.unwrap().contains("limit of 3 keys"));
    assert_eq!(
        server.get("/fn/kv-a/exists/fourth").await,
        (200, "false".to_string()),
        "a refused write changes nothing"
    );
    assert_eq!(server.get("/fn/kv-a/list").await.1, "k\nn\nthird");

    let (status, _) = server.delete("/fn/kv-a/delete/third").await;
    assert_eq!(status, 200);
    assert_eq!(
        put("/fn/kv-a/set/fourth", "v").await.unwrap().status(),
        200,
        "a deleted key gives its place back"
    );
    assert_eq!(server.get("/fn/kv-a/list").await.1, "fourth\nk\nn");

    server.restart();
    server.wait_ready().await;
    assert_eq!(
        server.get("/fn/kv-a/get/k").await,
        (200, "v1".to_string()),
        "values survive a restart"
    );
    assert_eq!(server.get("/fn/kv-a/incr/n").await, (200, "6".to_string()));
}

async fn config_returns_settings_and_secrets_are_never_shown(backend: Backend) {
    let server = backend.start().await;
    let record = server
        .deploy_ok("kv", guests::KV, "env=MODE=fast&secret=TOKEN=s3cr3t-value")
        .await;
    assert_eq!(record["settings"]["secrets"]["TOKEN"], "<redacted>");
    assert_eq!(
        server.get("/fn/kv/config/MODE").await,
        (200, "fast".to_string())
    );
    assert_eq!(
        server.get("/fn/kv/config/TOKEN").await,
        (200, "s3cr3t-value".to_string())
    );
    assert_eq!(server.get("/fn/kv/config/NOPE").await.0, 404);
    for path in ["/v1/functions/kv", "/v1/functions"] {
        let (_, body) = server.get(path).await;
        assert!(!body.contains("s3cr3t"), "{path}: {body}");
        assert!(body.contains("TOKEN"), "{path}: the name is shown: {body}");
    }
    // A settings change keeps the secret.
    let response = server
        .http()
        .patch(server.url("/v1/functions/kv"))
        .body(r#"{"env": {"MODE": "slow"}}"#)
        .send()
        .await
        .unwrap();
    assert!(!response.text().await.unwrap().contains("s3cr3t"));
    assert_eq!(
        server.get("/fn/kv/config/TOKEN").await,
        (200, "s3cr3t-value".to_string())
    );
    assert_eq!(
        server.get("/fn/kv/config/MODE").await,
        (200, "slow".to_string())
    );
}

async fn logs_are_kept_per_function_bounded_and_cut_per_call(backend: Backend) {
    let server = backend
        .start_with(&["--max-output-bytes", "64", "--log-lines-per-function", "5"])
        .await;
    server.deploy_ok("echo", guests::ECHO, "").await;
    let response = server
        .http()
        .post(server.url("/fn/echo/"))
        .body("first line\n".to_string() + &"y".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a guest writing past the cap is cut, not killed"
    );
    let lines = logs_until(&server, "echo", |l| {
        l.last()
            .is_some_and(|l| l.contains("more bytes of output were dropped"))
    })
    .await;
    assert_eq!(lines[0], "first line");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("more bytes of output were dropped"),
        "{lines:?}"
    );
    for i in 0..10 {
        server
            .http()
            .post(server.url("/fn/echo/"))
            .body(format!("call {i}\n"))
            .send()
            .await
            .unwrap();
    }
    let lines = logs_until(&server, "echo", |l| l.last().is_some_and(|l| l == "call 9")).await;
    assert_eq!(lines.len(), 5, "the ring keeps the newest lines: {lines:?}");
    assert_eq!(lines.last().unwrap(), "call 9");
    server
        .http()
        .post(server.url("/fn/echo/"))
        .body("no newline at the end")
        .send()
        .await
        .unwrap();
    let lines = logs_until(&server, "echo", |l| {
        l.last().is_some_and(|l| l == "no newline at the end")
    })
    .await;
    assert_eq!(
        lines.last().unwrap(),
        "no newline at the end",
        "a last line without a newline is kept: {lines:?}"
    );
    let (status, _) = server.get("/v1/functions/nope/logs").await;
    assert_eq!(status, 404);

    let output = std::process::Command::new(crate::harness::SLUICE)
        .args([
            "fn",
            "logs",
            "echo",
            "--server",
            &server.url,
            "--token",
            server.admin_token(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("[stdout] call 9"));
}

async fn async_invocations_past_the_queue_bound_are_503_and_the_rest_all_run(backend: Backend) {
    let server = backend
        .start_with(&["--max-async-invocations", "3", "--async-workers", "2"])
        .await;
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=700")
        .await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let response = server
            .http()
            .post(server.url("/v1/functions/sleepy/invoke?async=true"))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 => {
                let answer: Value = response.json().await.unwrap();
                accepted.push(answer["id"].as_str().unwrap().to_string());
            }
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                let body = response.text().await.unwrap();
                assert_eq!(crate::harness::error_code(&body), "too_many_invocations");
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!(
        (accepted.len(), refused),
        (3, 3),
        "three queued or running at most"
    );
    for id in &accepted {
        eventually(Duration::from_secs(30), || async {
            let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
            let value: Value = serde_json::from_str(&body).unwrap();
            (value["status"] == "succeeded").then_some(())
        })
        .await;
    }
    // Finished, the places are free again.
    let response = server
        .http()
        .post(server.url("/v1/functions/sleepy/invoke?async=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

async fn async_invocations_are_listed_and_cancelled_queued_or_running(backend: Backend) {
    let server = backend.start_with(&["--async-workers", "1"]).await;
    // Computes without yielding for up to a minute: only the epoch tick
    // can stop it.
    server
        .deploy_ok("spin", guests::SPIN, "env=SPIN_MS=60000&timeout_ms=120000")
        .await;
    server.deploy_ok("echo", guests::ECHO, "").await;
    let submit = async |function: &str| -> String {
        let response = server
            .http()
            .post(server.url(&format!("/v1/functions/{function}/invoke?async=true")))
            .body("from the queue")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        answer["id"].as_str().unwrap().to_string()
    };
    let status = async |id: &str| -> Value {
        let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
        serde_json::from_str::<Value>(&body).unwrap()["status"].clone()
    };
    let running = submit("spin").await;
    eventually(Duration::from_secs(10), || async {
        (status(&running).await == "running").then_some(())
    })
    .await;
    // The one worker is busy: this one waits in the queue.
    let queued = submit("echo").await;
    assert_eq!(status(&queued).await, "queued");

    let (code, list) = server.get("/v1/invocations").await;
    assert_eq!(code, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<&str> = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&running.as_str()) && ids.contains(&queued.as_str()));
    let (_, only) = server.get("/v1/invocations?function=echo").await;
    let only: Value = serde_json::from_str(&only).unwrap();
    assert_eq!(only["invocations"][0]["id"], queued.as_str());
    assert_eq!(only["invocations"].as_array().unwrap().len(), 1);

    // The queued one: cancelled at once, and it never runs.
    let response = server
        .http()
        .delete(server.url(&format!("/v1/invocations/{queued}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "cancelled");
    assert!(answer["response"].is_null());

    // The running one: interrupted mid-loop, long before its minute.
    let started = std::time::Instant::now();
    let response = server
        .http()
        .delete(server.url(&format!("/v1/invocations/{running}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "cancelled", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The worker is free again, and skipped the cancelled echo: a new call
    // runs, and echo ran once only (its log holds one request).
    let after = submit("echo").await;
    eventually(Duration::from_secs(10), || async {
        (status(&after).await == "succeeded").then_some(())
    })
    .await;
    assert_eq!(status(&queued).await, "cancelled");
    let (_, logs) = server.get("/v1/functions/echo/logs").await;
    let logs: Value = serde_json::from_str(&logs).unwrap();
    assert_eq!(logs["logs"].as_array().unwrap().len(), 1, "{logs}");

    // Finished ones are not cancelled again; unknown ones are 404.
    let response = server
        .http()
        .delete(server.url(&format!("/v1/invocations/{after}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let response = server
        .http()
        .delete(server.url("/v1/invocations/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.get(&(
            "sluice_function_invocations_total".to_string(),
            "function=spin,outcome=cancelled".to_string()
        )),
        Some(&1.0),
        "the interrupted call is counted as cancelled"
    );

    // A token sees the invocations it made, never another's nor one made
    // without a token (its id is its only protection).
    let (_, token) = server
        .post_json("/v1/tokens", serde_json::json!({"scope": "invoke"}))
        .await;
    let token: Value = serde_json::from_str(&token).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let own = reqwest::Client::new()
        .post(server.url("/v1/functions/echo/invoke?async=true"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 202);
    let own: Value = own.json().await.unwrap();
    let listed = reqwest::Client::new()
        .get(server.url("/v1/invocations"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let listed: Value = listed.json().await.unwrap();
    let ids: Vec<&str> = listed["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own["id"].as_str().unwrap()], "{listed}");

    // The restart keeps them cancelled.
    let mut server = server;
    server.restart();
    server.wait_ready().await;
    for id in [&queued, &running] {
        let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["status"],
            "cancelled"
        );
    }
}

async fn async_invocations_past_the_byte_bound_are_503_naming_it(backend: Backend) {
    let server = backend
        .start_with(&[
            "--max-async-invocation-bytes",
            "1000000",
            "--async-workers",
            "1",
        ])
        .await;
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=3000")
        .await;
    let post = || async {
        server
            .http()
            .post(server.url("/v1/functions/sleepy/invoke?async=true"))
            .body(vec![b'q'; 600_000])
            .send()
            .await
            .unwrap()
    };
    let first = post().await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = post().await;
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    let body = second.text().await.unwrap();
    assert_eq!(crate::harness::error_code(&body), "too_many_invocations");
    assert!(body.contains("1000000 bytes"), "{body}");
    // A body no queue could ever hold is 413, not "retry later".
    let huge = server
        .http()
        .post(server.url("/v1/functions/sleepy/invoke?async=true"))
        .body(vec![b'q'; 1_000_001])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert!(!huge.headers().contains_key("retry-after"));
    // Once the first has run, its bytes are free again (given back just
    // after its result is stored, so the next may need a moment).
    eventually(Duration::from_secs(30), || async {
        let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
        let value: Value = serde_json::from_str(&body).unwrap();
        (value["status"] == "succeeded").then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (post().await.status() == 202).then_some(())
    })
    .await;
}

async fn an_async_invocation_survives_a_restart_between_202_and_completion(backend: Backend) {
    let mut server = backend.start().await;
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=1500")
        .await;
    let response = server
        .http()
        .post(server.url("/v1/functions/sleepy/invoke?async=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
    let status = serde_json::from_str::<Value>(&body).unwrap()["status"].clone();
    assert!(status == "queued" || status == "running", "{body}");

    server.kill();
    server.restart();
    server.wait_ready().await;
    let done = eventually(Duration::from_secs(20), || async {
        let (_, body) = server.get(&format!("/v1/invocations/{id}")).await;
        let value: Value = serde_json::from_str(&body).unwrap();
        (value["status"] == "succeeded").then_some(value)
    })
    .await;
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(done["response"]["body"], "slept 1500 ms");
    assert_eq!(server.get("/v1/invocations/unknown").await.0, 404);

    let output = std::process::Command::new(crate::harness::SLUICE)
        .args([
            "fn",
            "invoke",
            "sleepy",
            "--async",
            "--server",
            &server.url,
            "--token",
            server.admin_token(),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!id.is_empty());
    let output = std::process::Command::new(crate::harness::SLUICE)
        .args([
            "invocation",
            "get",
            &id,
            "--wait",
            "--output",
            "json",
            "--server",
            &server.url,
            "--token",
            server.admin_token(),
        ])
        .output()
        .unwrap();
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["function"], "sleepy");
    assert_eq!(record["status"], "succeeded", "--wait waits for the end");
}
