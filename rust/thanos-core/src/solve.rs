//! The per-row small solves of Thanos: `lambda = G[Q,Q]^{-1} w[Q]`.
//!
//! G is the block Gram `U_blk^T U_blk`; each row gathers its own s x s
//! submatrix (SPD: the columns of U_blk are independent), factors it and
//! solves. These solves are a third of Thanos's flops, so the inner products
//! are written with independent accumulators that LLVM turns into SIMD, and
//! the kernel is compiled a second time for AVX2+FMA, picked at run time.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{MatMut, Par};

use crate::scalar::Real;

const LANES: usize = 16;

/// Scratch reused across the rows one thread solves.
#[derive(Default)]
pub struct SolveScratch<T> {
    a: Vec<T>,
}

/// Solves `G[Q,Q] x = rhs` in place (`rhs` has length |Q|). `g` is row-major
/// with row stride `stride`. Returns false if the gathered system is not
/// numerically positive definite (rhs is then unspecified).
pub fn solve_gathered<T: Real>(g: &[T], stride: usize, q: &[usize], rhs: &mut [T], scratch: &mut SolveScratch<T>) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected on this CPU.
        return unsafe { solve_avx2(g, stride, q, rhs, scratch) };
    }
    solve_generic(g, stride, q, rhs, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn solve_avx2<T: Real>(g: &[T], stride: usize, q: &[usize], rhs: &mut [T], scratch: &mut SolveScratch<T>) -> bool {
    solve_generic(g, stride, q, rhs, scratch)
}

#[inline(always)]
fn solve_generic<T: Real>(g: &[T], stride: usize, q: &[usize], rhs: &mut [T], scratch: &mut SolveScratch<T>) -> bool {
    let s = q.len();
    let a = &mut scratch.a;
    a.clear();
    a.reserve(s * s);
    for &qi in q {
        let row = &g[qi * stride..];
        a.extend(q.iter().map(|&qj| row[qj]));
    }
    if !cholesky_lower(a, s) {
        return false;
    }
    forward(a, s, rhs);
    backward(a, s, rhs);
    true
}

/// In-place Cholesky (row-major, lower triangle) by rows: each entry is one
/// contiguous inner product of two row prefixes.
#[inline(always)]
fn cholesky_lower<T: Real>(a: &mut [T], s: usize) -> bool {
    let zero = T::from_f64(0.0);
    for i in 0..s {
        let (done, rest) = a.split_at_mut(i * s);
        let row_i = &mut rest[..s];
        for j in 0..i {
            let row_j = &done[j * s..j * s + j];
            let v = (row_i[j] - dot(&row_i[..j], row_j)) / done[j * s + j];
            row_i[j] = v;
        }
        let d = row_i[i] - dot(&row_i[..i], &row_i[..i]);
        if !(d > zero) {
            return false;
        }
        row_i[i] = d.sqrt();
    }
    true
}

/// L y = b, in place.
#[inline(always)]
fn forward<T: Real>(l: &[T], s: usize, x: &mut [T]) {
    for i in 0..s {
        let v = (x[i] - dot(&l[i * s..i * s + i], &x[..i])) / l[i * s + i];
        x[i] = v;
    }
}

/// L^T x = y, in place, as column updates so L is read by rows.
#[inline(always)]
fn backward<T: Real>(l: &[T], s: usize, x: &mut [T]) {
    for i in (0..s).rev() {
        let v = x[i] / l[i * s + i];
        x[i] = v;
        for (xj, &lij) in x[..i].iter_mut().zip(&l[i * s..i * s + i]) {
            *xj -= v * lij;
        }
    }
}

/// Solves `A X = B` in place in `rhs` for a dense SPD `a` (overwritten by its
/// Cholesky factor). Returns false if `a` is not numerically positive definite.
pub fn spd_solve_in_place<T: Real>(mut a: MatMut<'_, T>, mut rhs: MatMut<'_, T>, par: Par) -> bool {
    let n = a.nrows();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<T>(n, par, Default::default()));
    if cholesky_in_place(a.as_mut(), Default::default(), par, MemStack::new(&mut mem), Default::default()).is_err() {
        return false;
    }
    solve_lower_triangular_in_place(a.as_ref(), rhs.as_mut(), par);
    solve_upper_triangular_in_place(a.as_ref().transpose(), rhs.as_mut(), par);
    true
}

#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = zero;
    for (&x, &y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    acc.iter().fold(sum, |s, &v| s + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_solve_satisfies_the_system() {
        let n = 40;
        // G = A^T A with A upper triangular, like U_blk^T U_blk.
        let a: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                if i > j { 0.0 } else if i == j { 1.0 + (i % 3) as f64 } else { ((k * 37) % 11) as f64 / 11.0 - 0.5 }
            })
            .collect();
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = (0..n).map(|t| a[t * n + i] * a[t * n + j]).sum();
            }
        }
        let q: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
        let rhs: Vec<f64> = q.iter().map(|&i| i as f64 - 7.0).collect();
        let mut x = rhs.clone();
        assert!(solve_gathered(&g, n, &q, &mut x, &mut SolveScratch::default()));
        for (r, &qi) in q.iter().enumerate() {
            let got: f64 = q.iter().zip(&x).map(|(&qj, &xj)| g[qi * n + qj] * xj).sum();
            assert!((got - rhs[r]).abs() < 1e-8 * (1.0 + rhs[r].abs()));
        }
    }

    #[test]
    fn indefinite_system_is_reported() {
        let g = [1.0f32, 2.0, 2.0, 1.0];
        let mut x = [1.0f32, 1.0];
        assert!(!solve_gathered(&g, 2, &[0, 1], &mut x, &mut SolveScratch::default()));
    }
}
