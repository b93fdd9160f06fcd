//! The CLI's HTTP client: every command but `serve` talks to the API.
//!
//! Errors print the server's reason and exit non-zero.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use crate::cli::{
    ClientArgs, DeadLetterCommand, EventCommand, FunctionCommand, InvocationCommand, TokenCommand,
    TriggerCommand,
};

struct Client {
    base: String,
    http: reqwest::Client,
}

/// The token to send: `--token`/`SLUICE_TOKEN`, else the admin token in the
/// data directory when the server runs on this machine.
fn token(args: &ClientArgs) -> Option<String> {
    if let Some(token) = &args.token {
        return Some(token.clone());
    }
    let local = ["://127.0.0.1", "://localhost", "://[::1]"]
        .iter()
        .any(|h| args.server.contains(h));
    if !local {
        return None;
    }
    std::fs::read_to_string(crate::auth::admin_token_path(&args.data_dir))
        .ok()
        .map(|t| t.trim().to_string())
}

impl Client {
    fn new(args: &ClientArgs) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token(args)
            && let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Client {
            base: args.server.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|error| {
            if error.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the Sluice server at {}: is `sluice serve` running? (pick another with --server or SLUICE_URL)",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to {} failed: {error}", self.base)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let error = v.get("error")?;
                Some(format!(
                    "{} ({})",
                    error.get("message")?.as_str()?,
                    error.get("code")?.as_str()?
                ))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "{status}: {reason}\nset SLUICE_TOKEN (or --token), or run on the server's machine with --data-dir pointing at its data directory"
            );
        }
        bail!("{status}: {reason}")
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_data(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        None => Vec::new(),
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            bytes
        }
        Some(spec) => match spec.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
            None => spec.as_bytes().to_vec(),
        },
    })
}

