//! The commands of the CLI: every one but `serve` talks to the API through
//! `sluice-client`, and prints a table or, with `--output json`, JSON.
//!
//! Errors print the server's reason and exit non-zero.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use crate::args::{
    BrokerCommand, ClientArgs, DeadLetterCommand, DeliveryArgs, EventArgs, EventCommand,
    FunctionCommand, GetKind, InvocationCommand, Output, ScheduleCommand, SettingsArgs,
    TokenCommand, TriggerCommand,
};

/// The API client, and how read commands print.
struct Client {
    api: sluice_client::Client,
    http: reqwest::Client,
    base: String,
    output: Output,
}

impl Client {
    fn new(args: &ClientArgs) -> Client {
        let token = sluice_client::find_token(args.token.as_deref(), &args.server, &args.data_dir);
        let api = sluice_client::Client::new(&args.server, token.as_deref());
        Client {
            http: api.http().clone(),
            base: api.base().to_string(),
            api,
            output: args.output,
        }
    }

    /// `GET path` as JSON.
    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.api.get(path).await?)
    }

    /// Prints `value` as JSON with `--output json`, else with `text`.
    fn show(
        &self,
        value: &serde_json::Value,
        text: impl FnOnce(&serde_json::Value),
    ) -> anyhow::Result<()> {
        match self.output {
            Output::Json => print_json(value),
            Output::Yaml => {
                print!("{}", serde_norway::to_string(value)?);
                Ok(())
            }
            Output::Text => {
                text(value);
                Ok(())
            }
        }
    }

    fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        Ok(self.api.send(request).await?)
    }
}

/// Writes `bytes` to stdout at once (a closed pipe ends the command
/// quietly).
fn emit(stdout: &mut std::io::StdoutLock<'_>, bytes: &[u8]) -> std::io::Result<()> {
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .inspect_err(crate::quit_on)
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

/// The query parameters of `settings` (see the API's settings parameters).
fn settings_query(settings: &SettingsArgs) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut query = Vec::new();
    for (flag, key, pairs) in [
        ("--env", "env", &settings.env),
        ("--secret", "secret", &settings.secret),
    ] {
        for pair in pairs {
            if !pair.contains('=') {
                // A secret's value is not echoed.
                let shown = if key == "secret" {
                    "the value"
                } else {
                    pair.as_str()
                };
                bail!("{flag} {shown:?} is not KEY=VALUE");
            }
            query.push((key, pair.clone()));
        }
    }
    for host in &settings.allow_outbound {
        query.push(("allow_outbound", host.clone()));
    }
    for bucket in &settings.kv_bucket {
        query.push(("kv_bucket", bucket.clone()));
    }
    for (key, value) in [
        ("timeout_ms", settings.timeout),
        ("memory_mb", settings.memory),
        ("max_concurrency", settings.max_concurrency.map(u64::from)),
        ("max_request_bytes", settings.max_request_bytes),
        ("max_response_bytes", settings.max_response_bytes),
    ] {
        if let Some(value) = value {
            query.push((key, value.to_string()));
        }
    }
    if settings.public {
        query.push(("visibility", "public".into()));
    }
    if settings.private {
        query.push(("visibility", "private".into()));
    }
    Ok(query)
}

