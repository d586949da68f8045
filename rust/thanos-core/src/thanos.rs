//! Thanos (ALGORITHM.md): block-wise multi-weight removal.
//!
//! Per block [i1, i2): pick each row's set Q_k, solve the rows' small systems
//! `lambda_k = G[Q_k,Q_k]^{-1} w[Q_k]` in parallel, scatter them into L, and
//! apply every row's optimal update with one product `W[:, i1:] -= L R`
//! ([`update`], or faer's by panels of rows and pieces of columns), where
//! `R = U_blk^T U[i1:i2, i1:]` and G = R[:, :B]. No trailing inverse is
//! ever recomputed.

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::config::{structured_columns, target_zeros, Pattern, PruneConfig};
use crate::error::{PruneError, Result};
use crate::hessian::Factor;
use crate::mask::{
    column_scores, mark_nm_row, mark_row, settle, smallest, smallest_columns, ScaledAbs, Smallest, TALLY_ROWS,
};
use crate::scalar::{Key, Real};
use crate::scan::{tally_rows, Tally, Window};
use crate::sets::{expand, largest_first, pack, positions, words};
use crate::simd::{multiversion, prefetch};
use crate::solve::{packed, solve_lanes, spd_solve_in_place, LaneScratch, LANES};
use crate::update;

/// Everything a Thanos or SparseGPT kernel reads besides W.
pub struct Layer<'a, T> {
    pub c: usize,
    pub b: usize,
    /// sqrt of the undamped diag(H): the Wanda/Thanos score is |W_ij| * hsqrt_j.
    pub hsqrt: &'a [T],
    pub factor: &'a Factor<T>,
    pub par: Par,
}

/// The part of Thanos that does not need the factor of H, so it can run
/// beside it: the first global selection of unstructured pruning.
#[derive(Default)]
pub struct Start(Option<Smallest>);

/// [`Start`] for W (c x b, b = hsqrt.len(), dead inputs already zeroed).
pub fn start<T: Real>(w: &[T], hsqrt: &[T], c: usize, cfg: &PruneConfig) -> Start {
    Start((cfg.pattern == Pattern::Unstructured).then(|| first_selection(w, hsqrt, c, cfg)))
}

/// The global selection over all of W, before any block.
fn first_selection<T: Real>(w: &[T], hsqrt: &[T], c: usize, cfg: &PruneConfig) -> Smallest {
    let b = hsqrt.len();
    smallest(c, b, target_zeros(cfg.sparsity, c, b), &remaining(w, hsqrt, 0))
}

/// Thanos for any pattern; `outliers` (rows kept dense) must be all false
/// for unstructured.
pub fn thanos<T: Real>(
    w: &mut [T],
    layer: &Layer<'_, T>,
    cfg: &PruneConfig,
    hdiag: &[f64],
    outliers: &[bool],
    start: Start,
) -> Result<Vec<bool>> {
    Ok(match cfg.pattern {
        Pattern::Unstructured => unstructured(w, layer, cfg, start)?,
        Pattern::NM { n, m } => nm(w, layer, cfg, n, m, outliers)?,
        Pattern::Structured => {
            let scores = column_scores(w, hdiag, layer.b, outliers);
            let cols = smallest_columns(&scores, structured_columns(cfg.sparsity, cfg.alpha, layer.b));
            remove_columns(w, layer, &cols, outliers)?
        }
    })
}

