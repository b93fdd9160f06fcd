//! What a client connection may hold: header and keep-alive timeouts, the
//! body rate, the cap on connections and the budget of buffered request
//! bytes; HTTP/2 without TLS beside HTTP/1.1.

use std::time::Duration;

use sluice_test_artifacts as guests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Server, error_code, eventually};

fn address(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes, which
/// fails the test); returns what it sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_head_sent_too_slowly_or_not_at_all_and_an_idle_kept_alive_connection_are_closed() {
    let server = Server::start_with(&[
        "--header-read-timeout-secs",
        "1",
        "--keepalive-timeout-secs",
        "1",
    ]);
    server
        .deploy_ok("hello", guests::HELLO, "visibility=public")
        .await;
    // A slowloris head: never finished.
    let mut slow = TcpStream::connect(address(&server)).await.unwrap();
    slow.write_all(b"GET /fn/hello/ HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    // One request answered, then nothing on the kept-alive connection.
    let mut kept = TcpStream::connect(address(&server)).await.unwrap();
    kept.write_all(b"GET /fn/hello/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 15];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    for stream in [&mut slow, &mut silent, &mut kept] {
        until_closed(stream, Duration::from_secs(30)).await;
    }
    // A request that takes longer than the keep-alive timeout is not idle.
    server
        .deploy_ok(
            "sleepy",
            guests::SLEEPY,
            "visibility=public&env=SLEEP_MS=2500",
        )
        .await;
    let mut long = TcpStream::connect(address(&server)).await.unwrap();
    long.write_all(b"GET /fn/sleepy/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut long, Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("slept 2500 ms"), "{answer}");
}

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_closed_at_the_header_read_timeout() {
    // Bytes keep moving, so only the header timer can end it.
    let server = Server::start_with(&[
        "--header-read-timeout-secs",
        "2",
        "--keepalive-timeout-secs",
        "60",
    ]);
    let mut slow = TcpStream::connect(address(&server)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0.. {
            if slow
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickled head kept the connection open");
}

#[tokio::test]
async fn a_body_that_trickles_or_stalls_is_408_and_one_at_the_rate_is_read() {
    let server = Server::start_with(&["--body-grace-secs", "1", "--min-body-rate", "1000"]);
    server
        .deploy_ok("echo", guests::ECHO, "visibility=public")
        .await;
    // A byte every 300 ms: never a long gap, far below the rate.
    let mut trickle = TcpStream::connect(address(&server)).await.unwrap();
    trickle
        .write_all(b"POST /fn/echo/ HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if trickle.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        trickle
    });
    let mut trickle = writer.await.unwrap();
    let answer = until_closed(&mut trickle, Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_too_slow"), "{answer}");
    // Stops one byte short.
    let mut stall = TcpStream::connect(address(&server)).await.unwrap();
    stall
        .write_all(b"POST /fn/echo/ HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = until_closed(&mut stall, Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // At the rate, with pauses shorter than the grace: read whole.
    let client = reqwest::Client::new();
    let chunks = futures::stream::unfold(0, |n| async move {
        if n == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((Ok::<_, std::io::Error>(vec![b'y'; 2000]), n + 1))
    });
    let response = client
        .post(server.url("/fn/echo/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .ends_with(&"y".repeat(12_000))
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_answered_503_and_the_rest_keep_working() {
    let server = Server::start_with(&[
        "--max-connections",
        "4",
        "--keepalive-timeout-secs",
        "60",
        "--header-read-timeout-secs",
        "60",
    ]);
    server
        .deploy_ok("hello", guests::HELLO, "visibility=public")
        .await;
    // The harness's own client may hold a connection of its own: fill up
    // to the cap whatever it holds.
    let mut held = Vec::new();
    let refused = loop {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => held.push(stream),
        }
        assert!(held.len() <= 4, "more than 4 connections were accepted");
    };
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    // A held connection still serves.
    let stream = held.last_mut().unwrap();
    stream
        .write_all(b"GET /fn/hello/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 15];
    stream.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200 OK");
    // Once some close, new ones are served.
    held.clear();
    eventually(Duration::from_secs(10), || async {
        let response = reqwest::Client::new()
            .get(server.url("/fn/hello/"))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn request_bytes_past_the_servers_budget_are_503_with_retry_after() {
    let server = Server::start_with(&[
        "--max-buffered-request-bytes",
        "3000000",
        "--max-component-bytes",
        "1000000",
        "--max-request-bytes",
        "1000000",
        "--max-event-bytes",
        "1000000",
        "--body-grace-secs",
        "20",
    ]);
    server
        .deploy_ok("echo", guests::ECHO, "visibility=public")
        .await;
    // Clients that send 900 KB of a 1 MB body and stall: the budget holds
    // three such (2.9 MB of its 3 MB), not four.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        stream
            .write_all(b"POST /fn/echo/ HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&vec![b'z'; 900_000]).await.unwrap();
        stalled.push(stream);
    }
    // Let the server read what they sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = reqwest::Client::new()
        .post(server.url("/fn/echo/"))
        .body(vec![b'w'; 900_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(&response.text().await.unwrap()),
        "too_many_request_bytes"
    );
    // Small requests need no more than there is left.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    // Once the stalled ones go, the bytes are free again.
    drop(stalled);
    eventually(Duration::from_secs(10), || async {
        let response = reqwest::Client::new()
            .post(server.url("/fn/echo/"))
            .body(vec![b'w'; 900_000])
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn http2_without_tls_is_served_beside_http1() {
    let server = Server::start();
    server
        .deploy_ok("hello", guests::HELLO, "visibility=public")
        .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(server.url("/fn/hello/")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("Hello"));
    let response = reqwest::Client::new()
        .get(server.url("/fn/hello/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
}

/// One HTTP/2 frame: length, type, flags, stream 0, payload.
fn h2_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn an_http2_connection_kept_up_by_pings_alone_is_closed_as_idle() {
    let server = Server::start_with(&["--keepalive-timeout-secs", "1"]);
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, &[]));
    stream.write_all(&hello).await.unwrap();
    // A ping every 200 ms: bytes never stop, but no request ever starts.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        for i in 0u64.. {
            if stream
                .write_all(&h2_frame(0x6, &i.to_be_bytes()))
                .await
                .is_err()
            {
                return;
            }
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "pings alone kept the connection open");
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_has_its_connection_closed() {
    // A keep-alive far longer than the test: only the send timeout can
    // close the connection.
    // 48 MiB: far more than the socket buffers between server and client.
    const TOTAL: usize = 48 << 20;
    let (server, mut stream) = get_big(TOTAL, "1", "120").await;
    let mut head = [0u8; 15];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    // Stop reading for well past the send timeout, then read what is left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut received = 0usize;
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was never closed");
    assert!(
        received < TOTAL,
        "the whole response ({received} bytes) waited for a client that stopped reading"
    );
    // The server goes on serving.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_slow_reader_gets_its_whole_response_past_the_keepalive_timeout() {
    // 24 MiB: the body is taken by hyper at once, then waits in its write
    // buffer while the client reads slowly.
    const TOTAL: usize = 24 << 20;
    let (_server, mut stream) = get_big(TOTAL, "30", "1").await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let started = std::time::Instant::now();
    // Pauses longer than the keep-alive, shorter than the send timeout,
    // until the whole response has come.
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the server sent nothing for 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        let Some(head) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        if received.len() - head - 4 >= TOTAL {
            break;
        }
    }
    let head = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the client was not slow: it did not outlast the keep-alive"
    );
    assert_eq!(
        received.len() - head - 4,
        TOTAL,
        "every byte of the body came"
    );
}

/// A server with the given send and keep-alive timeouts (seconds) and a
/// public `big` function answering `bytes`, and a connection that has sent
/// it a GET.
async fn get_big(bytes: usize, send_timeout: &str, keepalive: &str) -> (Server, TcpStream) {
    let server = Server::start_with(&[
        "--send-timeout-secs",
        send_timeout,
        "--keepalive-timeout-secs",
        keepalive,
        "--max-response-bytes",
        "67108864",
    ]);
    // Declared, so the body comes with a length rather than in chunks.
    let settings = format!(
        "visibility=public&env=BIG_KB={}&env=BIG_DECLARE=1",
        bytes >> 10
    );
    server.deploy_ok("big", guests::BIG, &settings).await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    stream
        .write_all(b"GET /fn/big/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    (server, stream)
}
