//! SQLite's heap on the program's own allocator.
//!
//! By default SQLite calls the C library's `malloc`. In a server that is a
//! second heap beside the Rust one: glibc gives each thread that calls it
//! (the store's blocking pool) an arena of its own, and keeps what those
//! arenas free, so the process's RSS creeps up under a long churn while
//! both heaps' live bytes stay flat. [`install`] points SQLite at Rust's
//! global allocator instead (mimalloc in the edge), which returns freed
//! pages to the system, so the program has one heap and one set of figures.
//!
//! SQLite needs the size of every block it holds (`xSize`); Rust's
//! allocator API does not give it, so each block carries its size in an
//! 8-byte header, as SQLite's own `mem1.c` does where the C library has no
//! `malloc_usable_size`. Blocks are 8-byte aligned, as SQLite requires.

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Bytes before each block: its size, as a `u64`. Also the alignment.
const HEADER: usize = 8;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// The block's base (its header) and the size SQLite asked for.
///
/// # Safety
/// `p` must be a pointer this module's `x_malloc` or `x_realloc` returned and not yet freed.
unsafe fn header(p: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: `p` is HEADER bytes past the start of a block we allocated with HEADER alignment,
    // whose first HEADER bytes hold its size (see `x_malloc`).
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        (base, base.cast::<u64>().read() as usize)
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Some(l) = usize::try_from(n).ok().and_then(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size (HEADER at least); a null result is passed on
    // to SQLite, which reports SQLITE_NOMEM. The header is inside the block and aligned.
    unsafe {
        let base = alloc(l);
        if base.is_null() {
            return std::ptr::null_mut();
        }
        base.cast::<u64>().write(n as u64);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only blocks it got from x_malloc/x_realloc, once; the layout is the
    // one they allocated the block with.
    unsafe {
        let (base, size) = header(p);
        if let Some(l) = layout(size) {
            dealloc(base, l);
        }
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as for x_malloc.
        return unsafe { x_malloc(n) };
    }
    let (Some(new), Ok(n)) = (usize::try_from(n).ok().and_then(layout), usize::try_from(n)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `p` came from x_malloc/x_realloc (SQLite's contract), so `old` is the layout it
    // was allocated with; the new size is non-zero and does not overflow (checked by `layout`).
    // On failure the old block stays valid, as SQLite expects of xRealloc.
    unsafe {
        let (base, size) = header(p);
        let Some(old) = layout(size) else {
            return std::ptr::null_mut();
        };
        let base = realloc(base, old, new.size());
        if base.is_null() {
            return std::ptr::null_mut();
        }
        base.cast::<u64>().write(n as u64);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: as for x_free.
    let (_, size) = unsafe { header(p) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.saturating_add(HEADER as c_int - 1) & !(HEADER as c_int - 1)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Points SQLite at Rust's global allocator, once per process, before SQLite starts. Returns
/// whether it took: SQLite refuses (`SQLITE_MISUSE`) once something in the process has
/// already initialised it, and then keeps the C library's `malloc`, which is also correct.
pub fn install() -> bool {
    static TOOK: OnceLock<bool> = OnceLock::new();
    *TOOK.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to an sqlite3_mem_methods, which SQLite
        // copies; `OnceLock` keeps this from racing another call of `install`. SQLite refuses
        // the call (and changes nothing) if it was already initialised.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &raw const methods) };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was already initialised: it keeps the C library's malloc");
        }
        rc == ffi::SQLITE_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_and_contents_through_realloc() {
        // SAFETY: the functions are used as SQLite would: sizes > 0, each block freed once.
        unsafe {
            let p = x_malloc(10);
            assert!(!p.is_null());
            assert_eq!(x_size(p), 10);
            std::ptr::copy_nonoverlapping(b"0123456789".as_ptr(), p.cast::<u8>(), 10);
            let q = x_realloc(p, 5000);
            assert_eq!(x_size(q), 5000);
            assert_eq!(std::slice::from_raw_parts(q.cast::<u8>(), 10), b"0123456789");
            assert_eq!(q as usize % 8, 0);
            x_free(q);
            x_free(std::ptr::null_mut());
            assert_eq!(x_roundup(1), 8);
            assert_eq!(x_roundup(16), 16);
            assert!(x_malloc(-1).is_null());
        }
    }
}
