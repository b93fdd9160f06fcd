//! Giving memory back to the operating system after functions are unloaded.
//!
//! Unloading an idle function drops its compiled code and `InstancePre`,
//! but glibc keeps freed heap pages resident; trimming returns them, which
//! is what makes an idle function cheap in resident memory, not only in
//! the allocator's books.

/// Returns freed heap memory to the OS (glibc only; elsewhere a no-op).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes no pointers from us; it walks glibc's own
    // heap under glibc's locks and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
