//! `sluice-host`: the only crate that knows wasmtime.
//!
//! Three state tiers, named in the code:
//! - runtime, once per process ([`runtime::Runtime`]): engine with the pooling
//!   allocator, linker, epoch ticker;
//! - function, once per deploy ([`functions::Function`]): compiled component
//!   (cached on disk), `InstancePre`, limits;
//! - invocation, once per call ([`runtime::InvocationState`]): a fresh store,
//!   dropped when the call ends.
//!
//! On top: the HTTP server ([`server`]) and the CLI ([`cli`], [`client`]).

pub mod allocator;
pub mod api_events;
pub mod api_tokens;
pub mod auth;
pub mod body;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod functions;
pub mod guest_log;
pub mod invocations;
pub mod invoke;
pub mod keyvalue;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod outbound;
pub mod output;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod trace;
