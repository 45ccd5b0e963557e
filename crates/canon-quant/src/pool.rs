//! A persistent pool for the kernels: `parallel_for(n, f)` runs `f(0..n)` over the calling thread and
//! `threads − 1` workers, and returns when every index is done.
//!
//! Why not rayon here: one decoded token runs ~200 matrix products of a few tens of microseconds
//! each. Handing each one from a non-pool thread to rayon and back parks and wakes threads every
//! time (a futex round trip per product). These workers instead spin briefly on a generation counter
//! after each job — the next product usually arrives within microseconds — and only then park; the
//! caller works on the job too instead of waiting.
//!
//! The thread count is rayon's (`RAYON_NUM_THREADS`, which `--threads` sets), read once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

struct Job {
    /// `&(dyn Fn(usize) + Sync)` with its lifetime erased; dereferenced only for indices `< n`,
    /// all of which complete before `parallel_for` returns.
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: the closure behind `f` is `Sync`, and it is only called while `parallel_for` (which owns
// the borrow) waits for `done == n`.
unsafe impl Send for Job {}
// SAFETY: as for `Send`: shared access only calls the `Sync` closure and touches atomics.
unsafe impl Sync for Job {}

impl Job {
    /// Runs indices until none are left; returns how many this thread ran.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: i < n, so `parallel_for` is still waiting and the closure is alive.
            unsafe { (*self.f)(i) };
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    generation: AtomicU64,
    slot: Mutex<Option<Arc<Job>>>,
    wake: Condvar,
    sleepers: AtomicUsize,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            slot: Mutex::new(None),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        });
        for w in 1..threads {
            let s = shared.clone();
            // A worker that cannot start only lowers parallelism: the caller runs every index itself.
            let _ = std::thread::Builder::new()
                .name(format!("canon-kernel-{w}"))
                .spawn(move || worker(s));
        }
        Pool { shared, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

thread_local! {
    /// Whether this thread runs inside a pool task (a worker, or a caller of `parallel_for`, or
    /// inside `serial`): nested `parallel_for` calls then run serially on it.
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every `parallel_for` it reaches (the kernels' products, activation rounding)
/// serial on the calling thread: for callers that already split their work across threads
/// (one task per core) and would otherwise hand each product to the pool from every core at once.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            INSIDE.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(INSIDE.with(|c| c.replace(true)));
    f()
}

fn worker(s: Arc<Shared>) {
    INSIDE.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        // Spin, then park, until the generation moves.
        while s.generation.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                // Let a runnable thread (perhaps the one about to publish work) have the core.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut g = s.slot.lock().unwrap_or_else(|p| p.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::Acquire) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(g);
                break;
            }
            std::hint::spin_loop();
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s.slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(job) = job {
            job.work();
        }
    }
}

/// A raw output pointer shared by `parallel_for` tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: used only for disjoint writes inside `parallel_for`, which returns after all of them.
unsafe impl Send for SyncPtr {}
// SAFETY: as for `Send`: tasks never write the same element, and no one reads until all are done.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The process-wide pool.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().max(1)))
}

