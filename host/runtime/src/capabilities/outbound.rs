//! Outbound HTTP from guests.
//!
//! - `http://<name>.internal/...` and
//!   `http://<name>.default.svc.cluster.local/...` call function `<name>`
//!   in-process (no socket), with the callee's own limits, as if called from
//!   outside. A chain deeper than `--max-call-depth` fails in the caller with
//!   `loop-detected`; a function that does not exist answers 404.
//! - Any other host is denied (`HTTP-request-denied` inside the guest, and a
//!   warning in the log) unless the function's `allow_outbound` names it:
//!   `api.example.com` (any port), `api.example.com:8443`, or
//!   `*.example.com` (any subdomain, not the domain itself).

use std::sync::Weak;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::functions::Functions;
use crate::invoke::CallOptions;
use crate::trace::{TRACEPARENT, TraceContext};

/// What the server decides about a function-to-function call (Spin's
/// `OutboundHttpInterceptor` plays this part there): what the callee must
/// not see, and the answer the caller gets when the call does not happen.
pub trait CallPolicy: Send + Sync {
    /// Removes from `headers` what the callee must not see.
    fn scrub(&self, headers: &mut http::HeaderMap);

    /// The response a caller gets for `failure` (the server answers it as
    /// it would answer a client).
    fn failure(&self, failure: CallFailure) -> http::Response<Bytes> {
        plain_failure(&failure)
    }
}

/// Why a function-to-function call got no answer from its callee.
#[derive(Debug)]
pub enum CallFailure {
    /// The URL names a namespace that does not exist.
    NoSuchNamespace(String),
    /// No such function.
    NotFound(String),
    /// The callee could not be loaded.
    Load(crate::functions::DeployError),
    /// The call failed.
    Invoke(crate::invoke::InvokeError),
}

impl CallFailure {
    /// The HTTP status the caller sees.
    pub fn status(&self) -> http::StatusCode {
        match self {
            CallFailure::NoSuchNamespace(_) | CallFailure::NotFound(_) => {
                http::StatusCode::NOT_FOUND
            }
            CallFailure::Load(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            CallFailure::Invoke(error) => error.status(),
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::NoSuchNamespace(reason) => f.write_str(reason),
            CallFailure::NotFound(name) => write!(f, "function {name:?} not found"),
            CallFailure::Load(error) => write!(f, "{error}"),
            CallFailure::Invoke(error) => write!(f, "{error}"),
        }
    }
}

/// A plain-text answer to `failure`, where no policy says otherwise.
fn plain_failure(failure: &CallFailure) -> http::Response<Bytes> {
    let mut response = http::Response::new(Bytes::from(failure.to_string()));
    *response.status_mut() = failure.status();
    response
}

/// What one invocation may reach with outbound HTTP.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    /// The calling function, for logs.
    pub function: String,
    /// Its `allow_outbound` patterns.
    pub allow: Vec<String>,
    /// The registry, for in-process calls.
    pub functions: Weak<Functions>,
    /// Options for calls this invocation makes (depth one more than its own).
    pub nested: CallOptions,
    /// Deepest chain allowed.
    pub max_depth: u32,
    /// The invocation's span: outbound requests carry it as `traceparent`.
    pub trace: TraceContext,
    /// The invocation's budget of host warnings.
    pub warnings: std::sync::Arc<crate::guest_log::GuestWarnings>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

/// Where an internal host points: `Ok(function)`, or `Err(reason)` for a
/// namespace that does not exist. `None` for an outside host.
pub fn internal_target(host: &str) -> Option<Result<String, String>> {
    let host = host.to_ascii_lowercase();
    let name = if let Some(name) = host.strip_suffix(".internal") {
        name.to_string()
    } else {
        let rest = host.strip_suffix(".svc.cluster.local")?;
        let (name, namespace) = rest.split_once('.')?;
        if namespace != "default" {
            return Some(Err(format!(
                "namespace {namespace:?} does not exist; functions live in `default`"
            )));
        }
        name.to_string()
    };
    Some(Ok(name))
}

/// True if `host` (with `port`) matches one of `patterns`.
pub fn allowed(patterns: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.to_ascii_lowercase();
    patterns.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        let (name, want_port) = match pattern.rsplit_once(':') {
            Some((name, p)) => (name.to_string(), p.parse::<u16>().ok()),
            None => (pattern.clone(), None),
        };
        let port_ok = want_port.is_none() || want_port == port;
        let name_ok = match name.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == name,
        };
        port_ok && name_ok
    })
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let mut request = request;
        if !request.headers().contains_key(TRACEPARENT) {
            let value = http::HeaderValue::from_str(&self.trace.to_string())
                .expect("a traceparent is a valid header value");
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let host = request.uri().host().unwrap_or_default().to_string();
        let port = request.uri().port_u16();
        match internal_target(&host) {
            Some(target) => {
                if self.nested.depth > self.max_depth {
                    if self.warnings.allow() {
                        tracing::warn!(function = %self.function, target = %host, depth = self.nested.depth, "call chain too deep; refused");
                    }
                    return Box::new(async { Err(HttpError::LoopDetected) });
                }
                Box::new(call_function(
                    self.functions.clone(),
                    target,
                    request,
                    self.nested.clone(),
                ))
            }
            None if allowed(&self.allow, &host, port) => Box::new(async move {
                let (response, io) =
                    wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((
                    response.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ))
            }),
            None => {
                if self.warnings.allow() {
                    tracing::warn!(function = %self.function, %host, "outbound request denied: the host is not in allow_outbound");
                }
                Box::new(async { Err(HttpError::HttpRequestDenied) })
            }
        }
    }
}

