//! Outbound HTTP from guests.
//!
//! Denied by default: a guest's `wasi:http/outgoing-handler` request fails
//! inside the guest with `HTTP-request-denied`, and the host logs it.

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// What one invocation may reach with outbound HTTP.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    /// The calling function, for logs.
    pub function: String,
}

type ResponseFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        tracing::warn!(function = %self.function, uri = %request.uri(), "outbound request denied");
        Box::new(async move { Err(HttpError::HttpRequestDenied) })
    }
}
