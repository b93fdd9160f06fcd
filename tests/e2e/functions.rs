//! HTTP functions: deploy, invoke, restart, bad uploads, hostile guests,
//! isolation and concurrency limits.

use std::time::Duration;

use sluice_test_artifacts as guests;

use crate::harness::{Backend, Server, error_code, error_message, eventually};

crate::both_backends!(
    bad_uploads_are_400_with_a_reason_and_change_nothing,
    settings_from_query_multipart_and_patch_reach_the_guest,
    a_redeploy_keeps_every_setting_it_does_not_name,
    requests_that_could_never_work_are_400_and_changing_nothing_keeps_the_version,
    responses_stream_as_the_guest_writes_them_and_a_stream_past_the_cap_is_cut,
    delete_removes_the_function_and_its_route,
);

#[tokio::test]
async fn hello_is_served_after_restart_from_the_cached_artifact_without_recompiling() {
    let mut server = Server::start();
    let record = server.deploy_ok("hello", guests::HELLO, "").await;
    assert_eq!(record["version"], 1);
    assert_eq!(record["world"], "http");
    assert!(record["digest"].as_str().unwrap().starts_with("sha256:"));

    let (status, body) = server.get("/fn/hello/x?y=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from Sluice!"), "{body}");
    assert!(
        body.contains("/x?y=1"),
        "the guest sees the path after /fn/hello and the query: {body}"
    );

    let response = server
        .http()
        .post(server.url("/v1/functions/hello/invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Hello from Sluice!")
    );
    assert_eq!(server.metric("sluice_components_compiled_total").await, 1.0);

    server.restart();
    let (status, body) = server.get("/fn/hello/again").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/again"));
    // How the test knows nothing was recompiled: the new process compiled
    // zero components and loaded one artifact from the data directory.
    assert_eq!(server.metric("sluice_components_compiled_total").await, 0.0);
    assert_eq!(server.metric("sluice_artifacts_loaded_total").await, 1.0);
    let (_, list) = server.get("/v1/functions").await;
    assert!(list.contains("\"hello\""), "{list}");
}

async fn bad_uploads_are_400_with_a_reason_and_change_nothing(backend: Backend) {
    let server = backend.start().await;
    server.deploy_ok("keep", guests::HELLO, "").await;
    let (_, before) = server.get("/v1/functions").await;

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "core",
            core_module,
            "invalid_component",
            "core WebAssembly module",
        ),
        (
            "random",
            random,
            "invalid_component",
            "not a WebAssembly binary",
        ),
        ("empty", Vec::new(), "invalid_component", "empty"),
        (
            "Bad_Name",
            std::fs::read(guests::HELLO).unwrap(),
            "invalid_name",
            "invalid function name",
        ),
        (
            "toolong".repeat(10).as_str().to_owned().leak(),
            std::fs::read(guests::HELLO).unwrap(),
            "invalid_name",
            "63",
        ),
        (
            "keep",
            std::fs::read(guests::HELLO).unwrap()[..1000].to_vec(),
            "invalid_component",
            "invalid component",
        ),
    ];
    for (name, bytes, code, reason) in cases {
        let response = server
            .http()
            .put(server.url(&format!("/v1/functions/{name}")))
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(error_code(&body), code, "{name}: {body}");
        assert!(error_message(&body).contains(reason), "{name}: {body}");
    }
    let response = server
        .deploy("bad-setting", guests::HELLO, "timeout=5")
        .await;
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("unknown setting `timeout`")
    );

    let (_, after) = server.get("/v1/functions").await;
    assert_eq!(
        before, after,
        "failed uploads leave the function list as it was"
    );
    let (status, body) = server.get("/fn/keep/").await;
    assert_eq!(
        status, 200,
        "the truncated upload did not replace `keep`: {body}"
    );
}

