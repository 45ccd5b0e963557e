//! Zeroed buffers of 64-byte lines for packed weights, placed where the kernel can back them with
//! transparent huge pages.
//!
//! A decoded token streams every packed weight once from memory. With 4 KiB pages that is one
//! TLB entry (and, on a miss, one page walk) per 4 KiB read; the hardware prefetchers also stop
//! at page boundaries. Linux backs anonymous memory with 2 MiB pages where a mapping asks for it
//! (`MADV_HUGEPAGE`, honoured when `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or
//! `madvise`), but only for 2 MiB-aligned ranges whose pages were never touched before. So the
//! buffers come from arenas: 1 GiB of address space reserved at a time (`MAP_NORESERVE`, so only
//! written pages take memory), 2 MiB-aligned and advised before their first write, from which
//! consecutive buffers are carved one after the other: a model's many small matrices share huge
//! pages, and only the arena's last page is partly filled. A dropped buffer's whole pages go back
//! to the system at once (`MADV_DONTNEED`); the arena is unmapped when its last buffer is dropped.
//! Where the mapping is refused, or off Linux, a buffer is an ordinary heap allocation: the same
//! bytes, only the page size differs. `CANON_THP=off` in the environment forces the heap (for
//! side-by-side measurements).
//!
//! Measured on an AVX2-only Zen 2 EPYC (2 threads, decode of 128 tokens, every packed format):
//! gemma-3-270m Q4_K_M 53–62 → 67–76 tokens/s, SmolLM2-135M Q4_1 139 → 150, peak RSS +2–4 MB.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};

use super::Line64;

/// The huge page size the arenas align to.
const HUGE: usize = 2 << 20;
/// Address space reserved per arena (`MAP_NORESERVE`: pages are committed only when written). One
/// arena holds a whole model's packed weights, so only its last huge page is partly filled.
const ARENA: usize = 1 << 30;

/// A zero-initialised `[Line64]` of fixed length (see the module docs).
pub struct LineBuf {
    store: Store,
}

enum Store {
    Heap(Vec<Line64>),
    #[cfg(target_os = "linux")]
    Arena {
        /// Keeps the mapping alive; the lines lie inside it, disjoint from every other buffer's.
        _map: Arc<Map>,
        ptr: *mut Line64,
        len: usize,
    },
}

// SAFETY: a `LineBuf` owns its lines exclusively (no two buffers overlap, and the shared `Map` is
// only unmapped when the last of them is dropped), so moving it to or sharing it with another
// thread is as safe as for a `Vec<Line64>`.
unsafe impl Send for LineBuf {}
// SAFETY: as for `Send`: `&LineBuf` gives only shared access to the lines.
unsafe impl Sync for LineBuf {}

impl LineBuf {
    /// `len` zeroed lines.
    pub fn zeroed(len: usize) -> LineBuf {
        #[cfg(target_os = "linux")]
        if arenas_enabled()
            && let Some(store) = arena_lines(len)
        {
            return LineBuf { store };
        }
        LineBuf {
            store: Store::Heap(vec![Line64([0; 64]); len]),
        }
    }

    /// Whether the lines live in a huge-page-advised arena (not the heap).
    pub fn in_arena(&self) -> bool {
        !matches!(self.store, Store::Heap(_))
    }
}

