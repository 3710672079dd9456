//! The library's threads: a rayon pool for long calls (the losses, through [`install`]) and a crew of
//! helpers for short ones (sampling, through [`run`]), where the caller works too and helpers join in when
//! they are awake.
//!
//! Their size comes from `set_num_threads`, else from the environment variable `ZIPFNCE_NUM_THREADS`, else
//! from the number of cores. Both remember the process that built them: after `fork()` the child has no
//! worker threads, so a child (a DataLoader worker, say) builds its own instead of waiting forever on the
//! parent's. Results never depend on the number of threads: callers split work into fixed-size pieces.
//!
//! When the pool has one worker per CPU this process may run on (its affinity mask: a whole VM, or a
//! container given its own CPUs), each worker is bound to one of them ([`pin_plan`]). Unbound, a call that
//! starts after the workers have slept often finds both of them woken onto the same CPU while the other
//! stays idle, and Linux does not move one across for milliseconds: on a 2-vCPU VM the S = 1024 sampled
//! softmax step then took 12.6 ms instead of 7 ms. `ZIPFNCE_PIN_THREADS=0` never binds, `=1` always does.

use crate::error::{Error, Result};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// `ZIPFNCE_NUM_THREADS`, else the number of cores; read once, at the first call that needs it (finding the
/// cores reads several files under /proc, too slow for every call).
fn default_threads() -> usize {
    static DEFAULT: AtomicUsize = AtomicUsize::new(0);
    match DEFAULT.load(Ordering::Relaxed) {
        0 => {
            let n = std::env::var("ZIPFNCE_NUM_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .map(|n| n.min(MAX_THREADS))
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            DEFAULT.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
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
    let plan = pin_plan(want);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("zipfnce-{i}"))
            .start_handler(move |i| {
                if let Some(&cpu) = plan.get(i) {
                    pin_to(cpu);
                }
            })
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

/// The CPU each pool worker is bound to (worker `i` to entry `i`), or nothing to leave them unbound.
/// `ZIPFNCE_PIN_THREADS=0`: never; `=1`: always (cycling through the affinity mask when the pool is larger);
/// otherwise only when the pool has exactly one worker per CPU of the mask, so that a process given a share
/// of a larger machine (a CPU quota with every CPU in its mask) never piles onto the first few CPUs.
fn pin_plan(threads: usize) -> Vec<usize> {
    let cpus = allowed_cpus();
    let force = std::env::var("ZIPFNCE_PIN_THREADS").map(|v| v.trim().to_string()).unwrap_or_default();
    let pin = match force.as_str() {
        "0" => false,
        "1" => true,
        _ => threads > 1 && threads == cpus.len(),
    };
    if !pin || cpus.is_empty() {
        return Vec::new();
    }
    (0..threads).map(|i| cpus[i % cpus.len()]).collect()
}

/// The CPUs this thread may run on, in increasing order (empty where that cannot be read).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array, for which all-zero bytes are the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size passed is that of `set`, which the call fills.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new(); // (more CPUs than a cpu_set_t holds, say: then nothing is bound)
    }
    // SAFETY: every index is below CPU_SETSIZE, the capacity of `set`.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Bind the calling thread to `cpu` (a failure leaves it unbound: only the speed differs).
#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`, the all-zero set is empty.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from `allowed_cpus`, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the size passed is that of `set`.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_cpu: usize) {}

/// Run `f` inside the library's pool (rayon's parallel iterators in `f` use it).
/// Callers keep small work out of it: dispatching to the pool costs microseconds.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = pool()?;
    Ok(pool.install(f))
}

/// What the caller of [`run`] shares with the helpers it asked for, besides the work.
#[derive(Default)]
struct Shared {
    /// The next index nobody has claimed.
    next: AtomicU64,
    /// Helpers that have started and not yet finished.
    active: AtomicUsize,
    /// Set by the caller before it returns: a helper that starts later does nothing.
    closed: AtomicBool,
    /// The first panic of a helper, kept for the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// Nothing is handed out from here on (after a panic).
const EXHAUSTED: u64 = u64::MAX / 2;

impl Shared {
    /// A helper's body: enter unless the caller has returned, run `f`, keep its panic, leave.
    ///
    /// The increment of `active` precedes the load of `closed` in the single order of SeqCst operations,
    /// and the caller stores `closed` before it waits for `active` to reach zero; so a helper that enters
    /// finishes before the caller returns, while the work it borrowed is still alive.
    fn helper(&self, f: impl FnOnce()) {
        self.active.fetch_add(1, Ordering::SeqCst);
        if !self.closed.load(Ordering::SeqCst) {
            if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
                self.next.store(EXHAUSTED, Ordering::SeqCst);
                lock(&self.panic).get_or_insert(p);
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait for a condition another thread will soon make true: spin briefly, then yield the core now and
/// then. Yielding matters when the other thread shares this core (the scheduler put both on one CPU):
/// spinning would then keep it from running for a whole time slice.
fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// A borrowed closure with its lifetime erased so that a pool job can hold it. Only `Shared::helper` calls
/// it, which `with_helpers` makes sure ends before the borrow does.
struct Erased<F: ?Sized + 'static>(&'static F);
// SAFETY: the closure is `Sync`, so sharing the reference between threads is sound.
unsafe impl<F: ?Sized + Sync> Send for Erased<F> {}
// SAFETY: as above.
unsafe impl<F: ?Sized + Sync> Sync for Erased<F> {}

/// A job for the crew: every helper that sees it calls it once.
type Job = Arc<dyn Fn() + Send + Sync>;

/// The helper threads of [`run`]: `size` threads that wait for posted jobs, spinning for
/// a while after each (so back-to-back calls find them awake), then sleeping on a condition variable.
struct Crew {
    pid: u32,
    size: usize,
    /// Incremented (under the `job` lock) by every post.
    epoch: AtomicU64,
    job: Mutex<Option<Job>>,
    wake: Condvar,
    sleepers: AtomicUsize,
    /// Set when a crew of another size replaces this one: its threads leave.
    retired: AtomicBool,
}

/// How long an idle helper spins, watching for the next job, before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The current crew; crews are leaked, never freed, so a helper's `&'static` stays valid.
static CREW: AtomicPtr<Crew> = AtomicPtr::new(std::ptr::null_mut());

impl Crew {
    /// The crew of `num_threads() - 1` helpers of this process, started on first use.
    fn get() -> &'static Crew {
        let want = num_threads().saturating_sub(1);
        let pid = std::process::id();
        loop {
            let cur = CREW.load(Ordering::Acquire);
            // SAFETY: a non-null pointer in CREW comes from `Box::leak` below and is never freed.
            let old = unsafe { cur.as_ref() };
            if let Some(c) = old.filter(|c| c.pid == pid && c.size == want) {
                return c;
            }
            let new: &'static Crew = Box::leak(Box::new(Crew {
                pid,
                size: want,
                epoch: AtomicU64::new(0),
                job: Mutex::new(None),
                wake: Condvar::new(),
                sleepers: AtomicUsize::new(0),
                retired: AtomicBool::new(false),
            }));
            let ptr = new as *const Crew as *mut Crew;
            if CREW.compare_exchange(cur, ptr, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue; // another caller replaced it first (the unstarted crew is leaked: a few bytes)
            }
            // A crew of this process with another size retires; one of the parent's (before a fork) has no
            // threads here and its lock may be held forever, so it is left untouched.
            if let Some(o) = old.filter(|o| o.pid == pid) {
                o.retired.store(true, Ordering::SeqCst);
                let _g = lock(&o.job);
                o.wake.notify_all();
            }
            // A new thread inherits its starter's CPU affinity. The crew is only ever started by a caller's
            // thread (the samplers run on the thread that calls them, never inside the loss pool, whose
            // workers may be bound to one CPU each), so its helpers may run on any CPU the caller may.
            for i in 0..want {
                // A thread that cannot be started is one helper fewer: callers do the work themselves.
                let _ = std::thread::Builder::new()
                    .name(format!("zipfnce-helper-{i}"))
                    .spawn(move || new.serve());
            }
            return new;
        }
    }

    /// Hand `job` to the helpers (waking those that sleep).
    fn post(&self, job: Job) {
        let mut g = lock(&self.job);
        *g = Some(job);
        self.epoch.fetch_add(1, Ordering::Release);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.wake.notify_all();
        }
    }

    /// A helper thread: run each new job once, spin between jobs, sleep when there are none for a while.
    fn serve(&self) {
        let mut seen = self.epoch.load(Ordering::Acquire);
        loop {
            let start = Instant::now();
            let mut spins = 0u32;
            while self.epoch.load(Ordering::Acquire) == seen {
                if self.retired.load(Ordering::Relaxed) {
                    return;
                }
                // Yield now and then, in case the thread that will post shares this core.
                backoff(&mut spins);
                if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                    let mut g = lock(&self.job);
                    self.sleepers.fetch_add(1, Ordering::Relaxed);
                    // The epoch only changes under the lock, so no post is missed between check and wait.
                    while self.epoch.load(Ordering::Acquire) == seen && !self.retired.load(Ordering::Relaxed)
                    {
                        g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleepers.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let job = {
                let g = lock(&self.job);
                seen = self.epoch.load(Ordering::Acquire);
                g.clone()
            };
            if let Some(job) = job {
                job();
            }
        }
    }
}

/// Post `help` to the crew, run `mine` on this thread, then close and wait until no helper is active; then
/// re-raise a panic of `mine` or of a helper. Waiting first means no helper outlives the borrows its work
/// erased.
fn with_helpers<R>(shared: &Shared, help: impl Fn() + Send + Sync + 'static, mine: impl FnOnce() -> R) -> R {
    Crew::get().post(Arc::new(help));
    let r = catch_unwind(AssertUnwindSafe(mine));
    if r.is_err() {
        shared.next.store(EXHAUSTED, Ordering::SeqCst);
    }
    shared.closed.store(true, Ordering::SeqCst);
    let mut spins = 0u32;
    while shared.active.load(Ordering::SeqCst) != 0 {
        // A helper is in the middle of an item: a short wait, unless its thread was descheduled.
        backoff(&mut spins);
    }
    let r = r.unwrap_or_else(|p| resume_unwind(p));
    if let Some(p) = lock(&shared.panic).take() {
        resume_unwind(p);
    }
    r
}

/// Run `work(i)` for every `i` in `0..count`, on the calling thread, with up to `num_threads() - 1`
/// helper threads (the crew, not the rayon pool) joining in. Indices are handed out one at a time, so the caller never waits for a
/// helper that has not started yet (waking a sleeping thread takes microseconds): it does whatever is left
/// itself and then waits only for indices already underway. Meant for calls of tens of microseconds, where
/// `install` would cost as much as the work; give each index at least a few microseconds of work.
/// Results never depend on the thread count as long as each index writes only its own part of the output.
pub fn run<F: Fn(usize) + Sync>(count: usize, work: F) {
    let helpers = num_threads().min(count).saturating_sub(1);
    if helpers == 0 {
        (0..count).for_each(work);
        return;
    }
    let shared = Arc::new(Shared::default());
    let claim = move |sh: &Shared, work: &(dyn Fn(usize) + Sync)| loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= count as u64 {
            return;
        }
        work(i as usize);
    };
    let local: &(dyn Fn(usize) + Sync) = &work;
    // SAFETY: only the lifetime changes (see `Erased`).
    let erased = Erased(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static _>(local) });
    let sh = shared.clone();
    let help = move || sh.helper(|| claim(&sh, erased.0));
    with_helpers(&shared, help, || claim(&shared, local));
}