#[tokio::test]
async fn unknown_functions_and_routes_are_404_with_json_errors() {
    let server = Server::start();
    let (status, body) = server.get("/fn/nope/x").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "function_not_found")
    );
    let (status, body) = server.get("/v1/functions/nope").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "function_not_found")
    );
    let (status, body) = server.get("/v2/whatever").await;
    assert_eq!((status, error_code(&body).as_str()), (404, "no_route"));
    assert_eq!(server.delete("/v1/functions/nope").await.0, 404);
}

#[tokio::test]
async fn hostile_guests_are_stopped_by_their_limits_and_hello_keeps_answering() {
    let server = Server::start_with(&["--max-response-bytes", "1048576"]);
    server.deploy_ok("hello", guests::HELLO, "").await;
    server
        .deploy_ok("spin", guests::SPIN, "timeout_ms=300")
        .await;
    server.deploy_ok("hog", guests::HOG, "memory_mb=16").await;
    server.deploy_ok("trap", guests::TRAP, "").await;
    server.deploy_ok("deep", guests::DEEP, "").await;
    // Declaring its length, it is refused before any byte is sent.
    server
        .deploy_ok("big", guests::BIG, "env=BIG_DECLARE=1")
        .await;

    let cases = [
        ("spin", 504, "timeout", "300 ms"),
        ("hog", 500, "memory_limit", "16 MiB"),
        ("trap", 500, "trap", "unreachable"),
        ("trap", 500, "trap", "unreachable"),
        ("deep", 500, "trap", "stack"),
        ("big", 413, "response_too_large", "1048576 bytes"),
    ];
    for (name, status, code, reason) in cases {
        let (got, body) = server.get(&format!("/fn/{name}/")).await;
        assert_eq!(got, status, "{name}: {}", &body[..body.len().min(300)]);
        assert_eq!(error_code(&body), code, "{name}: {body}");
        assert!(error_message(&body).contains(reason), "{name}: {body}");
        let (got, body) = server.get("/fn/hello/").await;
        assert_eq!(got, 200, "hello after {name}: {body}");
    }
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "the server log has a panic:\n{log}"
    );
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let server = Server::start();
    server.deploy_ok("counter", guests::COUNTER, "").await;
    for _ in 0..3 {
        let (status, body) = server.get("/fn/counter/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "1"),
            "a global starts at zero in every instance"
        );
    }
}

/// Freed slots wait for their pages to be released in batches; a pool
/// smaller than the batch must still hand them out again (wasmtime releases
/// the waiting batch when it runs out of slots), each reset to a fresh
/// instance.
#[tokio::test]
async fn a_pool_smaller_than_the_decommit_batch_reuses_its_slots_fresh() {
    let server = Server::start_with(&["--pool-instances", "2", "--pool-decommit-batch", "64"]);
    server.deploy_ok("counter", guests::COUNTER, "").await;
    server
        .deploy_ok("hog", guests::HOG, "memory_mb=32&env=HOG_MB=8")
        .await;
    for round in 0..12 {
        let (status, body) = server.get("/fn/hog/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "held 8 MiB"),
            "round {round}"
        );
        let (status, body) = server.get("/fn/counter/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "1"),
            "round {round}: a reused slot starts from the component's initial memory"
        );
    }
}

/// Freed slots wait for their decommit batch with their pages resident;
/// once calls stop, the server hands those pages back to the kernel, so
/// what a burst of big functions dirtied does not stay with an idle server.
#[tokio::test]
async fn memory_a_burst_dirtied_goes_back_to_the_kernel_once_calls_stop() {
    let server = Server::start_with(&["--pool-decommit-batch", "64"]);
    server
        .deploy_ok("hog", guests::HOG, "memory_mb=64&env=HOG_MB=32")
        .await;
    let (status, _) = server.get("/fn/hog/").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = server.resident_kib();
    for _ in 0..3 {
        let calls = (0..4).map(|_| server.get("/fn/hog/"));
        for (status, body) in futures::future::join_all(calls).await {
            assert_eq!((status, body.as_str()), (200, "held 32 MiB"));
        }
    }
    let burst = server.resident_kib();
    assert!(
        burst > before + 100 * 1024,
        "12 freed 32 MiB instances wait for a batch of 64 regions: {before} KiB before, {burst} KiB after"
    );
    let idle = eventually(Duration::from_secs(20), || async {
        let now = server.resident_kib();
        (now < before + 32 * 1024).then_some(now)
    })
    .await;
    assert!(idle < burst);
}

