//! The per-row small solves of Thanos: `lambda_k = G[Q_k,Q_k]^{-1} w[Q_k]`.
//!
//! G is the block Gram `U_blk^T U_blk`; each row gathers its own s x s
//! submatrix (SPD: the columns of U_blk are independent). The systems are
//! small (s ~ B/2) and numerous (one per row and block), so they are solved
//! [`LANES`] rows at a time, one row per SIMD lane: every step of the
//! Cholesky and of the two triangular solves is then a full-width vector op,
//! with no short inner products. Rows with fewer unknowns are padded with
//! identity rows. The kernel is compiled a second time for AVX2+FMA and the
//! variant is picked at run time.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{MatMut, Par};

use crate::scalar::Real;

/// Rows solved together.
pub const LANES: usize = 8;

type Lanes<T> = [T; LANES];

/// Scratch reused across the batches one thread solves.
#[derive(Default)]
pub struct LaneScratch<T> {
    a: Vec<Lanes<T>>,
    x: Vec<Lanes<T>>,
}

/// For each lane l < qs.len() (at most LANES), solves `G[Q_l,Q_l] x = rhs_l`
/// in place, where `Q_l = qs[l]` and `rhs[l]` has length |Q_l|. `g` is
/// row-major with row stride `stride`. Returns a bit set of the lanes whose
/// system was not numerically positive definite (their rhs is unspecified).
pub fn solve_lanes<T: Real>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    assert!(qs.len() <= LANES && qs.len() == rhs.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected on this CPU.
        return unsafe { solve_lanes_avx2(g, stride, qs, rhs, scratch) };
    }
    solve_lanes_generic(g, stride, qs, rhs, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn solve_lanes_avx2<T: Real>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    solve_lanes_generic(g, stride, qs, rhs, scratch)
}

#[inline(always)]
fn solve_lanes_generic<T: Real>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    let s = qs.iter().map(|q| q.len()).max().unwrap_or(0);
    gather(g, stride, qs, rhs, s, scratch);
    let failed = cholesky(&mut scratch.a, s);
    forward(&scratch.a, s, &mut scratch.x);
    backward(&scratch.a, s, &mut scratch.x);
    for (l, r) in rhs.iter_mut().enumerate() {
        r.iter_mut().zip(&scratch.x).for_each(|(v, x)| *v = x[l]);
    }
    failed & ((1u32 << qs.len()) - 1)
}

/// Lower triangle of every lane's G[Q,Q] (identity-padded to s) and its rhs.
#[inline(always)]
fn gather<T: Real>(g: &[T], stride: usize, qs: &[&[usize]], rhs: &[&mut [T]], s: usize, scratch: &mut LaneScratch<T>) {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    scratch.a.clear();
    scratch.a.resize(s * s, [zero; LANES]);
    scratch.x.clear();
    scratch.x.resize(s, [zero; LANES]);
    for (l, q) in qs.iter().enumerate() {
        for (i, &qi) in q.iter().enumerate() {
            let row = &g[qi * stride..];
            for (j, &qj) in q[..=i].iter().enumerate() {
                scratch.a[i * s + j][l] = row[qj];
            }
            scratch.x[i][l] = rhs[l][i];
        }
    }
    for l in 0..LANES {
        let len = qs.get(l).map_or(0, |q| q.len());
        (len..s).for_each(|i| scratch.a[i * s + i][l] = one);
    }
}

