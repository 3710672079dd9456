//! Drawing candidates: shared by the batch or per row, with or without replacement ("unique"), optionally
//! avoiding the true classes, and the expected counts that correct for how they were drawn.
//!
//! Draws come in chunks of a fixed length, chunk `c` from its own stream `derive(key, c)`, and are consumed in
//! chunk order. How many chunks are generated ahead, and on how many threads, never changes which draws are
//! consumed, so results depend only on the key and the arguments. Unique sampling rejects repeats
//! sequentially over that chunk-ordered sequence; `num_tries` counts the draws it consumed (draws of avoided
//! classes excluded: those are draws from the renormalised distribution, see below).
//!
//! Expected counts (API.md, as TensorFlow defines them): with `num_tries == num_sampled` (always so without
//! `unique`) the count is `P(k) * num_sampled`; otherwise `-expm1(num_tries * log1p(-P(k)))`, the probability
//! that k turned up in `num_tries` draws. Like TensorFlow, P(k) is rounded to float32 first. With avoided
//! classes, sampled ids use P renormalised over the rest: P(k) / (1 - Σ_avoided P).

use super::{negbin, Distribution};
use crate::buf::{ensure_memory, fill_together, zeroed, Table};
use crate::error::{Error, Result};
use crate::rng::{derive, Stream};
use crate::threads;
use crate::vmath::{self, simd};
use std::mem::MaybeUninit;

/// Unique sampling gives up (with an error) after this many draws rather than appear to hang.
pub const MAX_TRIES: u64 = 1 << 31;
/// The most candidates one call may ask for.
pub const MAX_SAMPLED: u64 = 1 << 36;
/// Draws with replacement of fewer candidates than this, and per-row draws of fewer in all, stay on the
/// caller's thread; larger ones let the library's other threads help (see `threads::run`). Each thread then
/// draws whole chunks and writes them to their place in the output, so no data passes between threads.
const PARALLEL_MIN: usize = 1 << 12;
/// Per-row sampling hands rows to threads in groups of about this many draws.
const ROW_GROUP: usize = 1 << 12;

/// A set of candidates shared by a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub ids: Vec<i64>,
    pub true_expected: Option<Vec<f32>>,
    pub sampled_expected: Vec<f32>,
    pub num_tries: u64,
}

/// A set of candidates per row, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PerRowSample {
    pub ids: Vec<i64>,
    pub true_expected: Vec<f32>,
    pub sampled_expected: Vec<f32>,
    pub num_tries: Vec<i64>,
}

/// The chunk length for a request of `n` draws: a power of two between 64 and 4096, a function of `n` alone.
fn chunk_len(n: usize) -> usize {
    n.saturating_add(n / 4).clamp(64, 4096).next_power_of_two()
}

/// An open-addressing hash set of ids (linear probing, multiplicative hashing).
#[derive(Default)]
pub(crate) struct IdSet {
    slots: Vec<u64>,
    used: Vec<usize>,
    mask: usize,
}

const EMPTY: u64 = u64::MAX;

impl IdSet {
    pub fn with_capacity(n: usize) -> Self {
        let cap = (2 * n.max(8)).next_power_of_two();
        IdSet { slots: vec![EMPTY; cap], used: Vec::with_capacity(n), mask: cap - 1 }
    }

