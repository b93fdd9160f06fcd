//! The CLI's HTTP client: every command but `serve` talks to the API.
//!
//! Errors print the server's reason and exit non-zero.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use crate::cli::{ClientArgs, FunctionCommand};

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(args: &ClientArgs) -> Client {
        Client {
            base: args.server.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
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
        FunctionCommand::Invoke { name, data, client } => {
            let client = Client::new(&client);
            let body = read_data(data.as_deref())?;
            let response = client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/v1/functions/{name}/invoke")))
                        .body(body),
                )
                .await?;
            let bytes = response.bytes().await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            stdout.flush()?;
            Ok(())
        }
    }
}