fn unstructured<T: Real>(w: &mut [T], layer: &Layer<'_, T>, cfg: &PruneConfig, start: Start) -> Result<Vec<bool>> {
    let (c, b) = (layer.c, layer.b);
    let bs = cfg.block_for(b);
    let target = target_zeros(cfg.sparsity, c, b);
    let mut mask = vec![false; c * b];
    let mut made = 0;
    let mut buffers = BlockBuffers::default();
    // Global residual selection over every remaining column; each block
    // keeps its own columns of it. The first is a pass of its own (made
    // beside the factor), the others ride on the previous block's update.
    let mut sel = start.0.unwrap_or_else(|| first_selection(w, layer.hsqrt, c, cfg));
    for i1 in (0..b).step_by(bs) {
        let i2 = (i1 + bs).min(b);
        let block = ScaledAbs { to: i2, ..remaining(w, layer.hsqrt, i1) };
        made += buffers
            .rows
            .marked(&mut mask, b, i1..i2)
            .map_init(
                || vec![T::Key::default(); i2 - i1],
                |buf, (k, (row, bits))| {
                    let n = mark_row(&sel, &block, k, buf, &mut row[i1..i2]);
                    pack(&row[i1..i2], bits);
                    n
                },
            )
            .sum::<usize>();
        let next_zeros = (i2 < b).then_some(target - made);
        if let Some(tally) = block_update(w, &mask, layer, i1, i2, &mut buffers, next_zeros)? {
            sel = settle(c, b - i2, target - made, &remaining(w, layer.hsqrt, i2), tally);
        }
    }
    Ok(mask)
}

fn nm<T: Real>(
    w: &mut [T],
    layer: &Layer<'_, T>,
    cfg: &PruneConfig,
    n: usize,
    m: usize,
    outliers: &[bool],
) -> Result<Vec<bool>> {
    let b = layer.b;
    let bs = cfg.block_for(b);
    let mut mask = vec![false; layer.c * b];
    let mut buffers = BlockBuffers::default();
    for i1 in (0..b).step_by(bs) {
        let i2 = (i1 + bs).min(b);
        let keys = ScaledAbs { to: i2, ..remaining(w, layer.hsqrt, i1) };
        buffers.rows.marked(&mut mask, b, i1..i2).for_each_init(
            || vec![T::Key::default(); i2 - i1],
            |buf, (k, (row, bits))| {
                if !outliers[k] {
                    mark_nm_row(&keys, k, buf, n, m, &mut row[i1..i2]);
                }
                pack(&row[i1..i2], bits);
            },
        );
        block_update(w, &mask, layer, i1, i2, &mut buffers, None)?;
    }
    Ok(mask)
}

/// The block loop's large buffers, kept across blocks: allocated afresh, each
/// would be new pages (page faults) in every block.
struct BlockBuffers<T> {
    /// R = U_blk^T U[i1:i2, i1:].
    r: Vec<T>,
    /// R packed for [`update::update_panel`].
    packed: Vec<f32>,
    rows: RowSolves<T>,
}

impl<T> Default for BlockBuffers<T> {
    fn default() -> Self {
        BlockBuffers { r: Vec::new(), packed: Vec::new(), rows: RowSolves::default() }
    }
}

/// The rows' small systems of one block.
struct RowSolves<T> {
    /// Every row's mask in the block, as bits ([`pack`]).
    bits: Vec<u16>,
    /// Q_k of every row, flat (row k at k * bw), and |Q_k|.
    sets: Vec<u32>,
    len: Vec<usize>,
    /// Every lambda_k, packed, and where row k's starts.
    lambdas: Vec<T>,
    at: Vec<usize>,
    /// The lambdas scattered: row k holds lambda_k at Q_k (c x bw).
    l: Vec<T>,
}

impl<T> Default for RowSolves<T> {
    fn default() -> Self {
        RowSolves {
            bits: Vec::new(),
            sets: Vec::new(),
            len: Vec::new(),
            lambdas: Vec::new(),
            at: Vec::new(),
            l: Vec::new(),
        }
    }
}

impl<T> RowSolves<T> {
    /// Every row of the mask (c x b) with its slot of `bits` for the block
    /// `cols`, in parallel: the marking fills both.
    fn marked<'a>(
        &'a mut self,
        mask: &'a mut [bool],
        b: usize,
        cols: Range<usize>,
    ) -> impl IndexedParallelIterator<Item = (usize, (&'a mut [bool], &'a mut [u16]))> {
        let words = words(cols.len());
        // Every word is written by the marking: resized, not cleared.
        self.bits.resize(mask.len() / b * words, 0);
        mask.par_chunks_mut(b).zip(self.bits.par_chunks_mut(words)).enumerate()
    }
}

/// `buf` cleared and resized to `n` copies of `value`, keeping its pages.
fn reuse<T: Copy>(buf: &mut Vec<T>, n: usize, value: T) {
    buf.clear();
    buf.resize(n, value);
}

