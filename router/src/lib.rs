//! `sluice-router`: CloudEvents in, deliveries out.
//!
//! - [`event`] and [`binding`]: the CloudEvent model, its validation and the
//!   HTTP binding (binary, structured, batch).
//! - [`filter`], [`trigger`] and [`index`]: Knative-shaped triggers, the
//!   Subscriptions API filter dialects, and an index that finds matching
//!   triggers without visiting all of them; [`data`]: conditions on fields
//!   of a JSON payload.
//! - [`backoff`]: retry timing.
//! - [`schedule`]: cron schedules that post events (Knative's `PingSource`).
//!
//! No wasmtime and no hyper types: functions are reached through the
//! [`Invoker`](dispatch::Invoker) trait that the host implements.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod binding;
pub mod broker;
pub mod cesql;
pub mod data;
pub mod dispatch;
pub mod event;
pub mod filter;
pub mod index;
pub mod schedule;
pub mod trigger;

#[cfg(test)]
mod tck;
