//! The `sluice` CLI against a real server.

use std::process::{Command, Output};

use sluice_test_artifacts as guests;

use crate::harness::{SLUICE, Server};

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

#[tokio::test]
async fn deploy_list_invoke_delete_round_trip() {
    let server = Server::start();
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
    assert!(deployed.contains("\"name\": \"hello\""), "{deployed}");

    let list = stdout(&sluice(&server, &["fn", "list"]));
    assert!(list.contains("hello"), "{list}");
    let got = stdout(&sluice(&server, &["fn", "get", "hello"]));
    assert!(got.contains("\"GREETING\": \"Hi!\""), "{got}");

    let invoked = stdout(&sluice(
        &server,
        &["fn", "invoke", "hello", "--data", "ignored"],
    ));
    assert!(invoked.starts_with("Hi! You asked for /"), "{invoked}");

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

#[tokio::test]
async fn trigger_event_and_dead_letter_commands_round_trip() {
    let server = Server::start();
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
    assert!(created.contains("\"retry\": 1"), "{created}");
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

    let letters = crate::harness::eventually(std::time::Duration::from_secs(10), || async {
        let out = stdout(&sluice(
            &server,
            &["deadletter", "list", "--trigger", "jobs"],
        ));
        out.contains("cli-1").then_some(out)
    })
    .await;
    let value: serde_json::Value = serde_json::from_str(&letters).unwrap();
    let id = value["deadletters"][0]["id"].as_str().unwrap().to_string();
    stdout(&sluice(&server, &["deadletter", "delete", &id]));
    let output = sluice(&server, &["deadletter", "replay", &id]);
    assert!(
        !output.status.success(),
        "a deleted dead letter cannot be replayed"
    );
    stdout(&sluice(&server, &["trigger", "delete", "jobs"]));
    let output = sluice(&server, &["trigger", "get", "jobs"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
}