/// Runs `f(i)` for every `i < n` on the pool (the calling thread included); returns when all are
/// done. Calls from inside `f` run serially on the calling thread.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if n <= 1 || p.threads == 1 || INSIDE.with(|c| c.get()) {
        (0..n).for_each(f);
        return;
    }
    // SAFETY: erases the closure's lifetime; see `Job::f`.
    let f_static: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        f: f_static,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    let s = &p.shared;
    {
        let mut g = s.slot.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(job.clone());
        s.generation.fetch_add(1, Ordering::AcqRel);
    }
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        s.wake.notify_all();
    }
    INSIDE.with(|c| c.set(true));
    job.work();
    INSIDE.with(|c| c.set(false));
    // Wait for tasks other threads still run. If one of them was preempted (a busy machine), yield
    // instead of burning the time slice it needs.
    let mut spins = 0u32;
    while job.done.load(Ordering::Acquire) < n {
        spins = spins.wrapping_add(1);
        if spins > 2000 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// `0..n` cut for [`parallel_for`] by guided self-scheduling: each range takes a share
/// `1 / (2·threads)` of what is left, so the ranges shrink from a quarter of the work (two
/// threads) down to single items. Whichever thread starts late or runs slow, the last ranges are
/// small and the threads finish within about one item of each other, where equal ranges (a few
/// per thread) leave one thread waiting up to a whole range at the end of every job. One range on
/// one thread.
pub fn guided_ranges(n: usize) -> Vec<std::ops::Range<usize>> {
    let threads = pool().threads();
    if threads <= 1 {
        return if n == 0 {
            Vec::new()
        } else {
            std::iter::once(0..n).collect()
        };
    }
    let mut v = Vec::new();
    let mut p0 = 0;
    while p0 < n {
        let size = (n - p0).div_ceil(2 * threads);
        v.push(p0..p0 + size);
        p0 += size;
    }
    v
}

/// A raw pointer to the start of a slice whose disjoint chunks `par_chunks_mut`'s tasks write.
struct ChunkPtr<T>(*mut T);
impl<T> Clone for ChunkPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ChunkPtr<T> {}
// SAFETY: each task builds a slice over its own chunk only; chunks never overlap, and
// `parallel_for` returns only after every task is done.
unsafe impl<T: Send> Send for ChunkPtr<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for ChunkPtr<T> {}

/// Runs `f(c, chunk)` for the `c`-th chunk of `chunk` elements of `out` (the last one may be
/// shorter) on the pool, each chunk on one thread. One chunk runs on the calling thread directly.
pub fn par_chunks_mut<T: Send>(out: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let chunk = chunk.max(1);
    let (len, n) = (out.len(), out.len().div_ceil(chunk));
    if n <= 1 {
        if len > 0 {
            f(0, out);
        }
        return;
    }
    let ptr = ChunkPtr(out.as_mut_ptr());
    parallel_for(n, &|c| {
        let start = c * chunk;
        let end = (start + chunk).min(len);
        let p = ptr;
        // SAFETY: `start..end` lies inside `out` (c < n = ⌈len / chunk⌉), and the chunks of
        // different `c` are disjoint; `out` is borrowed mutably for the whole call.
        let part = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), end - start) };
        f(c, part);
    });
}

/// A new vector of `len` values written by `f(c, chunk)` per chunk as [`par_chunks_mut`] does,
/// each chunk zeroed by its own task first (no serial zero-fill of the whole buffer).
pub fn par_vec_f32(len: usize, chunk: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    par_chunks_mut(&mut v.spare_capacity_mut()[..len], chunk, &|c, part| {
        part.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every element of `part` was just initialised, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        let part = unsafe { &mut *(part as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        f(c, part);
    });
    // SAFETY: the tasks above initialised all `len` elements (every chunk of `0..len`).
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guided_ranges_cover_every_item_once_and_shrink() {
        for n in [0, 1, 2, 3, 7, 72, 192, 6144] {
            let r = guided_ranges(n);
            let mut next = 0;
            for w in &r {
                assert_eq!(w.start, next, "n {n}: ranges in order, no gap");
                assert!(!w.is_empty(), "n {n}: no empty range");
                next = w.end;
            }
            assert_eq!(next, n, "n {n}: every item");
            for pair in r.windows(2) {
                assert!(pair[1].len() <= pair[0].len(), "n {n}: {r:?} shrink");
            }
        }
    }

    #[test]
    fn chunked_helpers_visit_every_element_once_in_order() {
        for (len, chunk) in [(0, 4), (1, 4), (7, 3), (1000, 64), (1000, 1000), (5, 0)] {
            let mut v = vec![0usize; len];
            par_chunks_mut(&mut v, chunk, &|c, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x += c * chunk.max(1) + i + 1;
                }
            });
            assert_eq!(v, (1..=len).collect::<Vec<_>>());
            let w = par_vec_f32(len, chunk, &|c, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x += (c * chunk.max(1) + i) as f32;
                }
            });
            assert_eq!(w, (0..len).map(|i| i as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn every_index_runs_exactly_once() {
        for n in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn concurrent_callers_and_nested_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        parallel_for(8, &|_| {
                            parallel_for(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 8 * 3);
    }
}