/// Right-looking Cholesky of each lane, lower triangle of `a` (row-major s x s).
#[inline(always)]
fn cholesky<T: Real>(a: &mut [Lanes<T>], s: usize) -> u32 {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let mut failed = 0u32;
    for k in 0..s {
        let mut inv = [zero; LANES];
        for l in 0..LANES {
            let d = a[k * s + k][l];
            // A failed lane continues on a unit pivot so the others finish.
            let d = if d > zero && d.is_finite() {
                d.sqrt()
            } else {
                failed |= 1 << l;
                one
            };
            a[k * s + k][l] = d;
            inv[l] = one / d;
        }
        for i in k + 1..s {
            let v = &mut a[i * s + k];
            (0..LANES).for_each(|l| v[l] *= inv[l]);
        }
        for i in k + 1..s {
            let lik = a[i * s + k];
            for j in k + 1..=i {
                let ljk = a[j * s + k];
                let v = &mut a[i * s + j];
                (0..LANES).for_each(|l| v[l] -= lik[l] * ljk[l]);
            }
        }
    }
    failed
}

/// L y = b for every lane, in place.
#[inline(always)]
fn forward<T: Real>(a: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    for i in 0..s {
        let mut v = x[i];
        for j in 0..i {
            let (lij, xj) = (a[i * s + j], x[j]);
            (0..LANES).for_each(|l| v[l] -= lij[l] * xj[l]);
        }
        let d = a[i * s + i];
        (0..LANES).for_each(|l| v[l] /= d[l]);
        x[i] = v;
    }
}

/// L^T x = y for every lane, in place, as column updates so L is read by rows.
#[inline(always)]
fn backward<T: Real>(a: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    for i in (0..s).rev() {
        let d = a[i * s + i];
        let mut v = x[i];
        (0..LANES).for_each(|l| v[l] /= d[l]);
        x[i] = v;
        for j in 0..i {
            let lij = a[i * s + j];
            let xj = &mut x[j];
            (0..LANES).for_each(|l| xj[l] -= lij[l] * v[l]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// G = A^T A with A upper triangular, like U_blk^T U_blk.
    fn gram(n: usize) -> Vec<f64> {
        let a: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                if i > j {
                    0.0
                } else if i == j {
                    1.0 + (i % 3) as f64
                } else {
                    ((k * 37) % 11) as f64 / 11.0 - 0.5
                }
            })
            .collect();
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = (0..n).map(|t| a[t * n + i] * a[t * n + j]).sum();
            }
        }
        g
    }

    #[test]
    fn every_lane_satisfies_its_own_system() {
        let n = 40;
        let g = gram(n);
        // Lanes with different index sets and sizes, one of them empty.
        let qs: Vec<Vec<usize>> =
            (0..6).map(|l| (0..n).filter(|i| (i + l) % (l + 2) != 0).collect()).chain([vec![]]).collect();
        let want: Vec<Vec<f64>> = qs.iter().map(|q| q.iter().map(|&i| i as f64 - 7.0).collect()).collect();
        let mut got = want.clone();
        let q_refs: Vec<&[usize]> = qs.iter().map(|q| q.as_slice()).collect();
        let mut rhs: Vec<&mut [f64]> = got.iter_mut().map(|r| r.as_mut_slice()).collect();
        assert_eq!(solve_lanes(&g, n, &q_refs, &mut rhs, &mut LaneScratch::default()), 0);
        for ((q, x), b) in qs.iter().zip(&got).zip(&want) {
            for (r, &qi) in q.iter().enumerate() {
                let lhs: f64 = q.iter().zip(x).map(|(&qj, &xj)| g[qi * n + qj] * xj).sum();
                assert!((lhs - b[r]).abs() < 1e-8 * (1.0 + b[r].abs()));
            }
        }
    }

    #[test]
    fn indefinite_lane_is_reported_alone() {
        let g = [1.0f32, 2.0, 2.0, 1.0];
        let (q0, q1): (&[usize], &[usize]) = (&[0, 1], &[0]);
        let (mut x0, mut x1) = ([1.0f32, 1.0], [3.0f32]);
        let failed = solve_lanes(&g, 2, &[q0, q1], &mut [&mut x0[..], &mut x1[..]], &mut LaneScratch::default());
        assert_eq!(failed, 0b01);
        assert_eq!(x1, [3.0]);
    }
}
