//! The draw loop: candidates from chunked streams, accepted in order, with or without replacement and
//! optionally avoiding some classes; `draw` is what every sample, shared or per row, comes from.
//!
//! Draws come in chunks of a fixed length, chunk `c` from its own stream `derive(key, c)`, and are consumed in
//! chunk order. How many chunks are generated ahead, and on how many threads, never changes which draws are
//! consumed, so results depend only on the key and the arguments. Unique sampling rejects repeats
//! sequentially over that chunk-ordered sequence (the sets are in `dedup.rs`); `num_tries` counts the draws
//! it consumed (draws of avoided classes excluded: those are draws from the renormalised distribution).
//! Draws certain to be rejected, those of a head of ids all collected already, are counted rather than made
//! (`Collect::run`); requests that cannot finish end early with an error (`out_of_reach`).

use super::dedup::{with_unique_set, Everything, IdSet, Seen, UniqueDraw, PREFETCH};
use super::{negbin, Distribution};
use crate::buf::{out_vec, zeroed};
use crate::error::{Error, Result};
use crate::rng::{derive, Stream};

/// Unique sampling gives up (with an error) after this many draws rather than appear to hang.
pub const MAX_TRIES: u64 = 1 << 31;

/// The chunk length for a request of `n` draws: a power of two between 64 and 4096, a function of `n` alone.
pub(super) fn chunk_len(n: usize) -> usize {
    n.saturating_add(n / 4).clamp(64, 4096).next_power_of_two()
}

thread_local! {
    /// The buffer for a chunk of draws, kept between calls.
    static CHUNK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A chunk skips the head of collected ids when that head carries at least this probability (below it,
/// drawing the few rejected draws costs less than counting them).
const SKIP_MIN_MASS: f64 = 1.0 / 16.0;
/// The index, under a chunk's key, of the stream that counts its skipped draws.
const SKIPS: u64 = 0x736b_6970;

/// The ids collected so far by a sequential draw, with capacity for one more: the consume loop writes each
/// draw to the next free place before it knows whether the id is new, which saves a branch per draw.
struct Collect {
    out: Vec<u64>,
    /// Draws that were not avoided (each is a draw from the renormalised distribution).
    tries: u64,
    /// Of `tries`, those counted as certain rejections but not made (see `Collect::run`).
    skipped: u64,
}

impl Collect {
    fn new(n: usize) -> Result<Self> {
        // An output buffer kept from an earlier call when there is one (`buf::out_vec`).
        let out = super::candidates::to_u64(out_vec::<i64>("num_sampled", n + 1)?);
        Ok(Collect { out, tries: 0, skipped: 0 })
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
        let (mut consumed, mut made_all) = (0u64, 0u64);
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
                if !AVOID && c > 0 {
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
                self.skipped = self.skipped.saturating_add(skipped);
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
                                made(made_all, self.skipped),
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
                            made(made_all, self.skipped),
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
pub(super) struct Avoid {
    set: IdSet,
    /// Σ P over the avoided ids.
    pub(super) mass: f64,
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

/// A unique draw of `n` ids into `c` (`Collect::run_with` and its arguments), as `with_unique_set` runs it.
struct UniqueRun<'a> {
    c: &'a mut Collect,
    dist: &'a dyn Distribution,
    key: u64,
    n: usize,
    len: usize,
    avoid: Option<&'a Avoid>,
}

impl UniqueDraw for UniqueRun<'_> {
    fn run_in<S: Seen + Default>(&mut self, seen: &mut S) -> Result<()> {
        self.c.run_with(self.dist, self.key, self.n, self.len, self.avoid, seen)
    }

    fn inserted(&self) -> &[u64] {
        &self.c.out
    }
}

/// The raw draws of chunk `c` of the stream `key`, of ids from `from` on.
pub(super) fn raw_chunk(dist: &dyn Distribution, key: u64, c: u64, from: u64, out: &mut [u64]) {
    dist.draw_above(&mut Stream::new(derive(key, c)), out, from)
}

/// The result of [`draw`].
pub(super) struct Drawn {
    /// The candidates, in the order they were accepted.
    pub ids: Vec<u64>,
    /// `num_tries`: the draws it took (`n` with replacement).
    pub tries: u64,
    /// Of `tries`, those counted as certain rejections of a collected head rather than made: no part of any
    /// result, but what tells that skipping took place (the tests compare its law with drawing everything).
    #[cfg_attr(not(test), allow(dead_code))]
    pub skipped: u64,
}

/// Draw `n` candidates from the stream `key`: the first `n` accepted draws in chunk order (a draw is accepted
/// when it is not avoided and, with `unique`, not seen before).
pub(super) fn draw(
    dist: &dyn Distribution,
    key: u64,
    n: usize,
    unique: bool,
    avoid: Option<&Avoid>,
) -> Result<Drawn> {
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
        return Ok(Drawn { ids: out, tries: n as u64, skipped: 0 });
    }
    let mut c = Collect::new(n)?;
    if unique {
        let mut run = UniqueRun { c: &mut c, dist, key, n, len, avoid };
        with_unique_set(dist.range_max(), n, &mut run)?;
    } else {
        c.run_with(dist, key, n, len, avoid, &mut Everything)?;
    }
    let (tries, skipped) = (c.tries, c.skipped);
    let mut ids = c.out;
    ids.truncate(n);
    Ok(Drawn { ids, tries: if unique { tries } else { n as u64 }, skipped })
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
    let hopeless = r.is_nan() || r <= 0.0 || k / r > 1000.0 * budget as f64 || log_chernoff < -20.7; // ln 1e-9
    hopeless.then_some(r.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{sample, sample_per_row, LogUniform, Unigram};

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

    /// The law of `.0` without `head_mass` (the default, None): a unique draw of it never skips.
    struct DrawEverything<'a>(&'a dyn Distribution);

    impl Distribution for DrawEverything<'_> {
        fn range_max(&self) -> u64 {
            self.0.range_max()
        }

        fn support_size(&self) -> u64 {
            self.0.support_size()
        }

        fn prob(&self, k: u64) -> f64 {
            self.0.prob(k)
        }

        fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
            self.0.prob_into(ids, out)
        }

        fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
            self.0.draw(stream, out)
        }
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
            // The same law twice: `d`, whose draws skip, and `every`, which has no `head_mass` and so draws
            // every draw (the draws `sample` makes, which go through `draw` alone).
            let every = DrawEverything(d);
            for (which, base) in [(0usize, 0u64), (1, 1 << 32)] {
                let law: &dyn Distribution = if which == 0 { d } else { &every };
                for r in 0..runs {
                    let s = draw(law, base + r, n as usize, true, None).unwrap();
                    if which == 0 {
                        skipped += s.skipped;
                        all_tries += s.tries;
                    } else {
                        assert_eq!(s.skipped, 0);
                    }
                    tries[which].push(s.tries);
                    for &k in &s.ids {
                        let cell = edges.partition_point(|&e| e <= k as i64) - 1;
                        incl[which][cell] += 1.0;
                    }
                }
            }
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
}
