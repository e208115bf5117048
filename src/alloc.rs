//! Giving memory back after a large request.
//!
//! glibc's allocator keeps what a thread frees in that thread's arena, in free lists, and
//! returns it to the system only from the top of a heap, past a threshold that grows (up to
//! 64 MiB) once a large block has been freed. A 1 MiB request of 200,000 short `args` is
//! 200,000 small blocks for its JSON and as many for its `Vec<String>`: freed, they stay with
//! the arena of the `http-long` thread that parsed it, and each such thread may get an arena
//! of its own. Measured: 30 such requests left the agent at 0.3-0.55 GB though it held none
//! of them. `malloc_trim(0)` after such a request merges the free blocks of every arena and
//! returns their whole pages. It walks the arenas (well under a millisecond here), so it runs
//! only after large requests and replies, never per task.

/// Arenas glibc may create. Its default is 8 per core, one per thread as threads contend: a
/// busy agent (task readers, WebSocket writers, HTTP threads) then keeps freed memory in many
/// arenas at once. The soak test's peak RSS halved with one arena (47 to 23 MiB); two keep
/// most of that while the busiest threads do not all wait on one lock.
pub const MAX_ARENAS: i32 = 2;

/// Caps the allocator's arenas ([`MAX_ARENAS`]); called once, early at start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator (taking its lock); it affects the
    // arenas created after it, so it is called early, before the agent's own threads.
    unsafe {
        if libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS) != 1 {
            log::debug!("mallopt(M_ARENA_MAX) refused");
        }
    }
}

/// Bodies and replies from this size on are followed by [`give_back`].
pub const LARGE: usize = 64 * 1024;

/// Returns the allocator's free memory to the system (where the allocator is glibc's).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own free lists; it takes the arenas'
    // locks like any malloc call, so it is safe from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `f`; when it handled `len` bytes or more, gives the memory it freed back.
pub fn after_large<R>(len: usize, f: impl FnOnce() -> R) -> R {
    let r = f();
    if len >= LARGE {
        give_back();
    }
    r
}
