//! Authentication and scopes.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use sluice_test_artifacts as guests;

use crate::harness::{SLUICE, Server, error_code};

async fn mint(server: &Server, scope: &str) -> (String, String) {
    let (status, body) = server
        .post_json(
            "/v1/tokens",
            json!({"scope": scope, "name": format!("{scope} test")}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    (
        value["token"].as_str().unwrap().to_string(),
        value["id"].as_str().unwrap().to_string(),
    )
}

async fn status_with(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn management_routes_need_a_token_with_the_right_scope() {
    let server = Server::start();
    let (deploy, _) = mint(&server, "deploy").await;
    let (publish, _) = mint(&server, "publish").await;
    let (invoke, _) = mint(&server, "invoke").await;
    use reqwest::Method;
    let anonymous = reqwest::Client::new()
        .get(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(&anonymous.text().await.unwrap()), "unauthorized");
    assert_eq!(
        status_with(&server, Method::GET, "/v1/functions", Some("sluice_wrong"))
            .await
            .0,
        401
    );
    assert_eq!(
        status_with(&server, Method::GET, "/v1/functions", Some(&deploy))
            .await
            .0,
        200
    );
    let (status, body) = status_with(&server, Method::GET, "/v1/functions", Some(&publish)).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "forbidden"),
        "{body}"
    );
    assert_eq!(
        status_with(&server, Method::DELETE, "/v1/functions/x", Some(&invoke))
            .await
            .0,
        403
    );
    assert_eq!(
        status_with(&server, Method::GET, "/v1/tokens", Some(&deploy))
            .await
            .0,
        403,
        "only admins see tokens"
    );
    assert_eq!(
        status_with(&server, Method::GET, "/v1/triggers", None)
            .await
            .0,
        401
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status_with(&server, Method::GET, open, None).await.0,
            200,
            "{open}"
        );
    }
    let (_, tokens) = server.get("/v1/tokens").await;
    assert!(!tokens.contains(&deploy), "secrets are never listed");
    assert!(tokens.contains("\"scope\":\"deploy\""), "{tokens}");
}

#[tokio::test]
async fn private_functions_need_an_invoke_token_and_public_ones_none() {
    let server = Server::start();
    server.deploy_ok("private", guests::HELLO, "").await;
    server
        .deploy_ok("open", guests::HELLO, "visibility=public")
        .await;
    let (invoke, _) = mint(&server, "invoke").await;
    let (publish, _) = mint(&server, "publish").await;
    use reqwest::Method;
    assert_eq!(
        status_with(&server, Method::GET, "/fn/private/", None)
            .await
            .0,
        401
    );
    assert_eq!(
        status_with(&server, Method::GET, "/fn/private/", Some(&invoke))
            .await
            .0,
        200
    );
    assert_eq!(
        status_with(
            &server,
            Method::POST,
            "/v1/functions/private/invoke",
            Some(&invoke)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        status_with(&server, Method::GET, "/fn/private/", Some(&publish))
            .await
            .0,
        403
    );
    assert_eq!(
        status_with(&server, Method::GET, "/fn/open/", None).await.0,
        200
    );
    assert_eq!(
        status_with(&server, Method::GET, "/fn/missing/", None)
            .await
            .0,
        401,
        "unknown names reveal nothing"
    );
}

#[tokio::test]
async fn event_ingress_needs_a_publish_token_unless_the_broker_is_public() {
    let server = Server::start_with(&["--public-broker", "open"]);
    let (publish, _) = mint(&server, "publish").await;
    let (deploy, _) = mint(&server, "deploy").await;
    let send = |path: &'static str, token: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(server.url(path))
            .header("ce-specversion", "1.0")
            .header("ce-id", "1")
            .header("ce-source", "/auth")
            .header("ce-type", "t");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("/v1/events", None).await, 401);
    assert_eq!(send("/v1/events", Some(deploy)).await, 403);
    assert_eq!(send("/v1/events", Some(publish.clone())).await, 202);
    assert_eq!(send("/v1/brokers/open/events", None).await, 202);
    assert_eq!(send("/v1/brokers/closed/events", None).await, 401);
}

