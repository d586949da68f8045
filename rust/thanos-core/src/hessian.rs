//! The Hessian side of ALGORITHM.md: dead inputs, damping with retries, and
//! U, the upper Cholesky factor of H^{-1} (H^{-1} = U^T U).
//!
//! U gives every trailing inverse without re-inverting:
//! (H[i:, i:])^{-1} = U[i:, i:]^T U[i:, i:].  It is computed from one Cholesky
//! and one triangular inverse: with J the flip, J H J = L L^T and U = J L^{-1} J.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{MatMut, MatRef, Par};
use rayon::prelude::*;

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
/// One b x b buffer: the flipped H is factored, inverted and flipped back in
/// place (a second buffer and its page faults cost ~15% of a 4096 x 4096
/// SparseGPT or Thanos call).
fn upper_cholesky_of_inverse<T: Real>(h: &[T], b: usize, shift: T, par: Par) -> Option<Vec<T>> {
    // J (H + shift I) J: reversing a row-major b x b buffer flips both axes.
    // The matrix is symmetric, so the buffer reads the same column-major.
    let mut a = reversed(h);
    for j in 0..b {
        a[j * b + j] += shift;
    }
    let mut mat = MatMut::from_column_major_slice_mut(&mut a, b, b);
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<T>(b, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    cholesky_in_place(mat.as_mut(), Default::default(), par, stack, Default::default()).ok()?;
    invert_lower_in_place(mat, par);
    // faer's Cholesky does not leave the strict upper triangle zero, and the
    // flip turns it into U's lower one.
    a.par_chunks_mut(b).enumerate().for_each(|(j, col)| col[..j].fill(T::from_f64(0.0)));
    // U = J L^{-1} J. Cholesky can succeed on a matrix too close to singular
    // for the inverse to be finite; treat that like a failed factorisation.
    reverse_all_finite(&mut a).then_some(a)
}

/// `h` reversed, copied by all threads (each faults in its own pages).
fn reversed<T: Real>(h: &[T]) -> Vec<T> {
    let mut a = vec![T::from_f64(0.0); h.len()];
    // Chunk k of `a` mirrors the k-th chunk of `h` counted from its end.
    a.par_chunks_mut(CHUNK).zip(h.par_rchunks(CHUNK)).for_each(|(out, src)| {
        out.iter_mut().zip(src.iter().rev()).for_each(|(o, &x)| *o = x);
    });
    a
}

/// Reverses `a` in place in parallel; true if every entry is finite (when
/// false, `a` may be only partly reversed).
fn reverse_all_finite<T: Real>(a: &mut [T]) -> bool {
    let n = a.len();
    let (lo, rest) = a.split_at_mut(n / 2);
    let (mid, hi) = rest.split_at_mut(n % 2);
    let finite = |x: &[T]| x.iter().all(|v| v.is_finite());
    let halves = lo.par_chunks_mut(CHUNK).zip(hi.par_rchunks_mut(CHUNK)).all(|(l, h)| {
        let m = h.len();
        for (t, x) in l.iter_mut().enumerate() {
            std::mem::swap(x, &mut h[m - 1 - t]);
        }
        finite(l) && finite(h)
    });
    halves && finite(mid)
}

/// Elements per task of the whole-buffer passes (256 KiB of f32).
const CHUNK: usize = 1 << 16;

/// L^{-1} over L (lower triangle, column-major), by halves:
/// [A 0; C D]^{-1} = [A^{-1} 0; -D^{-1} C A^{-1}, D^{-1}], C first (it needs
/// A and D themselves), then A and D in parallel. The same work as faer's
/// out-of-place inverse (`b^3/6` multiply-adds).
fn invert_lower_in_place<T: Real>(mut l: MatMut<'_, T>, par: Par) {
    let n = l.nrows();
    if n <= INVERT_BASE {
        let copy = l.to_owned();
        invert_lower_triangular(l, copy.as_ref(), Par::Seq);
        return;
    }
    let mid = n / 2;
    let (a, _, mut c, d) = l.as_mut().split_at_mut(mid, mid);
    solve_lower_triangular_in_place(d.as_ref(), c.as_mut(), par);
    // C A^{-1} = (A^{-T} C^T)^T: a solve with the upper triangle A^T.
    solve_upper_triangular_in_place(a.as_ref().transpose(), c.as_mut().transpose_mut(), par);
    c.col_iter_mut().for_each(|col| col.iter_mut().for_each(|x| *x = -*x));
    let (a, _, _, d) = l.split_at_mut(mid, mid);
    match par {
        Par::Rayon(threads) if threads.get() > 1 => {
            let half = Par::rayon(threads.get() - threads.get() / 2);
            rayon::join(|| invert_lower_in_place(a, half), || invert_lower_in_place(d, half));
        }
        _ => {
            invert_lower_in_place(a, Par::Seq);
            invert_lower_in_place(d, Par::Seq);
        }
    }
}

/// Below this size the inverse is faer's, on a copy of the block.
const INVERT_BASE: usize = 64;

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
        // 9: faer's inverse alone; 150: the in-place halving above it, odd
        // halves included, on one thread and on several.
        for (b, par) in [(9, Par::Seq), (150, Par::Seq), (150, Par::rayon(2))] {
            trailing_inverse_identity_holds_for(b, par);
        }
    }

    fn trailing_inverse_identity_holds_for(b: usize, par: Par) {
        let h = spd(b);
        let f = factor(&h, b, 0.01, par).unwrap();
        let u = f.view();
        for i in [0, 3, b / 2 + 1, b - 1] {
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
    fn reversal_in_place_checks_every_entry() {
        for n in [0, 1, 2, 7, 2 * CHUNK + 3, 2 * CHUNK + 4] {
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut r = v.clone();
            assert!(reverse_all_finite(&mut r));
            assert!(r.iter().eq(v.iter().rev()));
            assert_eq!(reversed(&v), r);
            for bad in [0, n / 2, n.saturating_sub(1)].into_iter().filter(|_| n > 0) {
                let mut r = v.clone();
                r[bad] = f32::NAN;
                assert!(!reverse_all_finite(&mut r), "NaN at {bad} of {n} missed");
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