/// Scores of W[:, from..] (`scale` = sqrt(diag H), one per column).
fn remaining<'a, T: Real>(w: &'a [T], scale: &'a [T], from: usize) -> ScaledAbs<'a, T> {
    ScaledAbs { w, b: scale.len(), from, to: scale.len(), scale }
}

/// Rows per task of the block update (and of the tally riding on it). The
/// product repacks its piece of R for every panel: 128 rows repack half as
/// often as 64 (4096 x 4096 f32, interleaved runs: 3-4% faster).
const PANEL_ROWS: usize = TALLY_ROWS * 4;
/// Bytes of W per product within a panel (128 x 512 in f32, 128 x 256 in
/// f64): with the piece of R and its packed copy (as large again each) they
/// fit in a 1 MiB L2, so the tally reads the piece from there (interleaved
/// runs, 4096 x 4096 f32: 2-3% faster than 512 KiB pieces); and on wide
/// layers the products are faster than one per panel.
const PANEL_BYTES: usize = 256 << 10;

/// Applies the optimal update of every row for its mask in [i1, i2). With
/// `next_zeros` (the zeros still to make over the columns [i2, b)), each
/// panel of rows is tallied for the next selection as it is updated: from
/// the product's registers in [`update_f32`] (f32, AVX-512), else right
/// after each piece's product, while it is in cache (a separate pass would
/// read W again).
fn block_update<T: Real>(
    w: &mut [T],
    mask: &[bool],
    layer: &Layer<'_, T>,
    i1: usize,
    i2: usize,
    buffers: &mut BlockBuffers<T>,
    next_zeros: Option<usize>,
) -> Result<Option<Tally<T::Key>>> {
    let b = layer.b;
    let (bw, rest) = (i2 - i1, b - i1);
    let u = layer.factor.view();
    let BlockBuffers { r, packed, rows } = buffers;
    // R = U_blk^T U[i1:i2, i1:]  (bw x rest, row-major); G = R[:, :bw].
    // Every entry is written by the product: resized, not cleared.
    r.resize(bw * rest, T::from_f64(0.0));
    matmul(
        MatMut::from_row_major_slice_mut(r, bw, rest),
        Accum::Replace,
        u.submatrix(i1, i1, bw, bw).transpose(),
        u.submatrix(i1, i1, bw, rest),
        T::from_f64(1.0),
        layer.par,
    );
    solve_rows(w, r, layer, i1..i2, rows)?;
    let (l, r) = (&rows.l[..], &r[..]);
    let window = next_zeros.map(|zeros| predicted_window(w, l, r, layer, i1..i2, zeros));
    if let (true, Some(lf), Some(rf), Some(scale)) =
        (crate::simd::avx512(), T::as_f32(l), T::as_f32(r), T::as_f32(&layer.hsqrt[i1..]))
    {
        let w = T::as_f32_mut(w).expect("T is f32 like L");
        return Ok(update_f32::<T>(w, mask, lf, rf, scale, b, i1..i2, packed, window));
    }
    let piece = PANEL_BYTES / PANEL_ROWS / std::mem::size_of::<T>();
    let panel = |(wp, lp): (&mut [T], &[T]), mp: &[bool]| {
        let height = wp.len() / b;
        let mut tally = window.map(|_| Tally::default());
        for j in (i1..b).step_by(piece) {
            let n = piece.min(b - j);
            matmul(
                MatMut::from_row_major_slice_mut(wp, height, b).submatrix_mut(0, j, height, n),
                Accum::Add,
                MatRef::from_row_major_slice(lp, height, bw),
                MatRef::from_row_major_slice(r, bw, rest).subcols(j - i1, n),
                T::from_f64(-1.0),
                Par::Seq,
            );
            let (from, to) = (j.max(i2), j + n);
            if let Some(win) = window.filter(|_| from < to) {
                let keys = ScaledAbs { from, to, ..remaining(wp, layer.hsqrt, 0) };
                tally = tally.map(|t| t.merge(tally_rows(&keys, 0..height, to - from, win)));
            }
        }
        wp.chunks_mut(b).zip(mp.chunks(b)).for_each(|(row, m)| zero_row(&mut row[i1..i2], &m[i1..i2]));
        tally
    };
    Ok(w.par_chunks_mut(PANEL_ROWS * b)
        .zip(l.par_chunks(PANEL_ROWS * bw))
        .zip(mask.par_chunks(PANEL_ROWS * b))
        .map(|(wl, mp)| panel(wl, mp))
        .reduce(|| window.map(|_| Tally::default()), |x, y| x.zip(y).map(|(x, y)| x.merge(y))))
}

