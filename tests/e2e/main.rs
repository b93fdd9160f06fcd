//! End-to-end tests: the real `sluice` binary, over real HTTP and the CLI,
//! with real sled files and real wasmtime. Guests come from `guests/`, built
//! by `sluice-test-artifacts`.

mod auth;
mod capabilities;
mod cli;
mod cluster;
mod connections;
mod dashboard;
mod functions;
mod harness;
mod hostile;
mod input_limits;
mod lifecycle;
#[allow(dead_code)]
#[path = "../../store/tests/support/nats.rs"]
mod nats;
mod observability;
mod polyglot;
mod router;
mod schedules;
mod trace;
