//! `event-hostile` (hostile): an event function that misbehaves the way the
//! event type says. `….trap` hits `unreachable`, `….spin` computes forever,
//! `….hog` grows its memory 1 MiB at a time without end; any other type is
//! acknowledged with no reply. The host's trap handling, deadline and
//! memory cap stop each one.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    generate_all,
});

use exports::sluice::function::handler::Guest;
use sluice::function::types::{CloudEvent, HandlerError};

struct EventHostile;

impl Guest for EventHostile {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        if event.type_.ends_with(".trap") {
            core::arch::wasm32::unreachable();
        }
        if event.type_.ends_with(".spin") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        if event.type_.ends_with(".hog") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
            }
        }
        Ok(Vec::new())
    }
}

export!(EventHostile);
