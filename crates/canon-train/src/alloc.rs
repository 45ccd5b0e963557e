//! The C allocator's settings for a training process.
//!
//! A training step frees and allocates the same large activation and gradient buffers (megabytes
//! each) again and again. glibc's malloc serves blocks above its mmap threshold with fresh
//! `mmap`s and gives freed heap tops back to the kernel, so each step faulted every page of those
//! buffers in anew (zeroed by the kernel, under the process's memory-map lock, which the two
//! compute threads then contend for). Measured on the nanoGPT shape at two threads, that was
//! about a fifth of the process's CPU time in the kernel. A fixed 32 MiB threshold (glibc's
//! ceiling) and no trimming keep freed blocks for reuse: the process's resident memory stays at
//! its peak instead of shrinking between steps, the peak itself unchanged.

use std::sync::Once;

/// Keeps freed blocks up to 32 MiB in the allocator for reuse (no fresh `mmap` per buffer, no
/// trimming). Process-wide and idempotent; a no-op outside glibc.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; it takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// Bytes the C allocator has handed out and not had back (`mallinfo2`: heap blocks in use plus
/// mmap-ed blocks), in MiB; `None` outside glibc. Resident memory above this is freed memory the
/// allocator keeps for reuse.
pub fn heap_in_use_mib() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (under its own locks).
        let mi = unsafe { libc::mallinfo2() };
        Some((mi.uordblks + mi.hblkhd) as f64 / (1024.0 * 1024.0))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// With `CANON_MEM_TRACE` set, prints the process's resident memory, its peak so far and the
/// allocator's bytes in use at a point of the training step (`mem <label>: …` on stderr).
pub fn mem_mark(label: &str) {
    if !canon_nn::profile::mem_trace() {
        return;
    }
    let Some((rss, peak)) = canon_nn::profile::resident_mib() else {
        return;
    };
    let used = heap_in_use_mib().map_or(String::new(), |u| format!(", allocated {u:.0} MiB"));
    eprintln!("mem {label}: rss {rss:.0} MiB, peak {peak:.0} MiB{used}");
}