/// Runs one `sluice fn` command.
pub async fn run_function_command(command: FunctionCommand) -> anyhow::Result<()> {
    match command {
        FunctionCommand::Deploy {
            name,
            file,
            settings,
            client,
        } => {
            let client = Client::new(&client);
            let bytes = std::fs::read(&file).with_context(|| {
                format!(
                    "cannot read {}: build the component first (for Rust: `cargo build --target wasm32-wasip2 --release`)",
                    file.display()
                )
            })?;
            if !bytes.starts_with(b"\0asm") {
                bail!(
                    "{} is not a WebAssembly file: deploy the `.wasm` component your build produced",
                    file.display()
                );
            }
            if wasmparser::Parser::is_core_wasm(&bytes) {
                bail!(
                    "{} is a core WebAssembly module, not a component: build it with `cargo build --target wasm32-wasip2` (not wasm32-unknown-unknown or wasm32-wasip1), or wrap it with `wasm-tools component new`",
                    file.display()
                );
            }
            let query = settings_query(&settings)?;
            let (body, progress) = upload(bytes, &format!("uploading {name}"));
            let request = client
                .http
                .put(client.url(&format!("/v1/functions/{name}")))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(body);
            let response = client.send(request).await;
            progress.finish_and_clear();
            let record: serde_json::Value = response?.json().await?;
            client.show(&record, |f| {
                if f["changed"] == false {
                    println!(
                        "{} v{} unchanged (the same code and settings)",
                        f["name"].as_str().unwrap_or_default(),
                        f["version"]
                    );
                    return;
                }
                println!(
                    "deployed {} v{} ({}, {}) at {}",
                    f["name"].as_str().unwrap_or_default(),
                    f["version"],
                    f["world"].as_str().unwrap_or_default(),
                    f["settings"]["visibility"].as_str().unwrap_or("private"),
                    f["url"].as_str().unwrap_or_default()
                );
                if let Some(kept) = f["kept"].as_array().filter(|kept| !kept.is_empty()) {
                    let kept: Vec<_> = kept.iter().filter_map(|k| k.as_str()).collect();
                    println!("kept settings: {}", kept.join(", "));
                }
            })
        }
        FunctionCommand::Update {
            name,
            settings,
            reset,
            client,
        } => {
            let client = Client::new(&client);
            let query = settings_query(&settings)?;
            if query.is_empty() && reset.is_empty() {
                bail!("name at least one setting to change (see `sluice fn update --help`)");
            }
            // Resets go first (the body), then the flags (the query).
            let patch: serde_json::Map<String, serde_json::Value> = reset
                .iter()
                .map(|key| (key.clone(), serde_json::Value::Null))
                .collect();
            let mut request = client
                .http
                .patch(client.url(&format!("/v1/functions/{name}")))
                .query(&query);
            if !patch.is_empty() {
                request = request
                    .header("content-type", "application/merge-patch+json")
                    .body(serde_json::Value::Object(patch).to_string());
            }
            let record: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&record, |f| {
                println!(
                    "updated {} v{}: {}",
                    f["name"].as_str().unwrap_or_default(),
                    f["version"],
                    f["settings"]
                );
            })
        }
        FunctionCommand::List { client } => {
            let client = Client::new(&client);
            let list = client.get("/v1/functions").await?;
            client.show(&list, |list| {
                let functions = list["functions"].as_array().cloned().unwrap_or_default();
                if functions.is_empty() {
                    println!("no functions deployed (`sluice fn deploy NAME FILE.wasm`)");
                    return;
                }
                println!(
                    "{:<32} {:<5} {:<6} {:<8} URL",
                    "NAME", "VER", "WORLD", "ACCESS"
                );
                for f in functions {
                    println!(
                        "{:<32} {:<5} {:<6} {:<8} {}",
                        f["name"].as_str().unwrap_or_default(),
                        format!("v{}", f["version"]),
                        f["world"].as_str().unwrap_or_default(),
                        f["settings"]["visibility"].as_str().unwrap_or("private"),
                        f["url"].as_str().unwrap_or_default()
                    );
                }
            })
        }
        FunctionCommand::Get { name, client } => {
            let client = Client::new(&client);
            let record = client.get(&format!("/v1/functions/{name}")).await?;
            let recent = client
                .get(&format!("/v1/functions/{name}/invocations"))
                .await?;
            client.show(&record, |f| {
                for key in [
                    "name", "version", "world", "digest", "url", "created", "updated",
                ] {
                    println!("{key:<10} {}", plain(&f[key]));
                }
                println!("settings   {}", f["settings"]);
                let calls = recent["invocations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                // In cluster mode every record names the node that ran it.
                let cluster = calls.iter().any(|call| call["node"].is_string());
                let shown = calls.len().min(10);
                if calls.is_empty() {
                    println!("recent     none");
                } else {
                    println!(
                        "recent     {shown} of the last {} invocations, {}",
                        calls.len(),
                        if cluster {
                            "through every node"
                        } else {
                            "since this server started"
                        }
                    );
                }
                for call in calls.iter().take(shown) {
                    let time = call["time_ms"]
                        .as_u64()
                        .map(unix_ms_text)
                        .unwrap_or_default();
                    let mut line = format!(
                        "  {time} {:<16} {:>9.2} ms {:<4}",
                        call["outcome"].as_str().unwrap_or_default(),
                        call["duration_us"].as_f64().unwrap_or(0.0) / 1000.0,
                        if call["cold"] == true { "cold" } else { "warm" }
                    );
                    if let Some(node) = call["node"].as_str() {
                        line.push_str(&format!(" on {node}"));
                    }
                    println!("{line}");
                }
            })
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
                    match client.output {
                        // One JSON object per line, so `--follow` streams too.
                        Output::Json | Output::Yaml => println!("{line}"),
                        Output::Text => println!(
                            "{} {} [{}] {}",
                            line["time"].as_str().unwrap_or_default(),
                            line["invocation"].as_str().unwrap_or_default(),
                            line["stream"].as_str().unwrap_or_default(),
                            line["line"].as_str().unwrap_or_default()
                        ),
                    }
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
            method,
            path,
            headers,
            include,
            asynchronous,
            client,
        } => {
            let client = Client::new(&client);
            let body = read_data(data.as_deref())?;
            let direct = method.is_some() || path.is_some();
            if asynchronous && direct {
                bail!(
                    "--async queues a POST to /v1/functions/{name}/invoke: drop --method and --path"
                );
            }
            let mut request = if direct {
                let method = method.as_deref().unwrap_or("POST").to_ascii_uppercase();
                let method = reqwest::Method::from_bytes(method.as_bytes())
                    .with_context(|| format!("{method:?} is not an HTTP method"))?;
                let path = path.unwrap_or_else(|| "/".into());
                let path = if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                };
                client
                    .http
                    .request(method, client.url(&format!("/fn/{name}{path}")))
            } else {
                client
                    .http
                    .post(client.url(&format!("/v1/functions/{name}/invoke")))
            };
            for header in &headers {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("--header {header:?} is not NAME:VALUE"))?;
                request = request.header(name.trim(), value.trim());
            }
            request = request.body(body);
            if asynchronous {
                request = request.query(&[("async", "true")]);
                let answer: serde_json::Value = client.send(request).await?.json().await?;
                println!("{}", answer["id"].as_str().unwrap_or_default());
                return Ok(());
            }
            let mut response = client.send(request).await?;
            let mut stdout = std::io::stdout().lock();
            if include {
                let mut head = format!("{:?} {}\n", response.version(), response.status());
                for (name, value) in response.headers() {
                    head += &format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()));
                }
                emit(&mut stdout, format!("{head}\n").as_bytes())?;
            }
            // As the function writes it (a stream of events, a download).
            while let Some(chunk) = response.chunk().await? {
                emit(&mut stdout, &chunk)?;
            }
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
            file,
            function,
            uri,
            broker,
            filters,
            prefixes,
            suffixes,
            cesql,
            filter_json,
            delivery: flags,
            client,
        } => {
            let client = Client::new(&client);
            let mut body = match &file {
                Some(file) => {
                    let bytes = read_data(Some(&if file == "-" {
                        "-".to_string()
                    } else {
                        format!("@{file}")
                    }))?;
                    let value: serde_json::Value = serde_json::from_slice(&bytes)
                        .with_context(|| format!("{file} is not a JSON trigger"))?;
                    if !value.is_object() {
                        bail!("{file} holds no JSON object");
                    }
                    value
                }
                None => {
                    if function.is_none() && uri.is_none() {
                        bail!("give --function or --uri (or a trigger in -f FILE)");
                    }
                    serde_json::json!({"filter": {"attributes": {}}, "filters": []})
                }
            };
            body["name"] = name.clone().into();
            let mut attributes = serde_json::Map::new();
            for spec in &filters {
                let (k, v) = pair(spec, "--filter")?;
                attributes.insert(k, v.into());
            }
            if !attributes.is_empty() {
                // The flags win over the file.
                let mut merged = body["filter"]["attributes"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                merged.extend(attributes);
                body["filter"] = serde_json::json!({"attributes": merged});
            }
            let mut dialects: Vec<serde_json::Value> =
                body["filters"].as_array().cloned().unwrap_or_default();
            for expression in cesql {
                dialects.push(serde_json::json!({ "cesql": expression }));
            }
            for raw in &filter_json {
                let dialect: serde_json::Value = serde_json::from_str(raw)
                    .with_context(|| format!("--filter-json {raw:?} is not JSON"))?;
                dialects.push(dialect);
            }
            for (flag, dialect, specs) in [
                ("--prefix", "prefix", &prefixes),
                ("--suffix", "suffix", &suffixes),
            ] {
                for spec in specs {
                    let (k, v) = pair(spec, flag)?;
                    dialects.push(serde_json::json!({ dialect: { k: v } }));
                }
            }
            body["filters"] = dialects.into();
            match (function, uri) {
                (Some(f), _) => body["subscriber"] = serde_json::json!({"function": f}),
                (None, Some(u)) => body["subscriber"] = serde_json::json!({"uri": u}),
                (None, None) => {}
            }
            let mut delivery = body["delivery"].as_object().cloned().unwrap_or_default();
            delivery.extend(delivery_json(flags));
            // A trigger that sets no delivery takes its broker's.
            if delivery.is_empty() {
                if let Some(map) = body.as_object_mut() {
                    map.remove("delivery");
                }
            } else {
                body["delivery"] = delivery.into();
            }
            if let Some(broker) = broker {
                body["broker"] = broker.into();
            }
            let request = client
                .http
                .put(client.url(&format!("/v1/triggers/{name}")))
                .json(&body);
            let trigger: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&trigger, |t| {
                println!("stored trigger {name}");
                show_trigger(t);
            })
        }
        TriggerCommand::List { client } => {
            let client = Client::new(&client);
            let list = client.get("/v1/triggers").await?;
            client.show(&list, |list| {
                let triggers = list["triggers"].as_array().cloned().unwrap_or_default();
                if triggers.is_empty() {
                    println!(
                        "no triggers (`sluice trigger create NAME --filter type=... --function F`)"
                    );
                    return;
                }
                println!(
                    "{:<24} {:<10} {:<28} {:>8} {:>9} {:>7} {:>5}  STATUS",
                    "NAME", "BROKER", "SUBSCRIBER", "MATCHED", "DELIVERED", "RETRIED", "DEAD"
                );
                for t in triggers {
                    let subscriber = t["subscriber"]["function"]
                        .as_str()
                        .map(|f| format!("fn {f}"))
                        .or_else(|| t["subscriber"]["uri"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    // As numbers: a JSON value ignores the column width.
                    let count = |field: &str| t["stats"][field].as_u64().unwrap_or(0);
                    println!(
                        "{:<24} {:<10} {:<28} {:>8} {:>9} {:>7} {:>5}  {}",
                        t["name"].as_str().unwrap_or_default(),
                        t["broker"].as_str().unwrap_or_default(),
                        subscriber,
                        count("matched"),
                        count("delivered"),
                        count("retried"),
                        count("dead_lettered"),
                        readiness(&t)
                    );
                }
            })
        }
        TriggerCommand::Get { name, client } => {
            let client = Client::new(&client);
            let t = client.get(&format!("/v1/triggers/{name}")).await?;
            client.show(&t, show_trigger)
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
        EventCommand::Send { event, client } => {
            let client = Client::new(&client);
            let path = if event.broker == "default" {
                "/v1/events".to_string()
            } else {
                format!("/v1/brokers/{}/events", event.broker)
            };
            let (request, sent) = event_request(&client, &path, event)?;
            let answer: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&answer, |answer| {
                let repeats = answer["duplicates"].as_array().map_or(0, Vec::len);
                let note = match repeats {
                    0 => String::new(),
                    n => format!(
                        "; {n} a repeat of an event accepted before (same source and id), not delivered again"
                    ),
                };
                match &sent {
                    Sent::File(file) => {
                        println!("accepted {} event(s) from {file}{note}", answer["accepted"])
                    }
                    Sent::One(id) if answer["duplicate"] == true => println!(
                        "accepted event {id} as a duplicate: one with its source and id was accepted before; not delivered again"
                    ),
                    Sent::One(id) => println!("accepted event {id} ({} accepted)", answer["accepted"]),
                }
            })
        }
        EventCommand::Explain { event, client } => {
            let client = Client::new(&client);
            let path = format!("/v1/brokers/{}/explain", event.broker);
            let (request, _) = event_request(&client, &path, event)?;
            let answer: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&answer, |answer| {
                for event in answer["events"].as_array().into_iter().flatten() {
                    let triggers = event["triggers"].as_array().cloned().unwrap_or_default();
                    let matched = event["matched"].as_array().map_or(0, Vec::len);
                    println!(
                        "event {} (type {}, source {}) matches {matched} of {} trigger(s) of broker {}",
                        event["id"].as_str().unwrap_or_default(),
                        event["type"].as_str().unwrap_or_default(),
                        event["source"].as_str().unwrap_or_default(),
                        triggers.len(),
                        answer["broker"].as_str().unwrap_or_default(),
                    );
                    for trigger in triggers {
                        let name = trigger["name"].as_str().unwrap_or_default();
                        match trigger["reason"].as_str() {
                            None => println!("  match  {name:<24} -> {}", trigger["subscriber"]),
                            Some(reason) => println!("  miss   {name:<24} {reason}"),
                        }
                    }
                }
            })
        }
        EventCommand::Trace {
            id,
            broker,
            source,
            client,
        } => {
            let client = Client::new(&client);
            let path = format!(
                "/v1/brokers/{}/events/{}",
                path_segment(&broker),
                path_segment(&id)
            );
            let mut request = client.http.get(client.url(&path));
            if let Some(source) = &source {
                request = request.query(&[("source", source)]);
            }
            let answer: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&answer, show_traces)
        }
        EventCommand::Watch { broker, client } => {
            let client = Client::new(&client);
            let request = client
                .http
                .get(client.url("/v1/events/stream"))
                .header("accept", "text/event-stream");
            let mut response = client.send(request).await?;
            let mut stdout = std::io::stdout().lock();
            let (mut pending, mut kind) = (Vec::new(), String::new());
            while let Some(chunk) = response.chunk().await? {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end();
                    if let Some(name) = line.strip_prefix("event:") {
                        kind = name.trim().to_string();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        let entry: serde_json::Value =
                            serde_json::from_str(data.trim()).unwrap_or_default();
                        if broker
                            .as_deref()
                            .is_some_and(|b| entry["broker"].as_str().is_some_and(|e| e != b))
                        {
                            continue;
                        }
                        let line = match client.output {
                            Output::Json | Output::Yaml => format!("{}\n", data.trim()),
                            Output::Text => stream_entry_text(&kind, data.trim(), &entry),
                        };
                        emit(&mut stdout, line.as_bytes())?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// One entry of the live stream as a line of text: when, what, the
/// event, and its triggers or its delivery.
fn stream_entry_text(kind: &str, data: &str, entry: &serde_json::Value) -> String {
    if !entry.is_object() {
        // `lagged` (how many were missed) or something newer than this CLI.
        return format!("{kind:<14} {data}\n");
    }
    let mut line = format!(
        "{} {kind:<14} {:<12} {} (type {}, source {})",
        entry["time_ms"]
            .as_u64()
            .map(unix_ms_text)
            .unwrap_or_default(),
        plain(&entry["broker"]),
        plain(&entry["id"]),
        plain(&entry["type"]),
        plain(&entry["source"]),
    );
    if let Some(matched) = entry["matched"].as_array() {
        let names: Vec<String> = matched.iter().map(plain).collect();
        if names.is_empty() {
            line.push_str(": no trigger matched");
        } else {
            line.push_str(&format!(": matched {}", names.join(", ")));
        }
    }
    if let Some(trigger) = entry["trigger"].as_str() {
        line.push_str(&format!(
            ": trigger {trigger}, attempt {}",
            entry["attempt"]
        ));
    }
    line.push('\n');
    line
}

/// Unix milliseconds as RFC 3339 (UTC, with milliseconds).
fn unix_ms_text(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// An `--ext NAME=VALUE`, its name checked as CloudEvents has them (a
/// header would lowercase `Bad` silently).
fn extension(spec: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = pair(spec, "--ext")?;
    if !sluice_router::event::valid_extension_name(&name) {
        bail!(
            "--ext {spec:?}: an attribute name is lowercase letters a-z and digits 0-9 (CloudEvents)"
        );
    }
    Ok((name, value))
}

/// What [`event_request`] builds a request of.
enum Sent {
    /// The events of this file, as they are.
    File(String),
    /// One event with this id.
    One(String),
}

/// A POST to `path` carrying the event of `sluice event send` or
/// `explain`: binary mode, structured mode, or a file's event or batch.
fn event_request(
    client: &Client,
    path: &str,
    event: EventArgs,
) -> anyhow::Result<(reqwest::RequestBuilder, Sent)> {
    let EventArgs {
        ty,
        source,
        id,
        subject,
        extensions,
        data,
        content_type,
        broker: _,
        structured,
        file,
    } = event;
    let id = id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:x}-{}", std::process::id())
    });
    if let Some(file) = file {
        let spec = if file == "-" {
            file.clone()
        } else {
            format!("@{file}")
        };
        let bytes = read_data(Some(&spec))?;
        let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let media = if batch {
            "application/cloudevents-batch+json"
        } else {
            "application/cloudevents+json"
        };
        let request = client
            .http
            .post(client.url(path))
            .header("content-type", media)
            .body(bytes);
        return Ok((request, Sent::File(file)));
    }
    let (ty, source) = (ty.unwrap_or_default(), source.unwrap_or_default());
    if structured {
        let data = read_data(data.as_deref())?;
        let mut event = serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "type": ty,
            "source": source,
            "datacontenttype": content_type,
        });
        if let Some(subject) = subject {
            event["subject"] = subject.into();
        }
        for spec in &extensions {
            let (k, v) = extension(spec)?;
            event[k] = v.into();
        }
        if !data.is_empty() {
            let json = content_type.contains("json");
            match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(value) if json => event["data"] = value,
                _ => match String::from_utf8(data) {
                    Ok(text) => event["data"] = text.into(),
                    Err(bytes) => {
                        use base64::Engine as _;
                        event["data_base64"] = base64::engine::general_purpose::STANDARD
                            .encode(bytes.into_bytes())
                            .into();
                    }
                },
            }
        }
        let request = client
            .http
            .post(client.url(path))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string());
        return Ok((request, Sent::One(id)));
    }
    let encode = sluice_router::binding::percent_encode;
    let mut request = client
        .http
        .post(client.url(path))
        .header("ce-specversion", "1.0")
        .header("ce-id", encode(&id))
        .header("ce-type", encode(&ty))
        .header("ce-source", encode(&source))
        .header("content-type", content_type);
    if let Some(subject) = subject {
        request = request.header("ce-subject", encode(&subject));
    }
    for spec in &extensions {
        let (k, v) = extension(spec)?;
        request = request.header(format!("ce-{k}"), encode(&v));
    }
    Ok((request.body(read_data(data.as_deref())?), Sent::One(id)))
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
            client.show(&list, |list| {
                let letters = list["deadletters"].as_array().cloned().unwrap_or_default();
                if letters.is_empty() {
                    println!("no dead letters");
                    return;
                }
                println!(
                    "{:<8} {:<25} {:<20} {:<32} {:<8} REASON",
                    "ID", "TIME", "TRIGGER", "EVENT", "ATTEMPTS"
                );
                for l in letters {
                    println!(
                        "{:<8} {:<25} {:<20} {:<32} {:<8} {}",
                        plain(&l["id"]),
                        plain(&l["time"]),
                        plain(&l["trigger"]),
                        format!(
                            "{} {}",
                            plain(&l["event"]["type"]),
                            plain(&l["event"]["id"])
                        ),
                        l["attempts"].as_u64().unwrap_or(0),
                        plain(&l["reason"])
                    );
                }
            })
        }
        DeadLetterCommand::Get { id, client } => {
            let client = Client::new(&client);
            let letter = client.get(&format!("/v1/deadletters/{id}")).await?;
            client.show(&letter, |l| {
                for key in ["id", "time", "broker", "trigger", "attempts", "reason"] {
                    println!("{key:<9} {}", plain(&l[key]));
                }
                println!("event     {}", l["event"]);
            })
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
        InvocationCommand::Get { id, wait, client } => {
            let client = Client::new(&client);
            let path = format!("/v1/invocations/{id}");
            let spinner = wait.then(|| spinner(&format!("waiting for invocation {id}")));
            let record = loop {
                let record = client.get(&path).await?;
                let done = matches!(
                    record["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                );
                if done || !wait {
                    break record;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            if let Some(spinner) = spinner {
                spinner.finish_and_clear();
            }
            client.show(&record, |r| {
                println!(
                    "{} {} {}",
                    plain(&r["id"]),
                    plain(&r["function"]),
                    plain(&r["status"])
                );
                if let Some(response) = r["response"].as_object() {
                    println!("status {}", response["status"]);
                    if let Some(body) = response.get("body").and_then(|b| b.as_str()) {
                        print!("{body}");
                    }
                }
            })
        }
        InvocationCommand::List {
            function,
            limit,
            client,
        } => {
            let client = Client::new(&client);
            let mut query = vec![("limit", limit.to_string())];
            if let Some(function) = function {
                query.push(("function", function));
            }
            let request = client.http.get(client.url("/v1/invocations")).query(&query);
            let list: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&list, |list| {
                let items = list["invocations"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("no asynchronous invocations (`sluice fn invoke NAME --async`)");
                    return;
                }
                println!(
                    "{:<32} {:<24} {:<10} {:<6} CREATED",
                    "ID", "FUNCTION", "STATUS", "CODE"
                );
                for i in items {
                    println!(
                        "{:<32} {:<24} {:<10} {:<6} {}",
                        plain(&i["id"]),
                        plain(&i["function"]),
                        plain(&i["status"]),
                        i["response_status"]
                            .as_u64()
                            .map_or_else(|| "-".to_string(), |code| code.to_string()),
                        plain(&i["created"])
                    );
                }
            })
        }
        InvocationCommand::Cancel { id, client } => {
            let client = Client::new(&client);
            let request = client
                .http
                .delete(client.url(&format!("/v1/invocations/{id}")));
            let record: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&record, |r| {
                println!("{} {}", plain(&r["id"]), plain(&r["status"]));
            })
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
                .json(&serde_json::json!({"scope": scope, "name": name}));
            let token: serde_json::Value = client.send(request).await?.json().await?;
            eprintln!(
                "token {} ({}); it is shown only now:",
                token["id"].as_str().unwrap_or_default(),
                scope
            );
            println!("{}", token["token"].as_str().unwrap_or_default());
            Ok(())
        }
        TokenCommand::List { client } => {
            let client = Client::new(&client);
            let list = client.get("/v1/tokens").await?;
            client.show(&list, |list| {
                println!("{:<14} {:<8} {:<24} NAME", "ID", "SCOPE", "CREATED");
                for t in list["tokens"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<14} {:<8} {:<24} {}",
                        t["id"].as_str().unwrap_or_default(),
                        t["scope"].as_str().unwrap_or_default(),
                        t["created"].as_str().unwrap_or_default(),
                        t["name"].as_str().unwrap_or_default()
                    );
                }
            })
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

/// `sluice status`.
pub async fn run_status(args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args);
    let status = client.get("/v1/status").await?;
    client.show(&status, |s| {
        let health = match (s["ready"] == true, s["store_healthy"] == true) {
            (true, true) => "ready".to_string(),
            (false, true) => format!(
                "not ready: {}",
                s["not_ready"]
                    .as_str()
                    .unwrap_or("starting or shutting down")
            ),
            (_, false) => "store failed: a disk write failed; fix the disk and restart".to_string(),
        };
        println!(
            "server      {} (sluice {})",
            client.base,
            plain(&s["version"])
        );
        println!("health      {health}");
        println!(
            "uptime      {}",
            humantime(s["uptime_secs"].as_u64().unwrap_or(0))
        );
        println!(
            "functions   {} ({} in memory)",
            s["functions"], s["functions_loaded"]
        );
        println!("triggers    {}", s["triggers"]);
        println!("pending     {} deliveries", s["deliveries_pending"]);
        println!("dead        {} dead letters", s["dead_letters"]);
        println!("in flight   {} requests", s["requests_in_flight"]);
        if s["cluster"].is_object() {
            show_cluster_status(&s["cluster"]);
        }
        println!("dashboard   {}/ui/", client.base);
    })
}

/// `sluice migrate`.
pub async fn run_migrate(
    data_dir: &std::path::Path,
    nats: Vec<String>,
    credentials: Option<std::path::PathBuf>,
    again: bool,
) -> anyhow::Result<()> {
    let mut options = sluice_server::ClusterOptions::new(nats);
    options.credentials = credentials;
    options.name = format!("sluice migrate pid {}", std::process::id());
    let done = sluice_server::migrate::migrate(data_dir, options, again).await?;
    for line in &done.copied {
        println!("copied      {line}");
    }
    for line in &done.kept {
        println!("kept        {line}: the cluster's, left as it is");
    }
    for line in &done.failed {
        println!("not copied  {line}");
    }
    for line in &done.left {
        println!("left behind {line}");
    }
    if !done.failed.is_empty() {
        bail!(
            "{} could not be copied (listed above); {} is marked as migrated: once fixed, run this again with --again (it copies only what the cluster lacks)",
            done.failed.len(),
            data_dir.display()
        );
    }
    println!(
        "done: the cluster's nodes pick it up through their watches; nothing was deleted from {}",
        data_dir.display()
    );
    Ok(())
}

/// The cluster part of `sluice status`: this node, the live ones,
/// JetStream's health and the backlog.
fn show_cluster_status(cluster: &serde_json::Value) {
    println!("node        {}", plain(&cluster["node"]));
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    match cluster["nodes_error"].as_str() {
        Some(error) => println!("nodes       not read: {error}"),
        None => println!("nodes       {} live", nodes.len()),
    }
    for node in &nodes {
        println!(
            "  {:<24} {:<22} sluice {:<10} since {}",
            plain(&node["name"]),
            plain(&node["listen"]),
            plain(&node["version"]),
            plain(&node["started"])
        );
    }
    let jetstream = &cluster["jetstream"];
    if jetstream["healthy"] == true {
        println!("jetstream   healthy");
    } else {
        println!(
            "jetstream   NOT healthy: {}",
            jetstream["reason"].as_str().unwrap_or("no reason given")
        );
    }
    for stream in ["events", "deliveries"] {
        let state = &jetstream[stream];
        if !state.is_object() {
            continue;
        }
        let mut line = format!(
            "  {stream:<11} {} messages, {} bytes, {} replicas",
            state["messages"], state["bytes"], state["replicas"]
        );
        let followers = state["replicas"].as_u64().unwrap_or(1).saturating_sub(1);
        if let Some(leader) = state["leader"].as_str() {
            line.push_str(&format!(" (leader {leader}"));
            // The leader is one replica; the others are its followers.
            if followers > 0 {
                line.push_str(&format!(
                    ", {} of {followers} followers current",
                    state["replicas_current"]
                ));
            }
            line.push(')');
        }
        println!("{line}");
    }
    let backlog = &jetstream["backlog"];
    if backlog.is_object() {
        println!(
            "backlog     {} events to fan out, {} deliveries waiting, {} held by nodes",
            backlog["events_to_fan_out"], backlog["deliveries_waiting"], backlog["deliveries_held"]
        );
    }
}

/// A JSON value as text: strings without quotes.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A trigger's fields, a line each, and its readiness.
fn show_trigger(t: &serde_json::Value) {
    for key in [
        "name",
        "broker",
        "subscriber",
        "filter",
        "filters",
        "delivery",
        "stats",
    ] {
        if !t[key].is_null() {
            println!("{key:<10} {}", plain(&t[key]));
        }
    }
    println!("status     {}", readiness(t));
}

fn readiness(trigger: &serde_json::Value) -> String {
    if trigger["status"]["ready"] == true {
        "ready".to_string()
    } else {
        format!(
            "not ready: {}",
            trigger["status"]["reason"].as_str().unwrap_or_default()
        )
    }
}

fn humantime(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h{}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{}h", secs / 86400, secs / 3600 % 24),
    }
}

