//! Accidental hits: sampled candidates that equal one of a row's true classes. TensorFlow's
//! `compute_accidental_hits` reports them so the loss can mask those logits (weight -FLT_MAX).

use crate::error::{Error, Result};
use std::collections::HashMap;

/// The hits, row by row: `rows[h]` is the row, `positions[h]` the position in the candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    /// The row of each hit.
    pub rows: Vec<i32>,
    /// The position in the candidates of each hit.
    pub positions: Vec<i64>,
}

/// For each row of `true_classes` (row-major, `num_true` per row) and each of its true classes in order,
/// every position of `candidates` holding that class, in increasing order.
/// With distinct candidates this is exactly TensorFlow's output.
pub fn accidental_hits(true_classes: &[i64], num_true: usize, candidates: &[i64]) -> Result<Hits> {
    if num_true == 0 {
        return Err(Error::value("num_true", "must be >= 1"));
    }
    if !true_classes.len().is_multiple_of(num_true) {
        return Err(Error::shape(
            "true_classes",
            format!("length {} is not a multiple of num_true {num_true}", true_classes.len()),
        ));
    }
    let rows = true_classes.len() / num_true;
    if rows > i32::MAX as usize {
        return Err(Error::too_large("true_classes", "more than 2^31 - 1 rows"));
    }
    // Positions of each candidate id, in increasing order.
    let mut where_: HashMap<i64, Vec<i64>> = HashMap::with_capacity(candidates.len());
    for (pos, &id) in candidates.iter().enumerate() {
        where_.entry(id).or_default().push(pos as i64);
    }
    // Count first: repeated candidates can make the output far larger than the inputs (every row whose
    // true class appears in every position), and growing a vector past the available memory would abort.
    let mut total = 0u128;
    for t in true_classes {
        total += where_.get(t).map_or(0, |ps| ps.len()) as u128;
    }
    // Rows (i32) and positions (i64) here, the float32 weights in the binding.
    crate::buf::ensure_memory("sampled_candidates", total * 16)?;
    let total = usize::try_from(total)
        .map_err(|_| Error::too_large("sampled_candidates", "too many accidental hits"))?;
    let mut hits = Hits::default();
    let fail = |_| Error::too_large("sampled_candidates", format!("cannot allocate {total} accidental hits"));
    hits.rows.try_reserve_exact(total).map_err(fail)?;
    hits.positions.try_reserve_exact(total).map_err(fail)?;
    for r in 0..rows {
        for &t in &true_classes[r * num_true..(r + 1) * num_true] {
            if let Some(ps) = where_.get(&t) {
                for &p in ps {
                    hits.rows.push(r as i32);
                    hits.positions.push(p);
                }
            }
        }
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_hit_in_row_order() {
        let truth = [3, 7, 1, 2, 9, 9];
        let cands = [7, 1, 5, 9, 3];
        let h = accidental_hits(&truth, 2, &cands).unwrap();
        assert_eq!(h.rows, vec![0, 0, 1, 2, 2]);
        assert_eq!(h.positions, vec![4, 0, 1, 3, 3]);
    }

    #[test]
    fn duplicate_candidates_report_every_position() {
        let h = accidental_hits(&[4], 1, &[4, 0, 4]).unwrap();
        assert_eq!(h.positions, vec![0, 2]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn too_many_hits_are_an_error_not_an_abort() {
        // 2^17 rows whose class fills all 2^17 candidates: 2^34 hits, 256 GiB of output.
        let truth = vec![7i64; 1 << 17];
        let cands = vec![7i64; 1 << 17];
        let e = accidental_hits(&truth, 1, &cands).unwrap_err();
        assert_eq!(e.arg(), "sampled_candidates");
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(accidental_hits(&[1, 2, 3], 2, &[1]).is_err());
        assert!(accidental_hits(&[1], 0, &[1]).is_err());
    }
}
