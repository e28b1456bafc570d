//! One contiguous region for the Python interpreter's object arenas, so the zygote's heap can
//! be mapped with huge pages.
//!
//! CPython's small-object allocator takes its memory in arenas of 1 MiB, each its own
//! `mmap`. Between the shared libraries' mappings they land scattered, each a VMA of its own,
//! and a 2 MiB huge page cannot span two VMAs: in the zygote about a third of the preloaded
//! heap stayed in 4 KiB pages, whose page-table entries every fork copies and every exit
//! drops. The zygote installs these functions as the interpreter's arena allocator
//! (`PyObject_SetArenaAllocator`) before it imports anything heavy: the arenas are then cut
//! in order from one reserved region, a single VMA that `MADV_COLLAPSE` can cover
//! (see `runtime/python/pyxis_runtime/hugepages.py`).
//!
//! ```c
//! int pyxis_sandbox_arena_reserve(size_t len);
//! void *pyxis_sandbox_arena_alloc(void *ctx, size_t size);
//! void pyxis_sandbox_arena_free(void *ctx, void *ptr, size_t size);
//! ```
//!
//! The region is only reserved (`MAP_NORESERVE`): a page costs memory once it is touched,
//! as with the interpreter's own `mmap`s. An arena handed back has its pages dropped
//! (`MADV_DONTNEED`) and its range kept for the next arena of the same size. When the region
//! is full, or was never reserved, arenas are mapped one by one as before. A forked kernel
//! inherits the region and goes on cutting arenas from its own copy of it.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sys;

/// A huge page (the region starts on one).
const HUGE: usize = 2 << 20;
/// The kernel's page size on every architecture we build for.
const PAGE: usize = 4096;
/// How many returned arenas are kept for reuse; any more only keep their address space.
const FREE_SLOTS: usize = 4096;

/// Start and end of the region (0 while none is reserved), and the next unused address.
static START: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Returned arenas of the region, as `(address, size)`.
static FREE: Mutex<FreeList> = Mutex::new(FreeList {
    slots: [(0, 0); FREE_SLOTS],
    len: 0,
});

struct FreeList {
    slots: [(usize, usize); FREE_SLOTS],
    len: usize,
}

impl FreeList {
    /// The most recently returned arena of exactly `size` bytes.
    fn take(&mut self, size: usize) -> Option<usize> {
        let i = self.slots[..self.len]
            .iter()
            .rposition(|&(_, s)| s == size)?;
        let (addr, _) = self.slots[i];
        self.len -= 1;
        self.slots[i] = self.slots[self.len];
        Some(addr)
    }

    /// Keeps `(addr, size)` for reuse; false when full.
    fn put(&mut self, addr: usize, size: usize) -> bool {
        if self.len == FREE_SLOTS {
            return false;
        }
        self.slots[self.len] = (addr, size);
        self.len += 1;
        true
    }
}

/// Reserves the region: `len` bytes (rounded up to huge pages) starting on a huge page.
/// Returns 0, or -1 when the address space could not be reserved (the arenas are then
/// mapped one by one). A second call keeps the first region and returns 0.
#[no_mangle]
pub extern "C" fn pyxis_sandbox_arena_reserve(len: usize) -> c_int {
    match reserve(len) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

fn reserve(len: usize) -> std::io::Result<()> {
    if START.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let len = len
        .checked_next_multiple_of(HUGE)
        .filter(|&l| l > 0)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let total = len
        .checked_add(HUGE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let raw = sys::reserve_anonymous(total)?;
    let start = raw.next_multiple_of(HUGE);
    let end = start + len;
    // SAFETY: the head and tail outside [start, end) are ours, just mapped, and unused.
    unsafe {
        if start > raw {
            let _ = sys::unmap(raw, start - raw);
        }
        if raw + total > end {
            let _ = sys::unmap(end, raw + total - end);
        }
    }
    NEXT.store(start, Ordering::Release);
    END.store(end, Ordering::Release);
    START.store(start, Ordering::Release);
    Ok(())
}

/// Whether `[addr, addr + size)` lies in the region.
fn in_region(addr: usize, size: usize) -> bool {
    let start = START.load(Ordering::Acquire);
    start != 0 && addr >= start && addr.saturating_add(size) <= END.load(Ordering::Acquire)
}

/// The interpreter's arena allocation: `size` bytes from the region, or a mapping of its
/// own; NULL when there is no memory.
#[no_mangle]
pub extern "C" fn pyxis_sandbox_arena_alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    match alloc(size) {
        Some(addr) => addr as *mut c_void,
        None => std::ptr::null_mut(),
    }
}

fn alloc(size: usize) -> Option<usize> {
    let size = size.checked_next_multiple_of(PAGE)?.max(PAGE);
    if START.load(Ordering::Acquire) != 0 {
        if let Some(addr) = FREE.lock().ok().and_then(|mut free| free.take(size)) {
            return Some(addr);
        }
        let end = END.load(Ordering::Acquire);
        let bumped = NEXT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
            next.checked_add(size).filter(|&n| n <= end)
        });
        if let Ok(addr) = bumped {
            return Some(addr);
        }
    }
    sys::reserve_anonymous(size).ok()
}