    #[inline]
    fn slot(&self, id: u64) -> usize {
        (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize & self.mask
    }

    /// Insert `id`; true when it was not there yet.
    #[inline]
    pub fn insert(&mut self, id: u64) -> bool {
        if 2 * (self.used.len() + 1) > self.slots.len() {
            self.grow();
        }
        let mut i = self.slot(id);
        loop {
            let s = self.slots[i];
            if s == id {
                return false;
            }
            if s == EMPTY {
                self.slots[i] = id;
                self.used.push(i);
                return true;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        let mut i = self.slot(id);
        loop {
            let s = self.slots[i];
            if s == id {
                return true;
            }
            if s == EMPTY {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.used.iter().map(|&i| self.slots[i])
    }

    fn grow(&mut self) {
        let ids: Vec<u64> = self.iter().collect();
        let cap = self.slots.len() * 2;
        self.slots = vec![EMPTY; cap];
        self.mask = cap - 1;
        self.used.clear();
        for id in ids {
            self.insert(id);
        }
    }
}

/// Ranges up to this size de-duplicate with a byte per id (at most 16 MiB of scratch per thread; a byte map
/// of 10^7 classes is 1.7× faster than a bit map of them for 4,096 unique draws).
const BYTEMAP_MAX_RANGE: u64 = 1 << 24;
/// A unique draw of n ids over a byte map of `range` bytes erases its marks afterwards when
/// n · ERASE_RATIO < range: n stores cost less than the share of a whole-map clear that spending a stamp
/// brings (one clear per 255 stamps).
const ERASE_RATIO: u64 = 4096;
/// Larger ranges up to this size use a bitset (at most 8 MiB per thread); beyond, a hash set, which
/// stays in cache.
const BITSET_MAX_RANGE: u64 = 1 << 26;

/// Per-thread scratch maps. Between uses every byte of `bytes` is at most `stamp`; a use marks the ids it
/// sees with `stamp + 1`, and either keeps that as the new `stamp` (nothing needs clearing between uses but
/// once every 255) or, drawing few ids, puts their bytes back to 0 (`bytes_dirty` while it runs, in case it
/// does not finish). `bits` is all zero between uses unless `dirty` (a use that did not finish).
#[derive(Default)]
struct Scratch {
    bytes: Table<u8>,
    stamp: u8,
    /// The bytes below this index may hold stamps; the rest of the table is zero.
    bytes_used: usize,
    bytes_dirty: bool,
    bits: Table<u64>,
    dirty: bool,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
    /// The buffer for a chunk of draws, kept between calls.
    static CHUNK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where draws go: a membership test that also inserts.
trait Seen {
    /// Insert `id`; true when it was not there yet.
    fn insert(&mut self, id: u64) -> bool;

    /// Ask the cache for the memory `insert(id)` will touch (a hint; no effect on results).
    #[inline(always)]
    fn prefetch(&self, _id: u64) {}

    /// Draw `len` ids at or above `from` from `stream` with `dist` and insert them as `scan` would, in one
    /// pass, when the distribution has a kernel for that (see [`Distribution::draw_scan`]); None (nothing
    /// drawn) otherwise.
    #[inline(always)]
    fn draw_scan(
        &mut self,
        _dist: &dyn Distribution,
        _stream: &mut Stream,
        _len: usize,
        _from: u64,
        _free: &mut [MaybeUninit<u64>],
        _want: usize,
    ) -> Option<(usize, usize)> {
        None
    }

    /// True when `id` is known to be in the set (a set that cannot tell says false).
    fn holds(&self, id: u64) -> bool {
        let _ = id;
        false
    }

    /// Given that every id below `h` is in the set, the first id at or above `h` (and below `end`) that is
    /// not `holds`, or `end`: a set that cannot tell answers `h`, never claiming more than it holds.
    fn collected_prefix(&self, mut h: u64, end: u64) -> u64 {
        while h < end && self.holds(h) {
            h += 1;
        }
        h
    }

    /// Insert the ids of `buf` in order, writing each to `free[f]` and counting it in `f` when new, until
    /// `f == want`. Returns (f, draws of `buf` used). Implementations may override it with a tighter loop.
    #[inline(always)]
    fn scan(&mut self, buf: &[u64], free: &mut [MaybeUninit<u64>], want: usize) -> (usize, usize) {
        let mut f = 0;
        for (i, &id) in buf.iter().enumerate() {
            if let Some(&ahead) = buf.get(i + PREFETCH) {
                self.prefetch(ahead);
            }
            free[f].write(id);
            f += self.insert(id) as usize;
            if f == want {
                return (f, i + 1);
            }
        }
        (f, buf.len())
    }
}

/// With replacement: every draw is new.
#[derive(Default)]
struct Everything;

impl Seen for Everything {
    #[inline(always)]
    fn insert(&mut self, _id: u64) -> bool {
        true
    }
}

impl Seen for IdSet {
    #[inline(always)]
    fn insert(&mut self, id: u64) -> bool {
        IdSet::insert(self, id)
    }

    fn holds(&self, id: u64) -> bool {
        self.contains(id)
    }
}

#[derive(Default)]
struct Bits<'a>(&'a mut [u64]);

impl Seen for Bits<'_> {
    #[inline(always)]
    fn insert(&mut self, id: u64) -> bool {
        let w = &mut self.0[(id >> 6) as usize];
        let b = 1u64 << (id & 63);
        let new = *w & b == 0;
        *w |= b;
        new
    }

    fn holds(&self, id: u64) -> bool {
        self.0.get((id >> 6) as usize).is_some_and(|w| w >> (id & 63) & 1 == 1)
    }
}

/// A byte per id: the id was seen when its byte holds `stamp`. Marking is a plain store, so draws of the
/// same few frequent ids never wait on one another, as read-modify-writes of a bitset's shared words do.
#[derive(Default)]
struct Bytes<'a> {
    map: &'a mut [u8],
    stamp: u8,
}

impl Seen for Bytes<'_> {
    #[inline(always)]
    fn draw_scan(
        &mut self,
        dist: &dyn Distribution,
        stream: &mut Stream,
        len: usize,
        from: u64,
        free: &mut [MaybeUninit<u64>],
        want: usize,
    ) -> Option<(usize, usize)> {
        dist.draw_scan(stream, len, from, &mut ByteScan { map: self.map, stamp: self.stamp, free, want })
    }

    fn collected_prefix(&self, h: u64, end: u64) -> u64 {
        let end = end.min(self.map.len() as u64) as usize;
        let start = (h as usize).min(end);
        let run = self.map[start..end].iter().position(|&b| b != self.stamp).unwrap_or(end - start);
        (start + run) as u64
    }

    #[inline(always)]
    fn scan(&mut self, buf: &[u64], free: &mut [MaybeUninit<u64>], want: usize) -> (usize, usize) {
        scan_bytes(self.map, self.stamp, buf, free, want)
    }

    #[inline(always)]
    fn insert(&mut self, id: u64) -> bool {
        let b = &mut self.map[id as usize];
        let new = *b != self.stamp;
        *b = self.stamp;
        new
    }

    #[inline(always)]
    fn prefetch(&self, id: u64) {
        prefetch_byte(self.map, id)
    }
}

/// Ask the cache for `map[id]` (nothing when out of range).
#[inline(always)]
fn prefetch_byte(map: &[u8], id: u64) {
    if let Some(b) = map.get(id as usize) {
        prefetch_at(b);
    }
}

/// Ask the cache for the line holding `p` (a hint: it never faults, whatever `p` is).
#[inline(always)]
pub(crate) fn prefetch_at(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it never faults, reads nothing into the program and
    // needs no CPU feature beyond x86_64's baseline (SSE).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `Seen::scan` over a byte map, by the same step as the fused kernels ([`Taker::take`]), whose state the
/// compiler keeps in registers (a byte store into the map could alias anything loaded from memory, so
/// fields read through references would be reloaded at every draw).
#[inline(never)]
fn scan_bytes(
    map: &mut [u8],
    stamp: u8,
    buf: &[u64],
    free: &mut [MaybeUninit<u64>],
    want: usize,
) -> (usize, usize) {
    let range = map.len() as u64;
    let mut scan = ByteScan { map, stamp, free, want };
    if !scan.fits(range) {
        // Nothing wanted (or no room, which the callers never ask).
        return (0, 0);
    }
    let base = scan.map_ptr();
    let mut taker = scan.taker();
    for (i, &id) in buf.iter().enumerate() {
        if let Some(&ahead) = buf.get(i + PREFETCH) {
            if ahead < range {
                prefetch_at(base.wrapping_add(ahead as usize));
            }
        }
        assert!(id < range, "draw {id} outside the range {range}");
        // SAFETY: id is below the map's length (checked), `fits` holds, and the loop ends when `take` says
        // the scan is over.
        if unsafe { taker.take(id) } {
            return (taker.new_ids(), i + 1);
        }
    }
    (taker.new_ids(), buf.len())
}

/// A de-duplication over a byte map in progress (the map of [`Bytes`]), handed to
/// [`Distribution::draw_scan`]: kernels that draw and de-duplicate in one pass go through [`Taker`] and
/// must give what [`ByteScan::scan`] of their draws would.
pub struct ByteScan<'a> {
    map: &'a mut [u8],
    stamp: u8,
    free: &'a mut [MaybeUninit<u64>],
    want: usize,
}

impl<'a> ByteScan<'a> {
    /// True when every id below `range_max` has its byte in the map and `free` has room for `want >= 1`
    /// ids: what [`Taker::take`] needs of a kernel whose ids are below `range_max`.
    pub fn fits(&self, range_max: u64) -> bool {
        range_max <= self.map.len() as u64 && self.want > 0 && self.free.len() >= self.want
    }

    /// Insert the ids of `buf` in order until `want` new ones are found: (new ids, draws used). The
    /// reference that the kernels' results must equal.
    pub fn scan(&mut self, buf: &[u64]) -> (usize, usize) {
        scan_bytes(self.map, self.stamp, buf, self.free, self.want)
    }

    /// The map's first byte, for prefetches.
    pub(crate) fn map_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// The scan's state as plain values and pointers, which a kernel's loop keeps in registers.
    pub(crate) fn taker(&mut self) -> Taker<'_> {
        Taker {
            map: self.map.as_mut_ptr(),
            stamp: self.stamp,
            free: self.free.as_mut_ptr(),
            new: 0,
            want: self.want,
            _scan: std::marker::PhantomData,
        }
    }
}

/// The loop state of a [`ByteScan`] (see `ByteScan::taker`).
pub(crate) struct Taker<'s> {
    map: *mut u8,
    stamp: u8,
    free: *mut MaybeUninit<u64>,
    new: usize,
    want: usize,
    _scan: std::marker::PhantomData<&'s mut ()>,
}

impl Taker<'_> {
    /// The next draw: write it to the next free place, count it if its byte was not stamped yet, stamp it.
    /// True when that made `want` new ids (the scan is over).
    ///
    /// # Safety
    /// `id` is below the map's length (see `ByteScan::fits`), and no call follows one that returned true.
    #[inline(always)]
    pub(crate) unsafe fn take(&mut self, id: u64) -> bool {
        // SAFETY: new < want <= free's length (the scan stops at want; `fits`), and id < the map's length
        // (the caller's promise).
        unsafe {
            (*self.free.add(self.new)).write(id);
            let b = self.map.add(id as usize);
            self.new += (*b != self.stamp) as usize;
            *b = self.stamp;
        }
        self.new == self.want
    }

    /// The number of new ids found.
    pub(crate) fn new_ids(&self) -> usize {
        self.new
    }
}

/// How many draws ahead of the one being de-duplicated its map entry is fetched into the cache.
const PREFETCH: usize = 64;

/// A chunk skips the head of collected ids when that head carries at least this probability (below it,
/// drawing the few rejected draws costs less than counting them).
const SKIP_MIN_MASS: f64 = 1.0 / 16.0;
/// The index, under a chunk's key, of the stream that counts its skipped draws.
const SKIPS: u64 = 0x736b_6970;

