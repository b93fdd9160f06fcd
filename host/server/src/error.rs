//! The one place errors become HTTP responses.
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`. Client
//! mistakes are answered with their reason and not logged as errors; internal
//! faults get a generic message and the detail goes to `tracing`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use sluice_store::StoreError;

use sluice_router::event::EventError;
use sluice_router::trigger::TriggerError;
use sluice_runtime::functions::DeployError;
use sluice_runtime::invoke::InvokeError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a missing function.
    pub fn function_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function {name:?} not found"),
        )
    }

    /// 413 for a body over `limit` bytes.
    pub fn body_too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// The answer to a request body that could not be read.
    pub fn body_error(error: &(dyn std::error::Error + 'static)) -> ApiError {
        match crate::body::BodyRefused::find(error) {
            Some(refused) => ApiError::body_refused(refused),
            None => ApiError::bad_request(
                "bad_body",
                format!("could not read the request body: {error}"),
            ),
        }
    }

    /// 408 for a body too slow, 503 for the server's byte budget.
    pub fn body_refused(refused: crate::body::BodyRefused) -> ApiError {
        match refused {
            crate::body::BodyRefused::TooSlow => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_too_slow",
                format!("{refused}: send it at --min-body-rate or faster, without long pauses"),
            ),
            crate::body::BodyRefused::Budget => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_request_bytes",
                format!("{refused}; retry shortly"),
            )
            .with_retry_after(1),
        }
    }

    /// 500 with a generic message; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The same error, its message followed by `context`.
    pub(crate) fn context(mut self, context: &str) -> ApiError {
        self.message = format!("{} ({context})", self.message);
        self
    }

    pub(crate) fn with_retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl ApiError {
    /// The error as a plain HTTP response (for in-process callers).
    pub fn to_http(&self) -> http::Response<bytes::Bytes> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = http::Response::new(bytes::Bytes::from(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        if let StoreError::Unavailable(reason) = &error {
            // Cluster mode: NATS unreachable, or JetStream without quorum.
            tracing::warn!(%reason, "cluster storage unavailable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("{error}; retry later"),
            )
            .with_retry_after(1);
        }
        if error.is_unavailable() {
            tracing::error!(%error, "store unavailable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "storage is unavailable; retry later",
            )
            .with_retry_after(1);
        }
        if let StoreError::TooLarge(reason) = &error {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", reason.clone());
        }
        if let StoreError::Changed(_) = error {
            return ApiError::new(StatusCode::CONFLICT, "function_changed", error.to_string());
        }
        ApiError::internal(error)
    }
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> ApiError {
        let message = error.to_string();
        match error {
            DeployError::InvalidName(_) => ApiError::bad_request("invalid_name", message),
            DeployError::InvalidComponent(_) => ApiError::bad_request("invalid_component", message),
            DeployError::InvalidSetting(_) => ApiError::bad_request("invalid_setting", message),
            DeployError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "component_too_large",
                message,
            ),
            DeployError::TooMany { .. } => {
                ApiError::new(StatusCode::CONFLICT, "too_many_functions", message)
            }
            DeployError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "function_not_found", message)
            }
            DeployError::Store(error) => error.into(),
            DeployError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(error: InvokeError) -> ApiError {
        let status = error.status();
        let code = match &error {
            InvokeError::NotFound(_) => "function_not_found",
            InvokeError::Internal(detail) => return ApiError::internal(detail),
            other => other.outcome(),
        };
        let api = ApiError::new(status, code, error.to_string());
        match error {
            InvokeError::Busy { .. }
            | InvokeError::PoolExhausted
            | InvokeError::MemoryBudget { .. } => api.with_retry_after(1),
            _ => api,
        }
    }
}

impl From<EventError> for ApiError {
    fn from(error: EventError) -> ApiError {
        ApiError::bad_request(error.code(), error.to_string())
    }
}

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> ApiError {
        ApiError::bad_request("invalid_trigger", error.to_string())
    }
}

impl From<sluice_runtime::capabilities::outbound::CallFailure> for ApiError {
    fn from(failure: sluice_runtime::capabilities::outbound::CallFailure) -> ApiError {
        use sluice_runtime::capabilities::outbound::CallFailure;
        match failure {
            CallFailure::NoSuchNamespace(reason) => {
                ApiError::new(StatusCode::NOT_FOUND, "function_not_found", reason)
            }
            CallFailure::NotFound(name) => ApiError::function_not_found(&name),
            CallFailure::Load(error) => error.into(),
            CallFailure::Invoke(error) => error.into(),
        }
    }
}

/// [`axum::extract::Query`], refusing a query string that does not parse
/// with the API's JSON error (`invalid_query`) instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}