/// A spinner on stderr (drawn only when stderr is a terminal).
fn spinner(message: &str) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    spinner
}

/// `bytes` as a request body that moves a progress bar as it is sent; once
/// sent, the bar turns into a spinner while the server compiles.
fn upload(bytes: Vec<u8>, message: &str) -> (reqwest::Body, indicatif::ProgressBar) {
    const CHUNK: usize = 256 * 1024;
    let bar = indicatif::ProgressBar::new(bytes.len() as u64).with_message(message.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let sent = bar.clone();
    let total = bytes.len();
    let bytes = bytes::Bytes::from(bytes);
    let chunks = (0..total.div_ceil(CHUNK).max(1)).map(move |i| {
        let chunk = bytes.slice(i * CHUNK..((i + 1) * CHUNK).min(total));
        sent.inc(chunk.len() as u64);
        if sent.position() >= total as u64 {
            sent.set_style(indicatif::ProgressStyle::default_spinner());
            sent.set_message("compiling on the server");
            sent.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    (
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        bar,
    )
}

/// The `delivery` object of delivery flags (those given).
fn delivery_json(flags: DeliveryArgs) -> serde_json::Map<String, serde_json::Value> {
    let DeliveryArgs {
        retry,
        backoff_policy,
        backoff_delay,
        timeout,
        dead_letter,
        dead_letter_uri,
    } = flags;
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
    if let Some(timeout) = timeout {
        delivery.insert("timeout".into(), timeout.into());
    }
    if let Some(function) = dead_letter {
        delivery.insert(
            "deadLetterSink".into(),
            serde_json::json!({"function": function}),
        );
    }
    if let Some(uri) = dead_letter_uri {
        delivery.insert("deadLetterSink".into(), serde_json::json!({"uri": uri}));
    }
    delivery
}

/// Runs one `sluice broker` command.
pub async fn run_broker_command(command: BrokerCommand) -> anyhow::Result<()> {
    match command {
        BrokerCommand::List { client } => {
            let client = Client::new(&client);
            let list = client.get("/v1/brokers").await?;
            client.show(&list, |list| {
                println!(
                    "{:<32} {:>8}  {:<7} {:<7} DELIVERY",
                    "NAME", "TRIGGERS", "STORED", "DEDUPE"
                );
                for broker in list["brokers"].as_array().cloned().unwrap_or_default() {
                    let yes = |value: &serde_json::Value| if *value == true { "yes" } else { "no" };
                    println!(
                        "{:<32} {:>8}  {:<7} {:<7} {}",
                        plain(&broker["name"]),
                        plain(&broker["triggers"]),
                        yes(&broker["stored"]),
                        yes(&broker["dedupe"]),
                        if broker["delivery"].is_null() {
                            "-".to_string()
                        } else {
                            broker["delivery"].to_string()
                        }
                    );
                }
            })
        }
        BrokerCommand::Get { name, client } => {
            let client = Client::new(&client);
            let broker = client.get(&format!("/v1/brokers/{name}")).await?;
            client.show(&broker, show_broker)
        }
        BrokerCommand::Create {
            name,
            delivery,
            no_dedupe,
            client,
        } => {
            let client = Client::new(&client);
            let delivery = delivery_json(delivery);
            let mut body = serde_json::json!({"name": name});
            if !delivery.is_empty() {
                body["delivery"] = delivery.into();
            }
            if no_dedupe {
                body["dedupe"] = false.into();
            }
            let request = client
                .http
                .put(client.url(&format!("/v1/brokers/{name}")))
                .json(&body);
            let broker: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&broker, |b| {
                println!("stored broker {name}");
                show_broker(b);
            })
        }
        BrokerCommand::Delete { name, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/brokers/{name}"))),
                )
                .await?;
            println!("deleted broker {name}");
            Ok(())
        }
    }
}

/// `text` as one URL path segment: letters, digits, `-`, `_` and `~` as
/// they are, every other byte percent-encoded (`.` too, so that an id `.`
/// or `..` is not read as a relative path).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Prints traces as a timeline.
fn show_traces(answer: &serde_json::Value) {
    for (i, trace) in answer["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if i > 0 {
            println!();
        }
        println!(
            "event {} (type {}, source {}) accepted {} into broker {}",
            plain(&trace["id"]),
            plain(&trace["type"]),
            plain(&trace["source"]),
            plain(&trace["accepted"]),
            plain(&answer["broker"]),
        );
        if trace["duplicates"].as_u64().unwrap_or(0) > 0 {
            println!(
                "  repeated {} time(s) (duplicates, not delivered again)",
                trace["duplicates"]
            );
        }
        if trace["matched"].as_array().is_none_or(Vec::is_empty) {
            println!("  no trigger matched it");
        }
        for trigger in trace["triggers"].as_array().into_iter().flatten() {
            match trigger["reason"].as_str() {
                None => println!("  match  {}", plain(&trigger["name"])),
                Some(reason) => println!("  miss   {:<24} {reason}", plain(&trigger["name"])),
            }
        }
        for attempt in trace["attempts"].as_array().into_iter().flatten() {
            let mut line = format!(
                "  {} {:<24} attempt {} {}, ran {:.1} ms",
                plain(&attempt["start"]),
                plain(&attempt["trigger"]),
                attempt["attempt"],
                plain(&attempt["outcome"]),
                attempt["duration_ms"].as_f64().unwrap_or(0.0),
            );
            if let Some(node) = attempt["node"].as_str() {
                line.push_str(&format!(" on {node}"));
            }
            if !attempt["status"].is_null() {
                line.push_str(&format!(", status {}", attempt["status"]));
            }
            if let Some(error) = attempt["error"].as_str() {
                line.push_str(&format!(": {error}"));
            }
            println!("{line}");
        }
        if trace["attempts_not_kept"].as_u64().unwrap_or(0) > 0 {
            println!("  ({} later attempts not kept)", trace["attempts_not_kept"]);
        }
        for letter in trace["dead_letters"].as_array().into_iter().flatten() {
            println!(
                "  dead letter {} of trigger {}: {}",
                plain(&letter["id"]),
                plain(&letter["trigger"]),
                plain(&letter["reason"])
            );
        }
        for caused in trace["caused"].as_array().into_iter().flatten() {
            println!("  caused event {}", plain(caused));
        }
    }
}

/// A broker's fields, a line each.
fn show_broker(b: &serde_json::Value) {
    let yes = |value: &serde_json::Value| if *value == true { "yes" } else { "no" };
    println!("name       {}", plain(&b["name"]));
    println!("stored     {}", yes(&b["stored"]));
    println!("dedupe     {}", yes(&b["dedupe"]));
    if !b["triggers"].is_null() {
        println!("triggers   {}", plain(&b["triggers"]));
    }
    match &b["delivery"] {
        serde_json::Value::Null => println!("delivery   - (Knative's defaults)"),
        delivery => println!("delivery   {delivery}"),
    }
}

/// A schedule's sink in a table: the broker, `function NAME` or the URL.
fn sink_text(sink: &serde_json::Value) -> String {
    match (sink["broker"].as_str(), sink["function"].as_str()) {
        (Some(broker), _) => broker.to_owned(),
        (None, Some(function)) => format!("function {function}"),
        (None, None) => plain(&sink["uri"]),
    }
}

/// Runs one `sluice schedule` command.
pub async fn run_schedule_command(command: ScheduleCommand) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::List { client } => {
            let client = Client::new(&client);
            let list = client.get("/v1/schedules").await?;
            client.show(&list, |list| {
                println!(
                    "{:<24} {:<20} {:<16} {:<16} {:<22} LAST FIRED",
                    "NAME", "SCHEDULE", "TIMEZONE", "SINK", "NEXT"
                );
                for schedule in list["schedules"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<24} {:<20} {:<16} {:<16} {:<22} {}",
                        plain(&schedule["name"]),
                        plain(&schedule["schedule"]),
                        text_or(&schedule["timezone"], "UTC"),
                        sink_text(&schedule["sink"]),
                        text_or(&schedule["next"], "-"),
                        text_or(&schedule["lastFired"], "never"),
                    );
                }
            })
        }
        ScheduleCommand::Get { name, client } => {
            let client = Client::new(&client);
            let schedule = client.get(&format!("/v1/schedules/{name}")).await?;
            client.show(&schedule, show_schedule)
        }
        ScheduleCommand::Create {
            name,
            schedule,
            timezone,
            broker,
            function,
            uri,
            data,
            data_base64,
            content_type,
            client,
        } => {
            let client = Client::new(&client);
            let sink = match (function, uri) {
                (Some(function), _) => serde_json::json!({"function": function}),
                (None, Some(uri)) => serde_json::json!({"uri": uri}),
                (None, None) => serde_json::json!({"broker": broker}),
            };
            let mut body = serde_json::json!({"schedule": schedule, "sink": sink});
            for (field, value) in [
                ("timezone", timezone),
                ("data", data),
                ("dataBase64", data_base64),
                ("contentType", content_type),
            ] {
                if let Some(value) = value {
                    body[field] = value.into();
                }
            }
            let request = client
                .http
                .put(client.url(&format!("/v1/schedules/{name}")))
                .json(&body);
            let schedule: serde_json::Value = client.send(request).await?.json().await?;
            client.show(&schedule, show_schedule)
        }
        ScheduleCommand::Delete { name, client } => {
            let client = Client::new(&client);
            client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/schedules/{name}"))),
                )
                .await?;
            println!("deleted schedule {name}");
            Ok(())
        }
    }
}