/// [`block_update`]'s product and tally by [`update::update_panel`] (f32,
/// AVX-512): R packed once, the tally taken from the updated registers.
#[allow(clippy::too_many_arguments)]
fn update_f32<T: Real>(
    w: &mut [f32],
    mask: &[bool],
    l: &[f32],
    r: &[f32],
    scale: &[f32],
    b: usize,
    block: Range<usize>,
    packed: &mut Vec<f32>,
    window: Option<Window<T::Key>>,
) -> Option<Tally<T::Key>> {
    let (i1, i2, bw) = (block.start, block.end, block.len());
    let rest = b - i1;
    let packed = update::pack_rows(r, rest, bw, rest, packed);
    let keys = window.map(|win| update::Keys { scale, from: bw, window: win.as_u32().expect("f32 keys are u32") });
    let panel = |((wp, lp), mp): ((&mut [f32], &[f32]), &[bool])| {
        let height = wp.len() / b;
        let mut tally = Tally::<T::Key>::default();
        let inside = T::Key::as_u32_vec(&mut tally.inside).expect("f32 keys are u32");
        tally.below = update::update_panel(wp, b, height, i1, lp, &packed, keys.as_ref(), inside);
        wp.chunks_mut(b).zip(mp.chunks(b)).for_each(|(row, m)| zero_row(&mut row[i1..i2], &m[i1..i2]));
        keys.as_ref().map(|_| tally)
    };
    let rows = update::PANEL_ROWS;
    w.par_chunks_mut(rows * b)
        .zip(l.par_chunks(rows * bw))
        .zip(mask.par_chunks(rows * b))
        .map(panel)
        .reduce(|| window.map(|_| Tally::default()), |x, y| x.zip(y).map(|(x, y)| x.merge(y)))
}

/// The window for the next selection (`zeros` over the columns after
/// `block`), from an exact sample of the updated W: a few rows' values
/// after this block's update (a small product), not a pass over the region.
fn predicted_window<T: Real>(
    w: &[T],
    l: &[T],
    r: &[T],
    layer: &Layer<'_, T>,
    block: Range<usize>,
    zeros: usize,
) -> Window<T::Key> {
    let (c, b, bw, from) = (layer.c, layer.b, block.len(), block.end);
    let (rest, width) = (b - block.start, b - from);
    let step = (c / PREDICT_ROWS).max(1);
    let rows: Vec<usize> = (step / 2..c).step_by(step).collect();
    // Row-major copies: whole rows are copied, and the keys read them in order.
    let mut v = vec![T::from_f64(0.0); rows.len() * width];
    v.par_chunks_mut(width).zip(&rows).for_each(|(out, &k)| out.copy_from_slice(&w[k * b + from..(k + 1) * b]));
    let lv: Vec<T> = rows.iter().flat_map(|&k| &l[k * bw..(k + 1) * bw]).copied().collect();
    matmul(
        MatMut::from_row_major_slice_mut(&mut v, rows.len(), width),
        Accum::Add,
        MatRef::from_row_major_slice(&lv, rows.len(), bw),
        MatRef::from_row_major_slice(r, bw, rest).subcols(bw, width),
        T::from_f64(-1.0),
        layer.par,
    );
    let scale = &layer.hsqrt[from..];
    let mut sample = vec![T::Key::default(); v.len()];
    sample.par_chunks_mut(width).zip(v.par_chunks(width)).for_each(|(keys, row)| sample_keys(keys, row, scale));
    Window::around(sample, zeros as f64 / (c * width) as f64)
}

