//! Returning freed heap memory to the kernel after bulk work.
//!
//! A first pass over thousands of peers allocates transient buffers (datastore listing, netlink
//! messages, plan vectors) that glibc's allocator keeps mapped after they are freed, so the
//! resident size would stay at its peak for the life of the daemon. After such a pass we ask the
//! allocator to give free pages back (`malloc_trim`). A no-op on other C libraries.

/// Passes with at least this many kernel changes count as bulk work.
pub const BULK_OPS: usize = 512;

pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Use one malloc arena for all threads: the daemon's threads mostly wait, and per-thread arenas
/// would each keep their own peak of freed memory resident. Call once at process start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
