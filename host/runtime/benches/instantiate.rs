//! A fresh instance per call: instantiation from an `InstancePre` with the
//! pooling allocator, alone and with a trivial call of an event handler.
//!
//! `cargo bench -p sluice-runtime --bench instantiate`

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_runtime::capabilities::outbound::OutboundPolicy;
use sluice_runtime::engine::event_bindings::EventHandlerPre;
use sluice_runtime::engine::event_bindings::sluice::function::types::CloudEvent;
use sluice_runtime::engine::{Runtime, StoreSetup};
use sluice_runtime::limits::Limits;
use sluice_test_artifacts as guests;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

// The server's allocator, so the figure is the server's.
#[global_allocator]
static ALLOCATOR: sluice_runtime::allocator::Allocator = sluice_runtime::allocator::Allocator;

fn setup() -> StoreSetup<'static> {
    StoreSetup {
        env: &[],
        extra_env: &[],
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(10),
        outbound: OutboundPolicy::default(),
        publish: None,
        kv: None,
        config: Arc::default(),
        usage: Default::default(),
    }
}

fn instantiate(c: &mut Criterion) {
    sluice_runtime::allocator::configure();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(&Limits::default()).unwrap();
    let hello = Component::from_file(runtime.engine(), guests::HELLO).unwrap();
    let proxy = ProxyPre::new(runtime.linker().instantiate_pre(&hello).unwrap()).unwrap();
    let echo = Component::from_file(runtime.engine(), guests::EVENT_ECHO).unwrap();
    let handler = EventHandlerPre::new(runtime.linker().instantiate_pre(&echo).unwrap()).unwrap();
    let event = CloudEvent {
        id: "1".into(),
        source: "/bench".into(),
        specversion: "1.0".into(),
        type_: "bench.echo".into(),
        datacontenttype: None,
        dataschema: None,
        subject: None,
        time: None,
        extensions: Vec::new(),
        data: None,
    };

    let mut group = c.benchmark_group("fresh_instance");
    group.bench_function("instantiate_http_component", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let mut invocation = runtime.new_store(setup());
                let instance = proxy
                    .instantiate_async(&mut invocation.store)
                    .await
                    .unwrap();
                std::hint::black_box(instance);
            })
        })
    });
    group.bench_function("instantiate_and_call_event_handler", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let mut invocation = runtime.new_store(setup());
                let instance = handler
                    .instantiate_async(&mut invocation.store)
                    .await
                    .unwrap();
                let replies = instance
                    .sluice_function_handler()
                    .call_handle(&mut invocation.store, &event)
                    .await
                    .unwrap();
                std::hint::black_box(replies)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, instantiate);
criterion_main!(benches);
