//! The process's C heap on glibc: bound the allocator's per-thread arenas, and read
//! how much memory is allocated against how much the allocator holds.
//!
//! dear runs a model from several threads (callers, the pointwise scheduler, the
//! kernels' pool), and every pass allocates activations of megabytes and frees them.
//! glibc gives each thread that allocates concurrently an arena of its own (up to 8
//! per core) and keeps memory freed in an arena for later reuse there: in a
//! long-running host the resident set then climbs for an hour or more although nothing
//! leaks (see RELIABILITY.md, "Soak"). Bounding the arenas keeps it flat. The `dear`
//! binary does this at startup; a host embedding dear can do the same:
//!
//! ```
//! // First thing in main, before threads start; MALLOC_ARENA_MAX, when set, wins.
//! let bounded = dear_core::memory::limit_malloc_arenas(2);
//! if let Some(heap) = dear_core::memory::heap_stats() {
//!     assert!(heap.in_use_bytes <= heap.held_bytes);
//! }
//! # let _ = bounded;
//! ```
//!
//! Elsewhere (musl, macOS, Windows, or another global allocator in use: statistics
//! then describe only glibc's share) these functions do nothing and return `false` or
//! `None`.

/// The C heap at one moment, from glibc's `mallinfo2` over every arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes allocated and not yet freed (`uordblks + hblkhd`).
    pub in_use_bytes: u64,
    /// Bytes the allocator holds from the system (`arena + hblkhd`): what is in use plus
    /// what was freed and kept.
    pub held_bytes: u64,
}

/// The environment variable that sets glibc's arena limit; when it is set,
/// [`limit_malloc_arenas`] leaves the choice to it.
pub const MALLOC_ARENA_MAX_ENV: &str = "MALLOC_ARENA_MAX";

/// Caps glibc's malloc arenas at `max` (`mallopt(M_ARENA_MAX, max)`), unless the
/// `MALLOC_ARENA_MAX` environment variable is set. Call it early, before threads
/// start allocating (arenas already created stay). Returns whether the cap was set:
/// `false` for `max` 0 or past `i32::MAX`, with the variable set, or off glibc.
pub fn limit_malloc_arenas(max: usize) -> bool {
    if max == 0 || std::env::var_os(MALLOC_ARENA_MAX_ENV).is_some() {
        return false;
    }
    let Ok(max) = i32::try_from(max) else {
        return false;
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator parameter; M_ARENA_MAX takes any
        // positive value and is consulted when a thread next needs an arena.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, max) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = max;
        false
    }
}

/// The C heap now (glibc only; `None` elsewhere).
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use_bytes: (m.uordblks + m.hblkhd) as u64,
            held_bytes: (m.arena + m.hblkhd) as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_limits_are_not_applied() {
        assert!(!limit_malloc_arenas(0));
        if usize::BITS > 32 {
            assert!(!limit_malloc_arenas(usize::MAX));
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_statistics_follow_an_allocation() {
        let before = heap_stats().expect("glibc statistics");
        assert!(before.in_use_bytes <= before.held_bytes);
        // 64 MiB, touched: counted as in use while it lives (other test threads
        // allocate too, so only a lower bound is certain).
        let block = vec![1u8; 64 << 20];
        let during = heap_stats().expect("glibc statistics");
        assert!(
            during.in_use_bytes >= 48 << 20,
            "{before:?} then {during:?} with {} bytes alive",
            block.len()
        );
        drop(block);
    }
}
