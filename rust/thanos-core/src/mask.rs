//! Mask selection: which weights to remove.
//!
//! Every rule breaks ties the same way in every backend:
//! global selections by (score, row, column), per-row and per-group ones by
//! (score, column), outlier rows by (-h_k, row), columns by (score, column).
//! Scores are non-negative, so their IEEE bit patterns ([`Real::key`]) order
//! like the values; the global selection counts and filters those keys in
//! streaming passes, linear in the number of entries (no sort): usually one
//! ([`crate::scan`]), at most three.

use rayon::prelude::*;

use crate::scalar::{Key, Real};
use crate::scan::{tally_rows, Tally, Window};
use crate::simd::multiversion;

/// Keys computed and compared at a time in the streaming passes.
const CHUNK: usize = 64;
/// Rows and keys per row of the sample that places the pivots.
const SAMPLE_ROWS: usize = 128;
const SAMPLE_PER_ROW: usize = 128;
/// Pivots sit at these distances (in rank fraction) on both sides of the
/// sampled target quantile: close ones keep the final candidate set small
/// when the sample is good, far ones bound it when it is not.
const PIVOT_OFFSETS: [f64; 4] = [0.004, 0.016, 0.064, 0.25];

/// The r smallest entries of a c x width region by (key, row, column),
/// stored as a threshold rule so callers can test any entry in O(1).
#[derive(Clone, Copy, Debug)]
pub struct Smallest {
    threshold: u64,
    /// Entries equal to the threshold are selected up to and including this
    /// (row, column); `None` means all of them.
    cutoff: Option<(usize, usize)>,
    empty: bool,
}

impl Smallest {
    /// Whether the entry is selected (tests; the kernels use [`mark_row`]).
    #[cfg(test)]
    pub fn contains(&self, key: u64, row: usize, col: usize) -> bool {
        if self.empty || key > self.threshold {
            return false;
        }
        key < self.threshold || self.cutoff.is_none_or(|cut| (row, col) <= cut)
    }

    /// The rule for one row as `key < threshold || (key == threshold && col < ties)`.
    #[inline(always)]
    fn row_rule(&self, row: usize) -> (u64, usize) {
        match (self.empty, self.cutoff) {
            (true, _) => (0, 0),
            (false, None) => (self.threshold, usize::MAX),
            (false, Some((r, col))) => (
                self.threshold,
                if row < r {
                    usize::MAX
                } else if row == r {
                    col + 1
                } else {
                    0
                },
            ),
        }
    }
}

multiversion! {
    /// Marks in `out` which of the first `out.len()` entries of `row` are
    /// selected (keys from `keys`, `buf` its scratch row); returns how many.
    pub fn mark_row[K: RowKeys](sel: &Smallest, keys: &K, row: usize, buf: &mut [K::Key], out: &mut [bool]) -> usize {
        keys.fill(row, 0, buf);
        let (threshold, ties) = sel.row_rule(row);
        let threshold = K::Key::narrow(threshold);
        let mut count = 0;
        for (j, (o, &k)) in out.iter_mut().zip(buf.iter()).enumerate() {
            let x = k < threshold || (k == threshold && j < ties);
            *o = x;
            count += usize::from(x);
        }
        count
    }
}

/// Keys of a c x width region, one row at a time: each entry's score as its
/// order-preserving bit pattern ([`Real::key`]). Implementations on the hot
/// path mark `fill` `#[inline(always)]` so it vectorises with its caller.
pub trait RowKeys: Sync {
    type Key: Key;
    /// Writes the keys of `row`, columns `from..from + out.len()` of the
    /// region, into `out`.
    fn fill(&self, row: usize, from: usize, out: &mut [Self::Key]);
    /// The row's values and column scales when the keys are `|w| * scale`
    /// of f32 data: the AVX-512 pass then computes them in registers.
    fn scaled_f32(&self, _row: usize) -> Option<(&[f32], &[f32])> {
        None
    }
}

/// Keys from a closure (tests).
#[cfg(test)]
impl<F: Fn(usize, usize, &mut [u64]) + Sync> RowKeys for F {
    type Key = u64;
    fn fill(&self, row: usize, from: usize, out: &mut [u64]) {
        self(row, from, out)
    }
}

