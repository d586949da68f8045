//! The layer Hessian as a running mean over calibration batches
//! (ALGORITHM.md, Notation): `H <- keep * H + add * X^T X` for a batch X of
//! tokens x b, with keep = n/(n+k) and add = 2/(n+k).
//!
//! X^T X is symmetric, so each batch updates one triangle only (half the
//! multiply-adds of the full product, which is what torch's `addmm` does);
//! [`mirror`] copies it onto the other once all batches are in.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::scalar::Real;

/// Folds the batch `x` (row-major, tokens x b) into the upper triangle of `h`
/// (row-major b x b, diagonal included); the strict lower triangle is left
/// as it was.
pub fn accumulate<T: Real>(h: &mut [T], x: &[T], b: usize, keep: f64, add: f64) -> Result<()> {
    if b == 0 || h.len() != b * b || !x.len().is_multiple_of(b) {
        return Err(invalid(format!(
            "hessian must be b x b and the inputs tokens x b, got {} and {} values for b = {b}",
            h.len(),
            x.len()
        )));
    }
    let keep = T::from_f64(keep);
    // Row j of the row-major H from its diagonal on is column j of its
    // column-major view from the diagonal down: faer's lower triangle.
    h.par_chunks_mut(b).enumerate().for_each(|(j, row)| row[j..].iter_mut().for_each(|v| *v *= keep));
    let x = MatRef::from_row_major_slice(x, x.len() / b, b);
    matmul(
        MatMut::from_column_major_slice_mut(h, b, b),
        BlockStructure::TriangularLower,
        Accum::Add,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        T::from_f64(add),
        Par::rayon(0),
    );
    Ok(())
}

/// Copies the upper triangle of `h` (row-major b x b) onto the lower one,
/// in tiles (a transpose read row by row would stride through memory).
pub fn mirror<T: Real>(h: &mut [T], b: usize) -> Result<()> {
    if h.len() != b * b {
        return Err(invalid(format!("hessian must be b x b = {}, got {} values", b * b, h.len())));
    }
    let base = SharedMut(h.as_mut_ptr());
    (0..b.div_ceil(TILE)).into_par_iter().for_each(|ti| {
        let base = &base;
        let rows = ti * TILE..((ti + 1) * TILE).min(b);
        for j0 in (0..rows.end).step_by(TILE) {
            for i in rows.clone() {
                for j in j0..(j0 + TILE).min(i) {
                    // SAFETY: i, j < b. This task writes only (i, j) with j < i
                    // in its own rows, and reads only (j, i) with j < i, in
                    // the upper triangle, which no task writes.
                    unsafe { *base.0.add(i * b + j) = *base.0.add(j * b + i) };
                }
            }
        }
    });
    Ok(())
}

/// Rows (and columns) per tile of [`mirror`].
const TILE: usize = 64;

/// A pointer the tasks of [`mirror`] share (they touch disjoint entries).
struct SharedMut<T>(*mut T);
// SAFETY: see mirror: writes are disjoint, and reads never meet a write.
unsafe impl<T: Send + Sync> Sync for SharedMut<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_give_the_running_mean_of_x_xt() {
        let b = 70; // two tiles of the mirror, one partial
        let batches: Vec<Vec<f64>> = [5usize, 1, 12]
            .iter()
            .enumerate()
            .map(|(s, &n)| (0..n * b).map(|i| ((i * 31 + s * 7) % 23) as f64 - 11.0).collect())
            .collect();
        // The strict lower triangle starts as NaN: read, it would show.
        let mut h = vec![f64::NAN; b * b];
        for j in 0..b {
            h[j * b + j..(j + 1) * b].fill(0.0);
        }
        let mut n = 0;
        for x in &batches {
            let k = x.len() / b;
            accumulate(&mut h, x, b, n as f64 / (n + k) as f64, 2.0 / (n + k) as f64).unwrap();
            n += k;
        }
        mirror(&mut h, b).unwrap();
        let all: Vec<f64> = batches.concat();
        for i in 0..b {
            for j in 0..b {
                let want = 2.0 / n as f64 * (0..n).map(|t| all[t * b + i] * all[t * b + j]).sum::<f64>();
                assert!(
                    (h[i * b + j] - want).abs() < 1e-9 * (1.0 + want.abs()),
                    "({i}, {j}): {} vs {want}",
                    h[i * b + j]
                );
            }
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(accumulate(&mut [0.0f32; 4], &[1.0; 3], 2, 0.0, 1.0).is_err());
        assert!(mirror(&mut [0.0f32; 5], 2).is_err());
    }
}
