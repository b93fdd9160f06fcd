//! `event-echo`: an event function that replies with one event carrying every
//! attribute and the data of the event it got, byte for byte, except `id`
//! (suffixed `-echo`) and `type` (suffixed `.echo`). Events whose type already
//! ends in `.echo` get no reply, so it never loops on its own replies.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    generate_all,
});

use exports::sluice::function::handler::Guest;
use sluice::function::types::{CloudEvent, HandlerError};

struct EventEcho;

impl Guest for EventEcho {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        if event.type_.ends_with(".echo") {
            return Ok(Vec::new());
        }
        let id = format!("{}-echo", event.id);
        let type_ = format!("{}.echo", event.type_);
        Ok(vec![CloudEvent { id, type_, ..event }])
    }
}

export!(EventEcho);