fn show_schedule(schedule: &serde_json::Value) {
    println!("schedule {}", plain(&schedule["name"]));
    println!("  pattern:    {}", plain(&schedule["schedule"]));
    println!("  timezone:   {}", text_or(&schedule["timezone"], "UTC"));
    println!("  sink:       {}", sink_text(&schedule["sink"]));
    println!("  next:       {}", text_or(&schedule["next"], "-"));
    println!("  last fired: {}", text_or(&schedule["lastFired"], "never"));
    if schedule["status"]["ready"] == false {
        println!(
            "  status:     not ready: {}",
            plain(&schedule["status"]["reason"])
        );
    }
    if !schedule["data"].is_null() || !schedule["dataBase64"].is_null() {
        let (data, base64) = if schedule["data"].is_null() {
            (&schedule["dataBase64"], " in base64")
        } else {
            (&schedule["data"], "")
        };
        println!(
            "  data:       {}{base64} ({})",
            plain(data),
            text_or(&schedule["contentType"], "default type")
        );
    }
}

/// A string as it is, `default` for null.
fn text_or(value: &serde_json::Value, default: &str) -> String {
    match value {
        serde_json::Value::Null => default.to_string(),
        value => plain(value),
    }
}

/// The resources in `text`: JSON (a resource, an array, a List) or YAML
/// documents.
fn resources(text: &str, file: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    let trimmed = text.trim_start();
    let values: Vec<serde_json::Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        vec![serde_json::from_str(text).with_context(|| format!("{file} is not valid JSON"))?]
    } else {
        let mut values = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            let value = serde_json::Value::deserialize(document)
                .with_context(|| format!("{file} is not valid YAML"))?;
            if !value.is_null() {
                values.push(value);
            }
        }
        values
    };
    let mut items = Vec::new();
    for value in values {
        match value {
            serde_json::Value::Array(list) => items.extend(list),
            serde_json::Value::Object(ref map)
                if map.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                items.extend(map["items"].as_array().cloned().unwrap_or_default());
            }
            other => items.push(other),
        }
    }
    Ok(items)
}