impl Deref for LineBuf {
    type Target = [Line64];
    fn deref(&self) -> &[Line64] {
        match &self.store {
            Store::Heap(v) => v,
            #[cfg(target_os = "linux")]
            // SAFETY: `ptr..ptr + len` lies inside the live mapping `_map`, is 64-byte aligned,
            // was zeroed by the kernel, and belongs to this buffer alone.
            Store::Arena { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl DerefMut for LineBuf {
    fn deref_mut(&mut self) -> &mut [Line64] {
        match &mut self.store {
            Store::Heap(v) => v,
            #[cfg(target_os = "linux")]
            // SAFETY: as for `deref`, and `&mut self` makes this the only access.
            Store::Arena { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}

/// Whether buffers come from the arenas: yes unless the environment variable `CANON_THP` is
/// `off` (read once), for side-by-side measurements against heap buffers.
#[cfg(target_os = "linux")]
fn arenas_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("CANON_THP").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}

#[cfg(target_os = "linux")]
impl Drop for LineBuf {
    fn drop(&mut self) {
        if let Store::Arena { ptr, len, .. } = self.store {
            // Return the buffer's whole pages to the system now: the arena itself stays mapped
            // while other buffers live in it. Pages shared with a neighbour stay.
            let (a, b) = (ptr as usize, ptr as usize + len * 64);
            let (a, b) = (a.div_ceil(4096) * 4096, b / 4096 * 4096);
            if b > a {
                // SAFETY: `a..b` lies inside this buffer, which no one else uses and which is
                // being dropped; the pages read as zeros if ever touched again.
                unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
            }
        }
    }
}

/// An anonymous mapping, unmapped on drop.
#[cfg(target_os = "linux")]
struct Map {
    base: *mut libc::c_void,
    /// Bytes mapped from `base`.
    size: usize,
    /// The first 2 MiB-aligned byte inside the mapping.
    start: usize,
    /// Usable bytes from `start`.
    cap: usize,
}

// SAFETY: the mapping is plain memory; `Map` only records where it is and unmaps it once.
#[cfg(target_os = "linux")]
unsafe impl Send for Map {}
// SAFETY: as for `Send`.
#[cfg(target_os = "linux")]
unsafe impl Sync for Map {}

#[cfg(target_os = "linux")]
impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `base..base + size` is the mapping made in `Map::new`, unmapped only here.
        unsafe { libc::munmap(self.base, self.size) };
    }
}

#[cfg(target_os = "linux")]
impl Map {
    /// A fresh mapping with at least `cap` bytes from a 2 MiB boundary, advised for huge pages
    /// before anything touches it; `None` where either call fails.
    fn new(cap: usize) -> Option<Map> {
        let cap = cap.div_ceil(HUGE) * HUGE;
        let size = cap + HUGE;
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let map = Map {
            base,
            size,
            start: (base as usize).div_ceil(HUGE) * HUGE,
            cap,
        };
        // SAFETY: the advised range lies inside the mapping just made; the advice changes only
        // the page size the kernel may use. A refusal (THP off) leaves ordinary pages.
        unsafe { libc::madvise(map.start as *mut libc::c_void, cap, libc::MADV_HUGEPAGE) };
        Some(map)
    }
}

/// The shared arena being filled: its mapping (while any buffer of it lives) and bytes used.
#[cfg(target_os = "linux")]
static CURRENT: Mutex<Option<(Weak<Map>, usize)>> = Mutex::new(None);

/// `len` lines from an arena, or `None` (the caller falls back to the heap).
#[cfg(target_os = "linux")]
fn arena_lines(len: usize) -> Option<Store> {
    let bytes = len.checked_mul(64)?;
    if bytes == 0 {
        return None;
    }
    let mut cur = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    let reuse = cur
        .as_ref()
        .and_then(|(w, used)| w.upgrade().map(|m| (m, *used)))
        .filter(|(m, used)| used + bytes <= m.cap);
    let (map, used) = match reuse {
        Some(r) => r,
        None => {
            // A new arena means a model is being packed: hand the heap's free memory (what
            // loading parsed and dropped, which the heap would otherwise have reused for these
            // weights) back to the system first, so the peak is not both.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only returns unused heap pages; it takes the allocator's lock.
            unsafe {
                libc::malloc_trim(0)
            };
            (Arc::new(Map::new(ARENA.max(bytes))?), 0)
        }
    };
    let ptr = (map.start + used) as *mut Line64;
    *cur = Some((Arc::downgrade(&map), used + bytes));
    Some(Store::Arena {
        _map: map,
        ptr,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_aligned_disjoint_and_writable() {
        let mut bufs: Vec<LineBuf> = [1usize, 7, 1000, 40_000, 300_000, 3]
            .iter()
            .map(|&n| LineBuf::zeroed(n))
            .collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_ptr() as usize % 64, 0);
            #[cfg(target_os = "linux")]
            if arenas_enabled() {
                assert!(
                    b.in_arena(),
                    "a {}-line buffer fell back to the heap",
                    b.len()
                );
            }
            assert!(b.iter().all(|l| l.0.iter().all(|&x| x == 0)));
            for l in b.iter_mut() {
                l.0.fill(i as u8 + 1);
            }
        }
        // No buffer's writes landed in another one.
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|l| l.0.iter().all(|&x| x == i as u8 + 1)));
        }
        // Dropping some and carving more keeps the survivors intact.
        bufs.remove(1);
        let fresh = LineBuf::zeroed(5);
        assert!(fresh.iter().all(|l| l.0.iter().all(|&x| x == 0)));
        assert!(bufs[0].iter().all(|l| l.0.iter().all(|&x| x == 1)));
        assert!(LineBuf::zeroed(0).is_empty());
    }
}
