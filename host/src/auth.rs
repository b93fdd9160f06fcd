//! Bearer-token authentication and scopes.
//!
//! - Management routes (`/v1/*` except function invocation and event
//!   ingress) need `Authorization: Bearer <token>` with scope `deploy` or
//!   `admin`; tokens themselves (`/v1/tokens`) need `admin`.
//! - Invoking a `private` function (the default) needs `invoke` (or
//!   `admin`); a `public` one is anonymous. Calls between functions inside
//!   the server need nothing.
//! - Event ingress needs `publish` (or `admin`) unless the broker is public
//!   (`--public-broker NAME`).
//! - `/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json` and the
//!   dashboard's page (`/ui`; its API calls need a token) are anonymous.
//!
//! Missing or unknown token: 401. Known token, wrong scope: 403.
//! Tokens are random 256-bit secrets; only their SHA-256 is stored, and
//! lookups compare hashes in constant time. On first start an admin token
//! is written to `<data-dir>/admin.token` (mode 0600);
//! `SLUICE_ADMIN_TOKEN` overrides it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_store::{Store, Visibility};

use crate::error::ApiError;
use crate::server::AppState;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything.
    Admin,
    /// Manage functions, triggers and dead letters; read everything.
    Deploy,
    /// Invoke private functions; read invocations.
    Invoke,
    /// Post events.
    Publish,
}

impl Scope {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Publish => "publish",
        }
    }
}

/// A stored token (without its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id, for listing and revoking.
    pub id: String,
    /// What it may do.
    pub scope: Scope,
    /// A label.
    pub name: String,
    /// RFC 3339 creation time.
    pub created: String,
}

/// The name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Token checking for one server.
pub struct Auth {
    store: Store,
    /// Hash of the `SLUICE_ADMIN_TOKEN` override, if set.
    admin_override: Option<[u8; 32]>,
    public_brokers: HashSet<String>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "sluice_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn token_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..6])
}

impl Auth {
    /// Sets up authentication for `data_dir`: creates the admin token on
    /// first start (unless `SLUICE_ADMIN_TOKEN` is set).
    pub async fn init(
        store: Store,
        data_dir: &Path,
        admin_override: Option<String>,
        public_brokers: Vec<String>,
    ) -> anyhow::Result<Arc<Auth>> {
        let admin_override = admin_override.filter(|t| !t.is_empty()).map(|t| hash(&t));
        let auth = Arc::new(Auth {
            store,
            admin_override,
            public_brokers: public_brokers.into_iter().collect(),
        });
        if auth.admin_override.is_some() {
            tracing::info!("admin token taken from SLUICE_ADMIN_TOKEN");
            return Ok(auth);
        }
        let path = admin_token_path(data_dir);
        if !path.exists() {
            let token = new_token()?;
            auth.create(&token, Scope::Admin, "admin").await?;
            write_owner_only(&path, &token)?;
            tracing::info!(path = %path.display(), "created the admin token");
            eprintln!("sluice: admin token written to {}", path.display());
        }
        Ok(auth)
    }

    /// Stores a new token with `scope`.
    pub async fn create(
        &self,
        token: &str,
        scope: Scope,
        name: &str,
    ) -> anyhow::Result<TokenRecord> {
        let h = hash(token);
        let record = TokenRecord {
            id: token_id(&h),
            scope,
            name: name.to_string(),
            created: sluice_store::now_rfc3339(),
        };
        self.store
            .put_token(&hex::encode(h), &serde_json::to_vec(&record)?)
            .await?;
        Ok(record)
    }

    /// Every token record.
    pub fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        self.store
            .tokens()?
            .into_iter()
            .map(|(_, raw)| Ok(serde_json::from_slice(&raw)?))
            .collect()
    }

    /// Revokes the token with public id `id`. `false` if none has it.
    pub async fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        for (hash, raw) in self.store.tokens()? {
            let record: TokenRecord = serde_json::from_slice(&raw)?;
            if record.id == id {
                return Ok(self.store.delete_token(&hash).await?);
            }
        }
        Ok(false)
    }

    /// The scope of `token`, if it is valid.
    fn scope_of(&self, token: &str) -> Option<Scope> {
        let h = hash(token);
        if let Some(admin) = &self.admin_override
            && constant_time_eq(admin, &h)
        {
            return Some(Scope::Admin);
        }
        // The lookup key is the hash, so timing reveals nothing about the
        // secret itself.
        let raw = self.store.token(&hex::encode(h)).ok()??;
        serde_json::from_slice::<TokenRecord>(&raw)
            .ok()
            .map(|r| r.scope)
    }
}

/// Where the admin token lives in a data directory.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

