//! Magnitude pruning: remove the smallest |W| of the layer; no update.

use rayon::prelude::*;

use crate::config::{ceil_count, target_zeros, Pattern, PruneConfig};
use crate::mask::{column_scores, mark_row, smallest, smallest_columns, smallest_nm, ScaledAbs};
use crate::scalar::Real;
use crate::thanos::zero_masked;

pub fn magnitude<T: Real>(w: &mut [T], c: usize, b: usize, cfg: &PruneConfig) -> Vec<bool> {
    let mut mask = vec![false; c * b];
    let wr: &[T] = w;
    match cfg.pattern {
        Pattern::Unstructured => {
            let ones = vec![T::from_f64(1.0); b];
            let keys = ScaledAbs { w: wr, b, from: 0, to: b, scale: &ones };
            let sel = smallest(c, b, target_zeros(cfg.sparsity, c, b), &keys);
            mask.par_chunks_mut(b).enumerate().for_each_init(
                || vec![T::Key::default(); b],
                |buf, (k, row)| {
                    mark_row(&sel, &keys, k, buf, row);
                },
            );
        }
        Pattern::NM { n, m } => {
            mask.par_chunks_mut(b).zip(wr.par_chunks(b)).for_each(|(row, wrow)| {
                let keys: Vec<u64> = wrow.iter().map(|x| x.abs().key()).collect();
                smallest_nm(&keys, n, m, row);
            });
        }
        Pattern::Structured => {
            let ones = vec![1.0; b];
            let cols =
                smallest_columns(&column_scores(wr, &ones, b, &vec![false; c]), ceil_count(cfg.sparsity * b as f64));
            mask.chunks_exact_mut(b).for_each(|row| row.copy_from_slice(&cols));
        }
    }
    zero_masked(w, &mask, b, 0, b);
    mask
}