/// Keys `|W_kj| * scale_j` over the columns [from, to) of a row-major c x b W
/// (the Wanda/Thanos score with `scale = sqrt(diag H)`).
pub struct ScaledAbs<'a, T> {
    pub w: &'a [T],
    pub b: usize,
    pub from: usize,
    pub to: usize,
    /// Indexed by column, length b.
    pub scale: &'a [T],
}

impl<T: Real> RowKeys for ScaledAbs<'_, T> {
    type Key = T::Key;
    #[inline(always)]
    fn fill(&self, row: usize, from: usize, out: &mut [T::Key]) {
        let start = self.from + from;
        let w = &self.w[row * self.b + start..row * self.b + self.to];
        for (o, (&x, &s)) in out.iter_mut().zip(w.iter().zip(&self.scale[start..])) {
            *o = (x.abs() * s).narrow_key();
        }
    }

    fn scaled_f32(&self, row: usize) -> Option<(&[f32], &[f32])> {
        let w = T::as_f32(&self.w[row * self.b + self.from..row * self.b + self.to])?;
        Some((w, T::as_f32(&self.scale[self.from..self.to])?))
    }
}

/// Selects the `r` smallest keys over a c x width region.
///
/// A sample places a [`Window`] around the target rank and one streaming
/// pass tallies it; [`settle`] finishes. The sample decides the cost, never
/// the result.
pub fn smallest<K: RowKeys>(c: usize, width: usize, r: usize, keys: &K) -> Smallest {
    if let Some(done) = trivial(c, width, r) {
        return done;
    }
    let window = Window::around(sample(c, width, keys), r as f64 / (c * width) as f64);
    settle(c, width, r, keys, tally_all(c, width, window, keys))
}

/// [`tally_rows`] over the whole region, in parallel.
fn tally_all<K: RowKeys>(c: usize, width: usize, window: Window<K::Key>, keys: &K) -> Tally<K::Key> {
    (0..c.div_ceil(TALLY_ROWS))
        .into_par_iter()
        .map(|task| tally_rows(keys, task * TALLY_ROWS..((task + 1) * TALLY_ROWS).min(c), width, window))
        .reduce(Tally::default, Tally::merge)
}

/// Rows per task of a parallel tally.
pub const TALLY_ROWS: usize = 32;

/// The selection of the r smallest keys, given a first pass's tally of some
/// window over the whole region: from the tally when rank r lies inside
/// the window, else by two more passes that place their own pivots.
pub fn settle<K: RowKeys>(c: usize, width: usize, r: usize, keys: &K, tally: Tally<K::Key>) -> Smallest {
    if let Some(done) = trivial(c, width, r) {
        return done;
    }
    let below = tally.below as usize;
    if below < r && r <= below + tally.inside.len() {
        return exact(c, width, r, keys, tally.inside, below);
    }
    let pivots = pivots(c, width, r as f64 / (c * width) as f64, keys);
    let counts = count_below(c, width, &pivots, keys);
    // The first pivot with at least r keys below it bounds the interval.
    let m = counts.iter().position(|&x| x as usize >= r).unwrap_or(pivots.len());
    let (lo, below_lo) = if m == 0 { (K::Key::default(), 0) } else { (pivots[m - 1], counts[m - 1] as usize) };
    let hi = pivots.get(m).copied().unwrap_or(K::Key::narrow(u64::MAX));
    exact(c, width, r, keys, tally_all(c, width, Window { lo, hi }, keys).inside, below_lo)
}

/// Nothing or everything selected.
fn trivial(c: usize, width: usize, r: usize) -> Option<Smallest> {
    let n = c * width;
    if r == 0 || n == 0 {
        return Some(Smallest { threshold: 0, cutoff: None, empty: true });
    }
    (r >= n).then_some(Smallest { threshold: u64::MAX, cutoff: None, empty: false })
}