#[cfg(test)]
thread_local! {
    /// Tests turn skipping off to compare the law of skipping draws with that of drawing them all.
    static NEVER_SKIP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The draws skipped on this thread so far (tests check that skipping happened).
    static SKIPPED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether chunks may skip collected heads (always, but in tests that compare with not skipping).
#[inline]
fn skipping_allowed() -> bool {
    #[cfg(test)]
    if NEVER_SKIP.get() {
        return false;
    }
    true
}

/// The ids collected so far by a sequential draw, with capacity for one more: the consume loop writes each
/// draw to the next free place before it knows whether the id is new, which saves a branch per draw.
struct Collect {
    out: Vec<u64>,
    /// Draws that were not avoided (each is a draw from the renormalised distribution).
    tries: u64,
}

impl Collect {
    fn new(n: usize) -> Result<Self> {
        let mut out = Vec::new();
        out.try_reserve_exact(n + 1)
            .map_err(|_| Error::too_large("num_sampled", format!("cannot allocate {n} candidates")))?;
        Ok(Collect { out, tries: 0 })
    }

    fn filled(&self) -> usize {
        self.out.len()
    }

    /// Consume `buf` in order: skip avoided ids, count the rest as tries, keep the ones `seen` calls new,
    /// stop at `n` ids. Returns how many draws of `buf` were consumed.
    #[inline(always)]
    fn consume<S: Seen + Default, const AVOID: bool>(
        &mut self,
        buf: &[u64],
        avoid: Option<&Avoid>,
        seen: &mut S,
        n: usize,
    ) -> u64 {
        // Work on local copies: stores into the id map may not alias `seen` or `self.out`, but the compiler
        // cannot tell (a byte store may alias anything) and would reload their pointers at every draw.
        let mut set = std::mem::take(seen);
        let filled = self.out.len();
        let want = n - filled;
        let free = self.out.spare_capacity_mut();
        let (mut f, mut t, mut used) = (0, self.tries, 0u64);
        if want > 0 && !AVOID {
            let (got, n_used) = set.scan(buf, free, want);
            f = got;
            used = n_used as u64;
            t += used;
        } else if want > 0 {
            for (i, &id) in buf.iter().enumerate() {
                if let Some(&ahead) = buf.get(i + PREFETCH) {
                    set.prefetch(ahead);
                }
                used += 1;
                if avoid.is_some_and(|a| a.set.contains(id)) {
                    continue;
                }
                t += 1;
                free[f].write(id);
                f += set.insert(id) as usize;
                if f == want {
                    break;
                }
            }
        }
        *seen = set;
        // SAFETY: the first f places after the filled ones were written above (f <= want <= capacity - filled).
        unsafe { self.out.set_len(filled + f) };
        self.tries = t;
        used
    }

    /// `raw_chunk` and `consume` of chunk `c` in one pass, where the map and the distribution have a kernel
    /// for that (`Seen::draw_scan`; never with ids to avoid). None: nothing was drawn.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn draw_consume<S: Seen, const AVOID: bool>(
        &mut self,
        dist: &dyn Distribution,
        key: u64,
        c: u64,
        len: usize,
        from: u64,
        seen: &mut S,
        n: usize,
    ) -> Option<u64> {
        let filled = self.out.len();
        if AVOID || filled == n {
            return None;
        }
        let free = self.out.spare_capacity_mut();
        let (f, used) =
            seen.draw_scan(dist, &mut Stream::new(derive(key, c)), len, from, free, n - filled)?;
        // SAFETY: the first f places after the filled ones were written (`Seen::draw_scan` keeps the contract
        // of `Seen::scan`: f <= want <= capacity - filled).
        unsafe { self.out.set_len(filled + f) };
        self.tries += used as u64;
        Some(used as u64)
    }

    /// Draw chunks `0, 1, 2, ...` of the stream `key` and consume them until `n` ids are collected.
    ///
    /// Heads already collected are skipped: before each chunk after the first (without ids to avoid), when
    /// every id below some h is collected and P(k < h) is at least `SKIP_MIN_MASS`, the chunk draws only
    /// ids from h on (`Distribution::draw_above`): a draw below h would be rejected for certain. How many
    /// such draws came before each kept one is geometric, so the chunk adds a negative binomial count of
    /// them to the tries (`negbin::failures`, from a stream of its own). The ids and `num_tries` have the
    /// law of drawing every draw: only the work of the rejected ones is saved (a quarter of the draws of
    /// 8,192 log-uniform ids out of 10^6, and most of them when the sample is a large part of the range).
    ///
    /// This stays on one thread. Letting other threads draw chunks ahead was tried: de-duplicating costs
    /// about as much as drawing, so it could at best halve the time, and handing each chunk to another core
    /// costs as much again where the two cores do not share a cache (on the virtual machines measured, the
    /// same process was fast or three times slower depending on where its threads landed).
    fn run<S: Seen + Default, const AVOID: bool>(
        &mut self,
        dist: &dyn Distribution,
        key: u64,
        n: usize,
        len: usize,
        avoid: Option<&Avoid>,
        seen: &mut S,
    ) -> Result<()> {
        // Draws counted (`consumed`): those made and those skipped.
        let (mut consumed, mut made_all, mut skipped_all) = (0u64, 0u64, 0u64);
        // The draws in an error message: those made, and those counted as certain rejections.
        let made = |made: u64, skipped: u64| {
            if skipped == 0 {
                format!("{made} draws")
            } else {
                format!("{made} draws (and {skipped} more counted as certain rejections of classes already drawn)")
            }
        };
        // When the reachability check below runs next (in draws consumed); it doubles, so it costs
        // O(n log draws) in all.
        let mut next_check = (4 * n as u64).saturating_add(1024);
        let avoided_mass = avoid.map_or(0.0, |a| a.mass);
        // Every id below `head` is collected.
        let mut head = 0u64;
        let range = dist.range_max();
        CHUNK.with(|cell| {
            let mut own = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut own, // re-entered on this thread (cannot happen today)
            };
            buf.resize(len, 0);
            for c in 0u64.. {
                let mut skip = None;
                if !AVOID && c > 0 && skipping_allowed() {
                    head = seen.collected_prefix(head, range);
                    skip = dist.head_mass(head).filter(|&p| (SKIP_MIN_MASS..1.0).contains(&p));
                }
                let from = if skip.is_some() { head } else { 0 };
                let used = match self.draw_consume::<S, AVOID>(dist, key, c, len, from, seen, n) {
                    Some(used) => used,
                    None => {
                        raw_chunk(dist, key, c, from, buf);
                        self.consume::<S, AVOID>(buf, avoid, seen, n)
                    }
                };
                let skipped = skip.map_or(0, |p| {
                    negbin::failures(&mut Stream::new(derive(derive(key, c), SKIPS)), used, p)
                });
                // Near-certain heads make huge counts (the rest of the law is out of reach: the checks
                // below then end the draw).
                self.tries = self.tries.saturating_add(skipped);
                consumed = consumed.saturating_add(used).saturating_add(skipped);
                made_all += used;
                skipped_all = skipped_all.saturating_add(skipped);
                #[cfg(test)]
                SKIPPED.set(SKIPPED.get() + skipped);
                if self.filled() == n {
                    return Ok(());
                }
                if consumed >= next_check {
                    next_check = consumed.saturating_mul(2);
                    let budget = MAX_TRIES.saturating_sub(consumed);
                    let missing = n - self.filled();
                    if let Some(r) = out_of_reach(dist, &self.out, avoided_mass, missing, budget) {
                        return Err(Error::TooFewClasses {
                            arg: "num_sampled",
                            msg: format!(
                                "gave up after {} with {} of {n} distinct classes: the classes not drawn yet \
                                 carry probability {r:.3e} in all, so the {budget} draws left of the {MAX_TRIES} \
                                 allowed would find about {:.3e} of the {missing} still needed",
                                made(made_all, skipped_all),
                                self.filled(),
                                r * budget as f64,
                            ),
                        });
                    }
                }
                if consumed >= MAX_TRIES {
                    return Err(Error::TooFewClasses {
                        arg: "num_sampled",
                        msg: format!(
                            "gave up after {} with {} of {n} distinct classes: the distribution is too \
                             concentrated for that many in the {MAX_TRIES} draws allowed",
                            made(made_all, skipped_all),
                            self.filled()
                        ),
                    });
                }
            }
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with<S: Seen + Default>(
        &mut self,
        dist: &dyn Distribution,
        key: u64,
        n: usize,
        len: usize,
        avoid: Option<&Avoid>,
        seen: &mut S,
    ) -> Result<()> {
        match avoid {
            Some(_) => self.run::<S, true>(dist, key, n, len, avoid, seen),
            None => self.run::<S, false>(dist, key, n, len, avoid, seen),
        }
    }
}

/// Ids to avoid and the probability mass they carry.
pub(crate) struct Avoid {
    set: IdSet,
    /// Σ P over the avoided ids.
    mass: f64,
    /// How many avoided ids have non-zero probability.
    in_support: u64,
}

impl Avoid {
    pub fn new(dist: &dyn Distribution, ids: &[u64]) -> Self {
        let mut set = IdSet::with_capacity(ids.len());
        let (mut mass, mut in_support) = (0.0, 0);
        for &id in ids {
            if set.insert(id) {
                let p = dist.prob(id);
                mass += p;
                in_support += (p > 0.0) as u64;
            }
        }
        Avoid { set, mass, in_support }
    }

    fn is_empty(&self) -> bool {
        self.set.len() == 0
    }
}

/// The raw draws of chunk `c` of the stream `key`, of ids from `from` on.
fn raw_chunk(dist: &dyn Distribution, key: u64, c: u64, from: u64, out: &mut [u64]) {
    dist.draw_above(&mut Stream::new(derive(key, c)), out, from)
}

/// Draw `n` candidates from the stream `key`: the first `n` accepted draws in chunk order (a draw is accepted
/// when it is not avoided and, with `unique`, not seen before). Returns the ids and `num_tries`.
fn draw(
    dist: &dyn Distribution,
    key: u64,
    n: usize,
    unique: bool,
    avoid: Option<&Avoid>,
) -> Result<(Vec<u64>, u64)> {
    let avoid = avoid.filter(|a| !a.is_empty());
    let available = dist.support_size() - avoid.map_or(0, |a| a.in_support);
    if n > 0 && available == 0 {
        return Err(Error::TooFewClasses {
            arg: "num_sampled",
            msg: "every class with non-zero probability is excluded".into(),
        });
    }
    if unique && n as u64 > available {
        return Err(Error::TooFewClasses {
            arg: "num_sampled",
            msg: format!(
                "cannot draw {n} distinct classes: only {available} have non-zero probability{}",
                if avoid.is_some() { " after removing the true classes" } else { "" }
            ),
        });
    }
    let len = chunk_len(n);
    if !unique && avoid.is_none() {
        // Every draw is accepted: chunk c fills out[c*len..], independently.
        let mut out: Vec<u64> = zeroed("num_sampled", n)?;
        out.chunks_mut(len).enumerate().for_each(|(c, piece)| raw_chunk(dist, key, c as u64, 0, piece));
        return Ok((out, n as u64));
    }
    let mut c = Collect::new(n)?;
    let range = dist.range_max();
    if !unique {
        c.run_with(dist, key, n, len, avoid, &mut Everything)?;
    } else if range <= BITSET_MAX_RANGE {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                let scratch = &mut *scratch;
                if range <= BYTEMAP_MAX_RANGE {
                    let size = range as usize;
                    if scratch.bytes.len() < size {
                        // A fresh table is all zero: no id is marked with any stamp (stamps skip 0).
                        scratch.bytes = Table::zeroed("range_max", size)?;
                        scratch.bytes_used = 0;
                    }
                    // Every byte is at most `scratch.stamp`, so the next stamp marks nothing yet.
                    if scratch.stamp == u8::MAX || scratch.bytes_dirty {
                        // Every stamp has been used: start afresh (beyond `bytes_used`, all is zero).
                        let used = if scratch.bytes_dirty { scratch.bytes.len() } else { scratch.bytes_used };
                        scratch.bytes[..used].fill(0);
                        scratch.stamp = 0;
                        scratch.bytes_used = 0;
                        scratch.bytes_dirty = false;
                    }
                    let stamp = scratch.stamp + 1;
                    // A draw of few ids from a large map puts its bytes back to 0 afterwards (a store per
                    // id) instead of spending the stamp, whose wrap-around clears the whole map.
                    let erase = (n as u64).saturating_mul(ERASE_RATIO) < range;
                    if erase {
                        scratch.bytes_dirty = true;
                    } else {
                        scratch.stamp = stamp;
                        scratch.bytes_used = scratch.bytes_used.max(size);
                    }
                    let map = &mut Bytes { map: &mut scratch.bytes[..size], stamp };
                    let r = c.run_with(dist, key, n, len, avoid, map);
                    if erase {
                        // The marked bytes are exactly those of the ids collected, even after an error.
                        for &id in &c.out {
                            scratch.bytes[id as usize] = 0;
                        }
                        scratch.bytes_dirty = false;
                    }
                    return r;
                }
                if scratch.dirty {
                    scratch.bits.fill(0);
                }
                scratch.dirty = true;
                let words = range.div_ceil(64) as usize;
                if scratch.bits.len() < words {
                    scratch.bits = Table::zeroed("range_max", words)?;
                }
                let map = &mut Bits(&mut scratch.bits[..words]);
                let r = c.run_with(dist, key, n, len, avoid, map);
                // Clear exactly the bits set: those of the ids collected.
                for &id in &c.out {
                    scratch.bits[(id >> 6) as usize] = 0;
                }
                scratch.dirty = false;
                r
            }
            // Re-entered on this thread (cannot happen today): use a private set.
            Err(_) => c.run_with(dist, key, n, len, avoid, &mut IdSet::with_capacity(n)),
        })?;
    } else {
        c.run_with(dist, key, n, len, avoid, &mut IdSet::with_capacity(n))?;
    }
    let tries = c.tries;
    let mut out = c.out;
    out.truncate(n);
    Ok((out, if unique { tries } else { n as u64 }))
}

