//! The block update that Thanos and SparseGPT share, `W[:, col0..] -= A B`
//! (A: c x k, the block's lambdas or scaled errors; B: k x width, rows of
//! R or of U), written by hand for f32 with AVX-512.
//!
//! B is packed once per block into strips of [`NR`] columns that every
//! panel of rows then reads (a general product packs it again for every
//! panel); each [`MR`] x [`NR`] tile of W is read once, updated in
//! registers over all of k, and written once. Thanos's tally for its next
//! selection is taken from those registers, so the updated region is never
//! read again. Other types and CPUs use faer's product (the callers'
//! fallback), with the tally as a pass of its own.

use rayon::prelude::*;

use crate::scan::Window;

/// Columns of W per strip: six AVX-512 vectors.
pub const NR: usize = 96;
/// Rows of W per tile (with NR, 24 accumulators of the 32 registers).
pub const MR: usize = 4;
/// Rows of W per parallel task: they share each strip of B from L1.
pub const PANEL_ROWS: usize = 128;

/// B (k x width) packed for [`update_panel`]: strips of NR columns, each
/// k x NR row-major, zero past `width`. Every slot is written.
pub struct Packed<'a> {
    data: &'a [f32],
    k: usize,
    width: usize,
}

/// Packs B given row by row (`b[i * ld + j]`) into `buf`.
pub fn pack_rows<'a>(b: &[f32], ld: usize, k: usize, width: usize, buf: &'a mut Vec<f32>) -> Packed<'a> {
    pack(k, width, buf, |strip, j0, n| {
        for (i, row) in strip.chunks_exact_mut(NR).enumerate() {
            row[..n].copy_from_slice(&b[i * ld + j0..i * ld + j0 + n]);
            row[n..].fill(0.0);
        }
    })
}

/// Packs B given column by column (`b[j * ld + i]`) into `buf`.
pub fn pack_cols<'a>(b: &[f32], ld: usize, k: usize, width: usize, buf: &'a mut Vec<f32>) -> Packed<'a> {
    pack(k, width, buf, |strip, j0, n| {
        strip.fill(0.0);
        for t in 0..n {
            let col = &b[(j0 + t) * ld..(j0 + t) * ld + k];
            strip.iter_mut().skip(t).step_by(NR).zip(col).for_each(|(o, &x)| *o = x);
        }
    })
}

/// Strips filled in parallel by `fill(strip, first column, live columns)`.
fn pack<'a>(
    k: usize,
    width: usize,
    buf: &'a mut Vec<f32>,
    fill: impl Fn(&mut [f32], usize, usize) + Sync,
) -> Packed<'a> {
    // Every slot is written by `fill`: resized, not cleared.
    buf.resize(width.div_ceil(NR) * k * NR, 0.0);
    if k > 0 {
        buf.par_chunks_mut(k * NR).enumerate().for_each(|(s, strip)| fill(strip, s * NR, NR.min(width - s * NR)));
    }
    Packed { data: buf, k, width }
}

/// Thanos's tally over the updated columns `from..` (relative to col0):
/// keys `|w| * scale` (`scale[j]` for column col0 + j).
pub struct Keys<'a> {
    pub scale: &'a [f32],
    pub from: usize,
    pub window: Window<u32>,
}