/// A freed slot keeps at most `--pool-keep-resident-kib` of the pages its
/// instance dirtied, and `/metrics` shows what freed slots keep: a 32 MiB
/// instance leaves 32 KiB behind, none with the flag at 0.
#[tokio::test]
async fn freed_slots_keep_at_most_their_keep_resident_pages() {
    for (keep_kib, flags) in [(32.0, vec![]), (0.0, vec!["--pool-keep-resident-kib", "0"])] {
        let server = Server::start_with(&flags);
        server
            .deploy_ok("hog", guests::HOG, "memory_mb=64&env=HOG_MB=32")
            .await;
        server.deploy_ok("hello", guests::HELLO, "").await;
        for path in ["/fn/hog/", "/fn/hello/"] {
            assert_eq!(server.get(path).await.0, 200, "{path}");
        }
        // The two memory slots are warm once the idle server has released
        // its decommit batch (tables are warm slots too).
        let (bytes, slots) = eventually(Duration::from_secs(20), || async {
            let slots = server.metric("sluice_pool_warm_slots").await;
            let bytes = server.metric("sluice_pool_resident_bytes").await;
            (slots >= 2.0).then_some((bytes, slots))
        })
        .await;
        assert!(
            bytes <= slots * keep_kib * 1024.0,
            "{bytes} bytes kept in {slots} warm slots, at most {keep_kib} KiB each"
        );
        if keep_kib > 0.0 {
            assert!(
                bytes > 0.0,
                "the dirtied pages of the last instances are kept"
            );
        } else {
            assert_eq!(bytes, 0.0, "nothing is kept at 0 KiB");
        }
    }
}