/// Some(r) when `missing` more accepted draws are hopeless within `budget` more raw draws, where r is the
/// probability that a raw draw is accepted, r = 1 - Σ P(avoided) - Σ P(collected) (it only falls as more is
/// collected). The number of accepted draws among `budget` is then at most binomial with mean μ = r·budget,
/// so the chance of `missing` or more is below the Chernoff bound e^-μ (e μ / missing)^missing; hopeless
/// means that bound is below 1e-9, or that the expected number of draws, `missing / r`, exceeds the budget
/// a thousandfold, or that r is zero up to rounding.
///
/// Without this, classes whose probability is positive in theory but negligible in practice (a weight of
/// 1e-300 next to 1e300, a Zipf exponent of 50, one count of 10^12 among a thousand counts of 1) would keep
/// unique sampling busy for the whole `MAX_TRIES` draws: seconds to minutes before the error. The sum is
/// compensated (Neumaier), so r is exact to about 1e-15, far below the thresholds that matter (>= 1 / 2^31
/// for a request that can succeed).
fn out_of_reach(
    dist: &dyn Distribution,
    collected: &[u64],
    avoided_mass: f64,
    missing: usize,
    budget: u64,
) -> Option<f64> {
    const BLOCK: usize = 1024;
    let mut p = [0f64; BLOCK];
    let (mut sum, mut comp) = (avoided_mass, 0.0f64);
    for ids in collected.chunks(BLOCK) {
        let p = &mut p[..ids.len()];
        dist.prob_into(ids, p);
        for &x in p.iter() {
            let t = sum + x;
            comp += if sum.abs() >= x.abs() { (sum - t) + x } else { (x - t) + sum };
            sum = t;
        }
    }
    let r = (1.0 - sum) - comp;
    let k = missing as f64;
    let mu = r * budget as f64;
    let log_chernoff = if mu < k { -mu + k * (1.0 + (mu / k).ln()) } else { 0.0 };
    let hopeless = !(r > 0.0) || k / r > 1000.0 * budget as f64 || log_chernoff < -20.7; // ln 1e-9
    hopeless.then_some(r.max(0.0))
}

/// Below this scaled P, [`count_exponents`] takes ln(1 - q) from its series to the degree 6
/// (`Counts::Series`); up to LONG_SERIES_MAX to the degree 12 (`Counts::LongSeries`); above, the exact
/// logarithm (`Counts::Mixed`). The middle tier spares the heads of Zipfian laws the logarithm: P(0) of a
/// log-uniform over 10^6 classes is 0.05.
const SERIES_MAX: f64 = 1.0 / 128.0;
const LONG_SERIES_MAX: f64 = 1.0 / 16.0;

/// How `count_exponents` computes, by the largest scaled P of a block.
#[derive(Clone, Copy, PartialEq)]
enum Counts {
    /// Every scaled P below SERIES_MAX.
    Series,
    /// Every scaled P below LONG_SERIES_MAX.
    LongSeries,
    /// Some scaled P at or above LONG_SERIES_MAX: those take the exact logarithm, the others the long series.
    Mixed,
}

