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
pub const LANES: usize = 16;

type Lanes<T> = [T; LANES];

/// Scratch reused across the batches one thread solves.
#[derive(Default)]
pub struct LaneScratch<T> {
    a: Vec<Lanes<T>>,
    x: Vec<Lanes<T>>,
    idx: Vec<usize>,
}

/// The leading n x n block of a row-major matrix (row stride `stride`), copied
/// into the (n+1) x (n+1) zero-padded layout that [`solve_lanes`] reads.
pub fn padded<T: Real>(g: &[T], n: usize, stride: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); (n + 1) * (n + 1)];
    for (dst, src) in out.chunks_exact_mut(n + 1).zip(g.chunks(stride)).take(n) {
        dst[..n].copy_from_slice(&src[..n]);
    }
    out
}

/// For each lane l < qs.len() (at most LANES), solves `G[Q_l,Q_l] x = rhs_l`
/// in place, where `Q_l = qs[l]` and `rhs[l]` has length |Q_l|. `g` is the
/// n x n G in the layout of [`padded`] (row stride n + 1). Returns a bit set
/// of the lanes whose system was not numerically positive definite (their
/// rhs is unspecified).
pub fn solve_lanes<T: Real>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    assert!(qs.len() <= LANES && qs.len() == rhs.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") {
            // SAFETY: the features were just detected on this CPU.
            return unsafe { solve_lanes_avx512(g, stride, qs, rhs, scratch) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { solve_lanes_avx2(g, stride, qs, rhs, scratch) };
        }
    }
    solve_lanes_generic::<T, false>(g, stride, qs, rhs, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn solve_lanes_avx512<T: Real>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    solve_lanes_generic::<T, true>(g, stride, qs, rhs, scratch)
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
    solve_lanes_generic::<T, true>(g, stride, qs, rhs, scratch)
}

