//! Memory the de-duplication window takes per event: fills a window with
//! 1,000,000 keys (in memory only: claims committed without writing) and
//! prints the growth of the process's resident memory per key.
//!
//! `cargo run --release -p sluice-store --example window_memory`

use std::time::Duration;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    const KEYS: usize = 1_000_000;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = sluice_store::Store::open_with(
        dir.path(),
        &sluice_store::OpenOptions {
            dedupe_window: Some(Duration::from_secs(3600)),
            dedupe_max_events: KEYS,
            ..Default::default()
        },
    )
    .expect("the store opens");
    let window = store.dedupe().expect("the window is on").clone();
    let before = resident_kib();
    for start in (0..KEYS).step_by(1000) {
        let keys: Vec<sluice_store::DedupeKey> = (start..start + 1000)
            .map(|i| sluice_store::dedupe_key("default", "/bench", &i.to_string()))
            .collect();
        window.claim(&keys).await.commit();
    }
    let after = resident_kib();
    println!(
        "{} keys: resident memory grew by {} KiB, {:.1} bytes a key",
        window.len(),
        after - before,
        (after - before) as f64 * 1024.0 / window.len() as f64
    );
}
