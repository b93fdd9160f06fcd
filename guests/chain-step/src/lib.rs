//! `chain-step`: one step of a chain of functions linked by published events.
//! Deployed with `env=STEP=N`, it publishes `com.example.chain.step{N+1}`
//! (or `com.example.chain.completed` after step 3) through the `publisher`
//! import, with the data it got, and replies nothing.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    generate_all,
});

use exports::sluice::function::handler::Guest;
use sluice::function::publisher;
use sluice::function::types::{CloudEvent, HandlerError};

const LAST_STEP: u32 = 3;

struct ChainStep;

impl Guest for ChainStep {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        let step: u32 = std::env::var("STEP")
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HandlerError::Permanent("set env STEP=N".to_string()))?;
        let next = if step >= LAST_STEP {
            "com.example.chain.completed".to_string()
        } else {
            format!("com.example.chain.step{}", step + 1)
        };
        let out = CloudEvent {
            id: format!("{}-s{step}", event.id),
            source: format!("sluice/step{step}"),
            specversion: "1.0".to_string(),
            type_: next,
            datacontenttype: event.datacontenttype,
            dataschema: None,
            subject: event.subject,
            time: None,
            extensions: Vec::new(),
            data: event.data,
        };
        publisher::publish(&out).map_err(HandlerError::Retryable)?;
        Ok(Vec::new())
    }
}

export!(ChainStep);