#[inline(always)]
fn solve_lanes_generic<T: Real, const FUSED: bool>(
    g: &[T],
    stride: usize,
    qs: &[&[usize]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    let s = qs.iter().map(|q| q.len()).max().unwrap_or(0);
    gather(g, stride, qs, rhs, s, scratch);
    let failed = cholesky::<T, FUSED>(&mut scratch.a, s);
    forward::<T, FUSED>(&scratch.a, s, &mut scratch.x);
    backward::<T, FUSED>(&scratch.a, s, &mut scratch.x);
    for (l, r) in rhs.iter_mut().enumerate() {
        for (v, x) in r.iter_mut().zip(&scratch.x) {
            *v = x[l];
        }
    }
    failed & ((1u32 << qs.len()) - 1)
}

/// Start of row i of a packed lower triangle.
#[inline(always)]
fn row(i: usize) -> usize {
    i * (i + 1) / 2
}

// The lane loops below are plain `for` loops on purpose: closures do not
// inherit the caller's `#[target_feature]`s, so `for_each(|l| ..)` or
// `array::from_fn` would compile to baseline SSE2 and libm `fmaf` calls.

/// `acc - x * y` in every lane. By value, so LLVM keeps the accumulators in
/// registers (through `&mut` into an array they were spilled to the stack).
#[inline(always)]
fn fms<T: Real, const FUSED: bool>(mut acc: Lanes<T>, x: &Lanes<T>, y: &Lanes<T>) -> Lanes<T> {
    for l in 0..LANES {
        acc[l] = T::mul_sub::<FUSED>(x[l], y[l], acc[l]);
    }
    acc
}

/// Lower triangle of every lane's G[Q,Q], packed by rows, and its rhs.
/// `g` is (n+1) x (n+1) with a zero last row and column: a lane shorter than
/// s reads index n there, so every entry is one branch-free vector of gathers;
/// its padding diagonal is then set to 1 (identity rows, zero rhs).
#[inline(always)]
fn gather<T: Real>(g: &[T], stride: usize, qs: &[&[usize]], rhs: &[&mut [T]], s: usize, scratch: &mut LaneScratch<T>) {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let pad = stride - 1;
    scratch.idx.clear();
    for l in 0..LANES {
        let q = qs.get(l).copied().unwrap_or(&[]);
        scratch.idx.extend((0..s).map(|i| q.get(i).copied().unwrap_or(pad)));
    }
    scratch.a.clear();
    scratch.a.resize(row(s), [zero; LANES]);
    scratch.x.clear();
    scratch.x.resize(s, [zero; LANES]);
    let idx = &scratch.idx;
    for i in 0..s {
        let mut rows = [0usize; LANES];
        for l in 0..LANES {
            rows[l] = idx[l * s + i] * stride;
        }
        let ai = &mut scratch.a[row(i)..row(i) + i + 1];
        for (j, v) in ai.iter_mut().enumerate() {
            for l in 0..LANES {
                v[l] = g[rows[l] + idx[l * s + j]];
            }
        }
        for l in 0..LANES {
            if idx[l * s + i] == pad {
                ai[i][l] = one;
            }
        }
    }
    for (l, r) in rhs.iter().enumerate() {
        for (i, &v) in r.iter().enumerate() {
            scratch.x[i][l] = v;
        }
    }
}

/// Left-looking Cholesky of each lane, in place on the packed lower triangle.
/// Entry (i, j) is one inner product of the prefixes of rows i and j, kept in
/// registers; four entries of a row share the loads of row i.
#[inline(always)]
fn cholesky<T: Real, const FUSED: bool>(a: &mut [Lanes<T>], s: usize) -> u32 {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let mut failed = 0u32;
    for i in 0..s {
        let (done, rest) = a.split_at_mut(row(i));
        let ai = &mut rest[..i + 1];
        let mut j = 0;
        while j + 4 <= i {
            let rs = [row(j), row(j + 1), row(j + 2), row(j + 3)];
            let (mut a0, mut a1, mut a2, mut a3) = (ai[j], ai[j + 1], ai[j + 2], ai[j + 3]);
            for k in 0..j {
                let lik = &ai[k];
                a0 = fms::<T, FUSED>(a0, lik, &done[rs[0] + k]);
                a1 = fms::<T, FUSED>(a1, lik, &done[rs[1] + k]);
                a2 = fms::<T, FUSED>(a2, lik, &done[rs[2] + k]);
                a3 = fms::<T, FUSED>(a3, lik, &done[rs[3] + k]);
            }
            for (u, acc) in [a0, a1, a2, a3].into_iter().enumerate() {
                finish_entry::<T, FUSED>(ai, done, acc, j, u, rs[u]);
            }
            j += 4;
        }
        while j < i {
            let rj = row(j);
            let mut acc = ai[j];
            for k in 0..j {
                acc = fms::<T, FUSED>(acc, &ai[k], &done[rj + k]);
            }
            finish_entry::<T, FUSED>(ai, done, acc, j, 0, rj);
            j += 1;
        }
        let mut d = ai[i];
        for lik in &ai[..i] {
            d = fms::<T, FUSED>(d, lik, lik);
        }
        for (l, dl) in d.iter_mut().enumerate() {
            // A failed lane continues on a unit pivot so the others finish.
            if *dl > zero && dl.is_finite() {
                *dl = dl.sqrt();
            } else {
                failed |= 1 << l;
                *dl = one;
            }
        }
        ai[i] = d;
    }
    failed
}

/// Entry (i, j0 + u): the terms k in j0..j0+u that the shared loop left out,
/// then the division by the pivot of row j0 + u (which starts at `rj`).
#[inline(always)]
fn finish_entry<T: Real, const FUSED: bool>(
    ai: &mut [Lanes<T>],
    done: &[Lanes<T>],
    mut acc: Lanes<T>,
    j0: usize,
    u: usize,
    rj: usize,
) {
    for v in 0..u {
        acc = fms::<T, FUSED>(acc, &ai[j0 + v], &done[rj + j0 + v]);
    }
    let d = &done[rj + j0 + u];
    for l in 0..LANES {
        acc[l] /= d[l];
    }
    ai[j0 + u] = acc;
}

/// L y = b for every lane, in place.
#[inline(always)]
fn forward<T: Real, const FUSED: bool>(a: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    for i in 0..s {
        let ai = &a[row(i)..row(i) + i + 1];
        let mut v = x[i];
        for (lij, xj) in ai[..i].iter().zip(&x[..i]) {
            v = fms::<T, FUSED>(v, lij, xj);
        }
        for l in 0..LANES {
            v[l] /= ai[i][l];
        }
        x[i] = v;
    }
}

/// L^T x = y for every lane, in place, as column updates so L is read by rows.
#[inline(always)]
fn backward<T: Real, const FUSED: bool>(a: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    for i in (0..s).rev() {
        let ai = &a[row(i)..row(i) + i + 1];
        let mut v = x[i];
        for l in 0..LANES {
            v[l] /= ai[i][l];
        }
        x[i] = v;
        for (lij, xj) in ai[..i].iter().zip(x[..i].iter_mut()) {
            *xj = fms::<T, FUSED>(*xj, lij, &v);
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
        assert_eq!(solve_lanes(&padded(&g, n, n), n + 1, &q_refs, &mut rhs, &mut LaneScratch::default()), 0);
        for ((q, x), b) in qs.iter().zip(&got).zip(&want) {
            for (r, &qi) in q.iter().enumerate() {
                let lhs: f64 = q.iter().zip(x).map(|(&qj, &xj)| g[qi * n + qj] * xj).sum();
                assert!((lhs - b[r]).abs() < 1e-8 * (1.0 + b[r].abs()));
            }
        }
    }

    #[test]
    fn indefinite_lane_is_reported_alone() {
        let g = padded(&[1.0f32, 2.0, 2.0, 1.0], 2, 2);
        let (q0, q1): (&[usize], &[usize]) = (&[0, 1], &[0]);
        let (mut x0, mut x1) = ([1.0f32, 1.0], [3.0f32]);
        let failed = solve_lanes(&g, 3, &[q0, q1], &mut [&mut x0[..], &mut x1[..]], &mut LaneScratch::default());
        assert_eq!(failed, 0b01);
        assert_eq!(x1, [3.0]);
    }
}