simd! {
    /// The exponent of the expected count of each probability (see the module doc): in the unique case
    /// the count is 1 - e^x with x = num_tries ln(1 - q), q = P scale rounded to float32 as TensorFlow
    /// does. -ln(1 - q) = q (1 + q/2 + q²/3 + ...): to q⁶/7 for q < 2^-7 and to q¹²/13 for q < 2^-4 (the
    /// first omitted term below 2^-55 relative in both); larger q (only with `Counts::Mixed`) use the
    /// logarithm of 1 - q, which is exact in float64 there (q is a float32 value).
    fn count_exponents(p: &[f64], x: &mut [f64], scale: f64, num_tries: f64, how: Counts) {
        for (o, &q) in x.iter_mut().zip(p) {
            let q = ((q * scale) as f32) as f64;
            // c = 1 + q/2 + q²/3 + ..., by Estrin's scheme (short dependency chains).
            let q2 = q * q;
            let q4 = q2 * q2;
            let lo = q2.mul_add(q.mul_add(0.25, 1.0 / 3.0), q.mul_add(0.5, 1.0));
            let hi = q2.mul_add(1.0 / 7.0, q.mul_add(1.0 / 6.0, 0.2));
            let c = if how == Counts::Series {
                q4.mul_add(hi, lo)
            } else {
                // Terms q⁶/7 .. q¹²/13 as q⁴ (q²/7 + q³/8 + ...) added to the degree-5 part.
                let a = q2.mul_add(q.mul_add(1.0 / 10.0, 1.0 / 9.0), q.mul_add(1.0 / 8.0, 1.0 / 7.0));
                let b = q2.mul_add(1.0 / 13.0, q.mul_add(1.0 / 12.0, 1.0 / 11.0));
                let up = q4.mul_add(b, a);
                let mid = q.mul_add(1.0 / 6.0, 0.2);
                q4.mul_add(q2.mul_add(up, mid), lo)
            };
            let mut l = -(q * c);
            if how == Counts::Mixed {
                // q = 1 (all the mass in one class) is certain to be drawn: ln(0) = -inf gives 1 - e^x = 1.
                let exact = if q >= 1.0 { f64::NEG_INFINITY } else { vmath::ln(1.0 - q) };
                l = if q >= LONG_SERIES_MAX { exact } else { l };
            }
            *o = num_tries * l;
        }
    }
}

simd! {
    /// Expected counts of draws with replacement (or no rejection): P scale, rounded to float32, times
    /// num_sampled, as TensorFlow computes them.
    fn plain_counts(p: &[f64], out: &mut [f32], scale: f64, num_sampled: f32) {
        for (o, &q) in out.iter_mut().zip(p) {
            *o = ((q * scale) as f32) * num_sampled;
        }
    }
}

simd! {
    /// The largest of non-negative numbers, through their bit patterns (which order them the same way), so
    /// that the loop vectorises.
    fn max_bits(p: &[f64]) -> u64 {
        p.iter().map(|q| q.to_bits()).fold(0, u64::max)
    }
}

/// The expected counts of `ids` (validated) after a draw of `num_sampled` candidates that took `num_tries`
/// draws, with P scaled by `scale`.
pub fn expected_counts(
    dist: &dyn Distribution,
    ids: &[u64],
    num_sampled: u64,
    num_tries: u64,
    scale: f64,
    out: &mut [f32],
) {
    const BLOCK: usize = 256;
    let mut p = [0f64; BLOCK];
    let mut x = [0f64; BLOCK];
    // Below these unscaled P, P * scale is below SERIES_MAX / LONG_SERIES_MAX (with room for rounding).
    let small = SERIES_MAX / scale * (1.0 - 1e-9);
    let medium = LONG_SERIES_MAX / scale * (1.0 - 1e-9);
    for (idc, oc) in ids.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let p = &mut p[..idc.len()];
        dist.prob_into(idc, p);
        if num_tries == num_sampled {
            plain_counts(p, oc, scale, num_sampled as f32);
            continue;
        }
        let largest = f64::from_bits(max_bits(p));
        let how = if largest < small {
            Counts::Series
        } else if largest < medium {
            Counts::LongSeries
        } else {
            Counts::Mixed
        };
        let x = &mut x[..idc.len()];
        count_exponents(p, x, scale, num_tries as f64, how);
        vmath::one_minus_exp_into(x, oc);
    }
}

/// Expected counts of `ids` for a draw of `num_sampled` candidates that took `num_tries` draws
/// (`num_tries == num_sampled` for draws with replacement, or without but with no rejection).
pub fn expected_counts_for(
    dist: &dyn Distribution,
    ids: &[i64],
    num_sampled: i64,
    num_tries: i64,
) -> Result<Vec<f32>> {
    let n = check_num_sampled(num_sampled)?;
    if num_tries < num_sampled {
        return Err(Error::value(
            "num_tries",
            format!("must be >= num_sampled ({num_sampled}), got {num_tries}"),
        ));
    }
    let ids = super::check_ids("ids", ids, dist.range_max())?;
    let mut out: Vec<f32> = zeroed("ids", ids.len())?;
    expected_counts(dist, ids, n as u64, num_tries as u64, 1.0, &mut out);
    Ok(out)
}

fn check_num_sampled(num_sampled: i64) -> Result<usize> {
    if num_sampled < 0 {
        return Err(Error::value("num_sampled", format!("must be >= 0, got {num_sampled}")));
    }
    if num_sampled as u64 > MAX_SAMPLED {
        return Err(Error::too_large("num_sampled", format!("{num_sampled} is more than 2^36")));
    }
    Ok(num_sampled as usize)
}

/// Reinterpret ids (all below 2^62) as int64 without copying.
fn to_i64(ids: Vec<u64>) -> Vec<i64> {
    let mut ids = std::mem::ManuallyDrop::new(ids);
    let (ptr, len, cap) = (ids.as_mut_ptr(), ids.len(), ids.capacity());
    // SAFETY: u64 and i64 have the same size and alignment, the allocation is handed over whole (the
    // original Vec is never dropped), and every id is below 2^62, so its value is the same as an i64.
    unsafe { Vec::from_raw_parts(ptr as *mut i64, len, cap) }
}

/// Draws with replacement and nothing avoided: every draw is kept, so each chunk draws its ids and their
/// expected counts (`P * n`) in one pass while they are in cache.
fn plain_sample(
    dist: &dyn Distribution,
    key: u64,
    n: usize,
    truth: Option<&[u64]>,
    parallel: bool,
) -> Result<Sample> {
    let len = chunk_len(n);
    let (ids, ec) = fill_together::<u64, f32, _>("num_sampled", n, len, parallel, |c, i, e| {
        dist.draw(&mut Stream::new(derive(key, c as u64)), i);
        expected_counts(dist, i, n as u64, n as u64, 1.0, e);
    })?;
    let true_expected = match truth {
        Some(t) => {
            let mut te: Vec<f32> = zeroed("true_classes", t.len())?;
            expected_counts(dist, t, n as u64, n as u64, 1.0, &mut te);
            Some(te)
        }
        None => None,
    };
    Ok(Sample { ids: to_i64(ids), true_expected, sampled_expected: ec, num_tries: n as u64 })
}

/// One set of `num_sampled` candidates for the whole batch, from the stream `key`.
/// `true_classes` (flattened, any shape) gets expected counts under the unrestricted P; with `remove_true`
/// no candidate is one of them.
pub fn sample(
    dist: &dyn Distribution,
    key: u64,
    num_sampled: i64,
    unique: bool,
    true_classes: Option<&[i64]>,
    remove_true: bool,
) -> Result<Sample> {
    let n = check_num_sampled(num_sampled)?;
    let range = dist.range_max();
    let truth = true_classes.map(|t| super::check_ids("true_classes", t, range)).transpose()?;
    let avoid = match (&truth, remove_true) {
        (Some(t), true) => Some(Avoid::new(dist, t)),
        _ => None,
    };
    // Bytes per candidate: ids and counts, plus the draw buffer without replacement or with exclusions,
    // plus the hash set (up to 4n slots and n indices) of unique draws over large ranges.
    let per_id: u128 = match (unique, avoid.is_some()) {
        (false, false) => 12,
        _ if unique && range > BITSET_MAX_RANGE => 60,
        _ => 20,
    };
    let truth_len = truth.as_ref().map_or(0, |t| t.len()) as u128;
    ensure_memory("num_sampled", n as u128 * per_id + truth_len * 4)?;
    if !unique && avoid.is_none() {
        plain_sample(dist, key, n, truth, threads::num_threads() > 1 && n >= PARALLEL_MIN)
    } else {
        drawn_sample(dist, key, n, unique, truth, avoid.as_ref())
    }
}

/// A sample without replacement or with exclusions: `draw`, then the expected counts. On the calling
/// thread: the de-duplication is sequential, and the counts read what it wrote, which other cores would
/// have to fetch from this one's cache first (see `Collect::run`).
fn drawn_sample(
    dist: &dyn Distribution,
    key: u64,
    n: usize,
    unique: bool,
    truth: Option<&[u64]>,
    avoid: Option<&Avoid>,
) -> Result<Sample> {
    let (ids, tries) = draw(dist, key, n, unique, avoid)?;
    let scale = avoid.map_or(1.0, |a| 1.0 / (1.0 - a.mass));
    let mut sampled_expected: Vec<f32> = zeroed("num_sampled", n)?;
    expected_counts(dist, &ids, n as u64, tries, scale, &mut sampled_expected);
    let true_expected = match truth {
        Some(t) => {
            let mut te: Vec<f32> = zeroed("true_classes", t.len())?;
            expected_counts(dist, t, n as u64, tries, 1.0, &mut te);
            Some(te)
        }
        None => None,
    };
    Ok(Sample { ids: to_i64(ids), true_expected, sampled_expected, num_tries: tries })
}