multiversion! {
    /// `keys[j]` = the key of `|row[j]| * scale[j]`.
    fn sample_keys[T: Real](keys: &mut [T::Key], row: &[T], scale: &[T]) {
        for ((k, &x), &s) in keys.iter_mut().zip(row).zip(scale) {
            *k = (x.abs() * s).narrow_key();
        }
    }
}

/// Rows of W whose updated values place the next window.
const PREDICT_ROWS: usize = 32;

/// Fills `out.l` (c x bw): row k holds lambda_k = G[Q_k,Q_k]^{-1} w[Q_k] at Q_k,
/// zero elsewhere.
fn solve_rows<T: Real>(
    w: &[T],
    r: &[T],
    layer: &Layer<'_, T>,
    block: Range<usize>,
    out: &mut RowSolves<T>,
) -> Result<()> {
    let RowSolves { bits, sets, len, lambdas, at, l } = out;
    let (i1, i2) = (block.start, block.end);
    let (c, b, bw, rest) = (layer.c, layer.b, i2 - i1, layer.b - i1);
    let words = words(bw);
    let bits = |k: usize| &bits[k * words..(k + 1) * words];
    // A row reads only the slots it wrote: resized, not cleared.
    sets.resize(c * bw, 0);
    len.resize(c, 0);
    sets.par_chunks_mut(bw).zip(len.par_iter_mut()).enumerate().for_each(|(k, (q, n))| *n = positions(bits(k), bw, q));
    let (sets, len) = (&sets[..], &len[..]);
    // Largest systems first, so the rows sharing a batch need little padding.
    let rows = largest_first(len, bw);
    // Every lambda, in that order, in one buffer; at[k] is where row k's starts.
    reuse(at, c, 0);
    let mut total = 0;
    for &k in &rows {
        at[k] = total;
        total += len[k];
    }
    // Every slot is written by its batch: resized, not cleared.
    lambdas.resize(total, T::from_f64(0.0));
    let batch_lens = rows.chunks(LANES).map(|batch| batch.iter().map(|&k| len[k]).sum());
    let pieces = split_by(lambdas, batch_lens);
    // G = R[:, :bw] (symmetric), packed so the gathers stay in L1.
    let g = packed(r, bw, rest);
    let q = |k: usize| &sets[k * bw..k * bw + len[k]];
    let at = &at[..];
    let batches = rows.par_chunks(LANES).zip(pieces).enumerate();
    batches.try_for_each_init(LaneScratch::default, |scratch, (at_batch, (batch, rhs))| {
        // The next batch's rows of W and sets, scattered over their buffers,
        // load while this one solves.
        for &k in rows.chunks(LANES).nth(at_batch + 1).unwrap_or_default() {
            prefetch(&w[k * b + i1..k * b + i2]);
            prefetch(q(k));
        }
        let mut views = split_by(rhs, batch.iter().map(|&k| len[k]));
        for (view, &k) in views.iter_mut().zip(batch) {
            let wrow = &w[k * b + i1..k * b + i2];
            view.iter_mut().zip(q(k)).for_each(|(v, &j)| *v = wrow[j as usize]);
        }
        let qs: Vec<&[u32]> = batch.iter().map(|&k| q(k)).collect();
        let failed = solve_lanes(&g, bw, &qs, &mut views, scratch);
        for (lane, &k) in batch.iter().enumerate().filter(|(lane, _)| failed >> lane & 1 == 1) {
            views[lane].copy_from_slice(&solve_in_f64(layer, i1, i2, q(k), &w[k * b + i1..])?);
        }
        Ok(())
    })?;
    // Scattered into L by rows, in parallel (every entry is written).
    l.resize(c * bw, T::from_f64(0.0));
    l.par_chunks_mut(bw).enumerate().for_each(|(k, lrow)| expand(bits(k), &lambdas[at[k]..at[k] + len[k]], lrow));
    Ok(())
}

/// Consecutive mutable pieces of `buf` with the given lengths.
fn split_by<T>(mut buf: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    lens.map(|n| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(n);
        buf = tail;
        head
    })
    .collect()
}