/// `W[rows, col0..col0 + width] -= A B` for a panel of `height` rows of W
/// (row stride `ldw`) and A (`height` x k, row-major). With `keys`, counts
/// the updated keys below the window and appends those inside it to
/// `inside`; returns the count. Only where [`crate::simd::avx512`].
#[allow(clippy::too_many_arguments)]
pub fn update_panel(
    w: &mut [f32],
    ldw: usize,
    height: usize,
    col0: usize,
    a: &[f32],
    b: &Packed<'_>,
    keys: Option<&Keys<'_>>,
    inside: &mut Vec<u32>,
) -> u64 {
    let (k, width) = (b.k, b.width);
    assert!(
        crate::simd::cpu_has_avx512()
            && height > 0
            && col0 + width <= ldw
            && w.len() >= (height - 1) * ldw + col0 + width
    );
    assert!(a.len() >= height * k && keys.is_none_or(|x| x.scale.len() >= width));
    // tally16's window test needs lo below 2^31 (keys have the sign bit clear) and lo <= hi.
    debug_assert!(keys.is_none_or(|x| x.window.lo < 1 << 31 && x.window.lo <= x.window.hi));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 checked above; bounds checked above.
    unsafe {
        avx512::panel(w.as_mut_ptr().add(col0), ldw, height, a, k, b.data, width, keys, inside)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Keys, MR, NR};
    use crate::scan::avx512::tally16;

    const NZ: usize = NR / 16;
    /// Strips per run: 6 x 48 KB of B (k = 128) in a 1 MiB L2.
    const RUN: usize = 6;

    /// [`super::update_panel`] with `w` at column col0 of the panel's first row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel(
        w: *mut f32,
        ldw: usize,
        height: usize,
        a: &[f32],
        k: usize,
        packed: &[f32],
        width: usize,
        keys: Option<&Keys<'_>>,
        inside: &mut Vec<u32>,
    ) -> u64 {
        let tiles: Vec<Tile> = (0..width.div_ceil(NR))
            .map(|s| {
                let j0 = s * NR;
                let lanes = |t: usize, first: usize| {
                    let n = width.min(j0 + 16 * t + 16).saturating_sub(first.max(j0 + 16 * t));
                    let skip = first.saturating_sub(j0 + 16 * t).min(16);
                    (((1u32 << n) - 1) << skip) as __mmask16
                };
                Tile {
                    live: std::array::from_fn(|t| lanes(t, 0)),
                    tallied: std::array::from_fn(|t| keys.map_or(0, |x| lanes(t, x.from))),
                    tally: keys.map(|x| (x.scale.as_ptr().add(j0), x.window)),
                }
            })
            .collect();
        let mut below = 0;
        // A run of strips (their packed B in L2) at a time, each row group
        // along it: W is then read along its rows, as the prefetchers expect.
        for run in (0..tiles.len()).step_by(RUN) {
            let strips = run..(run + RUN).min(tiles.len());
            let mut r0 = 0;
            while r0 < height {
                let m = MR.min(height - r0);
                for s in strips.clone() {
                    let (c, a) = (w.add(r0 * ldw + s * NR), a.as_ptr().add(r0 * k));
                    let strip = &packed[s * k * NR..(s + 1) * k * NR];
                    below += match m {
                        MR => tiles[s].run::<MR>(c, ldw, a, k, strip, inside),
                        3 => tiles[s].run::<3>(c, ldw, a, k, strip, inside),
                        2 => tiles[s].run::<2>(c, ldw, a, k, strip, inside),
                        _ => tiles[s].run::<1>(c, ldw, a, k, strip, inside),
                    };
                }
                r0 += m;
            }
        }
        below
    }

    /// What the tiles of one strip share.
    struct Tile {
        /// The strip's columns inside W, and those tallied, per vector.
        live: [__mmask16; NZ],
        tallied: [__mmask16; NZ],
        /// The strip's scales and the window, when tallied.
        tally: Option<(*const f32, super::Window<u32>)>,
    }

    impl Tile {
        /// Rows [0, M) of the strip's columns at `c`; returns the count below.
        #[inline(always)]
        unsafe fn run<const M: usize>(
            &self,
            c: *mut f32,
            ldc: usize,
            a: *const f32,
            k: usize,
            strip: &[f32],
            inside: &mut Vec<u32>,
        ) -> u64 {
            // Vectors past the strip's live columns may point past W's (and
            // the scale's) end: wrapping offsets, used only under a zero mask.
            // W is needed only after the k loop: its lines load meanwhile.
            for r in 0..M {
                for t in 0..NZ {
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * ldc + 16 * t).cast());
                }
            }
            let mut acc = [[_mm512_setzero_ps(); NZ]; M];
            let b = strip.as_ptr();
            for i in 0..k {
                let mut bv = [_mm512_setzero_ps(); NZ];
                for (t, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(b.add(i * NR + 16 * t));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * k + i));
                    for (v, &y) in row.iter_mut().zip(&bv) {
                        *v = _mm512_fmadd_ps(x, y, *v);
                    }
                }
            }
            let Some((scale, win)) = self.tally else {
                for (r, row) in acc.iter().enumerate() {
                    for (t, &v) in row.iter().enumerate() {
                        let p = c.wrapping_add(r * ldc + 16 * t);
                        _mm512_mask_storeu_ps(
                            p,
                            self.live[t],
                            _mm512_sub_ps(_mm512_maskz_loadu_ps(self.live[t], p), v),
                        );
                    }
                }
                return 0;
            };
            let (lo, width) = (_mm512_set1_epi32(win.lo as i32), _mm512_set1_epi32(win.hi.wrapping_sub(win.lo) as i32));
            let mut below = _mm512_setzero_si512();
            // Every store writes 16 slots, up to M * NR keys land.
            inside.reserve(M * NR + 16);
            let (base, mut len) = (inside.as_mut_ptr(), inside.len());
            for (r, row) in acc.iter().enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    let p = c.wrapping_add(r * ldc + 16 * t);
                    let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(self.live[t], p), v);
                    _mm512_mask_storeu_ps(p, self.live[t], x);
                    let s = _mm512_maskz_loadu_ps(self.tallied[t], scale.wrapping_add(16 * t));
                    (below, len) = tally16(x, s, self.tallied[t], lo, width, below, base, len);
                }
            }
            inside.set_len(len);
            _mm512_reduce_add_epi32(below) as u32 as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5): a multiplicative hash mod a prime.
    fn det(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64).map(|i| ((i * 2_654_435_761 + seed * 97) % 1009) as f32 / 1009.0 - 0.5).collect()
    }

    /// Odd shapes (partial tiles and strips, a tallied range starting
    /// inside a vector) against a plain product and a plain count.
    #[test]
    fn matches_plain_product_and_count() {
        if !crate::simd::avx512() {
            return;
        }
        for (height, k, width, from) in [(1, 1, 1, 0), (7, 5, 97, 3), (9, 130, 200, 130), (4, 64, 96, 96)] {
            let (ldw, col0) = (width + 5, 3);
            let w0 = det(height * ldw, 1);
            let a = det(height * k, 2);
            let bm = det(k * width, 3);
            let scale: Vec<f32> = det(width, 4).iter().map(|x| x + 1.0).collect();
            let mut want = w0.clone();
            for r in 0..height {
                for j in 0..width {
                    let dot: f32 = (0..k).map(|i| a[r * k + i] * bm[i * width + j]).sum();
                    want[r * ldw + col0 + j] -= dot;
                }
            }
            let keys: Vec<u32> = (0..height)
                .flat_map(|r| (from..width).map(move |j| (r, j)))
                .map(|(r, j)| (want[r * ldw + col0 + j].abs() * scale[j]).to_bits())
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            let window = if sorted.is_empty() {
                Window { lo: 0, hi: 1 }
            } else {
                Window { lo: sorted[sorted.len() / 3], hi: sorted[sorted.len() * 2 / 3] + 1 }
            };
            let (mut buf, mut bt) = (Vec::new(), Vec::new());
            let bt_src: Vec<f32> = (0..width * k).map(|x| bm[(x % k) * width + x / k]).collect();
            for packed in [pack_rows(&bm, width, k, width, &mut buf), pack_cols(&bt_src, k, k, width, &mut bt)] {
                let mut got = w0.clone();
                let mut inside = Vec::new();
                let keys_arg = Keys { scale: &scale, from, window };
                let below = update_panel(&mut got, ldw, height, col0, &a, &packed, Some(&keys_arg), &mut inside);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                }
                // Counted on the kernel's own values: rounding may differ from the plain sum.
                let own: Vec<u32> = (0..height)
                    .flat_map(|r| (from..width).map(move |j| (r, j)))
                    .map(|(r, j)| (got[r * ldw + col0 + j].abs() * scale[j]).to_bits())
                    .collect();
                assert_eq!(below, own.iter().filter(|&&x| x < window.lo).count() as u64);
                let mut expect: Vec<u32> = own.into_iter().filter(|&x| x >= window.lo && x < window.hi).collect();
                expect.sort();
                inside.sort();
                assert_eq!(inside, expect);
            }
        }
    }
}
