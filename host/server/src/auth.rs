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
//! - `/metrics` needs `metrics` (or `admin`) unless the server runs with
//!   `--public-metrics`: the series name every function, private ones too.
//! - `GET /v1/invocations/{id}`: an asynchronous invocation is readable by
//!   admin tokens and by the token that made it; one made without a token
//!   (of a public function) by whoever holds its unguessable id.
//! - `/healthz`, `/readyz`, `/v1/openapi.json` and the dashboard's page
//!   (`/ui`; its API calls need a token) are anonymous.
//!
//! Missing or unknown token: 401. Known token, wrong scope: 403.
//!
//! A bearer token Sluice knows never goes past this middleware: it is
//! removed from the request (whatever the route, so also before a public
//! function or an asynchronous invocation's stored request would see it),
//! and handlers learn who called from the [`Caller`] extension instead.
//! Any other `Authorization` value reaches a public function as sent.
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
use crate::state::AppState;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Read `/metrics`.
    Metrics,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::Admin,
        Scope::Deploy,
        Scope::Invoke,
        Scope::Publish,
        Scope::Metrics,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Publish => "publish",
            Scope::Metrics => "metrics",
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
    /// Cluster mode: tokens are written to the cluster's catalog too, and
    /// this node's store holds a replica of it.
    cluster: Option<sluice_store::cluster::Cluster>,
    /// Cluster mode: whether this node's tokens are the cluster's yet (until
    /// then a token revoked while the node was away could still be in its
    /// store, so only the admin token given at start is accepted).
    synced: Option<Arc<crate::replica::Synced>>,
    /// Hash of this node's own admin token (`<data-dir>/admin.token`), which
    /// stays on this node only.
    own_admin: Option<String>,
    /// Hash of the `SLUICE_ADMIN_TOKEN` override, if set.
    admin_override: Option<[u8; 32]>,
    public_brokers: HashSet<String>,
    public_metrics: bool,
}

/// Who made a request, as the middleware found: a request extension every
/// handler can read, since the credential itself is removed.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The token's public id and scope, if the request carried a valid one.
    pub token: Option<(String, Scope)>,
}

impl Caller {
    /// True for an admin token.
    pub fn is_admin(&self) -> bool {
        matches!(self.token, Some((_, Scope::Admin)))
    }

    /// The public id of the caller's token.
    pub fn token_id(&self) -> Option<&str> {
        self.token.as_ref().map(|(id, _)| id.as_str())
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a node in cluster mode keeps trusting its copy of the tokens
/// after losing NATS (a revocation elsewhere reaches it within this).
pub const TOKEN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What every token Sluice makes starts with.
const TOKEN_PREFIX: &str = "sluice_";

/// A fresh random token.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
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
        public_metrics: bool,
        cluster: Option<(sluice_store::cluster::Cluster, Arc<crate::replica::Synced>)>,
    ) -> anyhow::Result<Arc<Auth>> {
        let admin_override = admin_override.filter(|t| !t.is_empty()).map(|t| hash(&t));
        let path = admin_token_path(data_dir);
        let own_admin = own_admin_hash(data_dir);
        let mut auth = Auth {
            store,
            cluster: None,
            synced: None,
            own_admin,
            admin_override,
            public_brokers: public_brokers.into_iter().collect(),
            public_metrics,
        };
        if auth.admin_override.is_some() {
            tracing::info!("admin token given by --admin-token or SLUICE_ADMIN_TOKEN");
        } else if !path.exists() {
            // Made before the cluster is attached: a node's own admin token
            // stays in its own store (the cluster may not answer yet).
            let token = new_token()?;
            auth.create(&token, Scope::Admin, "admin").await?;
            write_owner_only(&path, &token)?;
            auth.own_admin = Some(hex::encode(hash(&token)));
            tracing::info!(path = %path.display(), "created the admin token");
            eprintln!("sluice: admin token written to {}", path.display());
        }
        if let Some((cluster, synced)) = cluster {
            auth.cluster = Some(cluster);
            auth.synced = Some(synced);
        }
        Ok(Arc::new(auth))
    }

