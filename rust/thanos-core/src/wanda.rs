//! Wanda (Sun et al. 2024): per output row, remove the weights with the
//! smallest |W_ij| * ||X_j||; no update.

use rayon::prelude::*;

use crate::config::{ceil_count, cumulative_share, Pattern, PruneConfig};
use crate::mask::{column_scores, smallest_columns, smallest_in_row, smallest_nm};
use crate::scalar::Real;
use crate::thanos::zero_masked;

pub fn wanda<T: Real>(w: &mut [T], hsqrt: &[T], hdiag: &[f64], c: usize, b: usize, cfg: &PruneConfig) -> Vec<bool> {
    let mut mask = vec![false; c * b];
    match cfg.pattern {
        Pattern::Structured => {
            let cols =
                smallest_columns(&column_scores(w, hdiag, b, &vec![false; c]), ceil_count(cfg.sparsity * b as f64));
            mask.chunks_exact_mut(b).for_each(|row| row.copy_from_slice(&cols));
        }
        pattern => {
            let wr: &[T] = w;
            mask.par_chunks_mut(b).enumerate().for_each_init(Vec::new, |scratch, (k, row)| {
                let keys: Vec<u64> = (0..b).map(|j| (wr[k * b + j].abs() * hsqrt[j]).key()).collect();
                match pattern {
                    Pattern::NM { n, m } => smallest_nm(&keys, n, m, row),
                    _ => {
                        // Per-row counts that differ by at most one and add up to round(p c b).
                        let count = cumulative_share(cfg.sparsity, b, k + 1) - cumulative_share(cfg.sparsity, b, k);
                        smallest_in_row(&keys, count, row, scratch);
                    }
                }
            });
        }
    }
    zero_masked(w, &mask, b, 0, b);
    mask
}
