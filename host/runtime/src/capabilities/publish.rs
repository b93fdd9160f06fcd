//! `sluice:function/publisher`: events a guest publishes go into the
//! router, one hop further than the event being handled and carrying its
//! id and the call's trace, at most `--max-publish-per-call` per call.

use std::sync::Arc;

use sluice_router::dispatch::Router;
use wasmtime::component::{HasData, Linker};

use crate::engine::event_bindings::sluice::function::{publisher, types};
use crate::trace::{TRACEPARENT, TraceContext};

/// Where a guest's published events go.
#[derive(Clone)]
pub struct PublishContext {
    /// The router.
    pub router: Arc<Router>,
    /// The broker of the event being handled, or `default`.
    pub broker: String,
    /// The event being handled, if any: published events carry its id.
    pub cause: Option<Arc<sluice_router::event::CloudEvent>>,
    /// The invocation's span: published events carry it as `traceparent`.
    pub trace: TraceContext,
}

/// The publishing of one invocation: where events go and how many went.
pub struct PublishState {
    context: Option<PublishContext>,
    published: u32,
    max: u32,
}

impl PublishState {
    /// At most `max` events to `context` (none without a router).
    pub fn new(context: Option<PublishContext>, max: u32) -> PublishState {
        PublishState {
            context,
            published: 0,
            max,
        }
    }
}

/// The view a call's `publisher` import works on.
pub struct PublishView<'a>(pub &'a mut PublishState);

impl types::Host for PublishView<'_> {}

impl publisher::Host for PublishView<'_> {
    async fn publish(&mut self, event: types::CloudEvent) -> wasmtime::Result<Result<(), String>> {
        let state = &mut *self.0;
        let Some(context) = state.context.clone() else {
            return Ok(Err(
                "publishing events is not available on this server".to_string()
            ));
        };
        if state.published >= state.max {
            return Ok(Err(format!(
                "this call already published {} events, the limit per call",
                state.max
            )));
        }
        let mut event = match crate::invoker::from_wit(event) {
            Ok(event) => event,
            Err(error) => return Ok(Err(format!("invalid event ({}): {error}", error.code()))),
        };
        state.published += 1;
        event
            .extensions
            .entry(TRACEPARENT.to_string())
            .or_insert_with(|| context.trace.to_string());
        match context
            .router
            .publish_from(&context.broker, context.cause.as_deref(), vec![event])
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(error) => Ok(Err(error.to_string())),
        }
    }
}

struct HasPublish;

impl HasData for HasPublish {
    type Data<'a> = PublishView<'a>;
}

/// Adds the `publisher` import to `linker`, each call's view from `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> PublishView<'_>,
) -> wasmtime::Result<()> {
    publisher::add_to_linker::<T, HasPublish>(linker, view)
}