    /// The store this node checks tokens against.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Cluster mode: true while this node cannot know whether a token is
    /// still valid (the cluster's tokens not loaded yet, or the connection
    /// to NATS down for more than [`TOKEN_GRACE`]: a token revoked on
    /// another node meanwhile would still be in this node's store).
    pub fn unverifiable(&self) -> bool {
        let Some(synced) = &self.synced else {
            return false;
        };
        !synced.tokens_loaded()
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.disconnected_for() > TOKEN_GRACE)
    }

    /// True when `token` is one this node would accept but cannot check
    /// now (see [`Auth::unverifiable`]): the answer is 503, not 401.
    pub fn uncheckable(&self, token: &str) -> bool {
        self.unverifiable()
            && self
                .store
                .token(&hex::encode(hash(token)))
                .ok()
                .flatten()
                .is_some()
    }

    /// True for the hash of this node's own admin token (never in the
    /// cluster's catalog, never removed by replication).
    pub fn is_own_admin(&self, hash: &str) -> bool {
        self.own_admin.as_deref() == Some(hash)
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
        let raw = serde_json::to_vec(&record)?;
        if let Some(cluster) = &self.cluster {
            cluster.put_token(&hex::encode(h), &raw).await?;
        }
        self.store.put_token(&hex::encode(h), &raw).await?;
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
                // In cluster mode this node's replica may drop it first
                // (its watch sees the cluster's delete): either counts.
                let in_cluster = match &self.cluster {
                    Some(cluster) => cluster.delete_token(&hash).await?,
                    None => false,
                };
                let here = self.store.delete_token(&hash).await?;
                return Ok(in_cluster || here);
            }
        }
        Ok(false)
    }

    /// The public id and scope of `token`, if it is valid.
    fn identify(&self, token: &str) -> Option<(String, Scope)> {
        let h = hash(token);
        if let Some(admin) = &self.admin_override
            && constant_time_eq(admin, &h)
        {
            return Some((token_id(&h), Scope::Admin));
        }
        let key = hex::encode(h);
        if self.unverifiable() && !self.is_own_admin(&key) {
            return None;
        }
        // The lookup key is the hash, so timing reveals nothing about the
        // secret itself.
        let raw = self.store.token(&key).ok()??;
        serde_json::from_slice::<TokenRecord>(&raw)
            .ok()
            .map(|r| (r.id, r.scope))
    }

    /// Removes every Sluice credential from `headers`: each value of
    /// `Authorization` or `Proxy-Authorization` that is a token this server
    /// knows or holds something shaped like one of Sluice's (`sluice_…`, a
    /// revoked one or another server's, in any scheme, `Basic` decoded),
    /// and any other header whose value holds a known `sluice_…` token
    /// (`x-api-key: sluice_…`). Values are searched as bytes, so one that
    /// is not visible ASCII is no hiding place. Other credentials stay.
    pub fn scrub(&self, headers: &mut http::HeaderMap) {
        let mut doomed = Vec::new();
        for (name, value) in headers.iter() {
            let bytes = value.as_bytes();
            let credential =
                name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION;
            let secret = if credential {
                // The byte searches first: a token the server knows (one
                // set by --admin-token need not look like Sluice's) costs a
                // hash and a lookup.
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                let (scheme, rest) = text.split_once(' ').unwrap_or(("", text));
                let rest = rest.trim();
                find(bytes, TOKEN_PREFIX.as_bytes()).is_some()
                    || find(bytes, b"sluice%5f").is_some()
                    || (scheme.eq_ignore_ascii_case("basic")
                        && base64::engine::general_purpose::STANDARD
                            .decode(rest)
                            .is_ok_and(|decoded| find(&decoded, TOKEN_PREFIX.as_bytes()).is_some()))
                    || self.identify(rest).is_some()
                    || (rest != text && self.identify(text).is_some())
            } else {
                known_in(bytes, |token| self.identify(token).is_some())
            };
            if secret {
                doomed.push((name.clone(), value.clone()));
            }
        }
        for (name, value) in doomed {
            let kept: Vec<_> = headers
                .get_all(&name)
                .iter()
                .filter(|v| **v != value)
                .cloned()
                .collect();
            headers.remove(&name);
            for v in kept {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`, ASCII case ignored.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `bytes` hold, anywhere, a `sluice_…` token that `known` accepts.
fn known_in(bytes: &[u8], known: impl Fn(&str) -> bool) -> bool {
    let prefix = TOKEN_PREFIX.as_bytes();
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(prefix.len()).position(|w| w == prefix) {
        let start = at + found;
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))
            .map_or(bytes.len(), |n| start + n);
        if std::str::from_utf8(&bytes[start..end]).is_ok_and(&known) {
            return true;
        }
        at = start + prefix.len();
    }
    false
}

/// The server's policy for function-to-function calls: a Sluice token a
/// guest puts in its request (a secret holding one, say) is removed before
/// the called function sees it, like any other request's.
pub struct ScrubOwnTokens(pub Arc<Auth>);

impl sluice_runtime::capabilities::outbound::CallPolicy for ScrubOwnTokens {
    fn scrub(&self, headers: &mut http::HeaderMap) {
        self.0.scrub(headers);
    }

    fn failure(
        &self,
        failure: sluice_runtime::capabilities::outbound::CallFailure,
    ) -> http::Response<bytes::Bytes> {
        ApiError::from(failure).to_http()
    }
}

/// The hash (hex, as tokens are stored) of the admin token `data_dir`'s
/// server made for itself, if it made one.
pub fn own_admin_hash(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(admin_token_path(data_dir))
        .ok()
        .map(|token| hex::encode(hash(token.trim())))
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
    /// Nothing, but a token that is sent must be valid.
    OptionalToken,
    /// Read metrics (nothing with `--public-metrics`).
    Metrics,
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
const METRICS: &[Scope] = &[Scope::Admin, Scope::Metrics];

fn need(method: &http::Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["v1", "openapi.json"] => Need::Nothing,
        ["metrics"] => Need::Metrics,
        ["ui", ..] => Need::Nothing,
        ["fn", name, ..] => Need::Invoke(name.to_string()),
        ["v1", "functions", name, "invoke"] if method == http::Method::POST => {
            Need::Invoke(name.to_string())
        }
        ["v1", "events"] if method == http::Method::POST => Need::Publish("default".into()),
        ["v1", "brokers", broker, "events"] if method == http::Method::POST => {
            Need::Publish(broker.to_string())
        }
        ["v1", "invocations", _] if method == http::Method::GET => Need::OptionalToken,
        ["v1", "invocations", ..] => Need::Scopes(READ_INVOCATIONS),
        ["v1", "tokens", ..] => Need::Scopes(ADMIN),
        ["v1", ..] => Need::Scopes(MANAGE),
        _ => Need::Nothing,
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
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

/// The middleware: checks the request's token against what its route needs,
/// then removes it (see the module's doc) and records the [`Caller`].
/// A refused event post counts as rejected (`unauthorized`, `forbidden`).
pub async fn check(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let identity = bearer(request.headers()).and_then(|token| auth.identify(token));
    if identity.is_none()
        && let Some(token) = bearer(request.headers())
        && auth.uncheckable(token)
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "this node cannot check tokens against the cluster now (NATS unreachable); retry, or another node",
        )
        .with_retry_after(1)
        .into_response();
    }
    let refused = match need(request.method(), request.uri().path()) {
        Need::Nothing => None,
        Need::OptionalToken => match bearer(request.headers()) {
            Some(_) if identity.is_none() => {
                Some(unauthorized("the token is not valid (unknown or revoked)"))
            }
            _ => None,
        },
        Need::Metrics if auth.public_metrics => None,
        Need::Metrics => refusal(METRICS, &request, identity.as_ref()),
        Need::Scopes(scopes) => refusal(scopes, &request, identity.as_ref()),
        Need::Invoke(name) => {
            if state.functions.visibility(&name) == Some(Visibility::Public) {
                None
            } else {
                refusal(INVOKE, &request, identity.as_ref())
            }
        }
        Need::Publish(broker) => {
            if auth.public_brokers.contains(&broker) {
                None
            } else {
                let refused = refusal(PUBLISH, &request, identity.as_ref());
                if let Some(refused) = &refused
                    && sluice_store::is_dns_label(&broker)
                {
                    let reason = if refused.status() == StatusCode::FORBIDDEN {
                        "forbidden"
                    } else {
                        "unauthorized"
                    };
                    state.router.reject(&broker, reason, 1);
                }
                refused
            }
        }
    };
    if let Some(refused) = refused {
        return refused;
    }
    // Sluice's own credentials go no further: not to a guest, not into a
    // stored request.
    auth.scrub(request.headers_mut());
    request.extensions_mut().insert(Caller { token: identity });
    next.run(request).await
}

/// The response refusing `request`, or `None` if its token (`identity`) has
/// one of `scopes`.
fn refusal(
    scopes: &[Scope],
    request: &Request,
    identity: Option<&(String, Scope)>,
) -> Option<Response> {
    if bearer(request.headers()).is_none() {
        return Some(unauthorized(
            "this route needs `Authorization: Bearer <token>`",
        ));
    }
    let Some((_, scope)) = identity else {
        return Some(unauthorized("the token is not valid (unknown or revoked)"));
    };
    if scopes.contains(scope) {
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
        assert!(matches!(need(&get, "/metrics"), Need::Metrics));
        assert!(matches!(need(&get, "/fn/hello/x"), Need::Invoke(n) if n == "hello"));
        assert!(
            matches!(need(&post, "/v1/functions/hello/invoke"), Need::Invoke(n) if n == "hello")
        );
        assert!(matches!(need(&post, "/v1/events"), Need::Publish(b) if b == "default"));
        assert!(matches!(need(&post, "/v1/brokers/pay/events"), Need::Publish(b) if b == "pay"));
        assert!(matches!(need(&get, "/v1/events"), Need::Scopes(MANAGE)));
        // Explain shows trigger definitions: a manager's, not a publisher's.
        assert!(matches!(
            need(&post, "/v1/brokers/pay/explain"),
            Need::Scopes(MANAGE)
        ));
        assert!(matches!(need(&get, "/v1/functions"), Need::Scopes(MANAGE)));
        assert!(matches!(need(&post, "/v1/tokens"), Need::Scopes(ADMIN)));
        assert!(matches!(
            need(&get, "/v1/invocations/x"),
            Need::OptionalToken
        ));
        assert!(matches!(
            need(&http::Method::DELETE, "/v1/invocations/x"),
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

    #[test]
    fn a_known_token_is_found_wherever_it_sits_in_a_value() {
        let token = "sluice_abc-DEF_123";
        let known = |t: &str| t == token;
        assert!(known_in(b"sluice_abc-DEF_123", known));
        assert!(known_in(b"key=sluice_abc-DEF_123;x", known));
        assert!(known_in(b"xsluice_abc-DEF_123", known), "glued to a word");
        assert!(
            known_in(b"\xffsluice_abc-DEF_123\xfe", known),
            "beside obs-text"
        );
        assert!(
            known_in(b"sluice_no sluice_abc-DEF_123", known),
            "not the first"
        );
        assert!(
            !known_in(b"sluice_abc-DEF_1234", known),
            "a longer one is another"
        );
        assert!(!known_in(b"sluice_other", known));
        assert_eq!(find(b"Token SLUICE%5Fabc", b"sluice%5f"), Some(6));
    }
}
