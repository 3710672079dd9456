//! The library's threads: a rayon pool for long calls (the losses, through [`install`]) and a crew of
//! helpers for short ones (sampling, through [`run`] and [`pipeline`]), where the caller works too and
//! helpers join in when they are awake.
//!
//! Their size comes from `set_num_threads`, else from the environment variable `ZIPFNCE_NUM_THREADS`, else
//! from the number of cores. Both remember the process that built them: after `fork()` the child has no
//! worker threads, so a child (a DataLoader worker, say) builds its own instead of waiting forever on the
//! parent's. Results never depend on the number of threads: callers split work into fixed-size pieces.

use crate::error::{Error, Result};
use std::cell::UnsafeCell;
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

/// What the caller of [`run`] or [`pipeline`] shares with the helpers it asked for, besides the work.
#[derive(Default)]
struct Shared {
    /// The next index or item nobody has claimed.
    next: AtomicU64,
    /// Helpers that have started and not yet finished.
    active: AtomicUsize,
    /// Set by the caller before it returns: a helper that starts later does nothing.
    closed: AtomicBool,
    /// Set when a helper panicked; the first panic is kept for the caller.
    failed: AtomicBool,
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
                self.failed.store(true, Ordering::SeqCst);
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait for a condition another thread will soon make true: spin briefly, then yield the core.
fn backoff(spins: &mut u32) {
    if *spins < 1 << 12 {
        std::hint::spin_loop();
        *spins += 1;
    } else {
        std::thread::yield_now();
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

/// The helper threads of [`run`] and [`pipeline`]: `size` threads that wait for posted jobs, spinning for
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
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins % 256 == 0 && start.elapsed() > SPIN {
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
/// threads of the pool helping. Indices are handed out one at a time, so the caller never waits for a
/// helper that has not started yet (waking a sleeping thread takes microseconds): it does whatever is left
/// itself and then waits only for indices already underway. Meant for calls of tens of microseconds, where
/// `install` would cost as much as the work; give each index at least a few microseconds of work.
/// Results never depend on the thread count as long as each index writes only its own part of the output.
pub fn run<F: Fn(usize) + Sync>(count: usize, work: F) -> Result<()> {
    let helpers = num_threads().min(count).saturating_sub(1);
    if helpers == 0 {
        (0..count).for_each(work);
        return Ok(());
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
    Ok(())
}

/// [`run`] over owned parts: `work(i, &mut parts[i])` for every i, each part (a tuple of disjoint mutable
/// slices of the outputs, say) going to exactly one thread.
pub fn run_parts<P: Send>(parts: Vec<P>, work: impl Fn(usize, &mut P) + Sync) -> Result<()> {
    let cells: Vec<Mutex<P>> = parts.into_iter().map(Mutex::new).collect();
    run(cells.len(), |i| work(i, &mut lock(&cells[i])))
}

/// Items `0, 1, 2, ...` made by `make(i, buffer)` and handed in order to `take(i, buffer)` on the calling
/// thread until it returns `Ok(0)` or an error; otherwise `take` returns about how many more items it
/// expects to need (at least 1), and `expect` is that estimate before the first. The first `alone` items are
/// made by the caller; from then on, with more than one thread, helpers make items ahead (at most `ahead`
/// beyond the one being taken, each in its own buffer, and not beyond what `take` expects to need) while the
/// caller takes them. While an item is still being made elsewhere the caller makes later ones, so it never
/// waits for a helper to wake up. Which thread made an item never changes what `take` sees. Handing items
/// between cores costs a little, so `alone` keeps short runs on the caller.
///
/// Buffers are taken from `spare` (or made by `new_buffer` when it runs out) and put back at the end, so
/// that repeated calls reuse them.
pub fn pipeline<T: Send + 'static>(
    alone: u64,
    ahead: usize,
    expect: u64,
    spare: &mut Vec<T>,
    new_buffer: impl Fn() -> T,
    make: impl Fn(u64, &mut T) + Sync,
    mut take: impl FnMut(u64, &T) -> Result<u64>,
) -> Result<()> {
    let helpers = num_threads().saturating_sub(1);
    let mut buf = spare.pop().unwrap_or_else(&new_buffer);
    let mut expect = expect;
    for i in 0..if helpers == 0 { u64::MAX } else { alone } {
        make(i, &mut buf);
        expect = take(i, &buf).inspect_err(|_| spare.push(std::mem::replace(&mut buf, new_buffer())))?;
        if expect == 0 {
            spare.push(buf);
            return Ok(());
        }
    }
    let window = ahead.max(2);
    let mut slots = vec![UnsafeCell::new(buf)];
    slots.extend((1..window).map(|_| UnsafeCell::new(spare.pop().unwrap_or_else(&new_buffer))));
    let pipe = Arc::new(Pipe {
        slots: slots.into_boxed_slice(),
        made: (0..window).map(|_| AtomicU64::new(0)).collect(),
        taken: AtomicU64::new(alone),
        limit: AtomicU64::new(alone + expect.max(1)),
        shared: Shared { next: AtomicU64::new(alone), ..Shared::default() },
    });
    let local: &(dyn Fn(u64, &mut T) + Sync) = &make;
    // SAFETY: only the lifetime changes (see `Erased`).
    let erased = Erased(unsafe { std::mem::transmute::<&(dyn Fn(u64, &mut T) + Sync), &'static _>(local) });
    let p = pipe.clone();
    let help = move || p.shared.helper(|| p.help(erased.0));
    let r = with_helpers(&pipe.shared, help, || -> Result<()> {
        for i in alone.. {
            let buf = pipe.get(i, local)?;
            let more = take(i, buf)?;
            pipe.limit.store(i + 1 + more, Ordering::Relaxed);
            pipe.taken.store(i + 1, Ordering::Release);
            if more == 0 {
                break;
            }
        }
        Ok(())
    });
    for slot in pipe.slots.iter() {
        // SAFETY: the caller has closed the pipeline and no helper is active (`with_helpers` waited), nor can
        // one become active: nobody else touches the slots any more.
        spare.push(std::mem::replace(unsafe { &mut *slot.get() }, new_buffer()));
    }
    r
}

/// The shared state of a `pipeline`: item i lives in slot i % (number of slots).
struct Pipe<T> {
    slots: Box<[UnsafeCell<T>]>,
    /// Per slot: 1 + the item made into it (0: none yet).
    made: Box<[AtomicU64]>,
    /// Items the caller has finished taking.
    taken: AtomicU64,
    /// Items from here on are not expected to be needed: helpers do not start them.
    limit: AtomicU64,
    shared: Shared,
}

// SAFETY: the slots are mutable state handed between threads by the protocol of `Pipe::help` and
// `Pipe::get`: a slot is written only by the one thread that claimed its current item, after the caller
// has finished taking the slot's previous item, and read by the caller only after that write is published.
unsafe impl<T: Send> Sync for Pipe<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Pipe<T> {}

impl<T> Pipe<T> {
    fn slot(&self, i: u64) -> usize {
        (i % self.slots.len() as u64) as usize
    }

    /// Claim item j (the next unclaimed one) if it is below `bound`.
    fn claim_below(&self, bound: u64) -> Option<u64> {
        let j = self.shared.next.load(Ordering::Relaxed);
        if j >= bound {
            return None;
        }
        self.shared.next.compare_exchange(j, j + 1, Ordering::Relaxed, Ordering::Relaxed).ok()
    }

    /// A helper: claim items in order and make each, as long as its slot is free and it is expected to be
    /// needed, until the caller closes.
    fn help(&self, make: &(dyn Fn(u64, &mut T) + Sync)) {
        let window = self.slots.len() as u64;
        let mut spins = 0u32;
        while !self.shared.closed.load(Ordering::Relaxed) {
            // The slot of item j is free once the caller has taken item j - window.
            let bound = self.limit.load(Ordering::Relaxed).min(self.taken.load(Ordering::Acquire) + window);
            let Some(j) = self.claim_below(bound) else {
                backoff(&mut spins);
                continue;
            };
            spins = 0;
            let s = self.slot(j);
            // SAFETY: this thread claimed item j (the CAS gives each item to one thread); the caller has
            // taken item j - window, the slot's previous item, and reads the slot again only after the
            // release store below.
            make(j, unsafe { &mut *self.slots[s].get() });
            self.made[s].store(j + 1, Ordering::Release);
        }
    }

    /// The caller's item i, made by a helper or here. While a helper is still making it, the caller makes
    /// later items that nobody has claimed yet (work that is needed anyway) rather than wait.
    fn get(&self, i: u64, make: &(dyn Fn(u64, &mut T) + Sync)) -> Result<&T> {
        let window = self.slots.len() as u64;
        let s = self.slot(i);
        let mut spins = 0u32;
        loop {
            if self.made[s].load(Ordering::Acquire) == i + 1 {
                break;
            }
            // Item i itself, or a later one whose slot is free (its previous item, j - window, is below i,
            // the item the caller is at, so it was taken) and that is expected to be needed.
            let bound = if self.shared.next.load(Ordering::Relaxed) == i {
                i + 1
            } else {
                self.limit.load(Ordering::Relaxed).min(i + window)
            };
            if let Some(j) = self.claim_below(bound) {
                let sj = self.slot(j);
                // SAFETY: item j was claimed here; its slot's previous item was taken (above), and no helper
                // writes the slot before the caller has taken item j (helpers wait for that).
                make(j, unsafe { &mut *self.slots[sj].get() });
                self.made[sj].store(j + 1, Ordering::Release);
                continue;
            }
            if self.shared.failed.load(Ordering::SeqCst) {
                return Err(Error::Threads { msg: "a helper thread panicked".into() });
            }
            backoff(&mut spins);
        }
        // SAFETY: item i is in the slot (made by this thread, or published by a release store that the
        // acquire load saw), and no thread writes the slot until the caller marks item i taken.
        Ok(unsafe { &*self.slots[s].get() })
    }
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
                })
                .unwrap();
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
        // The pool is still usable.
        run(4, |_| ()).unwrap();
    }

    /// A pipeline whose items are their own index squared, taken until `stop`; returns what `take` saw.
    fn squares(threads: usize, stop: u64, alone: u64) -> Vec<u64> {
        set_num_threads(threads).unwrap();
        let mut seen = Vec::new();
        let mut spare = Vec::new();
        pipeline(
            alone,
            3,
            2,
            &mut spare,
            || 0u64,
            |i, b| *b = i * i,
            |i, b| {
                seen.push(*b);
                Ok(if i + 1 < stop { 1 + (i % 3) } else { 0 })
            },
        )
        .unwrap();
        // The buffers come back for the next call.
        assert!(!spare.is_empty());
        seen
    }

    #[test]
    fn pipeline_hands_every_item_in_order() {
        for stop in [1u64, 2, 7, 200] {
            let want: Vec<u64> = (0..stop).map(|i| i * i).collect();
            for threads in [1, 2, 4] {
                for alone in [0, 1, 5] {
                    assert_eq!(squares(threads, stop, alone), want, "{threads} threads, stop {stop}");
                }
            }
        }
        set_num_threads(2).unwrap();
    }

    #[test]
    fn pipeline_errors_and_panics_reach_the_caller() {
        set_num_threads(2).unwrap();
        let mut spare = Vec::new();
        let r = pipeline(
            0,
            4,
            8,
            &mut spare,
            || 0u64,
            |_, _| (),
            |i, _| {
                if i == 5 {
                    Err(Error::value("x", "stop"))
                } else {
                    Ok(1)
                }
            },
        );
        assert!(matches!(r, Err(Error::Value { .. })));
        for _ in 0..10 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pipeline(
                    0,
                    4,
                    8,
                    &mut Vec::new(),
                    || 0u64,
                    |i, _| assert!(i != 3, "item three"),
                    |_, _| Ok(1),
                )
            }));
            assert!(r.is_err());
        }
        assert_eq!(squares(2, 5, 0), vec![0, 1, 4, 9, 16]);
    }

    #[test]
    fn install_runs_the_closure() {
        assert_eq!(install(|| 41 + 1).unwrap(), 42);
    }
}
