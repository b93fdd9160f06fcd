//! How the router reaches functions: the host's [`Invoker`], and the
//! conversion between the router's CloudEvent and the WIT record.
//!
//! An event function gets the typed record; a `wasi:http` function gets a
//! binary-mode POST, as Knative delivers it; an external sink gets the same
//! POST over the network. HTTP outcomes follow Knative: a 2xx acknowledges
//! (and a CloudEvent in it is a reply), 404, 408, 409, 429 and 5xx are
//! retried, other statuses are not.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_router::binding;
use sluice_router::dispatch::{BoxFuture, DeliveryContext, Invoker, Outcome, is_retryable_status};
use sluice_router::event::{CloudEvent, EventError};
use sluice_router::trigger::Destination;
use sluice_store::World;

use crate::engine::event_bindings::sluice::function::types as wit;
use crate::functions::Functions;
use crate::guest_log::{guest_bytes, guest_text};
use crate::invoke::CallOptions;
use crate::trace::{TRACEPARENT, TraceContext};

/// Timeout of a delivery to an external sink when the trigger sets none.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(30);

/// The router's event as the WIT record.
pub fn to_wit(event: &CloudEvent) -> wit::CloudEvent {
    wit::CloudEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        specversion: event.specversion.clone(),
        type_: event.ty.clone(),
        datacontenttype: event.datacontenttype.clone(),
        dataschema: event.dataschema.clone(),
        subject: event.subject.clone(),
        time: event.time.clone(),
        extensions: event
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        data: event.data_bytes(),
    }
}

/// A WIT record from a guest, validated like any incoming event.
pub fn from_wit(event: wit::CloudEvent) -> Result<CloudEvent, EventError> {
    let mut attributes = vec![
        ("id".to_string(), event.id),
        ("source".to_string(), event.source),
        ("specversion".to_string(), event.specversion),
        ("type".to_string(), event.type_),
    ];
    let optional = [
        ("datacontenttype", event.datacontenttype),
        ("dataschema", event.dataschema),
        ("subject", event.subject),
        ("time", event.time),
    ];
    attributes.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?))),
    );
    attributes.extend(event.extensions);
    CloudEvent::build(attributes, event.data)
}

/// What a `uri` subscriber answered.
pub type SinkAnswer = (u16, http::HeaderMap, Bytes);

/// Sends deliveries to external `uri` subscribers: the server does it with
/// its HTTP client (the runtime has none).
pub trait SinkClient: Send + Sync {
    /// POSTs `body` with `headers` to `uri` within `timeout`: the answer, or
    /// why it could not be sent (a connection refused, a timeout).
    fn post<'a>(
        &'a self,
        uri: &'a str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<SinkAnswer, String>>;
}

/// Delivers events to functions and external sinks.
pub struct HostInvoker {
    functions: Arc<Functions>,
    sinks: Arc<dyn SinkClient>,
}

impl HostInvoker {
    /// An invoker over `functions`, sending to `uri` subscribers with
    /// `sinks`.
    pub fn new(functions: Arc<Functions>, sinks: Arc<dyn SinkClient>) -> HostInvoker {
        HostInvoker { functions, sinks }
    }

