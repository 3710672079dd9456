//! The public entry points: one sample shared by the batch (`sample`) or one per row (`sample_per_row`),
//! each the draws of `draw.rs` with their expected counts (`counts.rs`); validation of the request, memory
//! checks, and the work split over threads where that pays.

use super::counts::expected_counts;
use super::dedup::BITSET_MAX_RANGE;
use super::draw::{chunk_len, draw, Avoid, Drawn};
use super::{check_num_sampled, Distribution, MAX_SAMPLED};
use crate::buf::{ensure_memory, fill_together_in, out_filled, out_vec};
use crate::error::{Error, Result};
use crate::rng::{derive, Stream};
use crate::threads;

/// Draws with replacement of fewer candidates than this, and per-row draws of fewer in all, stay on the
/// caller's thread; larger ones let the library's other threads help (see `threads::run`). Each thread then
/// draws whole chunks and writes them to their place in the output, so no data passes between threads.
const PARALLEL_MIN: usize = 1 << 12;
/// Per-row sampling hands rows to threads in groups of about this many draws.
const ROW_GROUP: usize = 1 << 12;

/// A set of candidates shared by a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The candidates, `[S]`.
    pub ids: Vec<i64>,
    /// Expected counts of the true classes, `[B, num_true]`, when true classes were given.
    pub true_expected: Option<Vec<f32>>,
    /// Expected counts of the candidates, `[S]`.
    pub sampled_expected: Vec<f32>,
    /// Draws it took (S for draws with replacement).
    pub num_tries: u64,
}

/// A set of candidates per row, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PerRowSample {
    /// The candidates, `[B, S]`.
    pub ids: Vec<i64>,
    /// Expected counts of the true classes, `[B, num_true]`.
    pub true_expected: Vec<f32>,
    /// Expected counts of the candidates, `[B, S]`.
    pub sampled_expected: Vec<f32>,
    /// Draws each row took, `[B]`.
    pub num_tries: Vec<i64>,
}

/// Reinterpret ids (all below 2^62) as int64 without copying.
fn to_i64(ids: Vec<u64>) -> Vec<i64> {
    let mut ids = std::mem::ManuallyDrop::new(ids);
    let (ptr, len, cap) = (ids.as_mut_ptr(), ids.len(), ids.capacity());
    // SAFETY: u64 and i64 have the same size and alignment, the allocation is handed over whole (the
    // original Vec is never dropped), and every id is below 2^62, so its value is the same as an i64.
    unsafe { Vec::from_raw_parts(ptr as *mut i64, len, cap) }
}

/// Reinterpret an id buffer (empty, or ids below 2^62) as unsigned without copying (the inverse of `to_i64`).
pub(super) fn to_u64(ids: Vec<i64>) -> Vec<u64> {
    let mut ids = std::mem::ManuallyDrop::new(ids);
    let (ptr, len, cap) = (ids.as_mut_ptr(), ids.len(), ids.capacity());
    // SAFETY: as in `to_i64`: the same size and alignment, the allocation handed over whole, every bit
    // pattern valid in both types.
    unsafe { Vec::from_raw_parts(ptr as *mut u64, len, cap) }
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
    let into = (to_u64(out_vec::<i64>("num_sampled", n)?), out_vec::<f32>("num_sampled", n)?);
    let (ids, ec) = fill_together_in::<u64, f32, _>("num_sampled", into, n, len, parallel, |c, i, e| {
        dist.draw(&mut Stream::new(derive(key, c as u64)), i);
        expected_counts(dist, i, n as u64, n as u64, 1.0, e);
    })?;
    let true_expected = match truth {
        Some(t) => {
            let mut te: Vec<f32> = out_filled("true_classes", t.len())?;
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
/// have to fetch from this one's cache first (see `Collect::run` in `draw.rs`).
fn drawn_sample(
    dist: &dyn Distribution,
    key: u64,
    n: usize,
    unique: bool,
    truth: Option<&[u64]>,
    avoid: Option<&Avoid>,
) -> Result<Sample> {
    let Drawn { ids, tries, .. } = draw(dist, key, n, unique, avoid)?;
    let scale = avoid.map_or(1.0, |a| 1.0 / (1.0 - a.mass));
    let mut sampled_expected: Vec<f32> = out_filled("num_sampled", n)?;
    expected_counts(dist, &ids, n as u64, tries, scale, &mut sampled_expected);
    let true_expected = match truth {
        Some(t) => {
            let mut te: Vec<f32> = out_filled("true_classes", t.len())?;
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
    if !true_classes.len().is_multiple_of(num_true) {
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
    // (Every element is written below: kept buffers' stale values never show.)
    let mut ids: Vec<i64> = out_filled("num_sampled", total)?;
    let mut sampled_expected: Vec<f32> = out_filled("num_sampled", total)?;
    let mut true_expected: Vec<f32> = out_filled("true_classes", truth.len())?;
    let mut num_tries: Vec<i64> = out_filled("true_classes", rows)?;

    let row = |r: usize, ids: &mut [i64], se: &mut [f32], te: &mut [f32], tries: &mut i64| -> Result<()> {
        let t = &truth[r * num_true..(r + 1) * num_true];
        let avoid = if remove_true { Some(Avoid::new(dist, t)) } else { None };
        let Drawn { ids: drawn, tries: n_tries, .. } =
            draw(dist, derive(key, r as u64), s, unique, avoid.as_ref())?;
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
    use crate::sampler::draw::raw_chunk;
    use crate::sampler::{LogUniform, Uniform, Unigram};

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
}
