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
    for open in ["/healthz", "/readyz"] {
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
async fn metrics_need_a_metrics_token_unless_public() {
    let server = Server::start();
    server.deploy_ok("secret-project", guests::HELLO, "").await;
    let (metrics, _) = mint(&server, "metrics").await;
    let (deploy, _) = mint(&server, "deploy").await;
    use reqwest::Method;
    assert_eq!(
        status_with(&server, Method::GET, "/metrics", None).await.0,
        401
    );
    assert_eq!(
        status_with(&server, Method::GET, "/metrics", Some(&deploy))
            .await
            .0,
        403
    );
    let (status, body) = status_with(&server, Method::GET, "/metrics", Some(&metrics)).await;
    assert_eq!(status, 200);
    assert!(body.contains("sluice_artifacts_loaded_total"), "{body}");
    assert_eq!(
        status_with(&server, Method::GET, "/v1/functions", Some(&metrics))
            .await
            .0,
        403,
        "a metrics token reads metrics only"
    );
    let open = Server::start_with(&["--public-metrics"]);
    assert_eq!(
        status_with(&open, Method::GET, "/metrics", None).await.0,
        200
    );
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_sluice_token_never_reaches_a_guest_a_subscriber_or_a_stored_request() {
    let server = Server::start();
    let admin = server.admin_token().to_string();
    let (invoke, _) = mint(&server, "invoke").await;
    let (other, _) = mint(&server, "invoke").await;
    let (deploy, _) = mint(&server, "deploy").await;
    let (publish, _) = mint(&server, "publish").await;
    server.deploy_ok("private-echo", guests::ECHO, "").await;
    server
        .deploy_ok("open-echo", guests::ECHO, "visibility=public")
        .await;
    use reqwest::Method;
    let call = |method: Method, path: &str, authorization: Option<String>| {
        let mut request = reqwest::Client::new().request(method, server.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let secrets = [&admin, &invoke, &other, &deploy, &publish];
    let leaks = |text: &str| -> Vec<&str> {
        secrets
            .iter()
            .filter(|s| text.contains(s.as_str()))
            .map(|s| s.as_str())
            .collect()
    };

    // The token a private function's call was checked with is removed.
    for token in [&invoke, &admin] {
        let (status, body) = call(Method::GET, "/fn/private-echo/x", bearer(token)).await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("header: authorization"), "{body}");
        assert!(leaks(&body).is_empty(), "{body}");
        let (status, body) = call(
            Method::POST,
            "/v1/functions/private-echo/invoke",
            bearer(token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(leaks(&body).is_empty(), "{body}");
    }
    // A public function: a Sluice token is removed all the same; any other
    // credential reaches the guest as sent.
    let (_, body) = call(Method::GET, "/fn/open-echo/", bearer(&admin)).await;
    assert!(leaks(&body).is_empty(), "{body}");
    assert!(!body.contains("header: authorization"), "{body}");
    let (_, body) = call(
        Method::GET,
        "/fn/open-echo/",
        Some("Bearer app-secret-1".into()),
    )
    .await;
    assert!(
        body.contains("header: authorization: Bearer app-secret-1"),
        "{body}"
    );
    let (_, body) = call(
        Method::GET,
        "/fn/open-echo/",
        Some("Basic dXNlcjpwdw==".into()),
    )
    .await;
    assert!(
        body.contains("header: authorization: Basic dXNlcjpwdw=="),
        "{body}"
    );

    // Asynchronous: the stored request holds no token, the id is not
    // guessable, and only its maker and admins read it.
    let (status, body) = call(
        Method::POST,
        "/v1/functions/private-echo/invoke?async=true",
        bearer(&invoke),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let path = format!("/v1/invocations/{id}");
    let finished = crate::harness::eventually(std::time::Duration::from_secs(20), || async {
        let (_, body) = call(Method::GET, &path, bearer(&invoke)).await;
        let value: Value = serde_json::from_str(&body).unwrap();
        (value["status"] == "succeeded").then_some(value)
    })
    .await;
    let echoed = finished["response"]["body"].as_str().unwrap();
    assert!(!echoed.contains("header: authorization"), "{echoed}");
    assert!(leaks(echoed).is_empty(), "{echoed}");
    assert_eq!(call(Method::GET, &path, bearer(&admin)).await.0, 200);
    for stranger in [bearer(&other), bearer(&deploy), None] {
        let (status, body) = call(Method::GET, &path, stranger).await;
        assert_eq!(status, 404, "someone else's invocation: {body}");
    }
    assert_eq!(
        call(Method::GET, &path, Some("Bearer sluice_forged".into()))
            .await
            .0,
        401
    );
    // One made without a token is read with its id alone.
    let (status, body) = call(
        Method::POST,
        "/v1/functions/open-echo/invoke?async=true",
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let open_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::harness::eventually(std::time::Duration::from_secs(20), || async {
        let (status, body) = call(Method::GET, &format!("/v1/invocations/{open_id}"), None).await;
        (status == 200 && body.contains("succeeded")).then_some(())
    })
    .await;

    // Deliveries: neither a `uri` subscriber nor a function sees the
    // publisher's token.
    let sink = crate::harness::Sink::start().await;
    server
        .deploy_ok(
            "delivery-echo",
            guests::ECHO,
            "env=ECHO_HEADERS_TO_STDERR=1",
        )
        .await;
    for (name, subscriber) in [
        ("to-sink", json!({"uri": format!("{}/in", sink.url)})),
        ("to-function", json!({"function": "delivery-echo"})),
    ] {
        let (status, body) = server
            .post_json(
                "/v1/triggers",
                json!({"name": name, "filter": {"attributes": {"type": "leak.test"}}, "subscriber": subscriber}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let response = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(&publish)
        .header("ce-specversion", "1.0")
        .header("ce-id", "leak-1")
        .header("ce-source", "/auth")
        .header("ce-type", "leak.test")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let got = sink.wait_for(1).await;
    assert!(
        !got[0].headers.contains_key("authorization"),
        "{:?}",
        got[0].headers
    );
    assert!(
        got[0].headers.values().all(|v| leaks(v).is_empty()),
        "{:?}",
        got[0].headers
    );
    let lines = crate::harness::eventually(std::time::Duration::from_secs(20), || async {
        let (_, body) = server.get("/v1/functions/delivery-echo/logs").await;
        let value: Value = serde_json::from_str(&body).unwrap();
        let lines: Vec<String> = value["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect();
        lines
            .iter()
            .any(|l| l.contains("ce-id: leak-1"))
            .then_some(lines)
    })
    .await;
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("header: authorization")),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| leaks(l).is_empty()), "{lines:?}");

    // Nothing on disk holds a token (only their hashes are stored).
    for secret in secrets {
        let found = files_containing(server.data_dir(), secret);
        assert!(found.is_empty(), "a token is stored in {found:?}");
    }

    // Function to function: a Sluice token a guest sends (a secret holding
    // one, say) is removed before the callee sees it; another is not.
    for (authorization, reaches) in [
        (format!("Bearer {other}"), false),
        ("Bearer app-secret-2".to_string(), true),
    ] {
        server
            .deploy_ok(
                "caller",
                guests::CALLER,
                &format!(
                    "env=CALL=http://open-echo.internal/&secret=CALL_AUTHORIZATION={}",
                    authorization.replace(' ', "%20")
                ),
            )
            .await;
        let (status, body) = server.get("/fn/caller/").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("status: 200"), "{body}");
        assert_eq!(
            body.contains(&format!("header: authorization: {authorization}")),
            reaches,
            "{body}"
        );
        assert!(leaks(&body).is_empty(), "{body}");
    }
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

/// Every entry under `dir` (itself included) with a permission for group
/// or others, but the test harness's own `server.log` (not Sluice's: the
/// server only tightens what it keeps).
fn not_private(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut loose = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.file_name() == Some(std::ffi::OsStr::new("server.log")) {
            continue;
        }
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            loose.push((path.clone(), mode));
        }
        if metadata.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    loose
}

#[tokio::test]
async fn the_data_directory_is_private_and_a_looser_one_is_tightened_at_start() {
    let mut server = Server::start();
    server
        .deploy_ok("hello", guests::HELLO, "env=A=1&secret=TOKEN=s3cret")
        .await;
    assert_eq!(server.send_event("p1", "t", &[], b"").await, 202);
    assert!(server.data_dir().join("db").is_dir());
    assert_eq!(
        not_private(server.data_dir()),
        vec![],
        "everything the server made is 0700/0600"
    );
    server.kill();
    // As an older version, or a careless copy, left it.
    let mut stack = vec![server.data_dir().to_path_buf()];
    while let Some(path) = stack.pop() {
        let dir = path.is_dir();
        let mode = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if dir {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(!not_private(server.data_dir()).is_empty());
    server.start_again();
    assert_eq!(not_private(server.data_dir()), vec![]);
    assert!(
        server.log().contains("made it and its files private"),
        "the server says it tightened them"
    );
    assert_eq!(server.get("/fn/hello/").await.0, 200);
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
