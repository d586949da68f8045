//! The per-row small solves of Thanos: `lambda_k = G[Q_k,Q_k]^{-1} w[Q_k]`.
//!
//! G is the block Gram `U_blk^T U_blk`; each row gathers its own s x s
//! submatrix (SPD: the columns of U_blk are independent). The systems are
//! small (s ~ B/2) and numerous (one per row and block), so they are solved
//! [`LANES`] rows at a time, one row per SIMD lane: every step of the
//! Cholesky and of the two triangular solves is then a full-width vector op,
//! with no short inner products. Rows with fewer unknowns are padded with
//! identity rows. The Cholesky is register-tiled (R x C entries share the
//! loads of their rows) and reads G straight into its accumulators, so the
//! gathered submatrix is never stored. The kernel is compiled again for
//! AVX-512 and for AVX2+FMA and the variant is picked at run time.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{MatMut, Par};

use crate::scalar::Real;
#[cfg(target_arch = "x86_64")]
use crate::simd::{level, Level};

/// Rows solved together.
pub const LANES: usize = 16;

type Lanes<T> = [T; LANES];

/// Scratch reused across the batches one thread solves.
#[derive(Default)]
pub struct LaneScratch<T> {
    /// The factor L, row-major with row stride [`ld`] (lower triangle used).
    a: Vec<Lanes<T>>,
    /// 1 / L_ii.
    dinv: Vec<Lanes<T>>,
    /// 1 on the diagonal of padding rows, else 0.
    unit: Vec<Lanes<T>>,
    x: Vec<Lanes<T>>,
    /// Per unknown i and lane: offset of row Q_i in G, and column Q_i.
    offs: Vec<[u32; LANES]>,
    cols: Vec<[u32; LANES]>,
}

/// Start of row i in a packed lower triangle.
#[inline(always)]
fn tri(i: usize) -> usize {
    i * (i + 1) / 2
}

/// The lower triangle of the leading n x n block of a symmetric row-major
/// matrix (row stride `stride`), packed by rows, plus a zero row n: the
/// layout [`solve_lanes`] reads. Packed, a 128 x 128 f32 G (33 KB) stays in
/// L1 for the gathers.
pub fn packed<T: Real>(g: &[T], n: usize, stride: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); tri(n + 1)];
    for i in 0..n {
        out[tri(i)..tri(i) + i + 1].copy_from_slice(&g[i * stride..i * stride + i + 1]);
    }
    out
}

