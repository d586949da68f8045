//! SparseGPT (Frantar & Alistarh 2023): column-by-column OBS with lazy block
//! updates, on the same U as Thanos. Rows are independent inside a block, so
//! each thread runs the column loop over its own rows ([`obs`]: sixteen at a
//! time, one per SIMD lane); the trailing columns get one product per block
//! ([`update`]).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

use crate::config::{ceil_count, cumulative_share, Pattern, PruneConfig};
use crate::error::Result;
use crate::mask::{mark_row, smallest, smallest_columns, smallest_nm, RowKeys};
use crate::obs::{self, BlockMask, ObsScratch, LANES};
use crate::scalar::Real;
use crate::simd;
use crate::thanos::{remove_columns, Layer};
use crate::update;

pub fn sparsegpt<T: Real>(w: &mut [T], layer: &Layer<'_, T>, cfg: &PruneConfig) -> Result<Vec<bool>> {
    if cfg.pattern == Pattern::Structured {
        return structured(w, layer, cfg);
    }
    let (c, b) = (layer.c, layer.b);
    let bs = cfg.block_for(b);
    let mut mask = vec![false; c * b];
    let mut packed = Vec::new();
    for i1 in (0..b).step_by(bs) {
        let i2 = (i1 + bs).min(b);
        if cfg.pattern == Pattern::Unstructured {
            block_mask(w, &mut mask, layer, cfg.sparsity, i1, i2);
        }
        let err = obs_columns(w, &mut mask, layer, cfg.pattern, i1, i2);
        if i2 < b {
            trailing_update(w, &err, layer, i1, i2, &mut packed);
        }
    }
    Ok(mask)
}

/// `W[:, i2:] -= Err U[i1:i2, i2:]`: by [`update::update_panel`] where it
/// runs (f32, AVX-512; `packed` is its buffer, kept across blocks), else
/// one product.
fn trailing_update<T: Real>(w: &mut [T], err: &[T], layer: &Layer<'_, T>, i1: usize, i2: usize, packed: &mut Vec<f32>) {
    let (c, b, bw) = (layer.c, layer.b, i2 - i1);
    if let (true, Some(ef), Some(uf)) = (simd::avx512(), T::as_f32(err), T::as_f32(&layer.factor.u)) {
        // U is column-major: column j of U[i1:i2, i2:] starts at (i2 + j) * b + i1.
        let packed = update::pack_cols(&uf[i2 * b + i1..], b, bw, b - i2, packed);
        let w = T::as_f32_mut(w).expect("T is f32 like Err");
        let rows = update::PANEL_ROWS;
        w.par_chunks_mut(rows * b).zip(ef.par_chunks(rows * bw)).for_each(|(wp, ep)| {
            update::update_panel(wp, b, wp.len() / b, i2, ep, &packed, None, &mut Vec::new());
        });
        return;
    }
    matmul(
        MatMut::from_row_major_slice_mut(w, c, b).submatrix_mut(0, i2, c, b - i2),
        Accum::Add,
        MatRef::from_row_major_slice(err, c, bw),
        layer.factor.view().submatrix(i1, i2, bw, b - i2),
        T::from_f64(-1.0),
        layer.par,
    );
}

/// The block's share of zeros, over all rows, by the OBS score w^2 / U_jj^2.
fn block_mask<T: Real>(w: &[T], mask: &mut [bool], layer: &Layer<'_, T>, p: f64, i1: usize, i2: usize) {
    let (c, b) = (layer.c, layer.b);
    let r = cumulative_share(p, c, i2) - cumulative_share(p, c, i1);
    let denominators: Vec<T> = (i1..i2).map(|j| layer.factor.diag(j) * layer.factor.diag(j)).collect();
    let keys = ObsScores { w, b, from: i1, denominators: &denominators };
    let sel = smallest(c, i2 - i1, r, &keys);
    mask.par_chunks_mut(b).enumerate().for_each_init(
        || vec![T::Key::default(); i2 - i1],
        |buf, (k, row)| {
            mark_row(&sel, &keys, k, buf, &mut row[i1..i2]);
        },
    );
}

/// Keys of the OBS score `W_kj^2 / U_jj^2` over the block's columns, in the
/// score type's own width (u32 for f32: half the bytes of the selection
/// passes).
struct ObsScores<'a, T> {
    w: &'a [T],
    b: usize,
    from: usize,
    /// U_jj^2 of the block's columns.
    denominators: &'a [T],
}

impl<T: Real> RowKeys for ObsScores<'_, T> {
    type Key = T::Key;
    #[inline(always)]
    fn fill(&self, row: usize, from: usize, out: &mut [T::Key]) {
        let start = row * self.b + self.from + from;
        let w = &self.w[start..start + out.len()];
        for (o, (&x, &d)) in out.iter_mut().zip(w.iter().zip(&self.denominators[from..])) {
            *o = (x * x / d).narrow_key();
        }
    }
}

