//! The layer loss every method reports: tr(dW H dW^T) / tr(W H W^T).
//!
//! Each trace is `<H, A^T A>` (H symmetric): only the lower half of the Gram
//! `A^T A` is formed, a block of columns at a time, and contracted with H as
//! it is made. That is `c b^2 / 2` multiply-adds per trace where `(A H) . A`
//! takes `c b^2`, and a `b x 256` buffer instead of a `c x b` one.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::scalar::Real;

/// Columns of the Gram formed at a time.
const BLOCK: usize = 256;

/// Relative loss of `w_new` against `w` (row-major c x b) under the
/// (undamped) `h` (b x b, symmetric: only its upper triangle is read); the
/// Gram blocks in T, their contraction with H in f64. A negative
/// numerator (rounding, on a rank-deficient H) is clamped to 0; a zero
/// denominator gives 0.
pub fn relative_loss<T: Real>(w: &[T], w_new: &[T], h: &[T], c: usize, b: usize) -> Result<f64> {
    if w.len() != c * b || w_new.len() != c * b || h.len() != b * b {
        return Err(invalid(format!(
            "loss needs two c x b = {c} x {b} weights and a b x b hessian, got {}, {} and {} values",
            w.len(),
            w_new.len(),
            h.len()
        )));
    }
    let par = Par::rayon(0);
    let dw: Vec<T> = w_new.par_iter().zip(w).map(|(&x, &y)| x - y).collect();
    let num = trace_form(&dw, h, c, b, par).max(0.0);
    let den = trace_form(w, h, c, b, par);
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

/// `tr(A H A^T)` for A (row-major c x b) and a symmetric H.
fn trace_form<T: Real>(a: &[T], h: &[T], c: usize, b: usize, par: Par) -> f64 {
    let a = MatRef::from_row_major_slice(a, c, b);
    let mut gram = vec![T::from_f64(0.0); b * BLOCK.min(b)];
    let mut total = 0.0;
    for j0 in (0..b).step_by(BLOCK) {
        let (width, height) = (BLOCK.min(b - j0), b - j0);
        // G[j0.., j0..j0 + width] (column-major): the block's columns from its
        // diagonal down; its entries above the diagonal are not counted.
        let g = &mut gram[..height * width];
        matmul(
            MatMut::from_column_major_slice_mut(g, height, width),
            Accum::Replace,
            a.subcols(j0, height).transpose(),
            a.subcols(j0, width),
            T::from_f64(1.0),
            par,
        );
        // Per column in parallel, summed in column order: a parallel sum would
        // add in an order that depends on how the threads split the work, and
        // runs that must agree (the disk-offload test compares reports) differ
        // in the last bit.
        let columns: Vec<f64> = g
            .par_chunks(height)
            .enumerate()
            .map(|(jj, col)| {
                let j = j0 + jj;
                // Column j of G against row j of H (= column j): the diagonal
                // once, the entries below it twice (they stand for the upper
                // half too).
                let hrow = &h[j * b + j..(j + 1) * b];
                let below: f64 = col[jj + 1..].iter().zip(&hrow[1..]).map(|(&g, &x)| g.to_f64() * x.to_f64()).sum();
                col[jj].to_f64() * hrow[0].to_f64() + 2.0 * below
            })
            .collect();
        total += columns.iter().sum::<f64>();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sum_k a_k H a_k^T`, the definition, in f64.
    fn direct(a: &[f64], h: &[f64], c: usize, b: usize) -> f64 {
        (0..c)
            .map(|k| {
                let row = &a[k * b..(k + 1) * b];
                (0..b).map(|i| row[i] * (0..b).map(|j| h[i * b + j] * row[j]).sum::<f64>()).sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn traces_match_the_definition() {
        // 600 columns: blocks of 256, 256 and 88; c < b and c > b.
        for (c, b) in [(3, 600), (700, 300), (5, 1)] {
            let x: Vec<f64> = (0..b * 7).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
            // Rank 7: a rank-deficient H, as real calibration data gives.
            let h: Vec<f64> =
                (0..b * b).map(|k| (0..7).map(|t| x[k / b * 7 + t] * x[k % b * 7 + t]).sum::<f64>()).collect();
            let w: Vec<f64> = (0..c * b).map(|i| ((i * 104729) % 97) as f64 / 48.0 - 1.0).collect();
            let w_new: Vec<f64> = w.iter().enumerate().map(|(i, &v)| if i % 3 == 0 { 0.0 } else { v * 1.01 }).collect();
            let dw: Vec<f64> = w_new.iter().zip(&w).map(|(x, y)| x - y).collect();
            let want = direct(&dw, &h, c, b) / direct(&w, &h, c, b);
            let got = relative_loss(&w, &w_new, &h, c, b).unwrap();
            assert!((got - want).abs() <= 1e-12 * want, "{c} x {b}: {got} vs {want}");
        }
    }

    #[test]
    fn zero_denominator_gives_zero() {
        assert_eq!(relative_loss(&[0.0f32; 4], &[1.0; 4], &[1.0, 0.0, 0.0, 1.0], 2, 2).unwrap(), 0.0);
        assert!(relative_loss(&[0.0f32; 4], &[1.0; 3], &[1.0; 4], 2, 2).is_err());
    }
}