/// Runs one `sluice fn` command.
pub async fn run_function_command(command: FunctionCommand) -> anyhow::Result<()> {
    match command {
        FunctionCommand::Deploy {
            name,
            file,
            env,
            timeout,
            memory,
            max_concurrency,
            allow_outbound,
            public,
            client,
        } => {
            let client = Client::new(&client);
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if bytes.starts_with(b"\0asm") && wasmparser::Parser::is_core_wasm(&bytes) {
                bail!(
                    "{} is a core WebAssembly module, not a component: build it with `cargo build --target wasm32-wasip2`, or wrap it with `wasm-tools component new`",
                    file.display()
                );
            }
            let mut query: Vec<(String, String)> = Vec::new();
            for pair in env {
                if !pair.contains('=') {
                    bail!("--env {pair:?} is not KEY=VALUE");
                }
                query.push(("env".into(), pair));
            }
            for host in allow_outbound {
                query.push(("allow_outbound".into(), host));
            }
            if let Some(ms) = timeout {
                query.push(("timeout_ms".into(), ms.to_string()));
            }
            if let Some(mb) = memory {
                query.push(("memory_mb".into(), mb.to_string()));
            }
            if let Some(n) = max_concurrency {
                query.push(("max_concurrency".into(), n.to_string()));
            }
            if public {
                query.push(("visibility".into(), "public".into()));
            }
            let request = client
                .http
                .put(client.url(&format!("/v1/functions/{name}")))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(bytes);
            let record: serde_json::Value = client.send(request).await?.json().await?;
            print_json(&record)
        }
        FunctionCommand::List { client } => {
            let client = Client::new(&client);
            let list: serde_json::Value = client
                .send(client.http.get(client.url("/v1/functions")))
                .await?
                .json()
                .await?;
            let functions = list["functions"].as_array().cloned().unwrap_or_default();
            if functions.is_empty() {
                println!("no functions deployed");
            }
            for f in functions {
                println!(
                    "{:<32} v{:<4} {:<6} {}",
                    f["name"].as_str().unwrap_or_default(),
                    f["version"],
                    f["world"].as_str().unwrap_or_default(),
                    f["url"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        FunctionCommand::Get { name, client } => {
            let client = Client::new(&client);
            let record: serde_json::Value = client
                .send(
                    client
                        .http
                        .get(client.url(&format!("/v1/functions/{name}"))),
                )
                .await?
                .json()
                .await?;
            print_json(&record)
        }
        FunctionCommand::Delete { name, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/functions/{name}"))),
                )
                .await?;
            println!("deleted {name}");
            Ok(())
        }
        FunctionCommand::Logs {
            name,
            follow,
            mut since,
            client,
        } => {
            let client = Client::new(&client);
            loop {
                let request = client
                    .http
                    .get(client.url(&format!("/v1/functions/{name}/logs")))
                    .query(&[("since", since.to_string()), ("limit", "1000".to_string())]);
                let page: serde_json::Value = client.send(request).await?.json().await?;
                let lines = page["logs"].as_array().cloned().unwrap_or_default();
                for line in &lines {
                    println!(
                        "{} {} [{}] {}",
                        line["time"].as_str().unwrap_or_default(),
                        line["invocation"].as_str().unwrap_or_default(),
                        line["stream"].as_str().unwrap_or_default(),
                        line["line"].as_str().unwrap_or_default()
                    );
                }
                since = page["next"].as_u64().unwrap_or(since);
                if !follow && lines.len() < 1000 {
                    return Ok(());
                }
                if lines.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        FunctionCommand::Invoke {
            name,
            data,
            asynchronous,
            client,
        } => {
            let client = Client::new(&client);
            let body = read_data(data.as_deref())?;
            let mut request = client
                .http
                .post(client.url(&format!("/v1/functions/{name}/invoke")))
                .body(body);
            if asynchronous {
                request = request.query(&[("async", "true")]);
                let answer: serde_json::Value = client.send(request).await?.json().await?;
                println!("{}", answer["id"].as_str().unwrap_or_default());
                return Ok(());
            }
            let response = client.send(request).await?;
            let bytes = response.bytes().await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            stdout.flush()?;
            Ok(())
        }
    }
}

fn pair(spec: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once('=') {
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => bail!("{flag} {spec:?} is not NAME=VALUE"),
    }
}

/// Runs one `sluice trigger` command.
pub async fn run_trigger_command(command: TriggerCommand) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Create {
            name,
            function,
            uri,
            broker,
            filters,
            prefixes,
            suffixes,
            retry,
            backoff_policy,
            backoff_delay,
            dead_letter,
            client,
        } => {
            let client = Client::new(&client);
            let mut attributes = serde_json::Map::new();
            for spec in &filters {
                let (k, v) = pair(spec, "--filter")?;
                attributes.insert(k, v.into());
            }
            let mut dialects = Vec::new();
            for (flag, dialect, specs) in [
                ("--prefix", "prefix", &prefixes),
                ("--suffix", "suffix", &suffixes),
            ] {
                for spec in specs {
                    let (k, v) = pair(spec, flag)?;
                    dialects.push(serde_json::json!({ dialect: { k: v } }));
                }
            }
            let subscriber = match (function, uri) {
                (Some(f), _) => serde_json::json!({"function": f}),
                (None, Some(u)) => serde_json::json!({"uri": u}),
                (None, None) => bail!("give --function or --uri"),
            };
            let mut delivery = serde_json::Map::new();
            if let Some(retry) = retry {
                delivery.insert("retry".into(), retry.into());
            }
            if let Some(policy) = backoff_policy {
                delivery.insert("backoffPolicy".into(), policy.into());
            }
            if let Some(delay) = backoff_delay {
                delivery.insert("backoffDelay".into(), delay.into());
            }
            if let Some(dl) = dead_letter {
                delivery.insert("deadLetterSink".into(), serde_json::json!({"function": dl}));
            }
            let body = serde_json::json!({
                "name": name,
                "broker": broker,
                "filter": {"attributes": attributes},
                "filters": dialects,
                "subscriber": subscriber,
                "delivery": delivery,
            });
            let request = client
                .http
                .put(client.url(&format!("/v1/triggers/{name}")))
                .json(&body);
            let trigger: serde_json::Value = client.send(request).await?.json().await?;
            print_json(&trigger)
        }
        TriggerCommand::List { client } => {
            let client = Client::new(&client);
            let list: serde_json::Value = client
                .send(client.http.get(client.url("/v1/triggers")))
                .await?
                .json()
                .await?;
            let triggers = list["triggers"].as_array().cloned().unwrap_or_default();
            if triggers.is_empty() {
                println!("no triggers");
            }
            for t in triggers {
                let ready = if t["status"]["ready"] == true {
                    "ready".to_string()
                } else {
                    format!(
                        "not ready: {}",
                        t["status"]["reason"].as_str().unwrap_or_default()
                    )
                };
                println!(
                    "{:<32} {:<12} -> {:<32} {}",
                    t["name"].as_str().unwrap_or_default(),
                    t["broker"].as_str().unwrap_or_default(),
                    t["subscriber"].to_string(),
                    ready
                );
            }
            Ok(())
        }
        TriggerCommand::Get { name, client } => {
            let client = Client::new(&client);
            let t: serde_json::Value = client
                .send(client.http.get(client.url(&format!("/v1/triggers/{name}"))))
                .await?
                .json()
                .await?;
            print_json(&t)
        }
        TriggerCommand::Delete { name, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/triggers/{name}"))),
                )
                .await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

/// Runs one `sluice event` command.
pub async fn run_event_command(command: EventCommand) -> anyhow::Result<()> {
    match command {
        EventCommand::Send {
            ty,
            source,
            id,
            subject,
            extensions,
            data,
            content_type,
            broker,
            client,
        } => {
            let client = Client::new(&client);
            let id = id.unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{nanos:x}-{}", std::process::id())
            });
            let path = if broker == "default" {
                "/v1/events".to_string()
            } else {
                format!("/v1/brokers/{broker}/events")
            };
            let encode = sluice_router::binding::percent_encode;
            let mut request = client
                .http
                .post(client.url(&path))
                .header("ce-specversion", "1.0")
                .header("ce-id", encode(&id))
                .header("ce-type", encode(&ty))
                .header("ce-source", encode(&source))
                .header("content-type", content_type);
            if let Some(subject) = subject {
                request = request.header("ce-subject", encode(&subject));
            }
            for spec in &extensions {
                let (k, v) = pair(spec, "--ext")?;
                request = request.header(format!("ce-{k}"), encode(&v));
            }
            let answer: serde_json::Value = client
                .send(request.body(read_data(data.as_deref())?))
                .await?
                .json()
                .await?;
            println!("accepted event {id} ({} accepted)", answer["accepted"]);
            Ok(())
        }
    }
}

/// Runs one `sluice deadletter` command.
pub async fn run_dead_letter_command(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { trigger, client } => {
            let client = Client::new(&client);
            let mut request = client.http.get(client.url("/v1/deadletters"));
            if let Some(trigger) = trigger {
                request = request.query(&[("trigger", trigger)]);
            }
            let list: serde_json::Value = client.send(request).await?.json().await?;
            print_json(&list)
        }
        DeadLetterCommand::Replay { id, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/v1/deadletters/{id}/replay"))),
                )
                .await?;
            println!("replaying {id}");
            Ok(())
        }
        DeadLetterCommand::Delete { id, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/deadletters/{id}"))),
                )
                .await?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

/// Runs one `sluice invocation` command.
pub async fn run_invocation_command(command: InvocationCommand) -> anyhow::Result<()> {
    match command {
        InvocationCommand::Get { id, client } => {
            let client = Client::new(&client);
            let record: serde_json::Value = client
                .send(
                    client
                        .http
                        .get(client.url(&format!("/v1/invocations/{id}"))),
                )
                .await?
                .json()
                .await?;
            print_json(&record)
        }
    }
}

/// Runs one `sluice token` command.
pub async fn run_token_command(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            scope,
            name,
            client,
        } => {
            let client = Client::new(&client);
            let request = client
                .http
                .post(client.url("/v1/tokens"))
                .json(&serde_json::json!({"scope": scope.as_str(), "name": name}));
            let token: serde_json::Value = client.send(request).await?.json().await?;
            eprintln!(
                "token {} ({}); it is shown only now:",
                token["id"].as_str().unwrap_or_default(),
                scope.as_str()
            );
            println!("{}", token["token"].as_str().unwrap_or_default());
            Ok(())
        }
        TokenCommand::List { client } => {
            let client = Client::new(&client);
            let list: serde_json::Value = client
                .send(client.http.get(client.url("/v1/tokens")))
                .await?
                .json()
                .await?;
            for t in list["tokens"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<14} {:<8} {:<24} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["scope"].as_str().unwrap_or_default(),
                    t["created"].as_str().unwrap_or_default(),
                    t["name"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id, client } => {
            let client = Client::new(&client);
            client
                .send(client.http.delete(client.url(&format!("/v1/tokens/{id}"))))
                .await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}
