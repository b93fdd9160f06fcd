//! Starts the real `sluice` binary on a free port with a temporary data
//! directory, and talks HTTP to it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of the `sluice` binary under test.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice serve`.
pub struct Server {
    child: Option<Child>,
    /// Base URL, such as `http://127.0.0.1:40123`.
    pub url: String,
    data: tempfile::TempDir,
    args: Vec<String>,
    http: reqwest::Client,
    admin_token: String,
    /// Cluster mode: the NATS server this node's state lives on (dropped,
    /// so stopped, after the node).
    nats: Option<crate::nats::Nats>,
}

/// Where a server keeps its state: the tests that must hold in both modes
/// take one (see [`both_backends!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// sled and the delivery journal in the data directory.
    Embedded,
    /// One JetStream server of its own (`--nats`).
    Nats,
}

impl Backend {
    /// Starts a server on this backend with extra flags and waits until it
    /// is ready (a cluster node answers 503 until JetStream does).
    pub async fn start_with(self, args: &[&str]) -> Server {
        let server = match self {
            Backend::Embedded => Server::start_with(args),
            Backend::Nats => {
                let nats = crate::nats::Nats::single();
                let urls = nats.urls().join(",");
                let mut all = vec!["--nats", urls.as_str(), "--nats-ack-wait", "2s"];
                all.extend_from_slice(args);
                let mut server = Server::start_with(&all);
                server.nats = Some(nats);
                server
            }
        };
        server.wait_ready().await;
        server
    }

    /// Starts a server on this backend with default flags.
    pub async fn start(self) -> Server {
        self.start_with(&[]).await
    }
}

/// Runs the async test function `$name(backend: Backend)` once per backend,
/// as the tests `$name::embedded` and `$name::nats`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name($crate::harness::Backend::Embedded).await
            }

            #[tokio::test]
            async fn nats() {
                super::$name($crate::harness::Backend::Nats).await
            }
        }
    )+};
}

