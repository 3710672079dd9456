//! The library's own rayon pool.
//!
//! Its size comes from `set_num_threads`, else from the environment variable `ZIPFNCE_NUM_THREADS`, else from
//! the number of cores. The pool remembers the process that built it: after `fork()` the child has no worker
//! threads, so a child (a DataLoader worker, say) builds a pool of its own instead of waiting forever on the
//! parent's. Results never depend on the pool's size: callers split work into fixed-size pieces.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
/// The requested size, 0 when unset. An atomic rather than a lock: a child forked while a parent thread held
/// a lock would wait for it forever.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Upper bound on the pool size, far above any machine's core count, to reject nonsense.
pub const MAX_THREADS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held cannot leave these plain values half-written: take the guard anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn default_threads() -> usize {
    if let Some(n) = std::env::var("ZIPFNCE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
    {
        return n.min(MAX_THREADS);
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The number of threads the library's calls use.
pub fn num_threads() -> usize {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => default_threads(),
        n => n,
    }
}

/// Set the number of threads of the library's pool (takes effect at the next call).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > MAX_THREADS {
        return Err(Error::value("n", format!("must be between 1 and {MAX_THREADS}, got {n}")));
    }
    REQUESTED.store(n, Ordering::Relaxed);
    Ok(())
}

/// Put `p` in the slot and return what it held; a pool of another process (the parent, before a fork) is
/// leaked, not returned: its workers do not exist here, and dropping it would try to signal them.
fn swap_in(slot: &mut Option<Pool>, p: Option<Pool>, pid: u32) -> Option<Pool> {
    let old = std::mem::replace(slot, p);
    match old {
        Some(o) if o.pid != pid => {
            std::mem::forget(o);
            None
        }
        o => o,
    }
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    let want = num_threads();
    let pid = std::process::id();
    {
        let guard = lock(&POOL);
        if let Some(p) = guard.as_ref() {
            if p.pid == pid && p.threads == want {
                return Ok(p.pool.clone());
            }
        }
    }
    // The lock is held only for the few instructions above and below, never while threads are spawned or
    // joined: a fork that lands while another thread holds it leaves the child waiting on it forever.
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("zipfnce-{i}"))
            .build()
            .map_err(|e| Error::Threads { msg: e.to_string() })?,
    );
    let old = {
        let mut guard = lock(&POOL);
        swap_in(&mut guard, Some(Pool { pid, threads: want, pool: pool.clone() }), pid)
    };
    drop(old); // (outside the lock: this joins nothing, but signals the old pool's workers to stop)
    Ok(pool)
}

/// Run `f` inside the library's pool (rayon's parallel iterators in `f` use it).
/// Callers keep small work out of it: dispatching to the pool costs microseconds.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = pool()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_threads() {
        assert!(set_num_threads(0).is_err());
        assert!(set_num_threads(MAX_THREADS + 1).is_err());
    }

    #[test]
    fn install_runs_the_closure() {
        assert_eq!(install(|| 41 + 1).unwrap(), 42);
    }
}
