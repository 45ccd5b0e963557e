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