impl Server {
    /// Waits (up to a minute) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(60), || async {
            let response = self.http.get(self.url("/readyz")).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }

    /// Starts a server with default flags.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server that creates its own admin token file, as on a
    /// first real start; the client sends that token.
    pub fn start_creating_admin_token() -> Server {
        let data = tempfile::tempdir().unwrap();
        let (child, url) = spawn(data.path(), &[])
            .unwrap_or_else(|error| panic!("{error}\n{}", read_log(data.path())));
        let admin_token = std::fs::read_to_string(data.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child: Some(child),
            url,
            data,
            args: Vec::new(),
            http: client_with_token(&admin_token),
            admin_token,
            nats: None,
        }
    }

    /// Starts a server with extra `sluice serve` flags.
    pub fn start_with(args: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let admin_token = format!(
            "test-admin-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        args.extend(["--admin-token".to_string(), admin_token.clone()]);
        let (child, url) = spawn(data.path(), &args)
            .unwrap_or_else(|error| panic!("{error}\n{}", read_log(data.path())));
        Server {
            child: Some(child),
            url,
            data,
            args,
            http: client_with_token(&admin_token),
            admin_token,
            nats: None,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Stops the server (SIGKILL: no graceful shutdown) and starts it again
    /// on the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, url) = spawn(self.data.path(), &self.args)
            .unwrap_or_else(|error| panic!("{error}\n{}", self.log()));
        self.child = Some(child);
        self.url = url;
    }

    /// Stops the server (SIGKILL) and starts it again on the same data
    /// directory with `args` instead of the flags it had.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.kill();
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.args
            .extend(["--admin-token".to_string(), self.admin_token.clone()]);
        self.start_again();
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server process's resident memory (`VmRSS`), in KiB.
    pub fn resident_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Sends SIGTERM and waits for the server to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    /// Starts the server again on the same data directory (after `kill` or
    /// `terminate`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let (child, url) = spawn(self.data.path(), &self.args)
            .unwrap_or_else(|error| panic!("{error}\n{}", self.log()));
        self.child = Some(child);
        self.url = url;
    }

    /// Starts the server on the same data directory and SIGKILLs it after
    /// `delay`, wherever it is (opening the store, recovering, serving).
    pub fn crash_during_start(&mut self, delay: Duration) {
        assert!(self.child.is_none(), "the server is still running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(self.data.path()))
            .unwrap();
        let mut child = Command::new(SLUICE)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Everything the server wrote to stderr, across restarts.
    pub fn log(&self) -> String {
        read_log(self.data.path())
    }

    /// `self.url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A shared HTTP client that sends the admin token.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The admin token the server was started with.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `PUT /v1/functions/{name}?{query}` with the bytes of `component`.
    pub async fn deploy(&self, name: &str, component: &str, query: &str) -> reqwest::Response {
        let bytes = std::fs::read(component).unwrap();
        self.http
            .put(self.url(&format!("/v1/functions/{name}?{query}")))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    /// Deploys and asserts success.
    pub async fn deploy_ok(&self, name: &str, component: &str, query: &str) -> serde_json::Value {
        let response = self.deploy(name, component, query).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "deploy {name}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET` of `path`, returning status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `DELETE path`: the status and body.
    pub async fn delete(&self, path: &str) -> (u16, String) {
        let response = self.http.delete(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The value of the un-labelled metric `name` at `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client that sends `token` as a bearer token.
fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

fn log_path(data: &Path) -> PathBuf {
    data.join("server.log")
}

fn read_log(data: &Path) -> String {
    std::fs::read_to_string(log_path(data)).unwrap_or_default()
}

fn spawn(data: &Path, args: &[String]) -> Result<(Child, String), String> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        // Private like the rest of the data directory it sits in.
        .mode(0o600)
        .open(log_path(data))
        .unwrap();
    let mut child = Command::new(SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning {SLUICE}: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(url) = line.strip_prefix("sluice listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => Ok((child, url)),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(format!("server did not start (exit: {status:?})"))
        }
    }
}

/// The `error.code` of a JSON error body.
pub fn error_code(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON error body: {body}"));
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The `error.message` of a JSON error body.
pub fn error_message(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One request an external sink received.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Headers, lowercase names.
    pub headers: BTreeMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// Header `name`, percent-decoded as the CloudEvents binding says: a
    /// `%` is followed by exactly two hex digits (RFC 3986 `pct-encoded`);
    /// anything else the server sent is a bug, and panics.
    pub fn ce(&self, name: &str) -> Option<String> {
        let raw = self.headers.get(&format!("ce-{name}"))?;
        Some(
            percent_decode(raw)
                .unwrap_or_else(|| panic!("ce-{name} is not valid percent-encoded UTF-8: {raw:?}")),
        )
    }
}

/// `text` percent-decoded, or `None` where a `%` is not followed by two hex
/// digits or the result is not UTF-8. (Not `u8::from_str_radix`, which
/// accepts a sign: `%+f` would decode to 0x0F.)
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (high, low) = (hex(i + 1)?, hex(i + 2)?);
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[test]
fn percent_decoding_takes_exactly_two_hex_digits_after_each_percent_sign() {
    assert_eq!(
        percent_decode("caf%C3%A9 %25 %22q%22").as_deref(),
        Some("café % \"q\"")
    );
    assert_eq!(percent_decode("%2f%2F").as_deref(), Some("//"));
    for malformed in ["%+f", "%-1", "%f", "%", "%g0", "a%0", "%C3"] {
        assert_eq!(percent_decode(malformed), None, "{malformed:?}");
    }
}

/// An external HTTP sink on 127.0.0.1 that records what it receives and
/// answers 200, or a given status for the first `fail_first` requests.
pub struct Sink {
    /// Base URL.
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts a sink.
    pub async fn start() -> Sink {
        let received: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let log = received.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let log = log.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap()
                    .to_vec();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                log.lock().unwrap().push(Received {
                    path: parts.uri.path().to_string(),
                    headers,
                    body,
                });
                http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Sink {
            url,
            received,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until nothing new has arrived for [`QUIET`] (within 30 s) and
    /// returns everything received.
    pub async fn quiet(&self) -> Vec<Received> {
        quiet_for(QUIET, Duration::from_secs(30), || async { self.received() }).await
    }

    /// Waits until at least `n` requests arrived (within 30 s) and returns all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sink got {} of {n} requests: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// `POST path` with a JSON body; returns status and body text.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, String) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `PUT path` with a JSON body: the status and the body.
    pub async fn put_json(&self, path: &str, body: serde_json::Value) -> (u16, String) {
        let response = self
            .http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Creates a trigger and asserts success.
    pub async fn trigger(&self, body: serde_json::Value) {
        let (status, text) = self.post_json("/v1/triggers", body).await;
        assert_eq!(status, 201, "{text}");
    }

    /// Posts one binary-mode event to `/v1/events`; returns the status.
    pub async fn send_event(&self, id: &str, ty: &str, extra: &[(&str, &str)], body: &[u8]) -> u16 {
        let mut request = self
            .http
            .post(self.url("/v1/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/e2e")
            .header("ce-type", ty);
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        request
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long an observed value must stay unchanged before [`quiet_for`]'s
/// callers take it as final: well above the time the server takes to
/// route and deliver one more event to a local sink.
pub const QUIET: Duration = Duration::from_millis(500);

/// Polls `observe` until its value has not changed for `period`, and
/// returns that value; panics if it is still changing after `timeout`. It
/// shows that nothing else arrived (a sleep only hopes so), and what it
/// returns is the final value to assert on.
pub async fn quiet_for<T, F, Fut>(period: Duration, timeout: Duration, mut observe: F) -> T
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last = observe().await;
    let mut since = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = observe().await;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= period {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still changing after {timeout:?}, last {last:?}"
        );
    }
}

/// Every sample of a Prometheus text exposition, keyed by metric name and
/// its labels rendered `k=v,k=v` in the order given.
pub fn parse_metrics(text: &str) -> BTreeMap<(String, String), f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let labels: Vec<String> = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| p.trim_end_matches('"').replacen("=\"", "=", 1))
                    .collect();
                (name.to_string(), labels.join(","))
            }
            None => (series.to_string(), String::new()),
        };
        let value: f64 = value.parse().expect("sample value is a number");
        samples.insert((name, labels), value);
    }
    samples
}

impl Server {
    /// Every sample at `/metrics`.
    pub async fn metrics(&self) -> BTreeMap<(String, String), f64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        parse_metrics(&text)
    }
}