/// Every settings key, so that a `Function` applied ends with exactly its
/// `spec.settings` (an absent key resets to the default).
const SETTINGS: [&str; 10] = sluice_server::settings::KNOWN;

/// Checks a `Function` resource with a component file as the server would
/// check one by digest: a typo must not reset its settings.
fn check_function(item: &serde_json::Value) -> anyhow::Result<()> {
    let name = item["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        bail!("a Function needs metadata.name");
    }
    if item["apiVersion"] != "sluice.dev/v1" {
        bail!(
            "Function {name}: apiVersion {} is not sluice.dev/v1",
            item["apiVersion"]
        );
    }
    if let Some(namespace) = item["metadata"]["namespace"]
        .as_str()
        .filter(|n| *n != "default")
    {
        bail!(
            "Function {name}: metadata.namespace {namespace:?}: Sluice has one namespace, `default`"
        );
    }
    let spec = item["spec"].as_object().cloned().unwrap_or_default();
    if let Some(unknown) = spec
        .keys()
        .find(|k| !["component", "settings"].contains(&k.as_str()))
    {
        bail!("Function {name}: unknown field spec.{unknown}; known: component, settings");
    }
    if let Some(settings) = spec.get("settings") {
        let Some(settings) = settings.as_object() else {
            bail!("Function {name}: spec.settings must be an object");
        };
        if let Some(unknown) = settings.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            bail!(
                "Function {name}: unknown setting spec.settings.{unknown}; known: {}",
                SETTINGS.join(", ")
            );
        }
    }
    Ok(())
}

