//! `order-processor`: handles `com.example.order.created` and replies with
//! `com.example.order.processed`, carrying the order data and subject.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    generate_all,
});

use exports::sluice::function::handler::Guest;
use sluice::function::types::{CloudEvent, HandlerError};

struct OrderProcessor;

impl Guest for OrderProcessor {
    fn handle(event: CloudEvent) -> Result<Vec<CloudEvent>, HandlerError> {
        if event.type_ != "com.example.order.created" {
            return Err(HandlerError::Permanent(format!(
                "cannot process events of type {}",
                event.type_
            )));
        }
        println!("processing order {}", event.id);
        Ok(vec![CloudEvent {
            id: format!("{}-processed", event.id),
            source: "sluice/order-processor".to_string(),
            specversion: "1.0".to_string(),
            type_: "com.example.order.processed".to_string(),
            datacontenttype: event.datacontenttype,
            dataschema: None,
            subject: event.subject,
            time: None,
            extensions: Vec::new(),
            data: event.data,
        }])
    }
}

export!(OrderProcessor);
