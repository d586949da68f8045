//! Mask selection: which weights to remove.
//!
//! Every rule breaks ties the same way in every backend:
//! global selections by (score, row, column), per-row and per-group ones by
//! (score, column), outlier rows by (-h_k, row), columns by (score, column).
//! Scores are non-negative, so their IEEE bit patterns ([`Real::key`]) order
//! like the values; the global selection is a radix select on those keys,
//! linear in the number of entries (no sort).

use rayon::prelude::*;

use crate::scalar::Real;

const DIGIT_BITS: u32 = 16;

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
    #[inline(always)]
    pub fn contains(&self, key: u64, row: usize, col: usize) -> bool {
        if self.empty || key > self.threshold {
            return false;
        }
        key < self.threshold || self.cutoff.is_none_or(|cut| (row, col) <= cut)
    }
}

/// Selects the `r` smallest keys over a c x width region, where
/// `fill(row, buf)` appends the `width` keys of one row to `buf` (so callers
/// compute keys a row at a time, which vectorises).
/// `key_bits` is the width of the keys (32 for f32 scores, 64 for f64).
pub fn smallest<F>(c: usize, width: usize, r: usize, key_bits: u32, fill: F) -> Smallest
where
    F: Fn(usize, &mut Vec<u64>) + Sync,
{
    let n = c * width;
    if r == 0 || n == 0 {
        return Smallest { threshold: 0, cutoff: None, empty: true };
    }
    if r >= n {
        return Smallest { threshold: u64::MAX, cutoff: None, empty: false };
    }
    let shift = key_bits - DIGIT_BITS;
    let hist = (0..c)
        .into_par_iter()
        .with_min_len(16)
        .fold(
            || (vec![0u64; 1 << DIGIT_BITS], Vec::with_capacity(width)),
            |(mut h, mut buf), row| {
                buf.clear();
                fill(row, &mut buf);
                buf.iter().for_each(|&k| h[(k >> shift) as usize] += 1);
                (h, buf)
            },
        )
        .map(|(h, _)| h)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_default();
    let (bucket, below) = bucket_of_rank(&hist, r);
    let mut cands: Vec<u64> = (0..c)
        .into_par_iter()
        .with_min_len(16)
        .fold(
            || (Vec::new(), Vec::with_capacity(width)),
            |(mut out, mut buf): (Vec<u64>, Vec<u64>), row| {
                buf.clear();
                fill(row, &mut buf);
                out.extend(buf.iter().filter(|&&k| (k >> shift) as usize == bucket));
                (out, buf)
            },
        )
        .map(|(out, _)| out)
        .flatten_iter()
        .collect();
    let rank = r - below as usize; // 1-based rank inside the bucket
    let (_, &mut threshold, _) = cands.select_nth_unstable(rank - 1);
    let less = below as usize + cands.iter().filter(|&&k| k < threshold).count();
    let equal = cands.iter().filter(|&&k| k == threshold).count();
    let need = r - less;
    let cutoff = (need < equal).then(|| nth_equal(c, width, threshold, need, &fill));
    Smallest { threshold, cutoff, empty: false }
}

fn bucket_of_rank(hist: &[u64], r: usize) -> (usize, u64) {
    let mut below = 0u64;
    for (i, &h) in hist.iter().enumerate() {
        if below + h >= r as u64 {
            return (i, below);
        }
        below += h;
    }
    unreachable!("rank {r} is beyond the histogram total {below}")
}

/// Position of the `need`-th key equal to `threshold` in row-major order.
fn nth_equal<F>(c: usize, width: usize, threshold: u64, need: usize, fill: &F) -> (usize, usize)
where
    F: Fn(usize, &mut Vec<u64>) + Sync,
{
    let row_keys = |row: usize| {
        let mut buf = Vec::with_capacity(width);
        fill(row, &mut buf);
        buf
    };
    let per_row: Vec<usize> =
        (0..c).into_par_iter().map(|row| row_keys(row).iter().filter(|&&k| k == threshold).count()).collect();
    let mut left = need;
    for (row, &count) in per_row.iter().enumerate() {
        if left <= count {
            let keys = row_keys(row);
            let col = (0..width).filter(|&col| keys[col] == threshold).nth(left - 1).expect("counted above");
            return (row, col);
        }
        left -= count;
    }
    unreachable!("fewer equal keys than counted")
}

/// Marks in `out` the `count` smallest keys by (key, index).
pub fn smallest_in_row(keys: &[u64], count: usize, out: &mut [bool], scratch: &mut Vec<(u64, usize)>) {
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
pub fn smallest_nm(keys: &[u64], n: usize, m: usize, out: &mut [bool]) {
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

/// Thanos outlier rows: the ceil(alpha c) rows with the largest
/// h_k = sum_j W_kj^2 H_jj, ties to the lower row. True = keep dense.
pub fn outlier_rows<T: Real>(w: &[T], hdiag: &[f64], c: usize, b: usize, count: usize) -> Vec<bool> {
    let h: Vec<f64> =
        w.par_chunks(b).map(|row| row.iter().zip(hdiag).map(|(&x, &d)| x.to_f64() * x.to_f64() * d).sum()).collect();
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &bb| h[bb].total_cmp(&h[a]).then(a.cmp(&bb)));
    let mut out = vec![false; c];
    order[..count].iter().for_each(|&k| out[k] = true);
    out
}

/// Column scores v_j = hdiag_j * sum over the rows not excluded of W_kj^2.
pub fn column_scores<T: Real>(w: &[T], hdiag: &[f64], b: usize, excluded: &[bool]) -> Vec<f64> {
    let mut v = vec![0.0f64; b];
    for (row, _) in w.chunks_exact(b).zip(excluded).filter(|(_, &x)| !x) {
        v.iter_mut().zip(row).for_each(|(acc, &x)| *acc += x.to_f64() * x.to_f64());
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

    fn brute(keys: &[Vec<u64>], r: usize) -> Vec<(usize, usize)> {
        let mut all: Vec<(u64, usize, usize)> =
            keys.iter().enumerate().flat_map(|(i, row)| row.iter().enumerate().map(move |(j, &k)| (k, i, j))).collect();
        all.sort();
        let mut sel: Vec<(usize, usize)> = all[..r].iter().map(|&(_, i, j)| (i, j)).collect();
        sel.sort();
        sel
    }

    #[test]
    fn radix_select_matches_a_full_sort_with_ties() {
        let c = 7;
        let width = 9;
        let keys: Vec<Vec<u64>> =
            (0..c).map(|i| (0..width).map(|j| ((i * 31 + j * 17) % 5) as u64 * 1_000_000 + 3).collect()).collect();
        for r in 0..=c * width {
            let sel = smallest(c, width, r, 32, |i, buf| buf.extend(&keys[i]));
            let got: Vec<(usize, usize)> = (0..c)
                .flat_map(|i| (0..width).map(move |j| (i, j)))
                .filter(|&(i, j)| sel.contains(keys[i][j], i, j))
                .collect();
            assert_eq!(got, brute(&keys, r), "r = {r}");
        }
    }

    #[test]
    fn negative_zero_scores_rank_with_zero() {
        assert_eq!((-0.0f32).key(), 0.0f32.key());
        assert_eq!((-0.0f64).key(), 0.0f64.key());
        assert!(0.0f32.key() < f32::MIN_POSITIVE.key());
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