/// For each lane l < qs.len() (at most LANES), solves `G[Q_l,Q_l] x = rhs_l`
/// in place, where `Q_l = qs[l]` (strictly increasing) and `rhs[l]` has
/// length |Q_l|. `g` is the n x n G in the layout of [`packed`]. Returns a
/// bit set of the lanes whose system was not numerically positive definite
/// (their rhs is unspecified).
pub fn solve_lanes<T: Real>(
    g: &[T],
    n: usize,
    qs: &[&[u32]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    assert!(qs.len() <= LANES && qs.len() == rhs.len());
    assert!(g.len() == tri(n + 1) && g.len() <= u32::MAX as usize);
    // Increasing sets make every gathered (i, j <= i) entry lie in the triangle.
    assert!(qs.iter().all(|q| q.windows(2).all(|p| p[0] < p[1]) && q.last().is_none_or(|&j| (j as usize) < n)));
    let wide = std::mem::size_of::<T>() == 8;
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: level() only reports features detected on this CPU.
        Level::Avx512 => {
            return unsafe {
                if wide {
                    solve_lanes_avx512::<T, 2>(g, n, qs, rhs, scratch)
                } else {
                    solve_lanes_avx512::<T, 4>(g, n, qs, rhs, scratch)
                }
            }
        }
        // SAFETY: as above.
        Level::Avx2 => {
            return unsafe {
                if wide {
                    solve_lanes_avx2::<T, 1>(g, n, qs, rhs, scratch)
                } else {
                    solve_lanes_avx2::<T, 2>(g, n, qs, rhs, scratch)
                }
            }
        }
        Level::Baseline => {}
    }
    solve_lanes_generic::<T, false, false, 1>(g, n, qs, rhs, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn solve_lanes_avx512<T: Real, const TS: usize>(
    g: &[T],
    n: usize,
    qs: &[&[u32]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    solve_lanes_generic::<T, true, true, TS>(g, n, qs, rhs, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn solve_lanes_avx2<T: Real, const TS: usize>(
    g: &[T],
    n: usize,
    qs: &[&[u32]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    solve_lanes_generic::<T, true, false, TS>(g, n, qs, rhs, scratch)
}

#[inline(always)]
fn solve_lanes_generic<T: Real, const FUSED: bool, const AVX512: bool, const TS: usize>(
    g: &[T],
    n: usize,
    qs: &[&[u32]],
    rhs: &mut [&mut [T]],
    scratch: &mut LaneScratch<T>,
) -> u32 {
    let s = qs.iter().map(|q| q.len()).max().unwrap_or(0);
    prepare(n, qs, rhs, s, scratch);
    let failed = cholesky::<T, FUSED, AVX512, TS>(g, s, scratch);
    let sc = &mut *scratch;
    forward::<T, FUSED>(&sc.a, &sc.dinv, s, &mut sc.x);
    backward::<T, FUSED>(&sc.a, &sc.dinv, s, &mut sc.x);
    for (l, r) in rhs.iter_mut().enumerate() {
        for (v, x) in r.iter_mut().zip(&scratch.x) {
            *v = x[l];
        }
    }
    failed & ((1u32 << qs.len()) - 1)
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

/// Gather indices, padding diagonals and right-hand sides. A lane shorter
/// than s reads row n there (the zero last row of the packed G) and
/// gets a unit diagonal there: identity rows with a zero rhs.
#[inline(always)]
fn prepare<T: Real>(n: usize, qs: &[&[u32]], rhs: &[&mut [T]], s: usize, scratch: &mut LaneScratch<T>) {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let pad = n;
    scratch.offs.clear();
    scratch.offs.resize(s, [0; LANES]);
    scratch.cols.clear();
    scratch.cols.resize(s, [0; LANES]);
    scratch.unit.clear();
    scratch.unit.resize(s, [zero; LANES]);
    for l in 0..LANES {
        let q = qs.get(l).copied().unwrap_or(&[]);
        for i in 0..s {
            let j = q.get(i).map_or(pad, |&j| j as usize);
            scratch.cols[i][l] = j as u32;
            scratch.offs[i][l] = tri(j) as u32;
            if j == pad {
                scratch.unit[i][l] = one;
            }
        }
    }
    scratch.x.clear();
    scratch.x.resize(s, [zero; LANES]);
    for (l, r) in rhs.iter().enumerate() {
        for (i, &v) in r.iter().enumerate() {
            scratch.x[i][l] = v;
        }
    }
    // Every entry of L is written before it is read: grow, never clear.
    if scratch.a.len() < s * ld(s) {
        scratch.a.resize(s * ld(s), [zero; LANES]);
    }
    scratch.dinv.clear();
    scratch.dinv.resize(s, [zero; LANES]);
}

/// Row stride of L: one more than s, so that the rows a tile reads together
/// (64 bytes per entry, 4 KiB apart for s = 64) do not share L1 sets.
#[inline(always)]
fn ld(s: usize) -> usize {
    s + 1
}

/// G[Q_i, Q_j] in every lane. With `AVX512`, f32 lanes are one vpgatherdd
/// on 32-bit indices (LLVM's own vectorisation widens them to 64 bits and
/// needs two gathers).
#[inline(always)]
fn gather<T: Real, const AVX512: bool>(g: &[T], offs: &[u32; LANES], cols: &[u32; LANES]) -> Lanes<T> {
    #[cfg(target_arch = "x86_64")]
    if AVX512 && std::mem::size_of::<T>() == 4 {
        use std::arch::x86_64::{_mm512_add_epi32, _mm512_i32gather_ps, _mm512_loadu_si512, _mm512_storeu_ps};
        let mut v = [T::from_f64(0.0); LANES];
        // SAFETY: only instantiated with AVX512 = true inside the AVX-512
        // variant; indices checked by solve_lanes; T is f32 (size 4, Real).
        unsafe {
            let idx =
                _mm512_add_epi32(_mm512_loadu_si512(offs.as_ptr().cast()), _mm512_loadu_si512(cols.as_ptr().cast()));
            _mm512_storeu_ps(v.as_mut_ptr().cast(), _mm512_i32gather_ps::<4>(idx, g.as_ptr().cast()));
        }
        return v;
    }
    let mut v = [T::from_f64(0.0); LANES];
    for l in 0..LANES {
        // SAFETY: solve_lanes checked the sets, so every index is in g.
        v[l] = unsafe { *g.get_unchecked((offs[l] + cols[l]) as usize) };
    }
    v
}

/// Left-looking Cholesky of every lane, L into `scratch.a`, 1/L_ii into
/// `scratch.dinv`, in square tiles of TS x TS entries: the inner product over
/// the columns left of a tile is one loop of 2 TS loads and TS^2 fused
/// multiply-adds, and the tile is then finished in registers. Returns the
/// lanes that were not positive definite (they continue on a unit pivot so
/// the others finish).
#[inline(always)]
fn cholesky<T: Real, const FUSED: bool, const AVX512: bool, const TS: usize>(
    g: &[T],
    s: usize,
    scratch: &mut LaneScratch<T>,
) -> u32 {
    let LaneScratch { a, dinv, unit, offs, cols, .. } = scratch;
    let a = a.as_mut_ptr();
    let ld = ld(s);
    let mut failed = 0u32;
    for i0 in (0..s).step_by(TS) {
        let rn = TS.min(s - i0);
        // Rows past the end alias row i0: computed, never stored.
        let mut ri = [i0; TS];
        for (r, x) in ri.iter_mut().enumerate().take(rn) {
            *x = i0 + r;
        }
        for j0 in (0..=i0).step_by(TS) {
            let diagonal = j0 == i0;
            let mut cj = ri;
            if !diagonal {
                for (c, x) in cj.iter_mut().enumerate() {
                    *x = j0 + c;
                }
            }
            let mut acc = gather_tile::<T, AVX512, TS>(g, offs, cols, &ri, &cj, diagonal);
            acc = inner_products::<T, FUSED, TS>(acc, a, ld, &ri, &cj, j0);
            if diagonal {
                let bad;
                (acc, bad) = finish_diagonal::<T, FUSED, TS>(acc, i0, rn, unit, dinv);
                failed |= bad;
            } else {
                acc = finish_tile::<T, FUSED, TS>(acc, j0, a, ld, dinv);
            }
            for (r, row) in acc.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    if r < rn && (!diagonal || c <= r) {
                        // SAFETY: i0 + r < s and j0 + c <= i0 + r.
                        unsafe { *a.add((i0 + r) * ld + j0 + c) = *v };
                    }
                }
            }
        }
    }
    failed
}

/// The tile's entries of G[Q,Q] (on the diagonal, the lower triangle).
#[inline(always)]
fn gather_tile<T: Real, const AVX512: bool, const TS: usize>(
    g: &[T],
    offs: &[[u32; LANES]],
    cols: &[[u32; LANES]],
    ri: &[usize; TS],
    cj: &[usize; TS],
    diagonal: bool,
) -> [[Lanes<T>; TS]; TS] {
    let mut acc = [[[T::from_f64(0.0); LANES]; TS]; TS];
    for r in 0..TS {
        for c in 0..TS {
            if !diagonal || c <= r {
                acc[r][c] = gather::<T, AVX512>(g, &offs[ri[r]], &cols[cj[c]]);
            }
        }
    }
    acc
}

/// `acc[r][c] -= sum_{k < kend} L[ri[r], k] L[cj[c], k]`. By value in its
/// own function, so the accumulators live in registers for the whole loop
/// (LLVM otherwise mirrors them to the stack on every iteration).
#[inline(always)]
fn inner_products<T: Real, const FUSED: bool, const TS: usize>(
    mut acc: [[Lanes<T>; TS]; TS],
    a: *const Lanes<T>,
    ld: usize,
    ri: &[usize; TS],
    cj: &[usize; TS],
    kend: usize,
) -> [[Lanes<T>; TS]; TS] {
    let zero = T::from_f64(0.0);
    for k in 0..kend {
        let mut li = [[zero; LANES]; TS];
        let mut lj = [[zero; LANES]; TS];
        for t in 0..TS {
            // SAFETY: the caller passes row indices < s and kend <= s,
            // inside a (s * ld).
            unsafe {
                li[t] = *a.add(ri[t] * ld + k);
                lj[t] = *a.add(cj[t] * ld + k);
            }
        }
        for r in 0..TS {
            for c in 0..TS {
                acc[r][c] = fms::<T, FUSED>(acc[r][c], &li[r], &lj[c]);
            }
        }
    }
    acc
}

/// A tile left of the diagonal: column c is divided by L_jj, then removed
/// from the later columns of the tile (their rows of L are final already).
/// Every loop has constant bounds, so the tile stays in registers.
#[inline(always)]
fn finish_tile<T: Real, const FUSED: bool, const TS: usize>(
    mut acc: [[Lanes<T>; TS]; TS],
    j0: usize,
    a: *const Lanes<T>,
    ld: usize,
    dinv: &[Lanes<T>],
) -> [[Lanes<T>; TS]; TS] {
    for c in 0..TS {
        let d = dinv[j0 + c];
        for row in acc.iter_mut() {
            for l in 0..LANES {
                row[c][l] *= d[l];
            }
        }
        for c2 in 0..TS {
            if c2 > c {
                // SAFETY: row j0 + c2 < i0 <= s is finished; column j0 + c < it.
                let lj = unsafe { *a.add((j0 + c2) * ld + j0 + c) };
                for row in acc.iter_mut() {
                    row[c2] = fms::<T, FUSED>(row[c2], &row[c], &lj);
                }
            }
        }
    }
    acc
}

/// The tile on the diagonal (rows and columns i0..i0+rn): a small
/// right-looking Cholesky in registers (constant loop bounds; columns past
/// rn are computed on unit pivots and never stored). Padding lanes get a
/// unit pivot.
#[inline(always)]
fn finish_diagonal<T: Real, const FUSED: bool, const TS: usize>(
    mut acc: [[Lanes<T>; TS]; TS],
    i0: usize,
    rn: usize,
    unit: &[Lanes<T>],
    dinv: &mut [Lanes<T>],
) -> ([[Lanes<T>; TS]; TS], u32) {
    let (zero, one, inf) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(f64::INFINITY));
    let mut failed = 0u32;
    for c in 0..TS {
        let live = c < rn;
        let j = i0 + c.min(rn - 1);
        // Branch-free so it stays one vector sqrt and divide.
        let mut bad = [0u32; LANES];
        let mut pivot = [zero; LANES];
        for l in 0..LANES {
            let d = acc[c][c][l] + unit[j][l];
            let good = d > zero && d < inf;
            bad[l] = u32::from(!good && live);
            pivot[l] = if good && live { d } else { one };
        }
        let mut d = [zero; LANES];
        for l in 0..LANES {
            acc[c][c][l] = pivot[l].sqrt();
            d[l] = one / acc[c][c][l];
        }
        if live {
            dinv[j] = d;
        }
        for (l, &x) in bad.iter().enumerate() {
            failed |= x << l;
        }
        for (r, row) in acc.iter_mut().enumerate() {
            if r > c {
                for l in 0..LANES {
                    row[c][l] *= d[l];
                }
            }
        }
        for c2 in 0..TS {
            if c2 > c {
                let lj = acc[c2][c];
                for (r, row) in acc.iter_mut().enumerate() {
                    if r >= c2 {
                        row[c2] = fms::<T, FUSED>(row[c2], &row[c], &lj);
                    }
                }
            }
        }
    }
    (acc, failed)
}

/// `acc - sum_k L[row(k)] * x[k]` over k in `ks`, in four independent
/// chains (one chain would wait on the FMA latency at every step).
#[inline(always)]
fn dot_sub<T: Real, const FUSED: bool>(
    acc: Lanes<T>,
    a: &[Lanes<T>],
    at: impl Fn(usize) -> usize,
    x: &[Lanes<T>],
    ks: std::ops::Range<usize>,
) -> Lanes<T> {
    let zero = [T::from_f64(0.0); LANES];
    let (mut p0, mut p1, mut p2, mut p3) = (acc, zero, zero, zero);
    let mut k = ks.start;
    while k + 4 <= ks.end {
        p0 = fms::<T, FUSED>(p0, &a[at(k)], &x[k]);
        p1 = fms::<T, FUSED>(p1, &a[at(k + 1)], &x[k + 1]);
        p2 = fms::<T, FUSED>(p2, &a[at(k + 2)], &x[k + 2]);
        p3 = fms::<T, FUSED>(p3, &a[at(k + 3)], &x[k + 3]);
        k += 4;
    }
    while k < ks.end {
        p0 = fms::<T, FUSED>(p0, &a[at(k)], &x[k]);
        k += 1;
    }
    for l in 0..LANES {
        p0[l] += (p1[l] + p2[l]) + p3[l];
    }
    p0
}

/// L y = b for every lane, in place.
#[inline(always)]
fn forward<T: Real, const FUSED: bool>(a: &[Lanes<T>], dinv: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    let ld = ld(s);
    for i in 0..s {
        let mut v = dot_sub::<T, FUSED>(x[i], a, |k| i * ld + k, x, 0..i);
        for l in 0..LANES {
            v[l] *= dinv[i][l];
        }
        x[i] = v;
    }
}

/// L^T x = y for every lane, in place: x_i = (y_i - sum_{k>i} L_ki x_k) / L_ii,
/// each x_i accumulated in registers (a column-update form that rewrites
/// x through memory runs several times slower).
#[inline(always)]
fn backward<T: Real, const FUSED: bool>(a: &[Lanes<T>], dinv: &[Lanes<T>], s: usize, x: &mut [Lanes<T>]) {
    let ld = ld(s);
    for i in (0..s).rev() {
        let mut v = dot_sub::<T, FUSED>(x[i], a, |k| k * ld + i, x, i + 1..s);
        for l in 0..LANES {
            v[l] *= dinv[i][l];
        }
        x[i] = v;
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

    /// Lanes with different index sets and sizes (odd ones, so tiles are
    /// partial, and an empty one), checked against G itself.
    type Solver<T> = fn(&[T], usize, &[&[u32]], &mut [&mut [T]], &mut LaneScratch<T>) -> u32;

    fn check_lanes<T: Real>(n: usize, tol: f64, solve: Solver<T>) {
        let g = gram(n);
        let gt: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
        let qs: Vec<Vec<u32>> = (0..15)
            .map(|l| (0..n).filter(|i| (i + l) % (l % 6 + 2) != 0).skip(l % 4).map(|i| i as u32).collect())
            .chain([vec![]])
            .collect();
        let want: Vec<Vec<f64>> = qs.iter().map(|q| q.iter().map(|&i| i as f64 - 7.0).collect()).collect();
        let mut got: Vec<Vec<T>> = want.iter().map(|r| r.iter().map(|&x| T::from_f64(x)).collect()).collect();
        let q_refs: Vec<&[u32]> = qs.iter().map(|q| q.as_slice()).collect();
        let mut rhs: Vec<&mut [T]> = got.iter_mut().map(|r| r.as_mut_slice()).collect();
        assert_eq!(solve(&packed(&gt, n, n), n, &q_refs, &mut rhs, &mut LaneScratch::default()), 0);
        for ((q, x), b) in qs.iter().zip(&got).zip(&want) {
            for (r, &qi) in q.iter().enumerate() {
                let lhs: f64 = q.iter().zip(x).map(|(&qj, &xj)| g[qi as usize * n + qj as usize] * xj.to_f64()).sum();
                assert!((lhs - b[r]).abs() < tol * (1.0 + b[r].abs()), "n {n} row {r}: {lhs} vs {}", b[r]);
            }
        }
    }

    /// Every compiled variant this CPU can run, whatever the dispatch picks.
    fn variants<T: Real>() -> Vec<Solver<T>> {
        let mut out: Vec<Solver<T>> =
            vec![solve_lanes, solve_lanes_generic::<T, false, false, 1>, solve_lanes_generic::<T, false, false, 3>];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                // SAFETY: the features were just detected on this CPU.
                out.push(|g, st, q, r, sc| unsafe { solve_lanes_avx2::<T, 2>(g, st, q, r, sc) });
            }
            if has!("avx512f") && has!("fma") {
                // SAFETY: as above.
                out.push(|g, st, q, r, sc| unsafe { solve_lanes_avx512::<T, 4>(g, st, q, r, sc) });
            }
        }
        out
    }

    #[test]
    fn every_lane_satisfies_its_own_system() {
        for n in [1, 2, 5, 40, 67] {
            variants::<f64>().into_iter().for_each(|solve| check_lanes::<f64>(n, 1e-9, solve));
            variants::<f32>().into_iter().for_each(|solve| check_lanes::<f32>(n, 1e-3, solve));
        }
    }

    #[test]
    fn indefinite_lane_is_reported_alone() {
        let g = packed(&[1.0f32, 2.0, 2.0, 1.0], 2, 2);
        let (q0, q1): (&[u32], &[u32]) = (&[0, 1], &[0]);
        let (mut x0, mut x1) = ([1.0f32, 1.0], [3.0f32]);
        let failed = solve_lanes(&g, 2, &[q0, q1], &mut [&mut x0[..], &mut x1[..]], &mut LaneScratch::default());
        assert_eq!(failed, 0b01);
        assert_eq!(x1, [3.0]);
    }
}