    async fn to_function(
        &self,
        name: &str,
        event: &Arc<CloudEvent>,
        context: DeliveryContext,
        trace: TraceContext,
    ) -> Outcome {
        let function = match self.functions.get(name).await {
            Ok(Some(function)) => function,
            Ok(None) => {
                return Outcome::Failed {
                    retryable: true,
                    code: Some(404),
                    reason: format!("function {name:?} not found"),
                };
            }
            Err(error) => {
                return Outcome::Failed {
                    retryable: true,
                    code: Some(503),
                    reason: format!("function {name:?} could not be loaded: {error}"),
                };
            }
        };
        let options = CallOptions {
            timeout: context.timeout,
            broker: Some(context.broker.clone()),
            cause: Some(event.clone()),
            attempt: Some(context.attempt),
            depth: 0,
            invocation: None,
            trace: Some(trace),
            inline: true,
            wait_for_memory: true,
            cancel: None,
        };
        match function.record.world {
            World::Event => match self
                .functions
                .call_event(&function, to_wit(event), &options)
                .await
            {
                Ok(Ok(replies)) => {
                    // A guest can return many: the first few are logged.
                    let warnings = crate::guest_log::GuestWarnings::default();
                    let replies = replies
                        .into_iter()
                        .filter_map(|reply| match from_wit(reply) {
                            Ok(reply) => Some(reply),
                            Err(error) => {
                                if warnings.allow() {
                                    tracing::warn!(function = %name, %error, "dropped an invalid reply event");
                                }
                                None
                            }
                        })
                        .collect();
                    warnings.finish(name, "(its replies)");
                    Outcome::Delivered(replies)
                }
                Ok(Err(wit::HandlerError::Retryable(reason))) => Outcome::Failed {
                    retryable: true,
                    code: Some(500),
                    reason: guest_text(&reason),
                },
                Ok(Err(wit::HandlerError::Permanent(reason))) => Outcome::Failed {
                    retryable: false,
                    code: Some(400),
                    reason: guest_text(&reason),
                },
                Err(error) => Outcome::Failed {
                    retryable: error.is_retryable(),
                    code: Some(error.status().as_u16()),
                    reason: guest_text(&error.to_string()),
                },
            },
            World::Http => {
                let (headers, body) = binding::to_binary(event);
                let mut request = http::Request::post("http://localhost/");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request = request.header(TRACEPARENT, trace.to_string());
                let request = match request.body(Bytes::from(body)) {
                    Ok(request) => request,
                    Err(error) => {
                        return Outcome::Failed {
                            retryable: false,
                            code: Some(400),
                            reason: format!("the event cannot be sent as HTTP headers: {error}"),
                        };
                    }
                };
                match self.functions.call_http(&function, request, &options).await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        http_outcome(parts.status.as_u16(), &parts.headers, &body, name)
                    }
                    Err(error) => Outcome::Failed {
                        retryable: error.is_retryable(),
                        code: Some(error.status().as_u16()),
                        reason: guest_text(&error.to_string()),
                    },
                }
            }
        }
    }

    async fn to_uri(
        &self,
        uri: &str,
        event: &CloudEvent,
        context: DeliveryContext,
        trace: TraceContext,
    ) -> Outcome {
        let (mut headers, body) = binding::to_binary(event);
        headers.push((TRACEPARENT.to_string(), trace.to_string()));
        let timeout = context.timeout.unwrap_or(DEFAULT_SINK_TIMEOUT);
        match self.sinks.post(uri, headers, body, timeout).await {
            Ok((status, headers, body)) => http_outcome(status, &headers, &body, uri),
            Err(reason) => Outcome::Failed {
                retryable: true,
                code: None,
                reason: format!("sending to {uri} failed: {reason}"),
            },
        }
    }
}

/// Knative's reading of an HTTP answer to a delivery.
fn http_outcome(status: u16, headers: &http::HeaderMap, body: &[u8], destination: &str) -> Outcome {
    if (200..300).contains(&status) {
        let carries_event = headers.contains_key("ce-specversion")
            || binding::mode(headers) != binding::Mode::Binary;
        if !carries_event {
            return Outcome::Delivered(Vec::new());
        }
        return match binding::parse_request(headers, body) {
            Ok(replies) => Outcome::Delivered(replies),
            Err(error) => {
                tracing::warn!(%destination, %error, "dropped an invalid reply event");
                Outcome::Delivered(Vec::new())
            }
        };
    }
    // The body says why, as Knative passes it on (`knativeerrordata`);
    // with none, the status does.
    let reason = match guest_bytes(body) {
        text if text.trim().is_empty() => {
            let name = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            format!("{destination} answered {status} {name} with no body")
        }
        text => text,
    };
    Outcome::Failed {
        retryable: is_retryable_status(status),
        code: Some(status),
        reason,
    }
}

impl Invoker for HostInvoker {
    fn deliver<'a>(
        &'a self,
        destination: &'a Destination,
        event: &'a Arc<CloudEvent>,
        context: DeliveryContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // This delivery's span, in the event's trace (or a new one).
            let trace =
                TraceContext::for_invocation(event.extensions.get(TRACEPARENT).map(String::as_str));
            let outcome = match destination {
                Destination::Function(name) => self.to_function(name, event, context, trace).await,
                Destination::Uri(uri) => self.to_uri(uri, event, context, trace).await,
            };
            match outcome {
                // Replies continue the trace, as children of this delivery.
                Outcome::Delivered(mut replies) => {
                    for reply in &mut replies {
                        reply
                            .extensions
                            .entry(TRACEPARENT.to_string())
                            .or_insert_with(|| trace.to_string());
                    }
                    Outcome::Delivered(replies)
                }
                failed => failed,
            }
        })
    }

    fn check(&self, destination: &Destination) -> Result<(), String> {
        match destination {
            Destination::Function(name) => match self.functions.store().function(name) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("function {name:?} does not exist")),
                Err(error) => Err(format!("function {name:?} cannot be read: {error}")),
            },
            Destination::Uri(_) => Ok(()),
        }
    }
}
