//! The Hessian side of ALGORITHM.md: dead inputs, damping with retries, and
//! U, the upper Cholesky factor of H^{-1} (H^{-1} = U^T U).
//!
//! U gives every trailing inverse without re-inverting:
//! (H[i:, i:])^{-1} = U[i:, i:]^T U[i:, i:].  It is computed from one Cholesky
//! and one triangular inverse: with J the flip, J H J = L L^T and U = J L^{-1} J.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{MatMut, MatRef, Par};

use crate::error::{PruneError, Result};
use crate::scalar::Real;

/// How many times the damping is multiplied by 10 after a failed Cholesky.
pub const MAX_DAMP_RETRIES: usize = 3;

/// U stored column-major (so `u[j * b..(j + 1) * b]` is column j), and the
/// damping finally used.
#[derive(Debug)]
pub struct Factor<T> {
    pub u: Vec<T>,
    pub b: usize,
    pub damp: f64,
}

impl<T: Real> Factor<T> {
    pub fn view(&self) -> MatRef<'_, T> {
        MatRef::from_column_major_slice(&self.u, self.b, self.b)
    }

    /// U_jj, the square root of the OBS denominator of column j.
    pub fn diag(&self, j: usize) -> T {
        self.u[j * self.b + j]
    }
}

/// Dead inputs (H_jj == 0): set H_jj = 1 and W[:, j] = 0, as SparseGPT does.
pub fn fix_dead<T: Real>(w: &mut [T], h: &mut [T], b: usize) {
    let zero = T::from_f64(0.0);
    for j in 0..b {
        if h[j * b + j] == zero {
            h[j * b + j] = T::from_f64(1.0);
            w.chunks_exact_mut(b).for_each(|row| row[j] = zero);
        }
    }
}

/// Damps H (after [`fix_dead`]) and factors it, retrying with 10x damping.
pub fn factor<T: Real>(h: &[T], b: usize, damp: f64, par: Par) -> Result<Factor<T>> {
    let mean = (0..b).map(|j| h[j * b + j].to_f64()).sum::<f64>() / b as f64;
    let mut d = damp;
    for attempt in 0..=MAX_DAMP_RETRIES {
        if let Some(u) = upper_cholesky_of_inverse(h, b, T::from_f64(d * mean), par) {
            return Ok(Factor { u, b, damp: d });
        }
        if attempt < MAX_DAMP_RETRIES {
            d *= 10.0;
        }
    }
    Err(PruneError::NotPositiveDefinite { damp: d })
}

/// U (column-major) for H + shift * I, or None if that is not positive definite.
fn upper_cholesky_of_inverse<T: Real>(h: &[T], b: usize, shift: T, par: Par) -> Option<Vec<T>> {
    // J (H + shift I) J: reversing a row-major b x b buffer flips both axes.
    // The matrix is symmetric, so the buffer reads the same column-major.
    let mut a: Vec<T> = h.iter().rev().copied().collect();
    for j in 0..b {
        a[j * b + j] += shift;
    }
    let mut mat = MatMut::from_column_major_slice_mut(&mut a, b, b);
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<T>(b, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    cholesky_in_place(mat.as_mut(), Default::default(), par, stack, Default::default()).ok()?;
    // Cholesky can succeed on a matrix too close to singular for the inverse
    // to be finite; treat that like a failed factorisation.
    let mut inv = vec![T::from_f64(0.0); b * b];
    invert_lower_triangular(
        MatMut::from_column_major_slice_mut(&mut inv, b, b),
        MatRef::from_column_major_slice(&a, b, b),
        par,
    );
    if !inv.iter().all(|x| x.is_finite()) {
        return None;
    }
    // U = J L^{-1} J: reverse the column-major buffer again.
    inv.reverse();
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::linalg::solvers::DenseSolveCore;

    fn spd(b: usize) -> Vec<f64> {
        let x: Vec<f64> = (0..b * (b + 3)).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
        let n = b + 3;
        let mut h = vec![0.0; b * b];
        for i in 0..b {
            for j in 0..b {
                h[i * b + j] = (0..n).map(|t| x[i * n + t] * x[j * n + t]).sum::<f64>() * 2.0 / n as f64;
            }
        }
        h
    }

    fn inverse_of_trailing(h: &[f64], b: usize, i: usize, damp: f64) -> Vec<f64> {
        let n = b - i;
        let mean = (0..b).map(|j| h[j * b + j]).sum::<f64>() / b as f64;
        let mut m =
            faer::Mat::<f64>::from_fn(n, n, |r, c| h[(i + r) * b + i + c] + if r == c { damp * mean } else { 0.0 });
        let inv = m.as_mut().partial_piv_lu().inverse();
        (0..n * n).map(|k| inv[(k / n, k % n)]).collect()
    }

    #[test]
    fn trailing_inverse_identity_holds() {
        let b = 9;
        let h = spd(b);
        let f = factor(&h, b, 0.01, Par::Seq).unwrap();
        let u = f.view();
        for i in [0, 3, 8] {
            let n = b - i;
            let want = inverse_of_trailing(&h, b, i, 0.01);
            for r in 0..n {
                for c in 0..n {
                    let got: f64 = (0..n).map(|k| u[(i + k, i + r)] * u[(i + k, i + c)]).sum();
                    assert!((got - want[r * n + c]).abs() < 1e-9 * (1.0 + want[r * n + c].abs()));
                }
            }
        }
        for r in 1..b {
            for c in 0..r {
                assert_eq!(u[(r, c)], 0.0, "U must be upper triangular");
            }
        }
    }

    #[test]
    fn damping_retries_then_fails() {
        // eigenvalues 1 +- off: damping d (mean diag is 1) fixes it once d > off - 1
        let h = |off: f64| vec![1.0, off, off, 1.0];
        assert_eq!(factor(&h(0.5), 2, 0.01, Par::Seq).unwrap().damp, 0.01);
        assert!((factor(&h(1.5), 2, 0.01, Par::Seq).unwrap().damp - 1.0).abs() < 1e-12);
        let err = factor(&h(20.0), 2, 0.01, Par::Seq).unwrap_err();
        assert!(matches!(err, PruneError::NotPositiveDefinite { damp } if (damp - 10.0).abs() < 1e-9));
    }
}