/// [`run`] over owned parts: `work(i, &mut parts[i])` for every i, each part (a tuple of disjoint mutable
/// slices of the outputs, say) going to exactly one thread.
pub fn run_parts<P: Send>(parts: Vec<P>, work: impl Fn(usize, &mut P) + Sync) {
    let cells: Vec<Mutex<P>> = parts.into_iter().map(Mutex::new).collect();
    run(cells.len(), |i| work(i, &mut lock(&cells[i])))
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
    fn run_visits_every_index_once() {
        use std::sync::atomic::AtomicU32;
        for threads in [1, 2, 5] {
            set_num_threads(threads).unwrap();
            for count in [0usize, 1, 2, 7, 1000] {
                let hits: Vec<AtomicU32> = (0..count).map(|_| AtomicU32::new(0)).collect();
                run(count, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{threads} threads, {count}");
            }
        }
        set_num_threads(2).unwrap();
    }

    #[test]
    fn run_hands_a_helper_panic_to_the_caller() {
        set_num_threads(2).unwrap();
        for _ in 0..20 {
            let r = catch_unwind(|| {
                run(64, |i| {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    assert!(i != 40, "index forty");
                })
            });
            assert!(r.is_err());
        }
        // The crew is still usable.
        run(4, |_| ());
    }

    #[test]
    fn install_runs_the_closure() {
        assert_eq!(install(|| 41 + 1).unwrap(), 42);
    }
}
