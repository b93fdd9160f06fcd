//! Functions written in Python (componentize-py) and JavaScript
//! (componentize-js), built by `scripts/build-polyglot` into
//! `target/polyglot/`: one HTTP function and one event function in each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, Sink, eventually};

const GUESTS: [&str; 4] = [
    "py-hello",
    "py-order-processor",
    "js-hello",
    "js-order-processor",
];

fn built() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/polyglot");
    if GUESTS
        .iter()
        .all(|g| dir.join(format!("{g}.wasm")).exists())
    {
        return Some(dir);
    }
    // CI builds them (`scripts/test` runs `scripts/build-polyglot`).
    assert!(
        std::env::var_os("CI").is_none(),
        "the Python and JavaScript guests are not built: run scripts/build-polyglot"
    );
    eprintln!("skipped: run scripts/build-polyglot to build the Python and JavaScript guests");
    None
}

#[tokio::test]
async fn python_and_javascript_functions_serve_http_and_handle_events() {
    let Some(dir) = built() else { return };
    let server = Server::start();
    let sink = Sink::start().await;

    // Deploy all four at once (each is 12 to 19 MB, compiled once at upload).
    let deploys = GUESTS.map(|guest| {
        let bytes = std::fs::read(dir.join(format!("{guest}.wasm"))).unwrap();
        let query = match guest {
            "py-hello" => "visibility=public&env=GREETING=Hi from a test",
            "js-hello" => "visibility=public",
            _ => "",
        };
        server
            .http()
            .put(server.url(&format!("/v1/functions/{guest}?{query}")))
            .body(bytes)
            .send()
    });
    for (guest, response) in GUESTS.iter().zip(futures::future::join_all(deploys).await) {
        let response = response.unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, 201, "{guest}: {}", response.text().await.unwrap());
    }

    // HTTP functions: path, query, method, body and (Python) the environment.
    let anonymous = reqwest::Client::new();
    let answer_of = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().json::<Value>().await.unwrap()
    };
    let answer = answer_of(anonymous.get(server.url("/fn/py-hello/some/path?x=1"))).await;
    assert_eq!(
        answer,
        json!({"greeting": "Hi from a test", "method": "GET", "path": "/some/path?x=1", "body_bytes": 0})
    );
    let answer = answer_of(
        anonymous
            .post(server.url("/fn/js-hello/p?name=Ada"))
            .body("twelve bytes"),
    )
    .await;
    assert_eq!(
        answer,
        json!({"greeting": "Hello, Ada, from JavaScript!", "method": "POST", "path": "/p?name=Ada", "body_bytes": 12})
    );
    let answer = answer_of(
        anonymous
            .post(server.url("/fn/py-hello/"))
            .body(vec![7u8; 100_000]),
    )
    .await;
    assert_eq!(answer["body_bytes"], 100_000);

    // Event functions behind triggers: both price each order; replies reach
    // the sink; the key-value counter of each goes up; bad data is a
    // permanent failure, dead-lettered at once.
    for (name, function) in [("py", "py-order-processor"), ("js", "js-order-processor")] {
        server
            .trigger(json!({"name": name, "filter": {"attributes": {"type": "com.example.order.created"}},
                            "subscriber": {"function": function}, "delivery": {"retry": 2, "backoffDelay": "PT0.01S"}}))
            .await;
    }
    server
        .trigger(
            json!({"name": "priced", "filter": {"attributes": {"type": "com.example.order.priced"}},
                        "subscriber": {"uri": format!("{}/priced", sink.url)}}),
        )
        .await;
    let order = br#"{"items": [{"sku": "A1", "qty": 2, "price": 5.5}, {"sku": "B2", "qty": 1, "price": 1.25}]}"#;
    for id in ["o-1", "o-2"] {
        let status = server
            .send_event(
                id,
                "com.example.order.created",
                &[
                    ("content-type", "application/json"),
                    ("ce-subject", "cart-7"),
                ],
                order,
            )
            .await;
        assert_eq!(status, 202);
    }
    let got = sink.wait_for(4).await;
    let mut replies: Vec<(String, Value)> = got
        .iter()
        .map(|r| {
            (
                r.ce("source").unwrap(),
                serde_json::from_slice(&r.body).unwrap(),
            )
        })
        .collect();
    replies.sort_by_key(|(source, data)| (source.clone(), data["order"].to_string()));
    for (source, data) in &replies {
        assert_eq!(data["items"], 2, "{source}: {data}");
        assert_eq!(data["total"].as_f64(), Some(12.25), "{source}: {data}");
    }
    // The two orders' deliveries run concurrently, so which one counts
    // first is not fixed: each bucket must have counted both, once each.
    let mut seen: Vec<(String, i64)> = replies
        .iter()
        .map(|(source, data)| (source.clone(), data["seen"].as_i64().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("sluice/js-order-processor".to_string(), 1),
            ("sluice/js-order-processor".to_string(), 2),
            ("sluice/py-order-processor".to_string(), 1),
            ("sluice/py-order-processor".to_string(), 2),
        ],
        "each function counts its orders in its own bucket"
    );
    assert!(
        got.iter()
            .all(|r| r.ce("subject").as_deref() == Some("cart-7"))
    );

    assert_eq!(
        server
            .send_event("bad-1", "com.example.order.created", &[], b"not json")
            .await,
        202
    );
    let letters = eventually(Duration::from_secs(20), || async {
        let (_, body) = server.get("/v1/deadletters").await;
        let letters: Value = serde_json::from_str(&body).unwrap();
        let letters = letters["deadletters"].as_array().unwrap().clone();
        (letters.len() == 2).then_some(letters)
    })
    .await;
    for letter in &letters {
        assert_eq!(letter["attempts"], 1, "permanent: no retry: {letter}");
        assert!(
            letter["reason"].as_str().unwrap().contains("not an order"),
            "{letter}"
        );
    }

    // What the guests print lands in their logs.
    let (_, logs) = server.get("/v1/functions/py-order-processor/logs").await;
    assert!(logs.contains("order o-1: 2 items, total 12.25"), "{logs}");
    let (_, logs) = server.get("/v1/functions/js-order-processor/logs").await;
    assert!(logs.contains("order o-2: 2 items, total 12.25"), "{logs}");
}
