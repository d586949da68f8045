//! The first pass of a global selection: one streaming read that counts the
//! keys below a window [lo, hi) and collects the keys inside it.
//!
//! The window is read off a sample, around the target rank. When rank r
//! falls inside it (the usual case), the pass and a selection among the
//! collected keys give the exact threshold; otherwise the caller falls back
//! to passes that do not depend on the sample. A window never changes a
//! result, only the cost. Thanos runs this pass on each piece of a panel of
//! rows right after that piece's update, while it is still in cache.

use std::ops::Range;

use crate::mask::RowKeys;
use crate::scalar::Key;
use crate::simd::multiversion;
#[cfg(target_arch = "x86_64")]
use crate::simd::{level, Level};

/// Keys computed and compared at a time by the generic pass.
const CHUNK: usize = 64;
/// Half-width of the window in standard errors of the sampled quantile.
const STANDARD_ERRORS: f64 = 3.0;

/// Keys in [lo, hi) are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window<K> {
    pub lo: K,
    pub hi: K,
}

impl<K: Key> Window<K> {
    /// The same window on u32 keys, when K is u32 (f32 scores).
    pub fn as_u32(self) -> Option<Window<u32>> {
        K::as_u32(&[self.lo, self.hi]).map(|k| Window { lo: k[0], hi: k[1] })
    }

    /// The window around quantile `q` of `sample` (non-empty), wide enough
    /// that rank q of the whole region is inside it unless the sample
    /// misled. It includes both bounding sample keys, so ties at a sampled
    /// key are inside.
    pub fn around(mut sample: Vec<K>, q: f64) -> Self {
        let n = sample.len();
        let half_width = STANDARD_ERRORS * (q * (1.0 - q) / n as f64).sqrt() + 1.0 / n as f64;
        // Two selections, not a sort: the sample is read once per block. The
        // first leaves only keys at least lo right of its rank, and the
        // second looks there.
        let rank = |p: f64| ((p * n as f64) as usize).min(n - 1);
        let mut start = 0;
        let lo = if q - half_width <= 0.0 {
            K::default()
        } else {
            start = rank(q - half_width);
            *sample.select_nth_unstable(start).1
        };
        let hi = if q + half_width >= 1.0 {
            K::narrow(u64::MAX)
        } else {
            let upper = sample[start..].select_nth_unstable(rank(q + half_width) - start).1;
            K::narrow(upper.widen().saturating_add(1))
        };
        Window { lo, hi }
    }
}

/// What a pass over some rows found: how many keys lie below the window,
/// and the keys inside it.
#[derive(Debug)]
pub struct Tally<K> {
    pub below: u64,
    pub inside: Vec<K>,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally { below: 0, inside: Vec::new() }
    }
}

impl<K> Tally<K> {
    pub fn merge(mut self, other: Tally<K>) -> Self {
        self.below += other.below;
        self.inside.extend(other.inside);
        self
    }
}

/// The pass over `rows` of `keys`, sequentially (callers split the rows
/// among threads).
pub fn tally_rows<K: RowKeys>(keys: &K, rows: Range<usize>, width: usize, window: Window<K::Key>) -> Tally<K::Key> {
    let mut tally = Tally::default();
    let mut buf = Vec::new();
    let end = rows.end;
    for row in rows {
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx512 {
            if let (Some((w, scale)), Some(Window { lo, hi }), Some(inside)) =
                (keys.scaled_f32(row), window.as_u32(), K::Key::as_u32_vec(&mut tally.inside))
            {
                if row + 1 < end {
                    if let Some((next, _)) = keys.scaled_f32(row + 1) {
                        crate::simd::prefetch(next);
                    }
                }
                // SAFETY: level() only reports features detected on this CPU.
                tally.below += unsafe { avx512::tally_scaled_f32(w, scale, lo, hi, inside) };
                continue;
            }
        }
        buf.resize(width, K::Key::default());
        tally.below += tally_row(keys, row, &mut buf, window, &mut tally.inside);
    }
    tally
}