/// `sluice apply -f FILE`.
pub async fn run_apply(file: &str, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args);
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let base = match file {
        "-" => std::path::PathBuf::from("."),
        file => std::path::Path::new(file)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
    };
    let items = resources(&text, file)?;
    if items.is_empty() {
        bail!("{file} holds no resources");
    }
    // Everything is checked before anything is written: the Functions with
    // a component file here, the rest by the server (a dry run).
    let mut server_side = Vec::new();
    let mut uploads = Vec::new();
    for item in items {
        let component = item["spec"]["component"].as_str().map(str::to_string);
        match (component, item["kind"].as_str()) {
            (Some(component), Some("Function")) => {
                check_function(&item)?;
                let path = base.join(&component);
                if !path.is_file() {
                    bail!(
                        "cannot read {} (spec.component of Function {})",
                        path.display(),
                        plain(&item["metadata"]["name"])
                    );
                }
                uploads.push((item, path));
            }
            _ => server_side.push(item),
        }
    }
    if !server_side.is_empty() {
        let request = client
            .http
            .post(client.url("/v1/apply"))
            .query(&[("dry_run", "true")])
            .json(&serde_json::Value::Array(server_side.clone()));
        client.send(request).await?;
    }
    let mut results = Vec::new();
    for (item, path) in uploads {
        // A Function with a component file: uploaded, its settings exactly
        // `spec.settings`.
        let name = plain(&item["metadata"]["name"]);
        let bytes = std::fs::read(&path).with_context(|| {
            format!("cannot read {} (spec.component of {name})", path.display())
        })?;
        let mut config = serde_json::Map::new();
        for key in SETTINGS {
            config.insert(
                key.into(),
                item["spec"]["settings"]
                    .get(key)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(bytes))
            .text("config", serde_json::Value::Object(config).to_string());
        let response = client
            .send(
                client
                    .http
                    .put(client.url(&format!("/v1/functions/{name}")))
                    .multipart(form),
            )
            .await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        let record: serde_json::Value = response.json().await?;
        let action = match (created, record["changed"].as_bool()) {
            (true, _) => "created",
            (false, Some(false)) => "unchanged",
            _ => "changed",
        };
        results.push(serde_json::json!({"kind": "Function", "name": name, "action": action}));
    }
    if !server_side.is_empty() {
        let request = client
            .http
            .post(client.url("/v1/apply"))
            .json(&serde_json::Value::Array(server_side));
        let answer: serde_json::Value = client.send(request).await?.json().await?;
        results.extend(answer["results"].as_array().cloned().unwrap_or_default());
    }
    let answer = serde_json::json!({"results": results});
    client.show(&answer, |answer| {
        for result in answer["results"].as_array().cloned().unwrap_or_default() {
            println!(
                "{}/{} {}",
                plain(&result["kind"]).to_lowercase(),
                plain(&result["name"]),
                plain(&result["action"])
            );
        }
    })
}

