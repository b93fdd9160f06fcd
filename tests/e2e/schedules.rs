//! Schedules end to end: a cron pattern posts one event per instant into a
//! broker, across a graceful restart and a `kill -9`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::harness::{Backend, Server, Sink, error_code, eventually};

crate::both_backends!(
    a_schedule_fires_once_a_second_across_a_restart_and_a_crash,
    schedules_validate_and_round_trip,
);

/// Unix seconds now, as a float.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The instants the sink received (unix seconds), each checked to be a
/// well-formed ping event of schedule `tick`, and how often each came.
fn instants(sink: &Sink) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for request in sink.received() {
        let id = request.ce("id").expect("an id");
        assert_eq!(request.ce("time").as_deref(), Some(id.as_str()));
        assert_eq!(
            request.ce("type").as_deref(),
            Some("dev.knative.sources.ping")
        );
        assert_eq!(
            request.ce("source").as_deref(),
            Some("/apis/v1/namespaces/default/pingsources/tick")
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, json!({"n": 1}));
        let instant: jiff::Timestamp = id.parse().expect("an RFC 3339 id");
        assert_eq!(instant.subsec_nanosecond(), 0, "a whole second: {id}");
        *seen.entry(instant.as_second()).or_insert(0) += 1;
    }
    seen
}

/// Waits until the server is ready again, then until the sink has `more`
/// instants beyond `before` and at least `up` has passed; returns when it
/// was ready.
async fn run_for(server: &Server, sink: &Sink, before: usize, more: usize, up: Duration) -> f64 {
    server.wait_ready().await;
    let ready = now();
    eventually(Duration::from_secs(40), || async {
        (instants(sink).len() >= before + more).then_some(())
    })
    .await;
    let elapsed = Duration::from_secs_f64(now() - ready);
    tokio::time::sleep(up.saturating_sub(elapsed)).await;
    ready
}

async fn a_schedule_fires_once_a_second_across_a_restart_and_a_crash(backend: Backend) {
    let mut server = backend.start().await;
    let sink = Sink::start().await;
    server
        .trigger(json!({"name": "ticks", "broker": "clock",
            "filter": {"attributes": {"type": "dev.knative.sources.ping"}},
            "subscriber": {"uri": format!("{}/tick", sink.url)}}))
        .await;
    // The broker does not de-duplicate client events; a schedule's firings
    // are de-duplicated all the same.
    let response = (server.http())
        .put(server.url("/v1/brokers/clock"))
        .json(&json!({"dedupe": false}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let stored = now();
    let response = (server.http())
        .put(server.url("/v1/schedules/tick"))
        .json(&json!({"schedule": "* * * * * *", "data": {"n": 1}, "sink": {"broker": "clock"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["lastFired"], serde_json::Value::Null, "{view}");
    assert!(view["next"].is_string(), "{view}");

    // A cluster node fires once it holds the schedules' lease: a node that
    // died may hold it for up to 3 s more.
    let takeover = match backend {
        Backend::Embedded => 1.5,
        Backend::Nats => 4.5,
    };
    let up = Duration::from_secs(6);
    // Up, then a graceful restart, then a crash; up after each.
    let mut windows = Vec::new();
    run_for(&server, &sink, 0, 3, up).await;
    windows.push((stored + takeover, now() - 1.0));
    assert!(server.terminate().success());
    let stopped = now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.start_again();
    let ready = run_for(&server, &sink, instants(&sink).len(), 3, up).await;
    windows.push((ready + takeover, now() - 1.0));
    let graceful = (stopped, ready);
    server.kill();
    let killed = now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.start_again();
    let ready = run_for(&server, &sink, instants(&sink).len(), 3, up).await;
    windows.push((ready + takeover, now() - 1.0));
    let crash = (killed, ready);

    let (status, body) = server.get("/v1/schedules/tick").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last: jiff::Timestamp = view["lastFired"].as_str().expect(&body).parse().unwrap();
    assert!(last.as_second() as f64 > crash.1 - 2.0, "{body}");
    let (status, body) = server.delete("/v1/schedules/tick").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_delete = sink.received().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.received().len(),
        at_delete,
        "a deleted schedule fires no more"
    );

    let seen = instants(&sink);
    let log = || format!("instants {seen:?}\nwindows {windows:?}\n{}", server.log());
    // No instant twice.
    assert!(seen.values().all(|n| *n == 1), "{}", log());
    // None lost while the server was up.
    for (from, to) in &windows {
        for second in (from.ceil() as i64)..=(to.floor() as i64) {
            assert!(
                seen.contains_key(&second),
                "instant {second} missing: {}",
                log()
            );
        }
    }
    // None fired for an instant before the schedule was stored.
    assert!(
        *seen.keys().next().unwrap() as f64 > stored - 1.0,
        "{}",
        log()
    );
    // An instant missed while down was fired once at start (on one machine
    // the restarted server fires at once; a cluster node once it leads).
    for (down, up) in [graceful, crash] {
        let caught_up =
            (seen.keys()).any(|s| (*s as f64) > down + 0.5 && (*s as f64) <= up + takeover - 1.0);
        assert!(caught_up, "nothing fired for ({down}, {up}]: {}", log());
    }
}

async fn schedules_validate_and_round_trip(backend: Backend) {
    let server = backend.start().await;
    for (body, needle) in [
        (
            json!({"schedule": "every day", "sink": {"broker": "b"}}),
            "schedule",
        ),
        (
            json!({"schedule": "0 0 30 2 *", "sink": {"broker": "b"}}),
            "schedule",
        ),
        (
            json!({"schedule": "* * * * *", "timezone": "Mars/Olympus", "sink": {"broker": "b"}}),
            "timezone",
        ),
        (
            json!({"schedule": "* * * * *", "sink": {"function": "f"}}),
            "sink",
        ),
        (json!({"schedule": "* * * * *"}), "sink"),
        (
            json!({"schedule": "* * * * *", "sink": {"broker": "b"}, "data": "a", "dataBase64": "YQ=="}),
            "data",
        ),
    ] {
        let response = (server.http())
            .put(server.url("/v1/schedules/bad"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert_eq!(error_code(&text), "invalid_schedule", "{text}");
        assert!(text.contains(&format!("at {needle}")), "{body}: {text}");
    }
    let (status, _) = server.get("/v1/schedules/bad").await;
    assert_eq!(status, 404, "a refused schedule is not stored");

    let definition = json!({"schedule": "0 9 * * MON-FRI", "timezone": "America/New_York",
        "contentType": "text/plain", "data": "good morning",
        "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "office"}}});
    let response = (server.http())
        .put(server.url("/v1/schedules/morning"))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["sink"], json!({"broker": "office"}));
    let next: jiff::Timestamp = view["next"].as_str().unwrap().parse().unwrap();
    let local = next.to_zoned(jiff::tz::TimeZone::get("America/New_York").unwrap());
    assert_eq!((local.hour(), local.minute()), (9, 0), "{view}");
    assert!(!matches!(
        local.weekday(),
        jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
    ));
    // A view sent back replaces it with itself.
    let response = (server.http())
        .put(server.url("/v1/schedules/morning"))
        .json(&view)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, list) = server.get("/v1/schedules").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["schedules"][0]["data"], "good morning");
    let (status, _) = server.delete("/v1/schedules/morning").await;
    assert_eq!(status, 200);
    let (status, _) = server.delete("/v1/schedules/morning").await;
    assert_eq!(status, 404);
}
