//! `event-echo`: an event function that replies with one event carrying the
//! same data, its type suffixed with `.echo`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
});

use exports::sluice::function::handler::Guest;
use sluice::function::types::{CloudEvent, HandlerError};

struct EventEcho;

impl Guest for EventEcho {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        if event.type_.ends_with(".echo") {
            return Ok(Vec::new());
        }
        Ok(vec![CloudEvent {
            id: format!("{}-echo", event.id),
            source: "sluice/event-echo".to_string(),
            specversion: "1.0".to_string(),
            type_: format!("{}.echo", event.type_),
            datacontenttype: event.datacontenttype.clone(),
            dataschema: None,
            subject: event.subject.clone(),
            time: None,
            extensions: Vec::new(),
            data: event.data,
        }])
    }
}

export!(EventEcho);
