//! Bindings of the `sluice:function/capabilities` world: `wasi:keyvalue`,
//! `wasi:config` and the Sluice `publisher`, for guests of any world.

wit_bindgen::generate!({
    path: "../../wit",
    world: "capabilities",
    pub_export_macro: true,
    generate_all,
});

pub use sluice::function::publisher;
pub use wasi::config::store as config;
pub use wasi::keyvalue::{atomics, batch, store as kv};
