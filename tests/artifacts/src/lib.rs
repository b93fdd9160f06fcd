//! Paths of the guest components under `guests/`, built for `wasm32-wasip2`
//! by this crate's build script. Used by tests and benchmarks.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
