//! Live heap bytes, for diagnosing memory (the `heap-stats` feature, off by default): the
//! binary's global allocator is then [`Counting`], mimalloc with a count of the bytes the
//! program holds, exported as `edge_heap_live_bytes`. Comparing it with the resident size
//! tells live data that grows from memory the allocator keeps after it was freed. It costs
//! an atomic add per allocation and per free, so release builds leave it out.

use std::alloc::{GlobalAlloc, Layout};

/// Runs mimalloc's deferred work for this thread now: frees its empty pages and gives the
/// OS back the memory whose purge delay (1 s) has passed. mimalloc does this only from
/// inside its own calls, so what a burst freed (a storm's handshakes, the old tables of
/// grown maps) stayed resident on a shard that then went idle: about 120 bytes per idle
/// connection at 10k (results/idle-breakdown-20261205.txt, part 10). Each shard's
/// once-a-second sweep calls it; with `system-alloc` it does nothing.
pub fn collect_freed() {
    #[cfg(not(feature = "system-alloc"))]
    // SAFETY: mi_collect takes no pointers; it walks this thread's heap and the arenas.
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}
use std::sync::atomic::{AtomicI64, Ordering};

/// Bytes allocated and not yet freed, through [`Counting`].
static LIVE: AtomicI64 = AtomicI64::new(0);

/// mimalloc, counting the bytes it holds for the program in [`LIVE`].
pub struct Counting;

// SAFETY: every call is forwarded to mimalloc unchanged, with the same layout; the count is
// a side effect that touches no allocated memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is mimalloc's.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

/// The live heap bytes, when the binary counts them (`heap-stats`).
pub fn live_bytes() -> Option<u64> {
    cfg!(feature = "heap-stats").then(|| u64::try_from(LIVE.load(Ordering::Relaxed)).unwrap_or(0))
}