/// The selection from the candidates `cands` (all keys of some interval),
/// `below` keys lying below that interval, and r - below <= cands.len().
fn exact<K: RowKeys>(c: usize, width: usize, r: usize, keys: &K, mut cands: Vec<K::Key>, below: usize) -> Smallest {
    let rank = r - below; // 1-based rank among the candidates
    let (_, &mut threshold, _) = cands.select_nth_unstable(rank - 1);
    let less = below + cands.iter().filter(|&&k| k < threshold).count();
    let equal = cands.iter().filter(|&&k| k == threshold).count();
    let need = r - less;
    let cutoff = (need < equal).then(|| nth_equal(c, width, threshold, need, keys));
    Smallest { threshold: threshold.widen(), cutoff, empty: false }
}

/// Where a sample of a c x width region lies: every `rstep`-th row from
/// rstep / 2, and in each of those every `cstep`-th column from an offset
/// that moves on by one per sampled row, so every column is sampled (column
/// scales dominate the scores). Deterministic, so results and timings repeat.
fn sample<K: RowKeys>(c: usize, width: usize, keys: &K) -> Vec<K::Key> {
    let (rstep, cstep) = ((c / SAMPLE_ROWS).max(1), (width / SAMPLE_PER_ROW).max(1));
    (rstep / 2..c)
        .into_par_iter()
        .step_by(rstep)
        .flat_map_iter(|row| {
            let mut buf = vec![K::Key::default(); width];
            keys.fill(row, 0, &mut buf);
            buf.into_iter().skip(row / rstep % cstep).step_by(cstep)
        })
        .collect()
}

/// Increasing pivots around quantile `q` of the sample.
fn pivots<K: RowKeys>(c: usize, width: usize, q: f64, keys: &K) -> Vec<K::Key> {
    let mut sample = sample(c, width, keys);
    sample.sort_unstable();
    let at = |p: f64| sample[((p.clamp(0.0, 1.0) * sample.len() as f64) as usize).min(sample.len() - 1)];
    let mut out: Vec<K::Key> = PIVOT_OFFSETS
        .iter()
        .rev()
        .map(|d| at(q - d))
        .chain(std::iter::once(at(q)))
        .chain(PIVOT_OFFSETS.iter().map(|d| at(q + d)))
        .collect();
    out.dedup();
    out
}

