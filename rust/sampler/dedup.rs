//! Membership sets for unique draws: which ids a draw has already collected.
//!
//! Sets by range (see [`with_unique_set`]): a byte per id for ranges up to 2^24 (reused between calls with
//! a new stamp each time), a bit per id up to 2^26, and a hash set beyond; drawing with replacement uses
//! [`Everything`], for which every id is new. Each is a [`Seen`]: insert-and-test, prefetch hints, the
//! scan of a chunk of draws, and how far the collected ids cover the head of the range. [`ByteScan`] is the
//! byte map's scan as a value, for distributions that draw and de-duplicate in one pass.

use super::Distribution;
use crate::buf::Table;
use crate::error::Result;
use crate::rng::Stream;
use std::mem::MaybeUninit;

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
pub(super) const BITSET_MAX_RANGE: u64 = 1 << 26;

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
}

/// A unique draw, as [`with_unique_set`] runs it: generic over the set, so that each kind of set gets a draw
/// loop compiled for it.
pub(super) trait UniqueDraw {
    /// Draw, inserting into `seen` (empty at the start).
    fn run_in<S: Seen + Default>(&mut self, seen: &mut S) -> Result<()>;

    /// The ids inserted into the set so far: exactly the new ones, also after `run_in` failed.
    fn inserted(&self) -> &[u64];
}

/// Run `draw`, a unique draw of at most `n` ids over `0..range`, with the set that suits the range: this
/// thread's byte map up to `BYTEMAP_MAX_RANGE`, its bit map up to `BITSET_MAX_RANGE`, a hash set of its own
/// beyond (or when the thread's scratch is in use). Whatever `draw` returns, the scratch maps are left
/// clean for the next call.
pub(super) fn with_unique_set(range: u64, n: usize, draw: &mut impl UniqueDraw) -> Result<()> {
    if range > BITSET_MAX_RANGE {
        return draw.run_in(&mut IdSet::with_capacity(n));
    }
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
                let r = draw.run_in(map);
                if erase {
                    // The marked bytes are exactly those of the ids collected, even after an error.
                    for &id in draw.inserted() {
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
            let r = draw.run_in(map);
            // Clear exactly the bits set: those of the ids collected.
            for &id in draw.inserted() {
                scratch.bits[(id >> 6) as usize] = 0;
            }
            scratch.dirty = false;
            r
        }
        // Re-entered on this thread (cannot happen today): use a private set.
        Err(_) => draw.run_in(&mut IdSet::with_capacity(n)),
    })
}

/// Where draws go: a membership test that also inserts.
pub(super) trait Seen {
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
pub(super) struct Everything;

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
        crate::simd::prefetch(b, 1);
    }
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
    let hint = scan.prefetcher();
    let mut taker = scan.taker();
    for (i, &id) in buf.iter().enumerate() {
        if let Some(&ahead) = buf.get(i + PREFETCH) {
            if ahead < range {
                hint.fetch(ahead);
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
/// [`Distribution::draw_scan`].
///
/// Why a distribution sees it: a kernel that draws in vector registers can de-duplicate each id as it comes
/// out (`LogUniform`'s AVX-512 kernel does), which saves the trip of a chunk's draws through memory and lets
/// the draws' arithmetic fill the cycles that the scan's loads and stores leave idle. For that the kernel
/// runs the scan's step inside its own loop, so it needs the step itself, not a function that scans a
/// buffer. This is all it gets:
/// - [`fits`](ByteScan::fits): whether ids below a bound may be taken at all;
/// - [`prefetcher`](ByteScan::prefetcher): cache hints for the map bytes of ids drawn ahead of the scan;
/// - [`taker`](ByteScan::taker): the step, [`Taker::take`], with the scan's state in plain values that
///   the kernel's loop keeps in registers;
/// - [`scan`](ByteScan::scan): the reference that the kernel's results (ids, their places, the counts of
///   new ids and of draws used, and the map) must equal.
///
/// The map, its stamp and the output places stay private to this file: a kernel marks and writes ids only
/// through `take`, so the draw loop's invariants hold whichever path drew the chunk.
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

    /// Cache hints for the map (a copy of its address, which the kernel may use while its [`Taker`] runs).
    pub(crate) fn prefetcher(&self) -> Prefetcher {
        Prefetcher { map: self.map.as_ptr() }
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

/// Cache hints for the map of a [`ByteScan`] (see `ByteScan::prefetcher`).
#[derive(Clone, Copy)]
pub(crate) struct Prefetcher {
    map: *const u8,
}

impl Prefetcher {
    /// Ask the cache for the map byte of `id`: a hint, which never faults (whatever `id`) and changes no
    /// result.
    #[inline(always)]
    pub(crate) fn fetch(self, id: u64) {
        crate::simd::prefetch(self.map.wrapping_add(id as usize), 1)
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
pub(super) const PREFETCH: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{sample, sample_per_row, LogUniform};

    #[test]
    fn fused_draw_and_scan_equals_draw_then_scan() {
        // `Distribution::draw_scan` must give what drawing the chunk and scanning it gives: the same ids in
        // the same places, the same counts of new ids and of draws used, whatever the stopping point, on
        // maps that already hold ids of the call, from the whole range or above a head.
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
        // Every CPU has a kernel for these ranges (the AVX-512 one, or the pieces of `draw_small`).
        assert_eq!(compared, 48, "the kernel ran {compared} times of 48");
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
