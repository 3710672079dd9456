//! The library's own rayon pool.
//!
//! Its size comes from `set_num_threads`, else from the environment variable `ZIPFNCE_NUM_THREADS`, else from
//! the number of cores. The pool remembers the process that built it: after `fork()` the child has no worker
//! threads, so a child (a DataLoader worker, say) builds a pool of its own instead of waiting forever on the
//! parent's. Results never depend on the pool's size: callers split work into fixed-size pieces.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard};

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

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
    lock(&REQUESTED).unwrap_or_else(default_threads)
}

/// Set the number of threads of the library's pool (takes effect at the next call).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > MAX_THREADS {
        return Err(Error::value("n", format!("must be between 1 and {MAX_THREADS}, got {n}")));
    }
    *lock(&REQUESTED) = Some(n);
    Ok(())
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    let want = num_threads();
    let pid = std::process::id();
    let mut guard = lock(&POOL);
    if let Some(p) = guard.as_ref() {
        if p.pid == pid && p.threads == want {
            return Ok(p.pool.clone());
        }
    }
    if let Some(old) = guard.take() {
        if old.pid != pid {
            // Forked child: the parent's workers do not exist here, and dropping the pool would try to
            // signal them. Leak it deliberately (a few words of memory, once per fork).
            std::mem::forget(old);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(want)
        .thread_name(|i| format!("zipfnce-{i}"))
        .build()
        .map_err(|e| Error::Threads { msg: e.to_string() })?;
    let pool = Arc::new(pool);
    *guard = Some(Pool { pid, threads: want, pool: pool.clone() });
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