/// The in-block OBS loop of every row; returns the scaled errors (c x bw).
/// [`obs::obs_rows`] takes LANES rows at a time (f32, AVX-512), else
/// [`obs_row`] one.
fn obs_columns<T: Real>(
    w: &mut [T],
    mask: &mut [bool],
    layer: &Layer<'_, T>,
    pattern: Pattern,
    i1: usize,
    i2: usize,
) -> Vec<T> {
    let (b, bw) = (layer.b, i2 - i1);
    let u = layer.factor.view();
    let ub: Vec<T> = (0..bw * bw).map(|k| u[(i1 + k / bw, i1 + k % bw)]).collect();
    let block_mask = match pattern {
        Pattern::NM { n, m } => BlockMask::NM { n, m },
        _ => BlockMask::Given,
    };
    let mut err = vec![T::from_f64(0.0); layer.c * bw];
    if let (true, Some(ubf)) = (simd::avx512(), T::as_f32(&ub)) {
        let (wf, ef) = (T::as_f32_mut(w).expect("T is f32"), T::as_f32_mut(&mut err).expect("T is f32"));
        let panels =
            wf.par_chunks_mut(LANES * b).zip(mask.par_chunks_mut(LANES * b)).zip(ef.par_chunks_mut(LANES * bw));
        panels.for_each_init(ObsScratch::default, |scratch, ((wp, mp), ep)| {
            obs::obs_rows(wp, mp, ep, b, i1, ubf, block_mask, scratch);
        });
        return err;
    }
    let rows = w.par_chunks_mut(b).zip(mask.par_chunks_mut(b)).zip(err.par_chunks_mut(bw));
    rows.for_each(|((row, mrow), erow)| obs_row(&mut row[i1..i2], &mut mrow[i1..i2], erow, &ub, block_mask));
    err
}

/// The in-block OBS loop of one row's block `seg` (mask `mseg`, scaled
/// errors into `erow`).
pub(crate) fn obs_row<T: Real>(seg: &mut [T], mseg: &mut [bool], erow: &mut [T], ub: &[T], block_mask: BlockMask) {
    let bw = seg.len();
    let mut keys = Vec::new();
    for j in 0..bw {
        if let BlockMask::NM { n, m } = block_mask {
            if j % m == 0 {
                keys.clear();
                keys.extend((j..j + m).map(|t| (seg[t] * seg[t] / (ub[t * bw + t] * ub[t * bw + t])).key()));
                smallest_nm(&keys, n, m, &mut mseg[j..j + m]);
            }
        }
        if !mseg[j] {
            continue;
        }
        let e = seg[j] / ub[j * bw + j];
        erow[j] = e;
        let urow = &ub[j * bw + j + 1..(j + 1) * bw];
        seg[j + 1..].iter_mut().zip(urow).for_each(|(x, &uu)| *x -= e * uu);
        seg[j] = T::from_f64(0.0);
    }
}

/// Columns by OBS saliency sum_i W_ij^2 / Hinv_jj, then the joint update.
fn structured<T: Real>(w: &mut [T], layer: &Layer<'_, T>, cfg: &PruneConfig) -> Result<Vec<bool>> {
    let (c, b) = (layer.c, layer.b);
    let f = layer.factor;
    let hinv_diag: Vec<f64> =
        (0..b).map(|j| f.u[j * b..(j + 1) * b].iter().map(|x| x.to_f64() * x.to_f64()).sum()).collect();
    let mut v = vec![0.0f64; b];
    for row in w.chunks_exact(b) {
        v.iter_mut().zip(row).for_each(|(acc, &x)| *acc += x.to_f64() * x.to_f64());
    }
    v.iter_mut().zip(&hinv_diag).for_each(|(acc, &d)| *acc /= d);
    let cols = smallest_columns(&v, ceil_count(cfg.sparsity * b as f64));
    remove_columns(w, layer, &cols, &vec![false; c])
}

#[cfg(test)]
mod tests {
    use faer::Par;

    use super::*;
    use crate::hessian::factor;
    use crate::simd::{cpu_has_avx512, with_cap, Level};
    use crate::testing::noise;

    /// The in-block loop over a layer by panels of 16 rows (37 rows: a partial
    /// panel) gives the bits of the row-by-row loop, in blocks after the first.
    #[test]
    fn lanes_and_rows_agree_over_a_layer() {
        if !cpu_has_avx512() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let (c, b, n) = (37, 24, 40);
        let x: Vec<f32> = (0..b * n).map(|i| noise(1, i)).collect();
        let h: Vec<f32> = (0..b * b)
            .map(|k| (0..n).map(|t| x[k / b * n + t] * x[k % b * n + t]).sum::<f32>() * 2.0 / n as f32)
            .collect();
        let f = factor(&h, b, 0.01, Par::Seq).unwrap();
        let hsqrt = vec![1.0f32; b];
        let layer = Layer { c, b, hsqrt: &hsqrt, factor: &f, par: Par::Seq };
        let w0: Vec<f32> = (0..c * b).map(|i| noise(2, i)).collect();
        let mask0: Vec<bool> = (0..c * b).map(|i| noise(3, i) < 0.0).collect();
        for (pattern, i1, i2) in [(Pattern::Unstructured, 8, 24), (Pattern::NM { n: 2, m: 4 }, 4, 20)] {
            let run = || {
                let (mut w, mut mask) = (w0.clone(), mask0.clone());
                let err = obs_columns(&mut w, &mut mask, &layer, pattern, i1, i2);
                (
                    w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    mask,
                    err.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                )
            };
            assert_eq!(run(), with_cap(Level::Avx2, run));
        }
    }
}