/// The interpreter hands an arena back: its pages are dropped, and a range of the region is
/// kept for reuse; any other is unmapped.
#[no_mangle]
pub extern "C" fn pyxis_sandbox_arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    let addr = ptr as usize;
    let Some(size) = size.checked_next_multiple_of(PAGE) else {
        return;
    };
    if addr == 0 || size == 0 {
        return;
    }
    if in_region(addr, size) {
        // SAFETY: the interpreter is done with this arena, which we handed out.
        let _ = unsafe { sys::discard_pages(addr, size) };
        if let Ok(mut free) = FREE.lock() {
            free.put(addr, size);
        }
    } else {
        // SAFETY: an arena the interpreter mapped or we mapped for it, and is done with.
        let _ = unsafe { sys::unmap(addr, size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arenas_come_from_the_region_in_order_and_are_reused() {
        const MIB: usize = 1 << 20;
        assert_eq!(pyxis_sandbox_arena_reserve(3 * MIB), 0);
        // The size rounds up to huge pages: room for four 1 MiB arenas.
        let start = START.load(Ordering::Acquire);
        assert_eq!(start % HUGE, 0);
        assert_eq!(END.load(Ordering::Acquire) - start, 4 * MIB);
        // A second reservation keeps the first region.
        assert_eq!(pyxis_sandbox_arena_reserve(64 * MIB), 0);
        assert_eq!(START.load(Ordering::Acquire), start);

        let null = std::ptr::null_mut();
        let arenas: Vec<usize> = (0..4)
            .map(|_| pyxis_sandbox_arena_alloc(null, MIB) as usize)
            .collect();
        assert_eq!(arenas, (0..4).map(|i| start + i * MIB).collect::<Vec<_>>());
        // Memory that works: written and read back.
        let first = arenas[1] as *mut u8;
        // SAFETY: a writable, mapped arena of 1 MiB that only this test uses.
        unsafe {
            first.write(7);
            first.add(MIB - 1).write(9);
            assert_eq!((first.read(), first.add(MIB - 1).read()), (7, 9));
        }
        // Full: the next arena is a mapping of its own.
        let outside = pyxis_sandbox_arena_alloc(null, MIB) as usize;
        assert!(outside != 0 && !in_region(outside, MIB), "{outside:#x}");
        pyxis_sandbox_arena_free(null, outside as *mut c_void, MIB);

        // A returned arena reads as zeroes and is the next one handed out.
        pyxis_sandbox_arena_free(null, arenas[1] as *mut c_void, MIB);
        let again = pyxis_sandbox_arena_alloc(null, MIB) as usize;
        assert_eq!(again, arenas[1]);
        // SAFETY: as above.
        unsafe { assert_eq!(first.read(), 0) };
    }

    #[test]
    fn the_free_list_matches_sizes() {
        let mut free = FreeList {
            slots: [(0, 0); FREE_SLOTS],
            len: 0,
        };
        assert!(free.put(0x1000, 4096));
        assert!(free.put(0x2000, 8192));
        assert_eq!(free.take(4096), Some(0x1000));
        assert_eq!(free.take(4096), None);
        assert_eq!(free.take(8192), Some(0x2000));
        for i in 0..FREE_SLOTS {
            assert!(free.put(i * 4096, 4096));
        }
        assert!(!free.put(0, 4096));
    }
}
