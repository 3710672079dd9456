//! Accidental hits: sampled candidates that equal one of a row's true classes. TensorFlow's
//! `compute_accidental_hits` reports them so the loss can mask those logits (weight -FLT_MAX).

use crate::error::{Error, Result};
use std::collections::HashMap;

/// The hits, row by row: `rows[h]` is the row, `positions[h]` the position in the candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    pub rows: Vec<i32>,
    pub positions: Vec<i64>,
}

/// For each row of `true_classes` (row-major, `num_true` per row) and each of its true classes in order,
/// every position of `candidates` holding that class, in increasing order.
/// With distinct candidates this is exactly TensorFlow's output.
pub fn accidental_hits(true_classes: &[i64], num_true: usize, candidates: &[i64]) -> Result<Hits> {
    if num_true == 0 {
        return Err(Error::value("num_true", "must be >= 1"));
    }
    if true_classes.len() % num_true != 0 {
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
    let mut hits = Hits::default();
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
    fn rejects_bad_shapes() {
        assert!(accidental_hits(&[1, 2, 3], 2, &[1]).is_err());
        assert!(accidental_hits(&[1], 0, &[1]).is_err());
    }
}