/// For each pivot, how many keys of the region are strictly below it.
fn count_below<K: RowKeys>(c: usize, width: usize, pivots: &[K::Key], keys: &K) -> Vec<u64> {
    (0..c)
        .into_par_iter()
        .with_min_len(16)
        .fold(
            || (vec![0u64; pivots.len()], vec![K::Key::default(); width]),
            |(mut counts, mut buf), row| {
                count_row(keys, row, &mut buf, pivots, &mut counts);
                (counts, buf)
            },
        )
        .map(|(counts, _)| counts)
        .reduce(
            || vec![0u64; pivots.len()],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

multiversion! {
    fn count_row[K: RowKeys](keys: &K, row: usize, buf: &mut [K::Key], pivots: &[K::Key], counts: &mut [u64]) {
        // A few cache lines at a time, so the loads of the next chunk are in
        // flight while this one is compared (a whole row first, then the
        // compares, leaves the memory idle half the time).
        for (at, chunk) in (0..buf.len()).step_by(CHUNK).zip(buf.chunks_mut(CHUNK)) {
            keys.fill(row, at, chunk);
            for (count, &p) in counts.iter_mut().zip(pivots) {
                let mut below = 0u64;
                for &k in chunk.iter() {
                    below += (k < p) as u64;
                }
                *count += below;
            }
        }
    }
}

/// Position of the `need`-th key equal to `threshold` in row-major order.
/// Rows are counted a group at a time, in order: need < the equal keys, so
/// the row is usually found before the last group.
fn nth_equal<K: RowKeys>(c: usize, width: usize, threshold: K::Key, need: usize, keys: &K) -> (usize, usize) {
    let mut left = need;
    for start in (0..c).step_by(EQUAL_ROWS) {
        let rows = start..(start + EQUAL_ROWS).min(c);
        let per_row: Vec<usize> = rows
            .clone()
            .into_par_iter()
            .with_min_len(16)
            .map_init(|| vec![K::Key::default(); width], |buf, row| count_equal_row(keys, row, buf, threshold))
            .collect();
        for (row, &count) in rows.zip(&per_row) {
            if left <= count {
                let mut buf = vec![K::Key::default(); width];
                keys.fill(row, 0, &mut buf);
                let col = (0..width).filter(|&col| buf[col] == threshold).nth(left - 1).expect("counted above");
                return (row, col);
            }
            left -= count;
        }
    }
    unreachable!("fewer equal keys than counted")
}

/// Rows per group of [`nth_equal`].
const EQUAL_ROWS: usize = 256;

multiversion! {
    fn count_equal_row[K: RowKeys](keys: &K, row: usize, buf: &mut [K::Key], threshold: K::Key) -> usize {
        let mut equal = 0;
        for (at, chunk) in (0..buf.len()).step_by(CHUNK).zip(buf.chunks_mut(CHUNK)) {
            keys.fill(row, at, chunk);
            for &k in chunk.iter() {
                equal += usize::from(k == threshold);
            }
        }
        equal
    }
}

/// Marks in `out` the `count` smallest keys by (key, index).
pub fn smallest_in_row<K: Ord + Copy>(keys: &[K], count: usize, out: &mut [bool], scratch: &mut Vec<(K, usize)>) {
    out.iter_mut().for_each(|o| *o = false);
    let count = count.min(keys.len());
    if count == 0 {
        return;
    }
    scratch.clear();
    scratch.extend(keys.iter().copied().zip(0..));
    if count < keys.len() {
        scratch.select_nth_unstable(count - 1);
    }
    for &(_, i) in &scratch[..count] {
        out[i] = true;
    }
}

/// Marks the n smallest keys of every group of m consecutive entries.
#[inline(always)]
pub fn smallest_nm<K: Ord + Copy>(keys: &[K], n: usize, m: usize, out: &mut [bool]) {
    match m {
        4 => nm_by_rank::<K, 4>(keys, n, out),
        8 => nm_by_rank::<K, 8>(keys, n, out),
        _ => nm_by_sort(keys, n, m, out),
    }
}

/// Entry i of a group is kept out iff fewer than n entries precede it in
/// (key, index) order: M^2 branch-free compares per group, unrolled.
#[inline(always)]
fn nm_by_rank<K: Ord + Copy, const M: usize>(keys: &[K], n: usize, out: &mut [bool]) {
    for (kg, og) in keys.chunks_exact(M).zip(out.chunks_exact_mut(M)) {
        for i in 0..M {
            let mut rank = 0;
            for j in 0..M {
                rank += usize::from(kg[j] < kg[i] || (kg[j] == kg[i] && j < i));
            }
            og[i] = rank < n;
        }
    }
}

fn nm_by_sort<K: Ord + Copy>(keys: &[K], n: usize, m: usize, out: &mut [bool]) {
    let mut order = [0usize; 64];
    for (kg, og) in keys.chunks_exact(m).zip(out.chunks_exact_mut(m)) {
        if m <= order.len() {
            let idx = &mut order[..m];
            idx.iter_mut().enumerate().for_each(|(i, x)| *x = i);
            idx.sort_unstable_by_key(|&i| (kg[i], i));
            og.iter_mut().for_each(|o| *o = false);
            idx[..n].iter().for_each(|&i| og[i] = true);
        } else {
            let mut scratch = Vec::with_capacity(m);
            smallest_in_row(kg, n, og, &mut scratch);
        }
    }
}

multiversion! {
    /// N:M mask of one row's entries (keys from `keys`, `buf` its scratch).
    pub fn mark_nm_row[K: RowKeys](keys: &K, row: usize, buf: &mut [K::Key], n: usize, m: usize, out: &mut [bool]) {
        keys.fill(row, 0, buf);
        smallest_nm(buf, n, m, out);
    }
}

/// Thanos outlier rows: the ceil(alpha c) rows with the largest
/// h_k = sum_j W_kj^2 H_jj, ties to the lower row. True = keep dense.
pub fn outlier_rows<T: Real>(w: &[T], hdiag: &[f64], c: usize, b: usize, count: usize) -> Vec<bool> {
    if count == 0 {
        // alpha = 0, every method's usual case: no scores needed.
        return vec![false; c];
    }
    let h: Vec<f64> =
        w.par_chunks(b).map(|row| row.iter().zip(hdiag).map(|(&x, &d)| x.to_f64() * x.to_f64() * d).sum()).collect();
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &bb| h[bb].total_cmp(&h[a]).then(a.cmp(&bb)));
    let mut out = vec![false; c];
    order[..count].iter().for_each(|&k| out[k] = true);
    out
}

/// Column scores v_j = hdiag_j * sum over the rows not excluded of W_kj^2.
/// Summed in parallel over fixed groups of rows, then the groups in order, so
/// the result does not depend on the thread count.
pub fn column_scores<T: Real>(w: &[T], hdiag: &[f64], b: usize, excluded: &[bool]) -> Vec<f64> {
    const GROUP: usize = 64;
    let parts: Vec<Vec<f64>> = w
        .par_chunks(GROUP * b)
        .zip(excluded.par_chunks(GROUP))
        .map(|(rows, skip)| {
            let mut v = vec![0.0f64; b];
            for (row, _) in rows.chunks_exact(b).zip(skip).filter(|(_, &x)| !x) {
                v.iter_mut().zip(row).for_each(|(acc, &x)| *acc += x.to_f64() * x.to_f64());
            }
            v
        })
        .collect();
    let mut v = vec![0.0f64; b];
    for part in parts {
        v.iter_mut().zip(part).for_each(|(acc, x)| *acc += x);
    }
    v.iter_mut().zip(hdiag).for_each(|(acc, &d)| *acc *= d);
    v
}

/// The `s` columns with the smallest scores, ties to the lower column.
pub fn smallest_columns(scores: &[f64], s: usize) -> Vec<bool> {
    let keys: Vec<u64> = scores.iter().map(|&v| v.key()).collect();
    let mut out = vec![false; scores.len()];
    smallest_in_row(&keys, s, &mut out, &mut Vec::new());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{with_cap, Level};

    fn brute(keys: &[Vec<u64>], r: usize) -> Vec<(usize, usize)> {
        let mut all: Vec<(u64, usize, usize)> =
            keys.iter().enumerate().flat_map(|(i, row)| row.iter().enumerate().map(move |(j, &k)| (k, i, j))).collect();
        all.sort();
        let mut sel: Vec<(usize, usize)> = all[..r].iter().map(|&(_, i, j)| (i, j)).collect();
        sel.sort();
        sel
    }

    /// xorshift keys; `distinct` small makes many ties.
    fn random_keys(c: usize, width: usize, distinct: u64, seed: u64) -> Vec<Vec<u64>> {
        let mut s = seed | 1;
        (0..c)
            .map(|_| {
                (0..width)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        s % distinct
                    })
                    .collect()
            })
            .collect()
    }

    fn selected(keys: &[Vec<u64>], r: usize) -> Vec<(usize, usize)> {
        let (c, width) = (keys.len(), keys[0].len());
        let sel = smallest(c, width, r, &|i: usize, from: usize, buf: &mut [u64]| {
            buf.copy_from_slice(&keys[i][from..from + buf.len()])
        });
        members(&sel, keys)
    }

    fn members(sel: &Smallest, keys: &[Vec<u64>]) -> Vec<(usize, usize)> {
        let (c, width) = (keys.len(), keys[0].len());
        (0..c).flat_map(|i| (0..width).map(move |j| (i, j))).filter(|&(i, j)| sel.contains(keys[i][j], i, j)).collect()
    }

    #[test]
    fn settle_is_exact_for_any_window() {
        // Scores |w| * scale of f32 data (the AVX-512 pass where there is
        // one) with zeros, -0.0, ties and a width that is no multiple of 16.
        let (c, width) = (40, 77);
        let w: Vec<f32> = random_keys(1, c * width, 9, 31)[0]
            .iter()
            .enumerate()
            .map(|(i, &k)| if i % 13 == 0 { -0.0 } else { k as f32 - 4.0 })
            .collect();
        let scale: Vec<f32> = (0..width).map(|j| 0.5 + (j % 5) as f32).collect();
        let abs = ScaledAbs { w: &w, b: width, from: 0, to: width, scale: &scale };
        let keys: Vec<Vec<u64>> = (0..c)
            .map(|i| {
                let mut buf = vec![0u32; width];
                abs.fill(i, 0, &mut buf);
                buf.into_iter().map(u64::from).collect()
            })
            .collect();
        let mut sorted: Vec<u32> = keys.concat().into_iter().map(|k| k as u32).collect();
        sorted.sort_unstable();
        let n = c * width;
        let windows =
            [(0, 0), (0, 1), (0, u32::MAX), (sorted[n / 3], sorted[n / 2]), (sorted[n / 2], sorted[n / 2] + 1)];
        for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
            with_cap(level, || {
                for r in [1, n / 3, n / 2, n / 2 + 7, n - 1] {
                    for (lo, hi) in windows {
                        let tally = tally_rows(&abs, 0..c, width, Window { lo, hi });
                        let got = members(&settle(c, width, r, &abs, tally), &keys);
                        assert_eq!(got, brute(&keys, r), "{level:?}, r = {r}, window {lo}..{hi}");
                    }
                }
            });
        }
    }

    #[test]
    fn a_window_holds_the_sampled_ties() {
        let window = Window::around(vec![7u32; 100], 0.5);
        assert_eq!(window, Window { lo: 7, hi: 8 });
        assert_eq!(Window::around(vec![1u64, 2, 3], 0.001), Window { lo: 0, hi: 3 });
    }

    #[test]
    fn selection_matches_a_full_sort_on_large_regions() {
        // Large enough that the pivots come from a strict sample.
        for (distinct, seed) in [(u64::MAX, 1), (1000, 2), (3, 3)] {
            let keys = random_keys(300, 517, distinct, seed);
            let n = 300 * 517;
            for r in [1, 2, 17, n / 100, n / 2, n - n / 7, n - 2, n - 1] {
                assert_eq!(selected(&keys, r), brute(&keys, r), "distinct {distinct}, r = {r}");
            }
        }
    }

    #[test]
    fn ties_are_cut_in_row_order_past_the_first_group_of_rows() {
        // Every key equal: the cutoff row is r / width, well past the first
        // EQUAL_ROWS rows, and in a ragged last group for the largest r.
        let (c, width) = (2 * EQUAL_ROWS + 37, 3);
        let keys = vec![vec![5u64; width]; c];
        for r in [1, 3 * EQUAL_ROWS + 1, 3 * (2 * EQUAL_ROWS + 20) + 2, c * width - 1] {
            assert_eq!(selected(&keys, r), brute(&keys, r), "r = {r}");
        }
    }

    #[test]
    fn every_simd_level_selects_the_same() {
        let keys = random_keys(200, 300, 1000, 4);
        let n = 200 * 300;
        let w: Vec<f32> = random_keys(1, 64 * 40, 1 << 20, 5)[0].iter().map(|&k| k as f32 - 5e5).collect();
        let scale: Vec<f32> = (0..40).map(|j| 1.0 + j as f32 / 7.0).collect();
        let abs = ScaledAbs { w: &w, b: 40, from: 8, to: 40, scale: &scale };
        for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
            with_cap(level, || {
                for r in [1, n / 3, n - 5] {
                    assert_eq!(selected(&keys, r), brute(&keys, r), "{level:?}, r = {r}");
                }
                // The block marking of Thanos: the same entries as `contains`.
                let sel = smallest(64, 32, 700, &abs);
                let mut buf = vec![0u32; 32];
                for row in 0..64 {
                    let mut out = vec![false; 16];
                    let count = mark_row(&sel, &abs, row, &mut buf[..16], &mut out);
                    abs.fill(row, 0, &mut buf);
                    let want: Vec<bool> = (0..16).map(|j| sel.contains(buf[j].into(), row, j)).collect();
                    assert_eq!((out, count), (want.clone(), want.iter().filter(|&&x| x).count()), "{level:?}");
                }
                // N:M by rank through the dispatched row marker.
                let row_keys =
                    |row: usize, from: usize, out: &mut [u64]| out.copy_from_slice(&keys[row][from..from + out.len()]);
                for (nn, m) in [(2, 4), (3, 8)] {
                    let (mut fast, mut slow) = (vec![false; 296], vec![false; 296]);
                    mark_nm_row(&row_keys, 7, &mut vec![0; 296], nn, m, &mut fast);
                    nm_by_sort(&keys[7][..296], nn, m, &mut slow);
                    assert_eq!(fast, slow, "{level:?} {nn}:{m}");
                }
            });
        }
    }

    #[test]
    fn a_misleading_sample_changes_the_cost_not_the_result() {
        // The sampled rows (every 2nd from 1 for c = 256) hold the largest
        // keys, so every pivot lands far above the true threshold.
        let mut keys = random_keys(256, 300, 1 << 20, 9);
        for (i, row) in keys.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
            row.iter_mut().for_each(|k| *k += 1 << 40 | i as u64);
        }
        let n = 256 * 300;
        for r in [5, n / 3, n / 2 + 11] {
            assert_eq!(selected(&keys, r), brute(&keys, r), "r = {r}");
        }
    }

    #[test]
    fn selection_matches_a_full_sort_with_ties() {
        let c = 7;
        let width = 9;
        let keys: Vec<Vec<u64>> =
            (0..c).map(|i| (0..width).map(|j| ((i * 31 + j * 17) % 5) as u64 * 1_000_000 + 3).collect()).collect();
        for r in 0..=c * width {
            let sel = smallest(c, width, r, &|i: usize, from: usize, buf: &mut [u64]| {
                buf.copy_from_slice(&keys[i][from..from + buf.len()])
            });
            let got: Vec<(usize, usize)> = (0..c)
                .flat_map(|i| (0..width).map(move |j| (i, j)))
                .filter(|&(i, j)| sel.contains(keys[i][j], i, j))
                .collect();
            assert_eq!(got, brute(&keys, r), "r = {r}");
        }
    }

    #[test]
    fn narrow_keys_widen_to_the_keys() {
        for x in [0.0f32, -0.0, 1e-40, 0.5, 3.0e38] {
            assert_eq!(x.narrow_key().widen(), x.key());
            assert_eq!((x as f64).narrow_key().widen(), (x as f64).key());
        }
        assert_eq!(u32::narrow(u64::MAX), u32::MAX);
    }

    #[test]
    fn negative_zero_scores_rank_with_zero() {
        assert_eq!((-0.0f32).key(), 0.0f32.key());
        assert_eq!((-0.0f64).key(), 0.0f64.key());
        assert!(0.0f32.key() < f32::MIN_POSITIVE.key());
    }

    #[test]
    fn nm_by_rank_equals_nm_by_sort() {
        for m in [4usize, 8] {
            let keys: Vec<u64> = random_keys(1, 64 * m, 5, m as u64)[0].clone();
            for n in 0..=m {
                let (mut fast, mut slow) = (vec![false; keys.len()], vec![false; keys.len()]);
                smallest_nm(&keys, n, m, &mut fast);
                nm_by_sort(&keys, n, m, &mut slow);
                assert_eq!(fast, slow, "{n}:{m}");
            }
        }
    }

    #[test]
    fn nm_takes_n_smallest_per_group_ties_to_lower_index() {
        let keys = [5, 1, 1, 9, 0, 0, 0, 0];
        let mut out = [false; 8];
        smallest_nm(&keys, 2, 4, &mut out);
        assert_eq!(out, [false, true, true, false, true, true, false, false]);
    }

    #[test]
    fn outliers_are_the_heaviest_rows() {
        let w = [1.0f64, 0.0, 3.0, 0.0, 2.0, 0.0];
        let out = outlier_rows(&w, &[1.0, 1.0], 3, 2, 1);
        assert_eq!(out, vec![false, true, false]);
    }
}
