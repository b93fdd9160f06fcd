//! The `sluice` CLI against a real server.

use std::process::{Command, Output};

use sluice_test_artifacts as guests;

use crate::harness::{SLUICE, Server};

fn sluice(server: &Server, args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .env("SLUICE_URL", &server.url)
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
