//! Schedules end to end: a cron pattern posts one event per instant into a
//! broker, across a graceful restart and a `kill -9`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::harness::{Backend, Server, Sink, error_code, eventually};

crate::both_backends!(
    a_schedule_fires_once_a_second_across_a_restart_and_a_crash,
    schedules_validate_and_round_trip,
    a_schedule_delivers_straight_to_a_url_or_a_function,
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
    for request in sink.received().into_iter().filter(|r| r.path == "/tick") {
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

/// Stores schedule `name`, whose one instant (returned, Unix seconds) is
/// 2 to 3 s from now, into broker `later`.
async fn once_while_down(server: &Server, name: &str) -> i64 {
    let instant = now().ceil() as i64 + 2;
    let at = jiff::Timestamp::from_second(instant)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    let pattern = format!(
        "{} {} {} {} {} *",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month()
    );
    let response = (server.http())
        .put(server.url(&format!("/v1/schedules/{name}")))
        .json(&json!({"schedule": pattern, "sink": {"broker": "later"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    instant
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
        Backend::Embedded => 2.0,
        Backend::Nats => 5.0,
    };
    // A schedule whose one instant falls while the server is down: only
    // the catch-up at start can fire it.
    server
        .trigger(json!({"name": "once", "broker": "later",
            "subscriber": {"uri": format!("{}/once", sink.url)}}))
        .await;
    let up = Duration::from_secs(6);
    // Up, then a graceful restart, then a crash; up after each.
    let mut windows = Vec::new();
    run_for(&server, &sink, 0, 3, up).await;
    windows.push((stored + takeover, now() - 2.0));
    let first_once = once_while_down(&server, "once-a").await;
    assert!(server.terminate().success());
    let stopped = now();
    let wait = (first_once as f64 + 1.5 - now()).max(1.5);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    server.start_again();
    let ready = run_for(&server, &sink, instants(&sink).len(), 3, up).await;
    windows.push((ready + takeover, now() - 2.0));
    let second_once = once_while_down(&server, "once-b").await;
    server.kill();
    let killed = now();
    let wait = (second_once as f64 + 1.5 - now()).max(2.5);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    server.start_again();
    let ready = run_for(&server, &sink, instants(&sink).len(), 3, up).await;
    windows.push((ready + takeover, now() - 2.0));

    let (status, body) = server.get("/v1/schedules/tick").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last: jiff::Timestamp = view["lastFired"].as_str().expect(&body).parse().unwrap();
    assert!(last.as_second() as f64 > ready - 2.0, "{body}");
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
    // No instant twice. (A delivery the sink took just before the kill,
    // whose end the server had not yet recorded, is delivered again: at
    // least once, the same firing.)
    for (second, n) in &seen {
        let near_the_kill = (*second as f64) > killed - 2.0 && (*second as f64) <= killed;
        assert!(
            *n == 1 || (*n == 2 && near_the_kill),
            "instant {second} came {n} times: {}",
            log()
        );
    }
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
    // Each instant missed while down fired once at start.
    let once = eventually(Duration::from_secs(30), || async {
        let got: Vec<(String, String)> = (sink.received().into_iter())
            .filter(|r| r.path == "/once")
            .map(|r| (r.ce("source").unwrap(), r.ce("id").unwrap()))
            .collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let stamp = |s: i64| jiff::Timestamp::from_second(s).unwrap().to_string();
    let mut once = once;
    once.sort();
    assert_eq!(
        once,
        [
            (
                "/apis/v1/namespaces/default/pingsources/once-a".to_string(),
                stamp(first_once)
            ),
            (
                "/apis/v1/namespaces/default/pingsources/once-b".to_string(),
                stamp(second_once)
            ),
        ],
        "stopped {stopped}, killed {killed}: {}",
        log()
    );
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
            json!({"schedule": "* * * * *", "sink": {"function": "F"}}),
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

async fn a_schedule_delivers_straight_to_a_url_or_a_function(backend: Backend) {
    let server = backend.start().await;
    let sink = Sink::start().await;
    server
        .deploy_ok("echo", sluice_test_artifacts::EVENT_ECHO, "")
        .await;
    // A trigger on the default broker that would see any ping event
    // posted there: a direct sink's events never reach it.
    server
        .trigger(
            json!({"name": "spy", "filter": {"attributes": {"type": "dev.knative.sources.ping"}},
                        "subscriber": {"uri": format!("{}/spy", sink.url)}}),
        )
        .await;
    for (name, sink_json) in [
        ("direct", json!({"uri": format!("{}/direct", sink.url)})),
        (
            "tofn",
            json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "echo"}}),
        ),
    ] {
        let response = (server.http())
            .put(server.url(&format!("/v1/schedules/{name}")))
            .json(&json!({"schedule": "* * * * * *", "data": {"n": 1}, "sink": sink_json}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let direct = |sink: &Sink| -> Vec<String> {
        (sink.received().into_iter())
            .filter(|r| r.path == "/direct")
            .map(|r| {
                assert_eq!(r.ce("type").as_deref(), Some("dev.knative.sources.ping"));
                r.ce("id").unwrap()
            })
            .collect()
    };
    let ids = eventually(Duration::from_secs(30), || async {
        let ids = direct(&sink);
        (ids.len() >= 2).then_some(ids)
    })
    .await;
    let delivered_to_fn = eventually(Duration::from_secs(30), || async {
        let metrics = server.metrics().await;
        let n = (metrics.get(&(
            "sluice_trigger_delivered_total".to_owned(),
            "trigger=_schedule_tofn".to_owned(),
        )))
        .copied()
        .unwrap_or(0.0);
        (n >= 2.0).then_some(n)
    })
    .await;
    assert!(delivered_to_fn >= 2.0);
    assert!(
        sink.received().iter().all(|r| r.path != "/spy"),
        "no broker's trigger sees a direct sink's events"
    );
    let (_, view) = server.get("/v1/schedules/tofn").await;
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["sink"], json!({"function": "echo"}), "{view}");
    assert_eq!(view["status"], json!({"ready": true}), "{view}");
    // A schedule to a function that is not deployed is taken (it may be
    // deployed later), and says it is not ready, and why.
    let (_, view) = server
        .put_json(
            "/v1/schedules/nofn",
            json!({"schedule": "0 0 1 1 *", "sink": {"function": "not-there"}}),
        )
        .await;
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["status"]["ready"], false, "{view}");
    assert!(
        view["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not-there")),
        "{view}"
    );
    let (_, triggers) = server.get("/v1/triggers").await;
    assert!(!triggers.contains("_schedule_"), "not listed: {triggers}");
    // Traced under the schedule's own broker.
    let (status, trace) = server
        .get(&format!("/v1/brokers/_schedule_direct/events/{}", ids[0]))
        .await;
    assert_eq!(status, 200, "{trace}");
    let trace: serde_json::Value = serde_json::from_str(&trace).unwrap();
    assert_eq!(
        trace["traces"][0]["matched"],
        json!(["_schedule_direct"]),
        "{trace}"
    );
    // The hidden trigger is the schedule's: not a client's to read or
    // delete.
    let (status, _) = server.get("/v1/triggers/_schedule_tofn").await;
    assert_eq!(status, 404);
    let (status, _) = server.delete("/v1/triggers/_schedule_tofn").await;
    assert_eq!(status, 404);
    // One delivery per firing (read before the delete drops the series):
    // the function's replies (event-echo answers each event) are dropped,
    // never delivered back to it.
    let metrics = server.metrics().await;
    let value = |name: &str, labels: &str| {
        (metrics.get(&(name.to_owned(), labels.to_owned())))
            .copied()
            .unwrap_or(0.0)
    };
    let delivered = value("sluice_trigger_delivered_total", "trigger=_schedule_tofn");
    let fired = value("sluice_schedule_firings_total", "schedule=tofn");
    assert!(
        delivered >= 2.0 && delivered <= fired,
        "{delivered} deliveries of {fired} firings"
    );
    assert!(
        value(
            "sluice_events_dropped_total",
            "broker=_schedule_tofn,reason=schedule_sink_reply"
        ) >= 2.0
    );
    // Deleted: it fires no more.
    for name in ["direct", "tofn"] {
        let (status, _) = server.delete(&format!("/v1/schedules/{name}")).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = direct(&sink).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(direct(&sink).len(), settled, "no firing after the delete");
}
