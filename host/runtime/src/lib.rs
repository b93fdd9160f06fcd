//! `sluice-runtime`: the only crate that knows wasmtime.
//!
//! It owns the three state tiers, named in the code:
//! - runtime, once per process ([`Runtime`], `engine.rs`): the engine with
//!   the pooling allocator, the linker, the epoch ticker, the long-call pool
//!   (`cpu.rs`);
//! - function, once per deploy ([`functions::Function`]): the compiled
//!   component (cached on disk), its `InstancePre`, its limits;
//! - invocation, once per call ([`InvocationState`], `invoke.rs`): a fresh
//!   store, dropped when the call ends.
//!
//! Guest capabilities are one module each under [`capabilities`]; the
//! router reaches functions through [`invoker::HostInvoker`], its `Invoker`.
//! Limits are plain data ([`Limits`]); what the server decides (the policy
//! of function-to-function calls, sending events to external sinks) comes in
//! through traits.
//!
//! May import `sluice-store` and `sluice-router`, never the server, the
//! client or the CLI: no axum, clap or reqwest (a check in `.ci/run` keeps
//! it so).

pub mod allocator;
pub mod capabilities;
pub mod cpu;
pub mod engine;
pub mod functions;
pub mod guest_log;
pub mod invoke;
pub mod invoker;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod stream;
pub mod trace;

pub use engine::{InvocationState, Runtime};
pub use limits::Limits;
