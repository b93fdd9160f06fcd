//! What a guest may import besides WASI, one module each, as wasmtime's
//! `wasi-keyvalue` and `wasi-config` crates do: a context built per function
//! or per call, a view borrowing it for a call, and `add_to_linker`.
//!
//! - [`keyvalue`]: `wasi:keyvalue`, backed by the store.
//! - [`config`]: `wasi:config`, the function's settings.
//! - [`outbound`]: outbound HTTP (allow-list, function-to-function calls).
//! - [`publish`]: `sluice:function/publisher`, events into the router.

pub mod config;
pub mod keyvalue;
pub mod outbound;
pub mod publish;
