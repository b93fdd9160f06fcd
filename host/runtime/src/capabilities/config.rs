//! `wasi:config`: a function's settings (`env` and `secrets`) as
//! configuration values, from one table built per deploy.

pub use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// Adds `wasi:config` to `linker`, each call's view from `view`.
pub fn add_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> WasiConfig<'_>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, view)
}