/// Calls function `target` in-process with `request`.
async fn call_function(
    functions: Weak<Functions>,
    target: Result<String, String>,
    request: http::Request<WasiBody>,
    mut options: CallOptions,
) -> wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)> {
    let functions = functions
        .upgrade()
        .ok_or_else(|| HttpError::InternalError(Some("the server is stopping".into())))?;
    let (mut parts, body) = request.into_parts();
    if let Some(policy) = functions.call_policy() {
        policy.scrub(&mut parts.headers);
    }
    options.trace = Some(TraceContext::for_invocation(
        parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
    ));
    let body = body.collect().await?.to_bytes();
    let outcome = match target {
        Err(reason) => Err(CallFailure::NoSuchNamespace(reason)),
        Ok(name) => match functions.get(&name).await {
            Ok(Some(function)) => functions
                .call_http(&function, http::Request::from_parts(parts, body), &options)
                .await
                .map_err(CallFailure::Invoke),
            Ok(None) => Err(CallFailure::NotFound(name)),
            Err(error) => Err(CallFailure::Load(error)),
        },
    };
    let response = match outcome {
        Ok(response) => response,
        Err(failure) => match functions.call_policy() {
            Some(policy) => policy.failure(failure),
            None => plain_failure(&failure),
        },
    };
    let response = response.map(|body: Bytes| {
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync()
    });
    Ok((
        response,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hosts() {
        assert_eq!(
            internal_target("balance-manager.internal"),
            Some(Ok("balance-manager".into()))
        );
        assert_eq!(
            internal_target("audit-logger.default.svc.cluster.local"),
            Some(Ok("audit-logger".into()))
        );
        assert!(matches!(
            internal_target("x.other.svc.cluster.local"),
            Some(Err(_))
        ));
        assert_eq!(internal_target("example.com"), None);
    }

    #[test]
    fn allow_list_patterns() {
        let allow = vec![
            "api.example.com".to_string(),
            "*.example.org".to_string(),
            "127.0.0.1:8080".to_string(),
        ];
        assert!(allowed(&allow, "api.example.com", Some(443)));
        assert!(allowed(&allow, "API.example.com", None));
        assert!(!allowed(&allow, "evil.example.com", None));
        assert!(allowed(&allow, "a.b.example.org", None));
        assert!(
            !allowed(&allow, "example.org", None),
            "a wildcard does not cover the domain itself"
        );
        assert!(allowed(&allow, "127.0.0.1", Some(8080)));
        assert!(!allowed(&allow, "127.0.0.1", Some(8081)));
        assert!(!allowed(&[], "api.example.com", None));
    }
}
