//! Input limits: each bound on client-controlled input is a clear 4xx.

use serde_json::json;
use sluice_test_artifacts as guests;

use crate::harness::{Server, error_code};

#[tokio::test]
async fn too_many_headers_is_431() {
    let server = Server::start();
    let mut request = server.http().get(server.url("/v1/functions"));
    for i in 0..150 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
}

#[tokio::test]
async fn json_nested_deeper_than_the_parser_allows_is_400() {
    let server = Server::start();
    let deep = "[".repeat(200) + &"]".repeat(200);
    let body =
        format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{deep}}}"#);
    let response = server
        .http()
        .post(server.url("/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(&response.text().await.unwrap()), "json_too_deep");

    let mut filter = json!({"exact": {"type": "t"}});
    for _ in 0..20 {
        filter = json!({"not": filter});
    }
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "deep", "filters": [filter], "subscriber": {"function": "f"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("deeper than 16"), "{body}");
    let many: Vec<_> = (0..65)
        .map(|i| json!({"exact": {"id": i.to_string()}}))
        .collect();
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "many", "filters": many, "subscriber": {"function": "f"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 64 filters"), "{body}");
}

#[tokio::test]
async fn function_and_trigger_counts_are_capped() {
    let server = Server::start_with(&["--max-functions", "2", "--max-triggers", "1"]);
    server.deploy_ok("a", guests::HELLO, "").await;
    server.deploy_ok("b", guests::HELLO, "").await;
    let response = server.deploy("c", guests::HELLO, "").await;
    assert_eq!(response.status(), 409);
    assert_eq!(
        error_code(&response.text().await.unwrap()),
        "too_many_functions"
    );
    server.deploy_ok("a", guests::HELLO, "env=X=1").await; // replacing is fine
    server
        .trigger(json!({"name": "t1", "subscriber": {"function": "a"}}))
        .await;
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "t2", "subscriber": {"function": "a"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "too_many_triggers")
    );
    let response = server
        .http()
        .put(server.url("/v1/triggers/t1"))
        .json(&json!({"subscriber": {"function": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "replacing a trigger is fine");
}
