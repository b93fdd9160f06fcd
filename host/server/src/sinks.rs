//! Deliveries to external `uri` subscribers, sent with the server's HTTP
//! client (the runtime has none): the runtime's `SinkClient`.

use std::time::Duration;

use sluice_router::dispatch::BoxFuture;
use sluice_runtime::invoker::{SinkAnswer, SinkClient};

/// The server's client for `uri` subscribers (connections are pooled).
#[derive(Debug, Default)]
pub struct HttpSinks {
    http: reqwest::Client,
}

impl SinkClient for HttpSinks {
    fn post<'a>(
        &'a self,
        uri: &'a str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<SinkAnswer, String>> {
        Box::pin(async move {
            let mut request = self.http.post(uri).timeout(timeout).body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await.map_err(|error| {
                // The cause is in the source chain (`connection refused`);
                // the URL, which the caller names, not twice.
                let error = error.without_url();
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            })?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            Ok((status, headers, body))
        })
    }
}
