//! The sparse weight and bias gradients of a call: per-entry gradient rows summed by class id, over the
//! sorted unique ids.

use super::args::SparseGrad;
use crate::buf::zeroed;
use crate::error::Result;
use crate::float::Float;
use rayon::prelude::*;

/// Sum per-entry gradient rows by class id: `ids[e]` is the class of entry e, `row_of(e, out, first)` adds
/// its row to `out` (or, for the first entry of an id, writes it there), `bias_of(e)` is its bias gradient.
/// Entries of one id are added in entry order.
///
/// Writing each output row before reading it matters: the values are fresh zeroed memory, whose untouched
/// pages read as the shared zero page, so a read-modify-write would fault twice per page (read, then
/// copy-on-write with a TLB shootdown across the library's threads); a first write faults once.
#[allow(clippy::type_complexity)]
pub(super) fn sparse<T: Float>(
    ids: &[i64],
    d: usize,
    row_of: impl Fn(usize, &mut [T], bool) + Sync,
    with_bias: bool,
    bias_of: impl Fn(usize) -> T + Sync,
) -> Result<(SparseGrad<T>, Option<SparseGrad<T>>)> {
    let mut order: Vec<(i64, usize)> = ids.iter().copied().zip(0..).collect();
    order.par_sort_unstable();
    let mut starts: Vec<usize> = Vec::new();
    let mut uniq: Vec<i64> = Vec::new();
    for (i, &(id, _)) in order.iter().enumerate() {
        if uniq.last() != Some(&id) {
            uniq.push(id);
            starts.push(i);
        }
    }
    starts.push(order.len());
    let u = uniq.len();
    let mut values: Vec<T> = zeroed("weights", u * d)?;
    const GROUP: usize = 64;
    values.par_chunks_mut(GROUP * d).enumerate().for_each(|(task, out)| {
        for (i, row) in out.chunks_mut(d).enumerate() {
            let q = task * GROUP + i;
            for (k, &(_, e)) in order[starts[q]..starts[q + 1]].iter().enumerate() {
                row_of(e, row, k == 0);
            }
        }
    });
    let biases = with_bias.then(|| {
        let vals: Vec<T> = (0..u)
            .into_par_iter()
            .map(|q| {
                let mut acc = T::ZERO;
                for &(_, e) in &order[starts[q]..starts[q + 1]] {
                    acc += bias_of(e);
                }
                acc
            })
            .collect();
        SparseGrad { indices: uniq.clone(), values: vals }
    });
    Ok((SparseGrad { indices: uniq, values }, biases))
}