multiversion! {
    /// One row of [`tally_rows`] (`buf` its scratch row); returns the count below.
    fn tally_row[K: RowKeys](keys: &K, row: usize, buf: &mut [K::Key], window: Window<K::Key>, inside: &mut Vec<K::Key>) -> u64 {
        let Window { lo, hi } = window;
        let mut below = 0u64;
        for (at, chunk) in (0..buf.len()).step_by(CHUNK).zip(buf.chunks_mut(CHUNK)) {
            keys.fill(row, at, chunk);
            let mut n = 0u32;
            for &k in chunk.iter() {
                n += u32::from(k < lo);
            }
            below += u64::from(n);
            // Candidates are few: test 16 keys at once (vectorised), copy
            // only from the groups that hold one.
            for group in chunk.chunks(16) {
                let mut any = false;
                for &k in group {
                    any |= k >= lo && k < hi;
                }
                if any {
                    inside.extend(group.iter().filter(|&&k| k >= lo && k < hi));
                }
            }
        }
        below
    }
}

/// The hot case by hand, f32 scores `|w| * scale`: keys computed in
/// registers, two compares per 16 keys, candidates compressed out of the
/// register and stored without a branch (a third of the groups hold one, so
/// a branch mispredicts).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::tally_row`] for keys `(|w_j| * scale_j).to_bits()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    pub(super) unsafe fn tally_scaled_f32(w: &[f32], scale: &[f32], lo: u32, hi: u32, inside: &mut Vec<u32>) -> u64 {
        let n = w.len().min(scale.len());
        debug_assert!(lo < 1 << 31 && lo <= hi, "window [{lo}, {hi})");
        // Keys have the sign bit clear (below 2^31) and so does lo, so
        // k - lo is negative exactly when k < lo, and k - lo (mod 2^32) is
        // below hi - lo exactly when lo <= k < hi: one shift and one
        // compare, no mask arithmetic (mask registers move slowly to and
        // from the integer side).
        let (lo, width) = (_mm512_set1_epi32(lo as i32), _mm512_set1_epi32(hi.wrapping_sub(lo) as i32));
        let mut below = _mm512_setzero_si512();
        // Room for every key of the row plus one full store; the length
        // stays in a register (through the Vec it would round-trip memory).
        inside.reserve(n + 16);
        let (base, mut len) = (inside.as_mut_ptr(), inside.len());
        let full = n / 16 * 16;
        for j in (0..full).step_by(16) {
            // SAFETY: j + 16 <= n.
            let (x, s) = (_mm512_loadu_ps(w.as_ptr().add(j)), _mm512_loadu_ps(scale.as_ptr().add(j)));
            (below, len) = tally16(x, s, !0, lo, width, below, base, len);
        }
        if full < n {
            let live: __mmask16 = (1 << (n - full)) - 1;
            // SAFETY: the mask keeps the loads inside w[..n] and scale[..n].
            let (x, s) = (
                _mm512_maskz_loadu_ps(live, w.as_ptr().add(full)),
                _mm512_maskz_loadu_ps(live, scale.as_ptr().add(full)),
            );
            (below, len) = tally16(x, s, live, lo, width, below, base, len);
        }
        // SAFETY: the first len slots were written (above or before).
        inside.set_len(len);
        _mm512_reduce_add_epi32(below) as u32 as u64
    }

    /// The keys `|x * s|` of the `live` lanes against the window
    /// (`lo` and `width` = hi - lo, broadcast): those below are counted
    /// into `below`, those inside stored at `base + len`; returns both
    /// updated. Also Thanos's tally from the update's registers.
    ///
    /// # Safety
    /// AVX-512F/BW/VL; room for 16 keys at `base + len`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tally16(
        x: __m512,
        s: __m512,
        live: __mmask16,
        lo: __m512i,
        width: __m512i,
        below: __m512i,
        base: *mut u32,
        len: usize,
    ) -> (__m512i, usize) {
        // Clearing the sign bit maps -0.0 to +0.0, as Real::narrow_key does.
        let k = _mm512_and_si512(_mm512_castps_si512(_mm512_mul_ps(x, s)), _mm512_set1_epi32(0x7fff_ffff));
        let shifted = _mm512_sub_epi32(k, lo);
        let below = _mm512_mask_add_epi32(below, live, below, _mm512_srli_epi32::<31>(shifted));
        let hit = _mm512_mask_cmplt_epu32_mask(live, shifted, width);
        // SAFETY: the caller leaves room for 16 keys at base + len.
        _mm512_storeu_si512(base.add(len).cast(), _mm512_maskz_compress_epi32(hit, k));
        (below, len + hit.count_ones() as usize)
    }
}