#[tokio::test]
async fn calls_over_the_concurrency_cap_get_429_with_retry_after() {
    let server = Server::start_with(&["--queue-timeout-ms", "100"]);
    server.deploy_ok("hello", guests::HELLO, "").await;
    server
        .deploy_ok("spin", guests::SPIN, "timeout_ms=1500&max_concurrency=2")
        .await;
    let calls = (0..6).map(|_| {
        let request = server.http().get(server.url("/fn/spin/"));
        async move {
            let response = request.send().await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (response.status().as_u16(), retry_after)
        }
    });
    let results = futures::future::join_all(calls).await;
    let timeouts = results.iter().filter(|(status, _)| *status == 504).count();
    let busy: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == 429)
        .collect();
    assert_eq!(
        timeouts + busy.len(),
        6,
        "only 504 (ran) or 429 (refused): {results:?}"
    );
    assert!(timeouts >= 2, "the two slots ran: {results:?}");
    assert!(
        !busy.is_empty(),
        "calls past the cap were refused: {results:?}"
    );
    assert!(
        busy.iter().all(|(_, retry)| retry.as_deref() == Some("1")),
        "{results:?}"
    );
    let (status, _) = server.get("/fn/hello/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn calls_past_the_memory_budget_wait_then_get_503_and_deliveries_wait_in_the_queue() {
    let server = Server::start_with(&["--memory-budget", "300M", "--queue-timeout-ms", "300"]);
    // Three instances of 100 MiB fit in 300 MiB at once, a fourth does not.
    server
        .deploy_ok("sleepy", guests::SLEEPY, "env=SLEEP_MS=1500&memory_mb=100")
        .await;
    let response = server
        .deploy("greedy", guests::HELLO, "memory_mb=400")
        .await;
    assert_eq!(response.status(), 400, "a limit the budget can never hold");
    let body = response.text().await.unwrap();
    assert!(body.contains("memory budget"), "{body}");
    let calls = (0..4).map(|_| {
        let request = server.http().get(server.url("/fn/sleepy/"));
        async move {
            let response = request.send().await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            let status = response.status().as_u16();
            (status, retry_after, response.text().await.unwrap())
        }
    });
    let results = futures::future::join_all(calls).await;
    let ran = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ran, refused.len()), (3, 1), "{results:?}");
    assert!(refused[0].1, "with Retry-After: {results:?}");
    assert_eq!(error_code(&refused[0].2), "memory_budget", "{results:?}");
    // Deliveries past the budget wait for it instead of failing an attempt.
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            serde_json::json!({"name": "slow", "subscriber": {"function": "sleepy"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for i in 0..5 {
        assert_eq!(
            server.send_event(&format!("m{i}"), "t", &[], b"").await,
            202
        );
    }
    eventually(Duration::from_secs(30), || async {
        let delivered = server
            .metrics()
            .await
            .get(&(
                "sluice_trigger_delivered_total".to_string(),
                "trigger=slow".to_string(),
            ))
            .copied();
        (delivered == Some(5.0)).then_some(())
    })
    .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.get(&(
            "sluice_trigger_retried_total".to_string(),
            "trigger=slow".to_string()
        )),
        Some(&0.0),
        "no attempt was used up waiting"
    );
}

#[tokio::test]
async fn a_function_larger_than_a_later_starts_memory_budget_is_refused_at_once() {
    let mut server = Server::start_with(&["--memory-budget", "300M"]);
    server
        .deploy_ok("roomy", guests::HELLO, "visibility=public&memory_mb=200")
        .await;
    let (status, _) = server.get("/fn/roomy/").await;
    assert_eq!(status, 200);
    // Started again with a budget the function's limit alone passes: every
    // call would wait for memory that can never be free.
    server.restart_with(&["--memory-budget", "100M", "--queue-timeout-ms", "60000"]);
    // (Waiting would have ended in a 503 `memory_budget` after a minute.)
    let (status, body) = server.get("/fn/roomy/").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_code(&body), "memory_over_budget", "{body}");
    assert!(error_message(&body).contains("--memory-budget"), "{body}");
}