/// A destination in Knative's shape: a function as a `ref` to a Service.
fn knative_destination(destination: &serde_json::Value) -> serde_json::Value {
    match destination["function"].as_str() {
        Some(name) => serde_json::json!({"ref": {
            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}),
        None => destination.clone(),
    }
}

/// `sluice get KIND`: the resources in the shapes `apply` takes.
pub async fn run_get(kind: GetKind, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args);
    let knative = "eventing.knative.dev/v1";
    let documents: Vec<serde_json::Value> = match kind {
        GetKind::Triggers => {
            let list = client.get("/v1/triggers").await?;
            list["triggers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let mut spec = serde_json::Map::new();
                    spec.insert("broker".into(), t["broker"].clone());
                    if t["filter"]["attributes"]
                        .as_object()
                        .is_some_and(|a| !a.is_empty())
                    {
                        spec.insert("filter".into(), t["filter"].clone());
                    }
                    if t["filters"].as_array().is_some_and(|f| !f.is_empty()) {
                        spec.insert("filters".into(), t["filters"].clone());
                    }
                    spec.insert("subscriber".into(), knative_destination(&t["subscriber"]));
                    if !t["delivery"].is_null() {
                        let mut delivery = t["delivery"].clone();
                        if !delivery["deadLetterSink"].is_null() {
                            delivery["deadLetterSink"] =
                                knative_destination(&delivery["deadLetterSink"]);
                        }
                        spec.insert("delivery".into(), delivery);
                    }
                    serde_json::json!({"apiVersion": knative, "kind": "Trigger",
                        "metadata": {"name": t["name"]}, "spec": spec})
                })
                .collect()
        }
        GetKind::Brokers => {
            let list = client.get("/v1/brokers").await?;
            list["brokers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|b| b["stored"] == true)
                .map(|b| {
                    let mut spec = serde_json::Map::new();
                    for field in ["delivery", "dedupe"] {
                        if !b[field].is_null() {
                            spec.insert(field.into(), b[field].clone());
                        }
                    }
                    serde_json::json!({"apiVersion": knative, "kind": "Broker",
                        "metadata": {"name": b["name"]}, "spec": spec})
                })
                .collect()
        }
        GetKind::Schedules => {
            let list = client.get("/v1/schedules").await?;
            list["schedules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    let mut spec = serde_json::Map::new();
                    for field in ["schedule", "timezone", "contentType", "data", "dataBase64"] {
                        if !s[field].is_null() {
                            spec.insert(field.into(), s[field].clone());
                        }
                    }
                    let sink = &s["sink"];
                    let sink = match (sink["broker"].as_str(), sink["function"].as_str()) {
                        (Some(broker), _) => serde_json::json!({"ref": {"apiVersion": knative,
                            "kind": "Broker", "name": broker}}),
                        (None, Some(function)) => serde_json::json!({"ref": {
                            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": function}}),
                        (None, None) => serde_json::json!({"uri": sink["uri"]}),
                    };
                    spec.insert("sink".into(), sink);
                    serde_json::json!({"apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
                        "metadata": {"name": s["name"]}, "spec": spec})
                })
                .collect()
        }
        GetKind::Functions => {
            let list = client.get("/v1/functions").await?;
            list["functions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    serde_json::json!({"apiVersion": "sluice.dev/v1", "kind": "Function",
                        "metadata": {"name": f["name"]},
                        "spec": {"digest": f["digest"], "settings": f["settings"]}})
                })
                .collect()
        }
    };
    if client.output == Output::Json {
        return print_json(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": documents}),
        );
    }
    for document in documents {
        print!("---\n{}", serde_norway::to_string(&document)?);
    }
    Ok(())
}