#[tokio::test]
async fn refusals_at_brokers_nobody_knows_share_one_metric_series() {
    let server = Server::start_with(&["--public-broker", "open"]);
    let (status, body) = server
        .post_json(
            "/v1/triggers",
            json!({"name": "pay", "broker": "payments", "subscriber": {"uri": "http://127.0.0.1:9/"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let anonymous = reqwest::Client::new();
    // Anyone can name any broker in a URL: a hundred names, refused.
    for n in 0..100 {
        let response = anonymous
            .post(server.url(&format!("/v1/brokers/made-up-{n}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    for broker in ["payments", "default"] {
        let response = anonymous
            .post(server.url(&format!("/v1/brokers/{broker}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let response = anonymous
        .post(server.url("/v1/brokers/open/events"))
        .header("ce-specversion", "1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a public broker, a broken event");
    let metrics = server.metrics().await;
    let rejected: Vec<(&String, &f64)> = metrics
        .iter()
        .filter(|((name, _), _)| name == "sluice_events_rejected_total")
        .map(|((_, labels), value)| (labels, value))
        .collect();
    let get = |labels: &str| {
        rejected
            .iter()
            .find(|(l, _)| l.as_str() == labels)
            .map(|(_, v)| **v)
    };
    assert_eq!(
        get("broker=_unknown,reason=unauthorized"),
        Some(100.0),
        "{rejected:?}"
    );
    assert_eq!(
        get("broker=payments,reason=unauthorized"),
        Some(1.0),
        "{rejected:?}"
    );
    assert_eq!(
        get("broker=default,reason=unauthorized"),
        Some(1.0),
        "{rejected:?}"
    );
    assert_eq!(
        get("broker=open,reason=missing_attribute"),
        Some(1.0),
        "{rejected:?}"
    );
    assert!(
        rejected.iter().all(|(l, _)| !l.contains("made-up")),
        "{rejected:?}"
    );
}

#[tokio::test]
async fn revoked_tokens_stop_working() {
    let server = Server::start();
    let (token, id) = mint(&server, "deploy").await;
    assert_eq!(
        status_with(&server, reqwest::Method::GET, "/v1/functions", Some(&token))
            .await
            .0,
        200
    );
    assert_eq!(server.delete(&format!("/v1/tokens/{id}")).await.0, 200);
    assert_eq!(
        status_with(&server, reqwest::Method::GET, "/v1/functions", Some(&token))
            .await
            .0,
        401
    );
    assert_eq!(server.delete(&format!("/v1/tokens/{id}")).await.0, 404);
}

#[tokio::test]
async fn the_first_start_writes_an_owner_only_admin_token_the_cli_finds() {
    let server = Server::start_creating_admin_token();
    let path = server.data_dir().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    assert!(
        server.log().contains("admin token written to"),
        "the server says where it is"
    );
    assert_eq!(server.get("/v1/functions").await.0, 200);

    let cli = |args: &[&str]| {
        std::process::Command::new(SLUICE)
            .args(args)
            .env_remove("SLUICE_TOKEN")
            .env("SLUICE_URL", &server.url)
            .env("SLUICE_DATA_DIR", server.data_dir())
            .output()
            .unwrap()
    };
    let listed = cli(&["fn", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let minted = cli(&["token", "create", "--scope", "invoke", "--name", "ci"]);
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    assert!(token.starts_with("sluice_"), "{token}");
    let listed = cli(&["token", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("invoke"));
    let no_token = std::process::Command::new(SLUICE)
        .args(["fn", "list", "--data-dir", "/nonexistent"])
        .env_remove("SLUICE_TOKEN")
        .env("SLUICE_URL", &server.url)
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("set SLUICE_TOKEN"),
        "a helpful message"
    );
}
