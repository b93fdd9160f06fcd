//! `sluice-client`: the HTTP client of the Sluice API.
//!
//! [`Client`] sends requests with the caller's token and turns the API's
//! error answers (`{"error": {"code", "message"}}`) into a [`ClientError`]
//! that says what to do about the common ones (no token, a refused one, the
//! wrong scope, an unknown function or trigger, no server at the address).
//!
//! May import nothing of the server, the runtime or the CLI: no wasmtime
//! in its dependency tree (a check in `.ci/run` keeps it so).

use std::path::{Path, PathBuf};

/// The name of the admin token file in a server's data directory (the
/// server writes it on its first start).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Where the admin token of a server with data directory `data_dir` is.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// The token to send: `token` when given, else the admin token in
/// `data_dir` when `server` runs on this machine.
pub fn find_token(token: Option<&str>, server: &str, data_dir: &Path) -> Option<String> {
    // An empty one (`SLUICE_TOKEN=`) is none: the local admin token, or
    // "no token was sent" rather than "refused".
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Some(token.to_string());
    }
    let local = ["://127.0.0.1", "://localhost", "://[::1]"]
        .iter()
        .any(|h| server.contains(h));
    if !local {
        return None;
    }
    std::fs::read_to_string(admin_token_path(data_dir))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not a URL.
    #[error(
        "{0:?} is not a server URL: give one like http://127.0.0.1:8080 (--server or SLUICE_URL)"
    )]
    NotAUrl(String),
    /// Nothing answers at the address.
    #[error(
        "cannot reach the Sluice server at {0}: is `sluice serve` running? (pick another with --server or SLUICE_URL)"
    )]
    Unreachable(String),
    /// The request failed on the way.
    #[error("request to {base} failed: {reason}")]
    Request {
        /// The server.
        base: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{status}: {reason}{hint}")]
    Api {
        /// The status.
        status: reqwest::StatusCode,
        /// The API's message and code, or the body.
        reason: String,
        /// What to do about it (empty, or a new line and advice).
        hint: String,
    },
}

/// A client of one Sluice server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    has_token: bool,
}

impl Client {
    /// A client of `server`, sending `token` when there is one.
    pub fn new(server: &str, token: Option<&str>) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut has_token = false;
        if let Some(token) = token
            && let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
            has_token = true;
        }
        Client {
            base: server.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("a plain HTTP client builds"),
            has_token,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client (it sends the token).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url(path)))
            .await?
            .json()
            .await
            .map_err(|error| self.failed(error))
    }

    fn failed(&self, error: reqwest::Error) -> ClientError {
        if error.is_builder() {
            ClientError::NotAUrl(self.base.clone())
        } else if error.is_connect() {
            ClientError::Unreachable(self.base.clone())
        } else {
            ClientError::Request {
                base: self.base.clone(),
                reason: error.to_string(),
            }
        }
    }

    /// Sends `request`: the response if it succeeded, else why not.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|error| self.failed(error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
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
        let hint = match status {
            reqwest::StatusCode::UNAUTHORIZED if !self.has_token => {
                "\nno token was sent: set SLUICE_TOKEN (or --token), or run on the server's machine with --data-dir pointing at its data directory (where admin.token is)"
            }
            reqwest::StatusCode::UNAUTHORIZED => {
                "\nthe token was refused: check SLUICE_TOKEN (or --token); `sluice token list` on the server shows the live ones"
            }
            reqwest::StatusCode::FORBIDDEN => {
                "\nuse a token of a scope the message names (an admin makes one: `sluice token create --scope SCOPE`)"
            }
            reqwest::StatusCode::NOT_FOUND if reason.contains("function_not_found") => {
                "\n`sluice fn list` shows the deployed functions"
            }
            reqwest::StatusCode::NOT_FOUND if reason.contains("trigger_not_found") => {
                "\n`sluice trigger list` shows the triggers"
            }
            _ => "",
        };
        let mut hint = hint.to_owned();
        if let Some(after) = retry_after {
            // A refusal for now (backlog full, store or cluster busy), in
            // seconds or as an HTTP date.
            let when = match after.parse::<u64>() {
                Ok(seconds) => format!("in {seconds} s"),
                Err(_) => format!("after {after}"),
            };
            hint.push_str(&format!(
                "\nthe server asks to try again {when} (Retry-After)"
            ));
        }
        Err(ClientError::Api {
            status,
            reason,
            hint,
        })
    }
}
