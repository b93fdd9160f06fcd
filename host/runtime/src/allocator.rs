//! The process's memory allocator: mimalloc, set up for a server that should
//! hand memory back when it goes idle.
//!
//! glibc's `malloc` makes a thread that frees memory another thread
//! allocated take the lock of that thread's arena. Sluice does that all the
//! time (a delivery's allocations move between tokio workers; the journal
//! writer frees what ingress allocated), and a profile of the event pipeline
//! had threads sleeping on those locks. mimalloc frees into per-thread pages
//! without a lock: the pipeline accepts and delivers about a quarter more
//! (BENCHMARKS.md). Two settings keep its idle footprint near glibc's: no
//! transparent huge pages for its own mappings (the `no_thp` feature), and
//! freed pages given back at once rather than after a delay that only a
//! later allocation acts on (an idle server makes none).

/// The allocator, for `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` of mimalloc 3 (`include/mimalloc.h`, the 16th
/// option); libmimalloc-sys 0.1.49, pinned, names no constant for it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings; call it first in `main`.
pub fn configure() {
    // SAFETY: setting an option is a plain store into mimalloc's option table.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set of this process, in KiB.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// With the settings applied, small blocks freed go back to the kernel
    /// when they are freed, not at some later allocation.
    #[test]
    #[allow(unsafe_code)]
    fn freed_small_blocks_return_to_the_kernel_at_once() {
        configure();
        // SAFETY: reading an option has no preconditions.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 0);
        let before = resident_kib();
        // 64 MiB in 1 KiB blocks, each written so its page is resident.
        let blocks: Vec<*mut u8> = (0..65_536)
            .map(|_| {
                // SAFETY: a fresh 1 KiB block, written within its bounds.
                unsafe {
                    let block = libmimalloc_sys::mi_malloc(1024).cast::<u8>();
                    assert!(!block.is_null());
                    std::ptr::write_bytes(block, 0xa5, 1024);
                    block
                }
            })
            .collect();
        let held = resident_kib();
        assert!(held > before + 48 * 1024, "{before} KiB, then {held} KiB");
        for block in blocks {
            // SAFETY: each block came from `mi_malloc` and is freed once.
            unsafe { libmimalloc_sys::mi_free(block.cast()) };
        }
        let after = resident_kib();
        assert!(
            after < held - 48 * 1024,
            "{before} KiB before, {held} KiB held, {after} KiB after freeing"
        );
    }
}
