//! The HTTP routes, one module per resource. Each takes its state from
//! `state.rs` and turns its errors into responses through `error.rs`.

pub mod apply;
pub mod brokers;
pub mod dashboard;
pub mod dead_letters;
pub mod events;
pub mod functions;
pub mod invocations;
pub mod invoke;
pub mod schedules;
pub mod status;
pub mod tokens;
pub mod triggers;
