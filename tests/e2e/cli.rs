//! The `sluice` CLI against a real server.

use std::process::{Command, Output};
use std::time::Duration;

use sluice_test_artifacts as guests;

use crate::harness::{Backend, SLUICE, Server};

crate::both_backends!(
    deploy_list_invoke_delete_round_trip,
    trigger_event_and_dead_letter_commands_round_trip,
    trigger_dialects_files_structured_events_direct_calls_and_the_live_stream,
    knative_resources_apply_as_written_twice_changes_nothing_and_export_round_trips,
);

fn sluice(server: &Server, args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", server.admin_token())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn deploy_list_invoke_delete_round_trip(backend: Backend) {
    let server = backend.start().await;
    let deployed = stdout(&sluice(
        &server,
        &[
            "fn",
            "deploy",
            "hello",
            guests::HELLO,
            "--env",
            "GREETING=Hi!",
        ],
    ));
    assert!(
        deployed.starts_with("deployed hello v1 (http, private) at /fn/hello/"),
        "{deployed}"
    );

    let list = stdout(&sluice(&server, &["fn", "list"]));
    assert!(list.contains("hello") && list.contains("v1"), "{list}");
    let got = stdout(&sluice(&server, &["fn", "get", "hello"]));
    assert!(got.contains("\"GREETING\":\"Hi!\""), "{got}");
    // Every read command answers the API's JSON with `--output json`.
    let got: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &["fn", "get", "hello", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(got["settings"]["env"]["GREETING"], "Hi!");
    let list: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &["fn", "list", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(list["functions"][0]["name"], "hello");

    let invoked = stdout(&sluice(
        &server,
        &["fn", "invoke", "hello", "--data", "ignored"],
    ));
    assert!(invoked.starts_with("Hi! You asked for /"), "{invoked}");
    // `fn get` lists the recent calls, times in RFC 3339 (a call is
    // recorded as its response body ends, which can be just after).
    let mut got = String::new();
    for _ in 0..100 {
        got = stdout(&sluice(&server, &["fn", "get", "hello"]));
        if !got.contains("recent     none") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (scope, node) = match backend {
        Backend::Embedded => ("since this server started", false),
        // Every node's calls, each naming its node.
        Backend::Nats => ("through every node", true),
    };
    assert!(
        got.contains(&format!("recent     1 of the last 1 invocations, {scope}")),
        "{got}"
    );
    let call = got.lines().last().unwrap();
    assert!(
        call.trim_start().starts_with("20")
            && call.contains("Z ok")
            && call.contains(" on ") == node,
        "{got}"
    );
    // `status` prints the cluster's part in cluster mode (the node's
    // lease is written within a moment of the layout being made).
    let mut status = String::new();
    for _ in 0..100 {
        status = stdout(&sluice(&server, &["status"]));
        if !node || status.contains("\nnodes       1 live\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status.contains("\njetstream   healthy\n"), node, "{status}");
    assert_eq!(status.contains("\nnodes       1 live\n"), node, "{status}");

    // Settings: `fn update` changes the named ones; a redeploy keeps them.
    let updated = stdout(&sluice(
        &server,
        &[
            "fn",
            "update",
            "hello",
            "--public",
            "--secret",
            "API_KEY=k3y",
            "--kv-bucket",
            "shared",
            "--max-request-bytes",
            "4096",
        ],
    ));
    assert!(updated.starts_with("updated hello v2"), "{updated}");
    assert!(
        !updated.contains("k3y"),
        "the secret is not shown: {updated}"
    );
    let unchanged = stdout(&sluice(&server, &["fn", "deploy", "hello", guests::HELLO]));
    assert!(
        unchanged.starts_with("hello v2 unchanged"),
        "the same code and settings: {unchanged}"
    );
    let redeployed = stdout(&sluice(&server, &["fn", "deploy", "hello", guests::ECHO]));
    assert!(
        redeployed.contains("v3 (http, public)")
            && redeployed
                .contains("kept settings: visibility, max_request_bytes, env, secrets, kv_buckets"),
        "{redeployed}"
    );
    let got: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &["fn", "get", "hello", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(got["settings"]["env"]["GREETING"], "Hi!");
    assert_eq!(got["settings"]["kv_buckets"][0], "shared");
    let private = stdout(&sluice(&server, &["fn", "update", "hello", "--private"]));
    assert!(private.contains("\"visibility\":\"private\""), "{private}");
    let reset = stdout(&sluice(
        &server,
        &[
            "fn",
            "update",
            "hello",
            "--reset",
            "secrets",
            "--reset",
            "kv_buckets",
        ],
    ));
    let reset: serde_json::Value =
        serde_json::from_str(reset.split_once(": ").unwrap().1.trim()).unwrap();
    assert!(
        reset.get("secrets").is_none() && reset.get("kv_buckets").is_none(),
        "{reset}"
    );
    let refused = sluice(&server, &["fn", "update", "hello"]);
    assert!(
        !refused.status.success(),
        "an update naming nothing is refused"
    );

    let none = stdout(&sluice(&server, &["invocation", "list"]));
    assert!(none.contains("no asynchronous invocations"), "{none}");
    let queued = stdout(&sluice(&server, &["fn", "invoke", "hello", "--async"]));
    let id = queued
        .split_whitespace()
        .find(|w| w.len() == 32)
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "{queued}");
    let listed = stdout(&sluice(
        &server,
        &["invocation", "list", "--function", "hello"],
    ));
    assert!(listed.contains(&id), "{listed}");
    let finished = stdout(&sluice(&server, &["invocation", "get", &id, "--wait"]));
    assert!(finished.contains("succeeded"), "{finished}");
    let late = sluice(&server, &["invocation", "cancel", &id]);
    assert!(
        !late.status.success(),
        "a finished invocation is not cancelled"
    );
    assert!(String::from_utf8_lossy(&late.stderr).contains("finished already"));

    let deleted = stdout(&sluice(&server, &["fn", "delete", "hello"]));
    assert!(deleted.contains("deleted hello"));
    let list = stdout(&sluice(&server, &["fn", "list"]));
    assert!(list.contains("no functions deployed"), "{list}");
}

#[tokio::test]
async fn errors_print_the_server_reason_and_exit_non_zero() {
    let server = Server::start();
    let output = sluice(&server, &["fn", "get", "missing"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("function \"missing\" not found"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let output = sluice(&server, &["fn", "deploy", "core", core.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("core WebAssembly module, not a component"),
        "{stderr}"
    );

    let output = Command::new(SLUICE)
        .args(["fn", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is `sluice serve` running?"), "{stderr}");
}

async fn trigger_event_and_dead_letter_commands_round_trip(backend: Backend) {
    let server = backend.start().await;
    let sink = crate::harness::Sink::start().await;
    stdout(&sluice(
        &server,
        &[
            "fn",
            "deploy",
            "flaky",
            guests::FLAKY,
            "--env",
            "FAIL_FIRST=100",
        ],
    ));
    let created = stdout(&sluice(
        &server,
        &[
            "trigger",
            "create",
            "jobs",
            "--function",
            "flaky",
            "--filter",
            "type=job",
            "--prefix",
            "source=/cli",
            "--retry",
            "1",
            "--backoff-delay",
            "PT0.01S",
        ],
    ));
    assert!(created.starts_with("stored trigger jobs\n"), "{created}");
    assert!(created.contains("\"retry\":1"), "{created}");
    let sink_uri = format!("{}/all", sink.url);
    stdout(&sluice(
        &server,
        &[
            "trigger", "create", "copy", "--uri", &sink_uri, "--filter", "type=job",
        ],
    ));
    let list = stdout(&sluice(&server, &["trigger", "list"]));
    assert!(
        list.contains("jobs") && list.contains("copy") && list.contains("ready"),
        "{list}"
    );
    // The counts stand under their headings.
    let heading = list.lines().next().unwrap();
    let row = list.lines().find(|l| l.starts_with("jobs ")).unwrap();
    let dead = heading.find("DEAD").unwrap() + "DEAD".len();
    assert!(
        row.as_bytes()[dead - 1].is_ascii_digit() && row.as_bytes()[dead] == b' ',
        "{list}"
    );

    let sent = stdout(&sluice(
        &server,
        &[
            "event",
            "send",
            "--type",
            "job",
            "--source",
            "/cli/test",
            "--id",
            "cli-1",
            "--subject",
            "s p a c e",
            "--data",
            "{\"n\":1}",
        ],
    ));
    assert!(sent.contains("accepted event cli-1"), "{sent}");
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].ce("subject").as_deref(), Some("s p a c e"));
    assert_eq!(got[0].body, br#"{"n":1}"#);
    // Brokers read as the other resources do.
    let broker = stdout(&sluice(
        &server,
        &["broker", "create", "jobs", "--retry", "2"],
    ));
    assert!(
        broker.starts_with("stored broker jobs\nname       jobs\n")
            && broker.contains("\"retry\":2"),
        "{broker}"
    );
    let broker: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &["broker", "get", "jobs", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(broker["delivery"]["retry"], 2, "{broker}");
    stdout(&sluice(&server, &["broker", "delete", "jobs"]));
    // A repeat says it is one; -o json shows the server's answer.
    let again = [
        "event",
        "send",
        "--type",
        "job",
        "--source",
        "/cli/test",
        "--id",
        "cli-1",
    ];
    let repeat = stdout(&sluice(&server, &again));
    assert!(
        repeat.contains("accepted event cli-1 as a duplicate"),
        "{repeat}"
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &[&again[..], &["-o", "json"]].concat(),
    )))
    .unwrap();
    assert_eq!(answer["duplicate"], true, "{answer}");

    let letters = crate::harness::eventually(Duration::from_secs(10), || async {
        let out = stdout(&sluice(
            &server,
            &["deadletter", "list", "--trigger", "jobs"],
        ));
        out.contains("cli-1").then_some(out)
    })
    .await;
    assert!(
        letters.contains("jobs") && letters.contains("job cli-1"),
        "{letters}"
    );
    let json = stdout(&sluice(&server, &["deadletter", "list", "-o", "json"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let id = value["deadletters"][0]["id"].as_str().unwrap().to_string();
    let one = stdout(&sluice(&server, &["deadletter", "get", &id, "-o", "json"]));
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one, value["deadletters"][0], "the list's, whole");
    let text = stdout(&sluice(&server, &["deadletter", "get", &id]));
    assert!(
        text.contains("trigger   jobs") && text.contains("\"id\":\"cli-1\""),
        "{text}"
    );
    let triggers = stdout(&sluice(&server, &["trigger", "list", "-o", "json"]));
    let triggers: serde_json::Value = serde_json::from_str(&triggers).unwrap();
    assert_eq!(triggers["triggers"].as_array().unwrap().len(), 2);
    stdout(&sluice(&server, &["deadletter", "delete", &id]));
    let gone = sluice(&server, &["deadletter", "get", &id]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("dead_letter_not_found"));
    let output = sluice(&server, &["deadletter", "replay", &id]);
    assert!(
        !output.status.success(),
        "a deleted dead letter cannot be replayed"
    );
    stdout(&sluice(&server, &["trigger", "delete", "jobs"]));
    let output = sluice(&server, &["trigger", "get", "jobs"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
}

#[tokio::test]
async fn status_completions_and_helpful_messages() {
    let server = Server::start();
    stdout(&sluice(&server, &["fn", "deploy", "hello", guests::HELLO]));
    let status = stdout(&sluice(&server, &["status"]));
    assert!(status.contains("health      ready"), "{status}");
    assert!(status.contains("functions   1 (1 in memory)"), "{status}");
    assert!(status.contains("/ui/"), "{status}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&sluice(&server, &["status", "-o", "json"]))).unwrap();
    assert_eq!(status["functions"], 1);
    assert_eq!(status["ready"], true);

    // Completion scripts for the shells clap knows.
    let bash = stdout(
        &Command::new(SLUICE)
            .args(["completions", "bash"])
            .output()
            .unwrap(),
    );
    assert!(
        bash.contains("complete -F") && bash.contains("deadletter"),
        "{bash}"
    );
    let zsh = stdout(
        &Command::new(SLUICE)
            .args(["completions", "zsh"])
            .output()
            .unwrap(),
    );
    assert!(zsh.contains("#compdef sluice"), "{zsh}");

    // Common mistakes get the reason and the way out.
    let failed = |output: Output| {
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let no_token = failed(
        Command::new(SLUICE)
            .args(["fn", "list", "--data-dir", "/nonexistent"])
            .env("SLUICE_URL", &server.url)
            .env_remove("SLUICE_TOKEN")
            .output()
            .unwrap(),
    );
    assert!(
        no_token.contains("no token was sent") && no_token.contains("SLUICE_TOKEN"),
        "{no_token}"
    );
    // An empty SLUICE_TOKEN is no token, not a refused one.
    let empty_token = failed(
        Command::new(SLUICE)
            .args(["fn", "list", "--data-dir", "/nonexistent"])
            .env("SLUICE_URL", &server.url)
            .env("SLUICE_TOKEN", "")
            .output()
            .unwrap(),
    );
    assert!(empty_token.contains("no token was sent"), "{empty_token}");
    let bad_token = failed(
        Command::new(SLUICE)
            .args(["fn", "list"])
            .env("SLUICE_URL", &server.url)
            .env("SLUICE_TOKEN", "sluice_nope")
            .output()
            .unwrap(),
    );
    assert!(bad_token.contains("the token was refused"), "{bad_token}");
    let missing = failed(sluice(
        &server,
        &["fn", "deploy", "x", "/nonexistent/x.wasm"],
    ));
    assert!(
        missing.contains("cannot read /nonexistent/x.wasm: build the component first"),
        "{missing}"
    );
    let bad_ext = failed(sluice(
        &server,
        &[
            "event", "send", "--type", "t", "--source", "/s", "--ext", "Bad=1",
        ],
    ));
    assert!(bad_ext.contains("lowercase letters"), "{bad_ext}");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let not_wasm = failed(sluice(
        &server,
        &["fn", "deploy", "x", text.to_str().unwrap()],
    ));
    assert!(not_wasm.contains("is not a WebAssembly file"), "{not_wasm}");
    let unknown = failed(sluice(&server, &["fn", "get", "nope"]));
    assert!(
        unknown.contains("`sluice fn list` shows the deployed functions"),
        "{unknown}"
    );
    let bad_url = failed(
        Command::new(SLUICE)
            .args(["status", "--server", "127.0.0.1:8080"])
            .output()
            .unwrap(),
    );
    assert!(bad_url.contains("is not a server URL"), "{bad_url}");
    // The client flags go before the command too.
    let before = stdout(
        &Command::new(SLUICE)
            .args(["--server", &server.url, "--token", server.admin_token()])
            .args(["-o", "json", "status"])
            .env_remove("SLUICE_URL")
            .env_remove("SLUICE_TOKEN")
            .output()
            .unwrap(),
    );
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["functions"], 1, "{before}");
}

/// The CLI command behind each operation of the API, by the document the
/// server serves: an operation added without a command fails here.
/// `(method, path, command, a flag the command must have)`; operations
/// with no command say why in the command's place.
const COMMANDS: &[(&str, &str, &str, &str)] = &[
    ("*", "/fn/{name}", "fn invoke", "--method"),
    ("*", "/fn/{name}/", "fn invoke", "--method"),
    ("*", "/fn/{name}/{path}", "fn invoke", "--path"),
    ("GET", "/healthz", "status", ""),
    ("GET", "/readyz", "status", ""),
    ("GET", "/v1/status", "status", ""),
    ("GET", "/metrics", "-", "Prometheus scrapes it"),
    (
        "GET",
        "/v1/openapi.json",
        "-",
        "the document this test reads",
    ),
    ("GET", "/ui", "-", "the dashboard, for a browser"),
    ("GET", "/ui/", "-", "the dashboard, for a browser"),
    ("GET", "/ui/app.css", "-", "the dashboard, for a browser"),
    ("GET", "/ui/app.js", "-", "the dashboard, for a browser"),
    ("POST", "/v1/events", "event send", "--structured"),
    (
        "POST",
        "/v1/brokers/{broker}/events",
        "event send",
        "--broker",
    ),
    (
        "POST",
        "/v1/brokers/{broker}/explain",
        "event explain",
        "--broker",
    ),
    ("GET", "/v1/events/stream", "event watch", ""),
    (
        "GET",
        "/v1/brokers/{broker}/events/{id}",
        "event trace",
        "--source",
    ),
    ("GET", "/v1/deadletters", "deadletter list", "--trigger"),
    ("GET", "/v1/deadletters/{id}", "deadletter get", ""),
    ("DELETE", "/v1/deadletters/{id}", "deadletter delete", ""),
    (
        "POST",
        "/v1/deadletters/{id}/replay",
        "deadletter replay",
        "",
    ),
    ("GET", "/v1/schedules", "schedule list", ""),
    ("GET", "/v1/schedules/{name}", "schedule get", ""),
    (
        "PUT",
        "/v1/schedules/{name}",
        "schedule create",
        "--timezone",
    ),
    ("DELETE", "/v1/schedules/{name}", "schedule delete", ""),
    ("GET", "/v1/functions", "fn list", ""),
    ("PUT", "/v1/functions/{name}", "fn deploy", "--secret"),
    ("GET", "/v1/functions/{name}", "fn get", ""),
    ("PATCH", "/v1/functions/{name}", "fn update", "--kv-bucket"),
    ("DELETE", "/v1/functions/{name}", "fn delete", ""),
    ("GET", "/v1/functions/{name}/invocations", "fn get", ""),
    (
        "POST",
        "/v1/functions/{name}/invoke",
        "fn invoke",
        "--async",
    ),
    ("GET", "/v1/functions/{name}/logs", "fn logs", "--follow"),
    ("GET", "/v1/invocations", "invocation list", "--function"),
    ("GET", "/v1/invocations/{id}", "invocation get", "--wait"),
    ("DELETE", "/v1/invocations/{id}", "invocation cancel", ""),
    ("GET", "/v1/tokens", "token list", ""),
    ("POST", "/v1/tokens", "token create", "--scope"),
    ("DELETE", "/v1/tokens/{id}", "token revoke", ""),
    ("GET", "/v1/triggers", "trigger list", ""),
    ("POST", "/v1/triggers", "trigger create", "--file"),
    ("PUT", "/v1/triggers/{name}", "trigger create", "--cesql"),
    ("GET", "/v1/triggers/{name}", "trigger get", ""),
    ("DELETE", "/v1/triggers/{name}", "trigger delete", ""),
    ("GET", "/v1/brokers", "broker list", ""),
    ("GET", "/v1/brokers/{name}", "broker get", ""),
    ("PUT", "/v1/brokers/{name}", "broker create", "--retry"),
    ("DELETE", "/v1/brokers/{name}", "broker delete", ""),
    ("POST", "/v1/apply", "apply", "--file"),
];

#[tokio::test]
async fn every_api_operation_has_a_cli_command() {
    let server = Server::start();
    let (status, document) = server.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            if !["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method.as_str()) {
                continue;
            }
            let entry = COMMANDS
                .iter()
                .find(|(m, p, _, _)| p == path && (*m == "*" || *m == method));
            let Some((_, _, command, flag)) = entry else {
                missing.push(format!("{method} {path}"));
                continue;
            };
            if *command == "-" {
                continue;
            }
            let mut args: Vec<&str> = command.split(' ').collect();
            args.push("--help");
            let help = stdout(&sluice(&server, &args));
            assert!(
                help.contains(flag),
                "`sluice {command}` (for {method} {path}) has no {flag}: {help}"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "operations with no CLI command: {missing:?}"
    );
}

#[tokio::test]
async fn output_into_a_pipe_closed_early_ends_quietly() {
    let server = Server::start();
    for n in 0..3 {
        stdout(&sluice(
            &server,
            &["fn", "deploy", &format!("f{n}"), guests::HELLO],
        ));
    }
    for command in [&["fn", "list"][..], &["fn", "get", "f0", "-o", "json"]] {
        let mut child = Command::new(SLUICE)
            .args(command)
            .env("SLUICE_URL", &server.url)
            .env("SLUICE_TOKEN", server.admin_token())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes (`| head -0`).
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{command:?}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
    }
}

async fn trigger_dialects_files_structured_events_direct_calls_and_the_live_stream(
    backend: Backend,
) {
    let server = backend.start().await;
    let sink = crate::harness::Sink::start().await;
    let dir = tempfile::tempdir().unwrap();

    // Every dialect from flags, a dead-letter uri and a timeout.
    let created = stdout(&sluice(
        &server,
        &[
            "trigger",
            "create",
            "big-orders",
            "--uri",
            &format!("{}/orders", sink.url),
            "--cesql",
            "type = 'order' AND INT(amount) > 100",
            "--filter-json",
            r#"{"not": {"prefix": {"source": "/test"}}}"#,
            "--dead-letter-uri",
            &format!("{}/dead", sink.url),
            "--timeout",
            "PT5S",
            "-o",
            "json",
        ],
    ));
    let trigger: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(trigger["delivery"]["timeout"], "PT5S", "{created}");
    assert_eq!(
        trigger["delivery"]["deadLetterSink"]["uri"],
        format!("{}/dead", sink.url)
    );
    assert_eq!(trigger["filters"].as_array().unwrap().len(), 2, "{created}");
    // The same trigger back from a file, under another name.
    let file = dir.path().join("trigger.json");
    std::fs::write(&file, &created).unwrap();
    let copied = stdout(&sluice(
        &server,
        &[
            "trigger",
            "create",
            "copy",
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    ));
    let copy: serde_json::Value = serde_json::from_str(&copied).unwrap();
    assert_eq!(copy["name"], "copy");
    assert_eq!(copy["filters"], trigger["filters"]);

    // The live stream, watched while events arrive.
    let mut watch = Command::new(SLUICE)
        .args(["event", "watch", "-o", "json"])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", server.admin_token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watch_text = Command::new(SLUICE)
        .args(["event", "watch"])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", server.admin_token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Structured mode, and a batch from a file.
    let sent = stdout(&sluice(
        &server,
        &[
            "event",
            "send",
            "--structured",
            "--type",
            "order",
            "--source",
            "/shop",
            "--id",
            "s-1",
            "--ext",
            "amount=150",
            "--data",
            r#"{"sku": "A1"}"#,
        ],
    ));
    assert!(sent.contains("accepted event s-1"), "{sent}");
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"[{"specversion": "1.0", "id": "b-1", "type": "order", "source": "/shop", "amount": "500"},
            {"specversion": "1.0", "id": "b-2", "type": "order", "source": "/test", "amount": "500"},
            {"specversion": "1.0", "id": "b-3", "type": "order", "source": "/shop", "amount": "5"}]"#,
    )
    .unwrap();
    let sent = stdout(&sluice(
        &server,
        &["event", "send", "--file", batch.to_str().unwrap()],
    ));
    assert!(sent.contains("accepted 3 event(s)"), "{sent}");
    // Explain says the same of the batch, and of one event in binary mode,
    // without delivering anything (the sink counts below stay exact).
    let explained = stdout(&sluice(
        &server,
        &["event", "explain", "--file", batch.to_str().unwrap()],
    ));
    assert!(
        explained.contains("event b-1 (type order, source /shop) matches 2 of 2"),
        "{explained}"
    );
    assert!(
        explained.contains(&format!(
            "miss   {:<24} filters[1].not: the filter inside matched",
            "big-orders"
        )),
        "b-2 is from /test: {explained}"
    );
    assert!(
        explained.contains(&format!(
            "miss   {:<24} filters[0].cesql: evaluated to FALSE",
            "copy"
        )),
        "b-3 is too small: {explained}"
    );
    let one: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &[
            "event", "explain", "--type", "order", "--source", "/shop", "--id", "x-1", "-o", "json",
        ],
    )))
    .unwrap();
    assert_eq!(one["events"][0]["id"], "x-1");
    assert_eq!(
        one["events"][0]["triggers"][0]["reason"],
        "filters[0].cesql: evaluating it met a missingAttribute error (the result is FALSE)",
        "no amount attribute: {one}"
    );
    // s-1 and b-1 match (twice each: two triggers); b-2 is from /test, b-3
    // too small.
    let got = sink.wait_for(4).await;
    let mut ids: Vec<String> = got.iter().filter_map(|r| r.ce("id")).collect();
    ids.sort();
    assert_eq!(ids, ["b-1", "b-1", "s-1", "s-1"]);
    let structured = got
        .iter()
        .find(|r| r.ce("id").as_deref() == Some("s-1"))
        .unwrap();
    assert_eq!(structured.body, br#"{"sku":"A1"}"#);

    // The watcher printed each accepted event as one JSON line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.kill().unwrap();
    let output = watch.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout);
    for id in ["s-1", "b-1", "b-2", "b-3"] {
        assert!(lines.contains(&format!("\"{id}\"")), "{id} in {lines}");
    }
    assert!(
        lines
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{lines}"
    );
    // In text, a line each: the time, what happened, the event and its
    // triggers.
    let mut watch_text = watch_text;
    watch_text.kill().unwrap();
    let output = watch_text.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let accepted = |id: &str| {
        text.lines()
            .find(|l| l.contains(&format!("accepted       default      {id} (type order")))
            .unwrap_or_else(|| panic!("{id} accepted in {text}"))
            .to_owned()
    };
    let s1 = accepted("s-1");
    assert!(s1.starts_with("20") && s1.contains("Z accepted"), "{text}");
    assert!(
        s1.contains("source /shop): matched ") && s1.contains("copy"),
        "{text}"
    );
    assert!(
        accepted("b-2").ends_with("source /test): no trigger matched"),
        "{text}"
    );

    // A direct call: method, path, headers, and the head with -i.
    stdout(&sluice(&server, &["fn", "deploy", "echo", guests::ECHO]));
    let answer = stdout(&sluice(
        &server,
        &[
            "fn",
            "invoke",
            "echo",
            "-X",
            "PUT",
            "--path",
            "/orders?limit=5",
            "-H",
            "x-test: yes",
            "-i",
            "--data",
            "body",
        ],
    ));
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("method: PUT"), "{answer}");
    assert!(answer.contains("path: /orders?limit=5"), "{answer}");
    assert!(answer.contains("header: x-test: yes"), "{answer}");
    assert!(answer.ends_with("body"), "{answer}");
}

/// The Trigger of Knative's documentation ("Triggers"), as written there.
const KNATIVE_TRIGGER: &str = "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: my-service-trigger
spec:
  broker: default
  filter:
    attributes:
      type: dev.knative.foo.bar
      myextension: my-extension-value
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: my-service
";

/// Knative's documented PingSource, into a broker.
const KNATIVE_PING_SOURCE: &str = "apiVersion: sources.knative.dev/v1
kind: PingSource
metadata:
  name: test-ping-source
spec:
  schedule: \"*/1 * * * *\"
  contentType: \"application/json\"
  data: '{\"message\": \"Hello world!\"}'
  sink:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
";

async fn knative_resources_apply_as_written_twice_changes_nothing_and_export_round_trips(
    backend: Backend,
) {
    let server = backend.start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::EVENT_ECHO, dir.path().join("my-service.wasm")).unwrap();
    let app = dir.path().join("app.yaml");
    let write = |retry: u32| {
        std::fs::write(
            &app,
            format!(
                "apiVersion: sluice.dev/v1
kind: Function
metadata:
  name: my-service
spec:
  component: my-service.wasm
  settings:
    env:
      GREETING: hi
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
spec:
  delivery:
    retry: {retry}
    backoffDelay: PT0.01S
---
{KNATIVE_TRIGGER}---
{KNATIVE_PING_SOURCE}"
            ),
        )
        .unwrap();
    };
    let apply =
        |file: &std::path::Path| stdout(&sluice(&server, &["apply", "-f", file.to_str().unwrap()]));
    write(2);
    let first = apply(&app);
    assert_eq!(
        first.lines().collect::<Vec<_>>(),
        [
            "function/my-service created",
            "broker/default created",
            "trigger/my-service-trigger created",
            "pingsource/test-ping-source created"
        ],
        "{first}"
    );
    let second = apply(&app);
    assert!(
        second.lines().all(|l| l.ends_with(" unchanged")) && second.lines().count() == 4,
        "applying twice changes nothing: {second}"
    );
    write(3);
    let third = apply(&app);
    assert!(third.contains("broker/default changed"), "{third}");
    assert!(
        third.contains("trigger/my-service-trigger unchanged"),
        "{third}"
    );

    // The trigger takes the broker's delivery, and delivers to the function.
    let (_, broker) = server.get("/v1/brokers/default").await;
    let broker: serde_json::Value = serde_json::from_str(&broker).unwrap();
    assert_eq!(broker["delivery"]["retry"], 3);
    assert_eq!(broker["triggers"], 1);
    let (_, trigger) = server.get("/v1/triggers/my-service-trigger").await;
    let trigger: serde_json::Value = serde_json::from_str(&trigger).unwrap();
    assert_eq!(trigger["subscriber"]["function"], "my-service");
    assert!(
        trigger.get("delivery").is_none(),
        "its own view sets none: {trigger}"
    );
    assert_eq!(
        trigger["status"]["delivery"]["retry"], 3,
        "the broker's, in force"
    );
    let status = server
        .send_event(
            "k-1",
            "dev.knative.foo.bar",
            &[("ce-myextension", "my-extension-value")],
            b"{}",
        )
        .await;
    assert_eq!(status, 202);
    crate::harness::eventually(Duration::from_secs(10), || async {
        let (_, recent) = server.get("/v1/functions/my-service/invocations").await;
        let recent: serde_json::Value = serde_json::from_str(&recent).unwrap();
        (!recent["invocations"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;

    // Exported, then applied: a round trip.
    let (_, schedule) = server.get("/v1/schedules/test-ping-source").await;
    let schedule: serde_json::Value = serde_json::from_str(&schedule).unwrap();
    assert_eq!(schedule["sink"], serde_json::json!({"broker": "default"}));
    assert_eq!(schedule["data"], "{\"message\": \"Hello world!\"}");
    for kind in ["triggers", "functions", "brokers", "schedules"] {
        let exported = stdout(&sluice(&server, &["get", kind]));
        assert!(exported.starts_with("---\napiVersion: "), "{exported}");
        let file = dir.path().join(format!("{kind}.yaml"));
        std::fs::write(&file, &exported).unwrap();
        let again = apply(&file);
        assert!(
            !again.is_empty() && again.lines().all(|l| l.ends_with(" unchanged")),
            "{kind}: {again}\n{exported}"
        );
    }

    // A file with one bad resource writes nothing, and says which.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: sluice.dev/v1
kind: Function
metadata:
  name: not-yet
spec:
  component: my-service.wasm
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: fresh
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: broken
spec:
  subscriber:
    ref:
      kind: Channel
      name: x
",
    )
    .unwrap();
    let output = sluice(&server, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Trigger broken") && stderr.contains("Channel"),
        "{stderr}"
    );
    let (status, _) = server.get("/v1/brokers/fresh").await;
    assert_eq!(status, 404, "nothing of that file was written");
    let (status, _) = server.get("/v1/functions/not-yet").await;
    assert_eq!(status, 404, "not even the function uploaded from a file");

    // Twice the same name, a secret an export hid, a typo in a Function:
    // refused, naming the resource.
    for (bad, says) in [
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: twice\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: twice\n",
            "appears twice",
        ),
        (
            "apiVersion: sluice.dev/v1\nkind: Function\nmetadata:\n  name: fresh-fn\nspec:\n  component: my-service.wasm\n  setting:\n    env: {}\n",
            "unknown field spec.setting",
        ),
    ] {
        let file = dir.path().join("refused.yaml");
        std::fs::write(&file, bad).unwrap();
        let output = sluice(&server, &["apply", "-f", file.to_str().unwrap()]);
        assert!(!output.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
    let exported: serde_json::Value = serde_json::from_str(&stdout(&sluice(
        &server,
        &["get", "functions", "-o", "json"],
    )))
    .unwrap();
    let mut copy = exported["items"][0].clone();
    copy["metadata"]["name"] = "copy-fn".into();
    copy["spec"]["settings"]["secrets"] = serde_json::json!({"KEY": "<redacted>"});
    let response = server
        .http()
        .post(server.url("/v1/apply"))
        .json(&copy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        400,
        "a hidden secret is not stored as the mark"
    );
    assert!(response.text().await.unwrap().contains("give its value"));

    // A trigger made by the CLI without delivery takes its broker's.
    stdout(&sluice(
        &server,
        &[
            "trigger",
            "create",
            "plain",
            "--function",
            "my-service",
            "--filter",
            "type=x",
        ],
    ));
    let (_, plain) = server.get("/v1/triggers/plain").await;
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(plain["status"]["delivery"]["retry"], 3, "{plain}");

    // The JSON route takes a List, and Knative's ref on a plain trigger.
    let response = server
        .http()
        .post(server.url("/v1/apply"))
        .json(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "fresh"},
             "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "config-br-default-channel"}}}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["results"][0]["action"], "created");
}