#[tokio::test]
async fn long_calls_move_to_the_long_call_pool_while_short_calls_go_straight_through() {
    let server = Server::start();
    server.deploy_ok("hello", guests::HELLO, "").await;
    server
        .deploy_ok("spin", guests::SPIN, "timeout_ms=4000&max_concurrency=8")
        .await;
    let spinners: Vec<_> = (0..6)
        .map(|_| {
            let request = server.http().get(server.url("/fn/spin/"));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Past their first slice, all six run on the long-call pool.
    eventually(Duration::from_secs(10), || async {
        (server.metric("sluice_long_calls_running").await == 6.0).then_some(())
    })
    .await;
    // Meanwhile short calls are answered, and stay where they started.
    for _ in 0..50 {
        let (status, body) = server.get("/fn/hello/").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.metric("sluice_long_calls_running").await, 6.0);
    // Each long call still ends at its own deadline.
    for spinner in spinners {
        assert_eq!(spinner.await.unwrap(), 504);
    }
    eventually(Duration::from_secs(10), || async {
        (server.metric("sluice_long_calls_running").await == 0.0).then_some(())
    })
    .await;
}

async fn settings_from_query_multipart_and_patch_reach_the_guest(backend: Backend) {
    let server = backend.start().await;
    let record = server
        .deploy_ok(
            "hello",
            guests::HELLO,
            "env=GREETING=Howdy!&timeout_ms=2000",
        )
        .await;
    assert_eq!(record["settings"]["timeout_ms"], 2000);
    let (_, body) = server.get("/fn/hello/").await;
    assert!(body.starts_with("Howdy!"), "{body}");

    let response = server
        .http()
        .patch(server.url("/v1/functions/hello"))
        .body(r#"{"env": {"GREETING": "Patched!"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["version"], 2);
    assert_eq!(
        record["settings"]["timeout_ms"], 2000,
        "keys not in the patch are kept"
    );
    let (_, body) = server.get("/fn/hello/").await;
    assert!(body.starts_with("Patched!"), "{body}");

    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(std::fs::read(guests::HELLO).unwrap()),
        )
        .text(
            "config",
            r#"{"env": {"GREETING": "Multipart!"}, "memory_mb": 32}"#,
        );
    let response = server
        .http()
        .put(server.url("/v1/functions/multi"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["settings"]["memory_mb"], 32);
    let (_, body) = server.get("/fn/multi/").await;
    assert!(body.starts_with("Multipart!"), "{body}");

    let response = server
        .http()
        .patch(server.url("/v1/functions/hello"))
        .body(r#"{"memory_mb": 999999}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        error_code(&response.text().await.unwrap()),
        "invalid_setting"
    );
}

async fn a_redeploy_keeps_every_setting_it_does_not_name(backend: Backend) {
    let server = backend.start().await;
    let anonymous = reqwest::Client::new();
    let greeting = async |server: &Server| {
        let response = anonymous
            .get(server.url("/fn/greeter/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "still public");
        response.text().await.unwrap()
    };
    server
        .deploy_ok(
            "greeter",
            guests::HELLO,
            "visibility=public&env=GREETING=Howdy!&secret=TOKEN=s3cr3t&timeout_ms=2000",
        )
        .await;
    assert!(greeting(&server).await.starts_with("Howdy!"));

    // New code, nothing else: every setting stays, and the answer says which.
    let record = server.deploy_ok("greeter", guests::ECHO, "").await;
    assert_eq!(record["version"], 2);
    assert_eq!(record["settings"]["visibility"], "public");
    assert_eq!(record["settings"]["secrets"]["TOKEN"], "<redacted>");
    assert_eq!(
        record["kept"],
        serde_json::json!(["visibility", "timeout_ms", "env", "secrets"])
    );
    let record = server.deploy_ok("greeter", guests::HELLO, "").await;
    assert_eq!(record["version"], 3);
    assert!(
        greeting(&server).await.starts_with("Howdy!"),
        "env survived two code changes"
    );

    // A named setting replaces that setting only.
    let record = server
        .deploy_ok("greeter", guests::HELLO, "env=GREETING=Hi!")
        .await;
    assert_eq!(record["settings"]["timeout_ms"], 2000);
    assert_eq!(
        record["kept"],
        serde_json::json!(["visibility", "timeout_ms", "secrets"])
    );
    assert!(greeting(&server).await.starts_with("Hi!"));

    // A `config` part changes the keys it holds; `null` resets one.
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(std::fs::read(guests::HELLO).unwrap()),
        )
        .text("config", r#"{"env": null, "timeout_ms": 3000}"#);
    let response = server
        .http()
        .put(server.url("/v1/functions/greeter"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["settings"]["timeout_ms"], 3000);
    assert_eq!(record["settings"]["env"], serde_json::json!({}));
    assert_eq!(record["kept"], serde_json::json!(["visibility", "secrets"]));
    assert!(!greeting(&server).await.starts_with("Hi!"), "env was reset");

    // A bad setting in a redeploy changes nothing.
    let response = server
        .deploy("greeter", guests::ECHO, "memory_mb=999999")
        .await;
    assert_eq!(response.status(), 400);
    let (_, body) = server.get("/v1/functions/greeter").await;
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["version"], 5);
    assert!(
        record.get("kept").is_none(),
        "only a redeploy's answer has it"
    );
}

async fn requests_that_could_never_work_are_400_and_changing_nothing_keeps_the_version(
    backend: Backend,
) {
    let server = backend.start().await;
    server.deploy_ok("hello", guests::HELLO, "").await;
    server.deploy_ok("events", guests::EVENT_ECHO, "").await;
    let patch = async |body: &str| {
        let response = server
            .http()
            .patch(server.url("/v1/functions/hello"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    // Below what the component needs to start: it could never run.
    let (status, body) = patch(r#"{"memory_mb": 1}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("needs to start"), "{body}");
    let (status, body) = server.get("/fn/hello/").await;
    assert_eq!(status, 200, "unchanged and still serving: {body}");
    let response = server.deploy("hello", guests::HELLO, "memory_mb=1").await;
    assert_eq!(response.status(), 400);

    // A change that changes nothing keeps the version.
    let (status, body) = patch("{}").await;
    assert_eq!(status, 200);
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["version"], 1, "{body}");
    let record = server.deploy_ok("hello", guests::HELLO, "").await;
    assert_eq!(
        (record["version"].clone(), record["changed"].clone()),
        (1.into(), false.into())
    );

    // `async` is true or false, not anything else run in the foreground.
    let response = server
        .http()
        .post(server.url("/v1/functions/hello/invoke?async=ture"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(&response.text().await.unwrap()), "invalid_query");
    // An asynchronous call of an event function without an event is
    // refused now, as the synchronous one is.
    let response = server
        .http()
        .post(server.url("/v1/functions/events/invoke?async=true"))
        .body("not an event")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A query that does not parse is the API's JSON error.
    let (status, body) = server.get("/v1/functions/hello/logs?since=-1").await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "invalid_query", "{body}");
}

#[tokio::test]
async fn event_components_deploy_as_the_event_world() {
    let server = Server::start();
    let record = server.deploy_ok("event-echo", guests::EVENT_ECHO, "").await;
    assert_eq!(record["world"], "event");
    let (status, body) = server.get("/fn/event-echo/").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "wrong_world"),
        "{body}"
    );
}

#[tokio::test]
async fn echo_sees_method_headers_and_body() {
    let server = Server::start();
    server.deploy_ok("echo", guests::ECHO, "").await;
    let response = server
        .http()
        .post(server.url("/fn/echo/a%20b/c?x=1&y=%2F"))
        .header("x-custom", "value")
        .body("payload bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("method: POST"), "{body}");
    assert!(body.contains("path: /a%20b/c?x=1&y=%2F"), "{body}");
    assert!(body.contains("header: x-custom: value"), "{body}");
    assert!(body.ends_with("\n\npayload bytes"), "{body}");
}

async fn responses_stream_as_the_guest_writes_them_and_a_stream_past_the_cap_is_cut(
    backend: Backend,
) {
    let server = backend
        .start_with(&["--max-response-bytes", "1048576"])
        .await;
    // Two 64 KiB chunks, a second apart, no declared length.
    server
        .deploy_ok(
            "ticker",
            guests::BIG,
            "env=BIG_KB=128&env=BIG_PAUSE_MS=1000",
        )
        .await;
    let started = std::time::Instant::now();
    let mut response = server
        .http()
        .get(server.url("/fn/ticker/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_none());
    let first = response.chunk().await.unwrap().expect("a first chunk");
    let first_at = started.elapsed();
    let mut total = first.len();
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len();
    }
    let last_at = started.elapsed();
    assert_eq!(total, 128 << 10, "every byte arrives");
    assert!(
        last_at - first_at >= Duration::from_millis(800),
        "the first bytes arrived while the guest still waited to write the rest: first at {first_at:?}, last at {last_at:?}"
    );

    // Undeclared and past the cap: the head has gone out, so the stream is
    // cut (the client sees an incomplete body, never a complete-looking
    // one), logged, and counted.
    server
        .deploy_ok("flood", guests::BIG, "env=BIG_KB=4096")
        .await;
    let response = server
        .http()
        .get(server.url("/fn/flood/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the response is cut");
    eventually(Duration::from_secs(10), || async {
        server
            .log()
            .contains("response stream cut at the function's max_response_bytes")
            .then_some(())
    })
    .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.get(&(
            "sluice_function_invocations_total".to_string(),
            "function=flood,outcome=response_too_large".to_string()
        )),
        Some(&1.0)
    );
    let (status, body) = server.get("/fn/ticker/").await;
    assert_eq!(
        (status, body.len()),
        (200, 128 << 10),
        "the server serves on"
    );

    // A declared length, a HEAD: complete answers, counted `ok`.
    server
        .deploy_ok("declared", guests::BIG, "env=BIG_KB=128&env=BIG_DECLARE=1")
        .await;
    let (status, body) = server.get("/fn/declared/").await;
    assert_eq!((status, body.len()), (200, 128 << 10));
    let response = server
        .http()
        .head(server.url("/fn/declared/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let outcome = |function: &'static str, outcome: &'static str| {
        let server = &server;
        async move {
            server
                .metrics()
                .await
                .get(&(
                    "sluice_function_invocations_total".to_string(),
                    format!("function={function},outcome={outcome}"),
                ))
                .copied()
                .unwrap_or(0.0)
        }
    };
    eventually(Duration::from_secs(10), || async {
        (outcome("declared", "ok").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(outcome("declared", "cancelled").await, 0.0);

    // A client that goes away mid-stream stops the guest: `cancelled`.
    let mut response = server
        .http()
        .get(server.url("/fn/ticker/"))
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().expect("a first chunk");
    drop(response);
    eventually(Duration::from_secs(10), || async {
        (outcome("ticker", "cancelled").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_pauses_longer_than_the_send_timeout_is_not_cut() {
    let server = Server::start_with(&["--send-timeout-secs", "1"]);
    server
        .deploy_ok("slow", guests::BIG, "env=BIG_KB=192&env=BIG_PAUSE_MS=1500")
        .await;
    let (status, body) = server.get("/fn/slow/").await;
    assert_eq!(
        (status, body.len()),
        (200, 192 << 10),
        "waiting for the guest is not a client that stopped reading"
    );
}

#[tokio::test]
async fn request_bodies_over_the_cap_are_413() {
    let server = Server::start();
    server
        .deploy_ok("echo", guests::ECHO, "max_request_bytes=1024")
        .await;
    let response = server
        .http()
        .post(server.url("/fn/echo/"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = server
        .http()
        .post(server.url("/fn/echo/"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "exactly at the cap is accepted");
    // Streamed without a declared length, past the cap: 413 too.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let response = server
        .http()
        .post(server.url("/fn/echo/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused_clearly() {
    let server = Server::start();
    let output = std::process::Command::new(crate::harness::SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another sluice process"),
        "{stderr}"
    );
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "the first server is unaffected");
}

async fn delete_removes_the_function_and_its_route(backend: Backend) {
    let server = backend.start().await;
    server.deploy_ok("hello", guests::HELLO, "").await;
    assert_eq!(server.delete("/v1/functions/hello").await.0, 200);
    let (status, _) = server.get("/fn/hello/").await;
    assert_eq!(status, 404);
    let (_, list) = server.get("/v1/functions").await;
    assert_eq!(list, r#"{"functions":[]}"#);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_given_one_is_echoed() {
    let server = Server::start();
    let mut seen = std::collections::BTreeSet::new();
    for path in ["/healthz", "/v1/functions", "/fn/missing/", "/no/route"] {
        let response = server.http().get(server.url(path)).send().await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty(), "{path}");
        assert!(seen.insert(id), "ids are unique");
    }
    let response = server
        .http()
        .get(server.url("/healthz"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
}