/// Rounding in T broke positive definiteness of G[Q,Q] = A^T A, A = U_blk[:, Q]
/// (full column rank, so SPD): rebuild it from U in f64 and solve that row again.
fn solve_in_f64<T: Real>(layer: &Layer<'_, T>, i1: usize, i2: usize, q: &[u32], wrow: &[T]) -> Result<Vec<T>> {
    let u = layer.factor.view();
    let s = q.len();
    let col = |j: u32| (i1..i2).map(move |r| u[(r, i1 + j as usize)].to_f64());
    let g: Vec<f64> =
        q.iter().flat_map(|&a| q.iter().map(move |&bb| col(a).zip(col(bb)).map(|(x, y)| x * y).sum())).collect();
    let idx: Vec<u32> = (0..s as u32).collect();
    let mut x: Vec<f64> = q.iter().map(|&j| wrow[j as usize].to_f64()).collect();
    if solve_lanes(&packed(&g, s, s), s, &[&idx], &mut [&mut x[..]], &mut LaneScratch::default()) != 0 {
        return Err(PruneError::NotPositiveDefinite { damp: layer.factor.damp });
    }
    Ok(x.into_iter().map(T::from_f64).collect())
}

pub(crate) fn zero_masked<T: Real>(w: &mut [T], mask: &[bool], b: usize, i1: usize, i2: usize) {
    w.par_chunks_mut(b).zip(mask.par_chunks(b)).for_each(|(row, mrow)| zero_row(&mut row[i1..i2], &mrow[i1..i2]));
}

multiversion! {
    /// A select, not a branch, so it vectorises.
    fn zero_row[T: Real](row: &mut [T], mask: &[bool]) {
        let zero = T::from_f64(0.0);
        for (x, &m) in row.iter_mut().zip(mask) {
            *x = if m { zero } else { *x };
        }
    }
}

/// Structured removal of the columns `cols` from the non-outlier rows with
/// one shared solve: `Delta = -W[:, S] (Hinv[S,S])^{-1} Hinv[S, :]`.
pub fn remove_columns<T: Real>(
    w: &mut [T],
    layer: &Layer<'_, T>,
    cols: &[bool],
    outliers: &[bool],
) -> Result<Vec<bool>> {
    let (c, b) = (layer.c, layer.b);
    let set: Vec<usize> = (0..b).filter(|&j| cols[j]).collect();
    let rows: Vec<usize> = (0..c).filter(|&k| !outliers[k]).collect();
    let mut mask = vec![false; c * b];
    for &k in &rows {
        set.iter().for_each(|&j| mask[k * b + j] = true);
    }
    if set.is_empty() || rows.is_empty() {
        return Ok(mask);
    }
    let s = set.len();
    let u = layer.factor.view();
    // U[:, S] (b x s), then M = Hinv[S, :] = U[:, S]^T U (s x b).
    let us = faer::Mat::<T>::from_fn(b, s, |i, a| u[(i, set[a])]);
    let mut m = faer::Mat::<T>::zeros(s, b);
    matmul(m.as_mut(), Accum::Replace, us.transpose(), u, T::from_f64(1.0), layer.par);
    // Y^T = Hinv[S,S]^{-1} W[rows, S]^T via Cholesky of Hinv[S,S].
    let mut hss = faer::Mat::<T>::from_fn(s, s, |a, bb| m[(a, set[bb])]);
    let mut yt = faer::Mat::<T>::from_fn(s, rows.len(), |a, r| w[rows[r] * b + set[a]]);
    if !spd_solve_in_place(hss.as_mut(), yt.as_mut(), layer.par) {
        return Err(PruneError::NotPositiveDefinite { damp: layer.factor.damp });
    }
    let mut delta = faer::Mat::<T>::zeros(rows.len(), b);
    matmul(delta.as_mut(), Accum::Replace, yt.transpose(), m.as_ref(), T::from_f64(1.0), layer.par);
    let delta = delta.as_ref();
    for (r, &k) in rows.iter().enumerate() {
        let row = &mut w[k * b..(k + 1) * b];
        row.iter_mut().enumerate().for_each(|(j, x)| *x -= delta[(r, j)]);
    }
    zero_masked(w, &mask, b, 0, b);
    Ok(mask)
}