fn write_owner_only(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{token}")?;
    file.sync_all()
}

/// What a request needs.
enum Need {
    Nothing,
    Scopes(&'static [Scope]),
    /// Invoke function `name` (nothing if it is public).
    Invoke(String),
    /// Post to broker `name` (nothing if it is public).
    Publish(String),
}

const MANAGE: &[Scope] = &[Scope::Admin, Scope::Deploy];
const ADMIN: &[Scope] = &[Scope::Admin];
const READ_INVOCATIONS: &[Scope] = &[Scope::Admin, Scope::Deploy, Scope::Invoke];
const INVOKE: &[Scope] = &[Scope::Admin, Scope::Invoke];
const PUBLISH: &[Scope] = &[Scope::Admin, Scope::Publish];

fn need(method: &http::Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["metrics"] | ["v1", "openapi.json"] => Need::Nothing,
        ["ui", ..] => Need::Nothing,
        ["fn", name, ..] => Need::Invoke(name.to_string()),
        ["v1", "functions", name, "invoke"] if method == http::Method::POST => {
            Need::Invoke(name.to_string())
        }
        ["v1", "events"] if method == http::Method::POST => Need::Publish("default".into()),
        ["v1", "brokers", broker, "events"] if method == http::Method::POST => {
            Need::Publish(broker.to_string())
        }
        ["v1", "invocations", ..] => Need::Scopes(READ_INVOCATIONS),
        ["v1", "tokens", ..] => Need::Scopes(ADMIN),
        ["v1", ..] => Need::Scopes(MANAGE),
        _ => Need::Nothing,
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (kind, token) = value.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The middleware: checks the request's token against what its route needs.
/// A refused event post counts as rejected (`unauthorized`, `forbidden`).
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let scopes = match need(request.method(), request.uri().path()) {
        Need::Nothing => return next.run(request).await,
        Need::Scopes(scopes) => scopes,
        Need::Invoke(name) => {
            let public = state.functions.visibility(&name) == Some(Visibility::Public);
            if public {
                return next.run(request).await;
            }
            INVOKE
        }
        Need::Publish(broker) => {
            if auth.public_brokers.contains(&broker) {
                return next.run(request).await;
            }
            if let Some(refused) = refusal(auth, PUBLISH, &request) {
                if sluice_store::is_dns_label(&broker) {
                    let reason = if refused.status() == StatusCode::FORBIDDEN {
                        "forbidden"
                    } else {
                        "unauthorized"
                    };
                    state.router.reject(&broker, reason, 1);
                }
                return refused;
            }
            return next.run(request).await;
        }
    };
    match refusal(auth, scopes, &request) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// The response refusing `request`, or `None` if its token has one of `scopes`.
fn refusal(auth: &Auth, scopes: &[Scope], request: &Request) -> Option<Response> {
    let Some(token) = bearer(request) else {
        return Some(unauthorized(
            "this route needs `Authorization: Bearer <token>`",
        ));
    };
    let Some(scope) = auth.scope_of(token) else {
        return Some(unauthorized("the token is not valid (unknown or revoked)"));
    };
    if scopes.contains(&scope) {
        return None;
    }
    let wanted: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    Some(
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a `{}` token cannot do this; it needs one of: {}",
                scope.as_str(),
                wanted.join(", ")
            ),
        )
        .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_design_says() {
        let get = http::Method::GET;
        let post = http::Method::POST;
        assert!(matches!(need(&get, "/healthz"), Need::Nothing));
        assert!(matches!(need(&get, "/metrics"), Need::Nothing));
        assert!(matches!(need(&get, "/fn/hello/x"), Need::Invoke(n) if n == "hello"));
        assert!(
            matches!(need(&post, "/v1/functions/hello/invoke"), Need::Invoke(n) if n == "hello")
        );
        assert!(matches!(need(&post, "/v1/events"), Need::Publish(b) if b == "default"));
        assert!(matches!(need(&post, "/v1/brokers/pay/events"), Need::Publish(b) if b == "pay"));
        assert!(matches!(need(&get, "/v1/events"), Need::Scopes(MANAGE)));
        assert!(matches!(need(&get, "/v1/functions"), Need::Scopes(MANAGE)));
        assert!(matches!(need(&post, "/v1/tokens"), Need::Scopes(ADMIN)));
        assert!(matches!(
            need(&get, "/v1/invocations/x"),
            Need::Scopes(READ_INVOCATIONS)
        ));
    }

    #[test]
    fn tokens_are_random_and_compared_by_hash() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sluice_") && a.len() > 40);
        assert!(constant_time_eq(&hash(&a), &hash(&a)));
        assert!(!constant_time_eq(&hash(&a), &hash(&b)));
    }
}
