//! `flaky`: fails its first k delivery attempts of each event (k from env
//! `FAIL_FIRST`) with a retryable error, then replies with
//! `com.example.flaky.succeeded` whose data is the attempt number. The
//! attempt comes from the host's `SLUICE_DELIVERY_ATTEMPT`. Events whose
//! type ends in `.permanent` fail permanently at once.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    generate_all,
});

use exports::sluice::function::handler::Guest;
use sluice::function::types::{CloudEvent, HandlerError};

struct Flaky;

fn env_number(name: &str) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Guest for Flaky {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        if event.type_.ends_with(".permanent") {
            return Err(HandlerError::Permanent(
                "this event can never succeed".to_string(),
            ));
        }
        let attempt = env_number("SLUICE_DELIVERY_ATTEMPT");
        let fail_first = env_number("FAIL_FIRST");
        if attempt <= fail_first {
            return Err(HandlerError::Retryable(format!(
                "attempt {attempt} of the first {fail_first} fails on purpose"
            )));
        }
        Ok(vec![CloudEvent {
            id: format!("{}-ok", event.id),
            source: "sluice/flaky".to_string(),
            specversion: "1.0".to_string(),
            type_: "com.example.flaky.succeeded".to_string(),
            datacontenttype: Some("text/plain".to_string()),
            dataschema: None,
            subject: Some(event.id),
            time: None,
            extensions: Vec::new(),
            data: Some(attempt.to_string().into_bytes()),
        }])
    }
}

export!(Flaky);