/// One group of rows of a per-row sample: ids, sampled and true counts, tries, and how the group went.
type PerRowPart<'a> = ((((&'a mut [i64], &'a mut [f32]), &'a mut [f32]), &'a mut [i64]), &'a mut Result<()>);

/// A separate set of `num_sampled` candidates for each of the `rows` rows of `true_classes`
/// (row-major, `num_true` per row). Row r draws from the stream `derive(key, r)`.
pub fn sample_per_row(
    dist: &dyn Distribution,
    key: u64,
    true_classes: &[i64],
    num_true: usize,
    num_sampled: i64,
    unique: bool,
    remove_true: bool,
) -> Result<PerRowSample> {
    let s = check_num_sampled(num_sampled)?;
    if num_true == 0 {
        return Err(Error::shape("true_classes", "needs at least one true class per row"));
    }
    if true_classes.len() % num_true != 0 {
        return Err(Error::shape("true_classes", "length is not a multiple of num_true"));
    }
    let rows = true_classes.len() / num_true;
    let truth = super::check_ids("true_classes", true_classes, dist.range_max())?;
    let total =
        rows.checked_mul(s).ok_or_else(|| Error::too_large("num_sampled", "rows × num_sampled overflows"))?;
    if total as u64 > MAX_SAMPLED {
        return Err(Error::too_large(
            "num_sampled",
            format!("rows × num_sampled = {total} is more than 2^36"),
        ));
    }
    // Ids and counts of every row, the rows' counts and tries; each row's own scratch is small.
    ensure_memory("num_sampled", total as u128 * 12 + truth.len() as u128 * 4 + rows as u128 * 8)?;
    let mut ids: Vec<i64> = zeroed("num_sampled", total)?;
    let mut sampled_expected: Vec<f32> = zeroed("num_sampled", total)?;
    let mut true_expected: Vec<f32> = zeroed("true_classes", truth.len())?;
    let mut num_tries: Vec<i64> = zeroed("true_classes", rows)?;

    let row = |r: usize, ids: &mut [i64], se: &mut [f32], te: &mut [f32], tries: &mut i64| -> Result<()> {
        let t = &truth[r * num_true..(r + 1) * num_true];
        let avoid = if remove_true { Some(Avoid::new(dist, t)) } else { None };
        let (drawn, n_tries) = draw(dist, derive(key, r as u64), s, unique, avoid.as_ref())?;
        let scale = avoid.as_ref().map_or(1.0, |a| 1.0 / (1.0 - a.mass));
        expected_counts(dist, &drawn, s as u64, n_tries, scale, se);
        expected_counts(dist, t, s as u64, n_tries, 1.0, te);
        for (o, k) in ids.iter_mut().zip(drawn) {
            *o = k as i64;
        }
        *tries = n_tries as i64;
        Ok(())
    };
    // Rows go to threads in groups; each row's result is its own, whatever thread ran it.
    let group = (ROW_GROUP / s.max(1)).clamp(1, 256);
    let s1 = s.max(1);
    let groups = rows.div_ceil(group);
    let mut status: Vec<Result<()>> = (0..groups).map(|_| Ok(())).collect();
    let parts: Vec<_> = ids
        .chunks_mut(group * s1)
        .zip(sampled_expected.chunks_mut(group * s1))
        .zip(true_expected.chunks_mut(group * num_true))
        .zip(num_tries.chunks_mut(group))
        .zip(status.iter_mut())
        .collect();
    let run_group = |g: usize, ((((ids, se), te), tries), status): &mut PerRowPart<'_>| {
        **status = (0..tries.len()).try_for_each(|i| {
            row(
                g * group + i,
                &mut ids[i * s..(i + 1) * s],
                &mut se[i * s..(i + 1) * s],
                &mut te[i * num_true..(i + 1) * num_true],
                &mut tries[i],
            )
        });
    };
    if threads::num_threads() > 1 && total >= PARALLEL_MIN && rows > group {
        threads::run_parts(parts, run_group);
    } else {
        parts.into_iter().enumerate().for_each(|(g, mut p)| run_group(g, &mut p));
    }
    status.into_iter().collect::<Result<()>>()?;
    Ok(PerRowSample { ids, true_expected, sampled_expected, num_tries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{LogUniform, Uniform, Unigram};

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn unique_draws_are_distinct_and_counted() {
        let d = LogUniform::new(1000).unwrap();
        let s = sample(&d, 1, 500, true, None, false).unwrap();
        let set: std::collections::HashSet<i64> = s.ids.iter().copied().collect();
        assert_eq!(set.len(), 500);
        assert!(s.ids.iter().all(|&k| (0..1000).contains(&k)));
        assert!(s.num_tries > 500);
        assert_eq!(s, sample(&d, 1, 500, true, None, false).unwrap());
        assert_ne!(s.ids, sample(&d, 2, 500, true, None, false).unwrap().ids);
        // Every class: exactly the whole range.
        let all = sample(&d, 3, 1000, true, None, false).unwrap();
        let mut ids = all.ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..1000).collect::<Vec<i64>>());
    }

    /// Two-sample chi-square of equal-sized samples over cells: sum of (a - b)^2 / (a + b); (statistic, df).
    fn two_sample_chi_square(cells: &[(f64, f64)]) -> (f64, usize) {
        let used: Vec<_> = cells.iter().filter(|(a, b)| a + b > 0.0).collect();
        let stat = used.iter().map(|(a, b)| (a - b) * (a - b) / (a + b)).sum();
        (stat, used.len().max(2) - 1)
    }

    #[test]
    fn skipping_collected_heads_keeps_the_law_of_the_sample() {
        // Unique samples that skip the draws of collected heads (counted by a negative binomial) against
        // the same samples drawing everything (seeds apart): num_tries and the inclusion of each part of
        // the range must have one law. Log-uniform: byte map with the fused kernel (10^6), byte map without
        // (1000, heavy rejection), bit map (2^25) and hash set (10^8); Zipf (rejection-inversion).
        use crate::sampler::testutil::chi_square_bound;
        use crate::sampler::Zipf;
        let log_uniform = |r: i64| Box::new(LogUniform::new(r).unwrap()) as Box<dyn Distribution>;
        for (d, n, runs) in [
            (log_uniform(1000), 400i64, 3000u64),
            (log_uniform(1_000_000), 8192, 800),
            (log_uniform(1 << 25), 8192, 400),
            (log_uniform(100_000_000), 8192, 400),
            (Box::new(Zipf::new(10_000, 1.1).unwrap()), 1000, 400),
        ] {
            let d = d.as_ref();
            let range = d.range_max() as i64;
            let mut tries = [vec![], vec![]];
            // Inclusions per cell of ids: [0, 2^j) boundaries, doubling, up to the range.
            let edges: Vec<i64> =
                (0..40).map(|j| (1i64 << j) - 1).take_while(|&e| e < range).chain([range]).collect();
            let mut incl = [vec![0f64; edges.len() - 1], vec![0f64; edges.len() - 1]];
            let (mut skipped, mut all_tries) = (0u64, 0u64);
            for (which, base) in [(0usize, 0u64), (1, 1 << 32)] {
                NEVER_SKIP.set(which == 1);
                for r in 0..runs {
                    let before = SKIPPED.get();
                    let s = sample(d, base + r, n, true, None, false).unwrap();
                    if which == 0 {
                        skipped += SKIPPED.get() - before;
                        all_tries += s.num_tries;
                    } else {
                        assert_eq!(SKIPPED.get(), before);
                    }
                    tries[which].push(s.num_tries);
                    for &k in &s.ids {
                        let cell = edges.partition_point(|&e| e <= k) - 1;
                        incl[which][cell] += 1.0;
                    }
                }
            }
            NEVER_SKIP.set(false);
            // Skipping did its work: an eighth of the tries or more were counted, not drawn (a fifth to a
            // third, measured).
            assert!(skipped * 8 > all_tries, "range {range}: {skipped} of {all_tries} tries skipped");
            // num_tries: cells at the pooled sample's 20-quantiles.
            let mut pooled: Vec<u64> = tries.concat();
            pooled.sort_unstable();
            let mut cuts: Vec<u64> = (1..20).map(|q| pooled[q * pooled.len() / 20]).collect();
            cuts.dedup();
            let cell_of = |t: u64| cuts.partition_point(|&c| c <= t);
            let mut cells = vec![(0f64, 0f64); cuts.len() + 1];
            for &t in &tries[0] {
                cells[cell_of(t)].0 += 1.0;
            }
            for &t in &tries[1] {
                cells[cell_of(t)].1 += 1.0;
            }
            let (chi, df) = two_sample_chi_square(&cells);
            assert!(chi < chi_square_bound(df), "range {range}: num_tries chi2 {chi} df {df}");
            // Mean tries agree too (a plain check of the scale, 5 standard errors).
            let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
            let sd = {
                let m = mean(&pooled);
                (pooled.iter().map(|&t| (t as f64 - m).powi(2)).sum::<f64>() / pooled.len() as f64).sqrt()
            };
            let gap = (mean(&tries[0]) - mean(&tries[1])).abs();
            assert!(gap < 5.0 * sd * (2.0 / runs as f64).sqrt(), "range {range}: mean tries differ by {gap}");
            // Inclusions per octave of ids (each sample holds n distinct ids, so the totals are equal).
            let cells: Vec<(f64, f64)> = incl[0].iter().copied().zip(incl[1].iter().copied()).collect();
            let (chi, df) = two_sample_chi_square(&cells);
            assert!(chi < chi_square_bound(df), "range {range}: inclusions chi2 {chi} df {df}");
        }
    }

    #[test]
    fn every_tier_of_the_counts_matches_the_formula() {
        // Blocks whose largest P is below 2^-7 (short series), below 2^-4 (long series) or above (exact
        // logarithm for those): each must give -expm1(t log1p(-q)) to the float32 ulp.
        for range in [20i64, 1000, 10_000, 1_000_000, 1 << 40] {
            let d = LogUniform::new(range).unwrap();
            let head: Vec<i64> = (0..300.min(range)).collect();
            let tail: Vec<i64> = (0..300).map(|i| range / 2 + i).filter(|&k| k < range).collect();
            for ids in [&head, &tail] {
                for tries in [301i64, 5000, 1 << 20] {
                    let got = expected_counts_for(&d, ids, 300, tries).unwrap();
                    for (&k, &e) in ids.iter().zip(&got) {
                        let q = (d.prob(k as u64) as f32) as f64;
                        let want = -(tries as f64 * (-q).ln_1p()).exp_m1() as f32;
                        assert!(ulps(e, want) <= 1, "range {range} k={k} tries {tries}: {e} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn expected_counts_follow_the_formulas() {
        let d = LogUniform::new(1000).unwrap();
        let truth = [0i64, 5, 100, 999];
        let s = sample(&d, 4, 64, true, Some(&truth), false).unwrap();
        let n = s.num_tries as f64;
        for (&k, &e) in
            s.ids.iter().zip(&s.sampled_expected).chain(truth.iter().zip(s.true_expected.as_ref().unwrap()))
        {
            let p = (d.prob(k as u64) as f32) as f64;
            let want = -(n * (-p).ln_1p()).exp_m1() as f32;
            assert!(ulps(e, want) <= 1, "k={k}: {e} vs {want}");
        }
        // Without replacement but no rejection, and with replacement: P rounded to float32, times S.
        let s = sample(&d, 4, 2, true, Some(&truth), false).unwrap();
        if s.num_tries == 2 {
            assert_eq!(s.true_expected.as_ref().unwrap()[0], (d.prob(0) as f32) * 2.0);
        }
        let s = sample(&d, 4, 6, false, Some(&truth), false).unwrap();
        for (&k, &e) in truth.iter().zip(s.true_expected.as_ref().unwrap()) {
            assert_eq!(e, (d.prob(k as u64) as f32) * 6.0);
        }
    }

    #[test]
    fn removed_classes_are_never_drawn_and_p_is_renormalised() {
        let d = LogUniform::new(50).unwrap();
        let truth = [0i64, 1, 2, 3];
        for unique in [true, false] {
            let s = sample(&d, 5, 40, unique, Some(&truth), true).unwrap();
            assert!(s.ids.iter().all(|k| !truth.contains(k)));
            let removed: f64 = (0..4).map(|k| d.prob(k)).sum();
            let k = s.ids[0] as u64;
            let p = (d.prob(k) / (1.0 - removed)) as f32;
            if !unique {
                assert_eq!(s.sampled_expected[0], p * 40.0);
            }
            // The true classes keep the unrestricted P.
            let p0 = d.prob(0) as f32;
            if !unique {
                assert_eq!(s.true_expected.as_ref().unwrap()[0], p0 * 40.0);
            }
        }
        // Exactly the rest of the range.
        let s = sample(&d, 5, 46, true, Some(&truth), true).unwrap();
        assert_eq!(s.ids.len(), 46);
        assert!(sample(&d, 5, 47, true, Some(&truth), true).is_err());
    }

    #[test]
    fn impossible_requests_are_errors_not_hangs() {
        let d = Uniform::new(10).unwrap();
        assert!(matches!(sample(&d, 1, 11, true, None, false), Err(Error::TooFewClasses { .. })));
        assert!(sample(&d, 1, 11, false, None, false).is_ok());
        assert!(matches!(sample(&d, 1, -1, true, None, false), Err(Error::Value { .. })));
        assert!(matches!(sample(&d, 1, 3, true, Some(&[10]), false), Err(Error::IdOutOfRange { .. })));
        // Zero weights are never drawn, so they do not count as available classes.
        let u = Unigram::from_weights(vec![1.0, 0.0, 2.0, 0.0], "unigrams").unwrap();
        assert!(sample(&u, 1, 2, true, None, false).is_ok());
        assert!(matches!(sample(&u, 1, 3, true, None, false), Err(Error::TooFewClasses { .. })));
        assert!(matches!(sample(&u, 1, 1, false, Some(&[0, 2]), true), Err(Error::TooFewClasses { .. })));
    }

    /// The number of draws an impossible request reports having made before it gave up.
    /// The draws made before `f` gave up with TooFewClasses (the message's count; draws counted as
    /// certain rejections but not made follow in parentheses).
    fn draws_before_giving_up<T: std::fmt::Debug>(f: impl FnOnce() -> Result<T>) -> u64 {
        match f() {
            Err(Error::TooFewClasses { msg, .. }) => {
                let words: Vec<&str> = msg.split(' ').collect();
                assert_eq!(words[..2], ["gave", "up"], "{msg}");
                words[3].parse::<u64>().unwrap()
            }
            other => panic!("expected TooFewClasses, got {other:?}"),
        }
    }

    #[test]
    fn negligible_classes_end_in_an_early_error() {
        // Positive weights whose probabilities vanish in float64: before the mass check these ran the full
        // 2^31 draws (45 s and over 5 minutes on the CI machine) before failing.
        let u = Unigram::from_weights(vec![1e300, 1e-300, 5e-324, 0.0], "unigrams").unwrap();
        assert!(draws_before_giving_up(|| sample(&u, 1, 3, true, None, false)) < 1 << 20);
        // Zipf skips its collected head (P(0) = 1 - 1e-15): the message counts the draws made and, apart,
        // the many more counted as certain rejections.
        let z = crate::sampler::Zipf::new(1_000_000_000, 50.0).unwrap();
        assert!(draws_before_giving_up(|| sample(&z, 1, 20, true, None, false)) < 1 << 20);
        let msg = format!("{:?}", sample(&z, 1, 20, true, None, false).unwrap_err());
        assert!(msg.contains("more counted as certain rejections"), "{msg}");
        let t = [0i64];
        assert!(draws_before_giving_up(|| sample_per_row(&z, 1, &t, 1, 20, true, false)) < 1 << 20);
        // All the mass removed, with replacement: every draw is avoided.
        let z = crate::sampler::Zipf::new(10, 1e300).unwrap();
        assert!(draws_before_giving_up(|| sample(&z, 1, 1, false, Some(&t), true)) < 1 << 20);
        // A request that is merely slow still succeeds: all but one of 2^16 log-uniform classes.
        let d = LogUniform::new(1 << 16).unwrap();
        assert_eq!(sample(&d, 1, (1 << 16) - 1, true, None, false).unwrap().ids.len(), (1 << 16) - 1);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = LogUniform::new(1_000_000).unwrap();
        let truth: Vec<i64> = (0..3000).map(|i| (i * 37) % 5000).collect();
        let run = || {
            (
                sample(&d, 9, 50_000, true, Some(&truth), false).unwrap(),
                sample(&d, 9, 70_000, false, Some(&truth), false).unwrap(),
                sample_per_row(&d, 9, &truth, 3, 20, true, true).unwrap(),
            )
        };
        threads::set_num_threads(1).unwrap();
        let one = run();
        threads::set_num_threads(3).unwrap();
        let three = run();
        threads::set_num_threads(2).unwrap();
        assert_eq!(one, three);
    }

    #[test]
    fn fused_draw_and_scan_equals_draw_then_scan() {
        // `Distribution::draw_scan` must give what drawing the chunk and scanning it gives: the same ids in
        // the same places, the same counts of new ids and of draws used, whatever the stopping point, on
        // maps that already hold ids of the call, from the whole range or above a head. (Where the CPU has
        // no kernel, None is allowed.)
        let mut compared = 0;
        let cases = [(1_000_000i64, 4096usize, 0u64), (1000, 128, 0), (7, 64, 0), (1 << 22, 512, 0)]
            .into_iter()
            .chain([(1_000_000, 4096, 150), (1000, 128, 999), (7, 64, 3), (1 << 22, 512, 20_000)]);
        for (range, len, from) in cases {
            let d = LogUniform::new(range).unwrap();
            let size = range as usize;
            for (key, want) in [(1u64, 1usize), (2, 5), (3, 100), (4, len / 2), (5, len), (6, len + 1)] {
                let mut draws = vec![0u64; len];
                d.draw_above(&mut Stream::new(key), &mut draws, from);
                assert!(draws.iter().all(|&k| k >= from && k < range as u64));
                let (mut map_a, mut map_b) = (vec![0u8; size], vec![0u8; size]);
                // Ids seen earlier in the call (stamp 3) and stale ones of an earlier call (stamp 2).
                for (i, &id) in draws.iter().enumerate().step_by(7) {
                    map_a[id as usize] = 2 + (i % 2) as u8;
                    map_b[id as usize] = 2 + (i % 2) as u8;
                }
                let (mut free_a, mut free_b) =
                    (vec![MaybeUninit::new(0); want + 1], vec![MaybeUninit::new(0); want + 1]);
                let mut a = ByteScan { map: &mut map_a, stamp: 3, free: &mut free_a, want };
                let want_got = a.scan(&draws);
                let mut b = ByteScan { map: &mut map_b, stamp: 3, free: &mut free_b, want };
                let Some(got) = d.draw_scan(&mut Stream::new(key), len, from, &mut b) else { continue };
                assert_eq!(got, want_got, "range {range} key {key} want {want}");
                let ids = |f: &[MaybeUninit<u64>]| {
                    // SAFETY: every place was initialised (to 0) when the buffers were made.
                    f[..got.0].iter().map(|x| unsafe { x.assume_init() }).collect::<Vec<_>>()
                };
                assert_eq!(ids(&free_a), ids(&free_b), "range {range} key {key} want {want}");
                assert!(map_a == map_b, "range {range} key {key} want {want}");
                compared += 1;
            }
        }
        #[cfg(target_arch = "x86_64")]
        assert!(compared == 48 || !crate::vmath::has_avx512(), "the kernel ran {compared} times of 48");
    }

    #[test]
    fn erased_and_stamped_uses_of_the_byte_map_mix() {
        // Small draws from a large byte map erase their marks; larger ones spend stamps (and clear the map
        // every 255). Interleaved over more than 255 stamps, each call must see a clean map: the same
        // result every time, and the same as on a fresh thread.
        let d = LogUniform::new(1 << 20).unwrap();
        let small = sample(&d, 5, 20, true, None, false).unwrap();
        let large = sample(&d, 6, 3000, true, None, false).unwrap();
        for i in 0..700 {
            assert_eq!(sample(&d, 5, 20, true, None, false).unwrap(), small, "call {i}");
            if i % 2 == 0 {
                assert_eq!(sample(&d, 6, 3000, true, None, false).unwrap(), large, "call {i}");
            }
        }
        // Stamps wrapping around while a smaller range is in use must still clear what the larger one
        // marked: on a fresh thread (stamps from 0), the large draw takes stamp 11, and after 254 narrow
        // draws (stamps 12..=255, then 1..=10) stamp 11 comes round to it again.
        let wide = d.clone();
        let check = std::thread::spawn(move || {
            let d = wide;
            let narrow = LogUniform::new(3000).unwrap();
            let narrow_draws = |k: usize| {
                for _ in 0..k {
                    sample(&narrow, 7, 1500, true, None, false).unwrap();
                }
            };
            narrow_draws(10);
            let first = sample(&d, 6, 3000, true, None, false).unwrap();
            narrow_draws(254);
            (first, sample(&d, 6, 3000, true, None, false).unwrap())
        });
        let (first, again) = check.join().unwrap();
        assert_eq!((&first, &again), (&large, &large));
        let fresh = std::thread::spawn(move || {
            (sample(&d, 5, 20, true, None, false).unwrap(), sample(&d, 6, 3000, true, None, false).unwrap())
        });
        assert_eq!(fresh.join().unwrap(), (small, large));
    }

    #[test]
    fn reused_scratch_maps_give_the_same_draws() {
        // The per-thread byte map is reused with a new stamp per draw and cleared when the stamps run out
        // (every 255 uses): many draws in a row must each see a clean map.
        let d = LogUniform::new(3000).unwrap();
        let first = sample(&d, 11, 1500, true, None, false).unwrap();
        for _ in 0..600 {
            assert_eq!(sample(&d, 11, 1500, true, None, false).unwrap(), first);
        }
        let rows: Vec<i64> = (0..700).collect();
        let per_row = sample_per_row(&d, 4, &rows, 1, 40, true, true).unwrap();
        for r in 0..700 {
            let row = &per_row.ids[r * 40..(r + 1) * 40];
            let set: std::collections::HashSet<_> = row.iter().collect();
            assert_eq!(set.len(), 40, "row {r}");
        }
        assert_eq!(per_row, sample_per_row(&d, 4, &rows, 1, 40, true, true).unwrap());
    }

    #[test]
    fn large_plain_samples_are_their_chunks_draws() {
        // 400,000 draws: past the size where the outputs are streamed to memory (and run on several
        // threads); every id and count must be what the chunk's own stream gives.
        let d = LogUniform::new(1_000_000).unwrap();
        let n = 400_000;
        let s = sample(&d, 21, n as i64, false, None, false).unwrap();
        let len = chunk_len(n);
        let mut want = vec![0u64; n];
        want.chunks_mut(len).enumerate().for_each(|(c, piece)| raw_chunk(&d, 21, c as u64, 0, piece));
        assert!(s.ids.iter().zip(&want).all(|(&a, &b)| a as u64 == b));
        let mut ec = vec![0f32; n];
        expected_counts(&d, &want, n as u64, n as u64, 1.0, &mut ec);
        assert_eq!(s.sampled_expected, ec);
    }

    #[test]
    fn per_row_rows_are_independent_of_the_batch() {
        let d = LogUniform::new(10_000).unwrap();
        let truth: Vec<i64> = (0..600).collect();
        let big = sample_per_row(&d, 3, &truth, 1, 16, true, true).unwrap();
        let small = sample_per_row(&d, 3, &truth[..10], 1, 16, true, true).unwrap();
        assert_eq!(&big.ids[..160], &small.ids[..]);
        assert_eq!(&big.num_tries[..10], &small.num_tries[..]);
        for r in 0..600 {
            let row = &big.ids[r * 16..(r + 1) * 16];
            assert!(!row.contains(&(r as i64)));
            let set: std::collections::HashSet<_> = row.iter().collect();
            assert_eq!(set.len(), 16);
        }
    }

    #[test]
    fn id_set_grows_and_finds() {
        let mut s = IdSet::with_capacity(2);
        for i in 0..1000u64 {
            assert!(s.insert(i * 7919));
        }
        for i in 0..1000u64 {
            assert!(!s.insert(i * 7919));
            assert!(s.contains(i * 7919));
        }
        assert!(!s.contains(1));
        assert_eq!(s.len(), 1000);
    }
}
