//! SparseGPT's in-block loop (column-by-column OBS), [`LANES`] rows at a time
//! (f32, AVX-512).
//!
//! Row by row ([`crate::sparsegpt`]'s `obs_row`), each pruned column is a
//! short update of the rest of the row's block: a branch, a division and a
//! few vectors of work at a time (~13 GFMA/s on a 4096 x 4096 layer). Here
//! every row is a SIMD lane: the block (bw vectors, 8 KiB for 128 columns)
//! stays in L1, each step is a full vector, and [`chunk`] columns share one
//! pass over the rest of the block. Kept entries are masked out of every
//! operation, and each value sees the same operations in the same order as
//! in the row-by-row loop (unfused `x - e * u`, `e = x / U_jj`), so the
//! results are the same bits. Written with intrinsics: from plain loops over
//! lane arrays, LLVM vectorises across the columns instead, with gathers.

/// Rows updated together.
pub const LANES: usize = 16;

/// Where the block's mask comes from.
#[derive(Clone, Copy)]
pub enum BlockMask {
    /// Already in `mask` (unstructured: chosen for the whole block first).
    Given,
    /// Chosen per row every m columns on the current values (n:m).
    NM { n: usize, m: usize },
}

/// Scratch reused across the panels one thread runs.
#[derive(Default)]
pub struct ObsScratch {
    /// Column t of the block, one lane per row.
    x: Vec<[f32; LANES]>,
    /// Bit l of entry t: row l's entry in column t is pruned.
    pruned: Vec<u16>,
    err: Vec<[f32; LANES]>,
    /// Scores of one n:m group.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    keys: Vec<[u32; LANES]>,
}

/// The in-block OBS loop of up to [`LANES`] rows. `w` holds the rows (stride
/// `b`), the block is columns `i1..i1 + bw` (bw = `err.len() / rows`);
/// `mask` (same layout as `w`) is read (`Given`) or written (`NM`); `err`
/// (stride bw) receives the scaled errors `W_kj / U_jj` of the pruned
/// entries and zero elsewhere. `ub` is U_blk (bw x bw, row-major). Pruned
/// entries of `w` end exactly zero. Only where [`crate::simd::avx512`].
#[allow(clippy::too_many_arguments)]
pub fn obs_rows(
    w: &mut [f32],
    mask: &mut [bool],
    err: &mut [f32],
    b: usize,
    i1: usize,
    ub: &[f32],
    block_mask: BlockMask,
    scratch: &mut ObsScratch,
) {
    let rows = w.len() / b;
    let bw = err.len() / rows.max(1);
    assert!(crate::simd::cpu_has_avx512(), "obs_rows needs AVX-512");
    assert!((1..=LANES).contains(&rows) && w.len() == rows * b);
    assert!(mask.len() == w.len() && err.len() == rows * bw && ub.len() == bw * bw && i1 + bw <= b);
    if let BlockMask::NM { m, .. } = block_mask {
        assert!(m > 0 && bw.is_multiple_of(m), "n:m groups must tile the block");
    }
    load(w, mask, b, i1, bw, scratch);
    #[cfg(target_arch = "x86_64")]
    avx512::run(ub, bw, block_mask, scratch);
    store(w, mask, err, b, i1, bw, scratch);
}

/// Transposes the rows' block into lanes (missing rows: zeros, kept).
fn load(w: &[f32], mask: &[bool], b: usize, i1: usize, bw: usize, s: &mut ObsScratch) {
    s.x.clear();
    s.x.resize(bw, [0.0; LANES]);
    s.pruned.clear();
    s.pruned.resize(bw, 0);
    s.err.clear();
    s.err.resize(bw, [0.0; LANES]);
    for (l, (row, mrow)) in w.chunks_exact(b).zip(mask.chunks_exact(b)).enumerate() {
        for t in 0..bw {
            s.x[t][l] = row[i1 + t];
            s.pruned[t] |= u16::from(mrow[i1 + t]) << l;
        }
    }
}

fn store(w: &mut [f32], mask: &mut [bool], err: &mut [f32], b: usize, i1: usize, bw: usize, s: &ObsScratch) {
    let rows = w.chunks_exact_mut(b).zip(mask.chunks_exact_mut(b)).zip(err.chunks_exact_mut(bw));
    for (l, ((row, mrow), erow)) in rows.enumerate() {
        for t in 0..bw {
            row[i1 + t] = s.x[t][l];
            mrow[i1 + t] = s.pruned[t] >> l & 1 == 1;
            erow[t] = s.err[t][l];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockMask, ObsScratch, LANES};

    /// The passes, C columns each; the CPU's AVX-512 was checked by the
    /// caller ([`super::obs_rows`]), and the sizes of `s` and `ub`.
    pub(super) fn run(ub: &[f32], bw: usize, block_mask: BlockMask, s: &mut ObsScratch) {
        // SAFETY: as above.
        unsafe {
            match chunk(block_mask) {
                4 => passes::<4>(ub, bw, block_mask, s),
                2 => passes::<2>(ub, bw, block_mask, s),
                _ => passes::<1>(ub, bw, block_mask, s),
            }
        }
    }

    /// Columns per pass over the rest of the block: a group of the n:m pattern
    /// must start a pass, so that its scores see every earlier update.
    fn chunk(mask: BlockMask) -> usize {
        match mask {
            BlockMask::NM { m, .. } if m % 4 != 0 => {
                if m % 2 == 0 {
                    2
                } else {
                    1
                }
            }
            _ => 4,
        }
    }

    /// The loop over the block's columns, in passes of C columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    unsafe fn passes<const C: usize>(ub: &[f32], bw: usize, block_mask: BlockMask, s: &mut ObsScratch) {
        let ObsScratch { x, pruned, err, keys } = s;
        let (xp, ep) = (x.as_mut_ptr().cast::<f32>(), err.as_mut_ptr().cast::<f32>());
        // SAFETY (every pointer below): x and err hold bw vectors of LANES
        // floats; ub holds bw x bw; every index is < bw.
        let col = |t: usize| xp.add(t * LANES);
        let u = |r: usize, c: usize| _mm512_set1_ps(*ub.get_unchecked(r * bw + c));
        for j0 in (0..bw).step_by(C) {
            if let BlockMask::NM { n, m } = block_mask {
                if j0 % m == 0 {
                    choose_nm(x, ub, bw, j0, m, n, keys, pruned);
                }
            }
            let cn = C.min(bw - j0);
            // The pass's own columns, one after the other.
            let mut e = [_mm512_setzero_ps(); C];
            let mut p = [0u16; C];
            for a in 0..cn {
                let j = j0 + a;
                p[a] = pruned[j];
                let xj = _mm512_loadu_ps(col(j));
                e[a] = _mm512_maskz_div_ps(p[a], xj, u(j, j));
                for a2 in a + 1..cn {
                    let xt = _mm512_loadu_ps(col(j0 + a2));
                    let upd = _mm512_mask_sub_ps(xt, p[a], xt, _mm512_mul_ps(e[a], u(j, j0 + a2)));
                    _mm512_storeu_ps(col(j0 + a2), upd);
                }
                _mm512_storeu_ps(col(j), _mm512_mask_mov_ps(xj, p[a], _mm512_setzero_ps()));
                _mm512_storeu_ps(ep.add(j * LANES), e[a]);
            }
            // The rest of the block, all of the pass's columns at once.
            for t in j0 + cn..bw {
                let mut v = _mm512_loadu_ps(col(t));
                for a in 0..cn {
                    v = _mm512_mask_sub_ps(v, p[a], v, _mm512_mul_ps(e[a], u(j0 + a, t)));
                }
                _mm512_storeu_ps(col(t), v);
            }
        }
    }

    /// The n smallest OBS scores `x^2 / U_jj^2` of the group j0..j0 + m in
    /// every lane: entry i is pruned iff fewer than n entries precede it in
    /// (key, column) order, the rule of [`crate::mask::smallest_nm`], on the
    /// same keys ([`crate::scalar::Real::key`]: the bits of `score + 0.0`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    unsafe fn choose_nm(
        x: &[[f32; LANES]],
        ub: &[f32],
        bw: usize,
        j0: usize,
        m: usize,
        n: usize,
        keys: &mut Vec<[u32; LANES]>,
        pruned: &mut [u16],
    ) {
        keys.clear();
        for t in j0..j0 + m {
            let d = ub[t * bw + t];
            let xt = _mm512_loadu_ps(x[t].as_ptr());
            let score = _mm512_div_ps(_mm512_mul_ps(xt, xt), _mm512_set1_ps(d * d));
            let mut k = [0u32; LANES];
            _mm512_storeu_ps(k.as_mut_ptr().cast(), _mm512_add_ps(score, _mm512_setzero_ps()));
            keys.push(k);
        }
        let (one, need) = (_mm512_set1_epi32(1), _mm512_set1_epi32(n as i32));
        for (i, ki) in keys.iter().enumerate() {
            let ki = _mm512_loadu_si512(ki.as_ptr().cast());
            let mut rank = _mm512_setzero_si512();
            for (j, kj) in keys.iter().enumerate() {
                let kj = _mm512_loadu_si512(kj.as_ptr().cast());
                let mut before = _mm512_cmplt_epu32_mask(kj, ki);
                if j < i {
                    before |= _mm512_cmpeq_epu32_mask(kj, ki);
                }
                rank = _mm512_mask_add_epi32(rank, before, rank, one);
            }
            pruned[j0 + i] = _mm512_cmplt_epu32_mask(rank, need);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparsegpt::obs_row;
    use crate::testing::noise;

    /// `obs_rows` against the row-by-row loop, bit for bit. With `ties`, W
    /// takes five values and U_jj = 1, so n:m scores tie in most groups.
    fn case(rows: usize, b: usize, i1: usize, bw: usize, block_mask: BlockMask, seed: u64, ties: bool) {
        let quantised = |x: f32| if ties { (2.0 * x).round() / 2.0 } else { x };
        let mut w: Vec<f32> = (0..rows * b).map(|i| quantised(noise(seed, i))).collect();
        // Repeated values tie n:m scores; negative zeros must stay negative.
        w.iter_mut().step_by(7).for_each(|x| *x = 0.25);
        w.iter_mut().skip(3).step_by(11).for_each(|x| *x = -0.0);
        let mut mask: Vec<bool> = (0..rows * b).map(|i| noise(seed + 1, i) < 0.0).collect();
        let ub: Vec<f32> = (0..bw * bw)
            .map(|k| match (k / bw, k % bw) {
                (r, c) if r == c && ties => 1.0,
                (r, c) if r == c => 1.0 + 0.5 * noise(seed + 2, k),
                (r, c) if r < c => noise(seed + 2, k),
                _ => 0.0,
            })
            .collect();
        let (mut w2, mut mask2, mut err2) = (w.clone(), mask.clone(), vec![0.0f32; rows * bw]);
        for k in 0..rows {
            let (row, mrow) = (&mut w2[k * b + i1..k * b + i1 + bw], &mut mask2[k * b + i1..k * b + i1 + bw]);
            obs_row(row, mrow, &mut err2[k * bw..(k + 1) * bw], &ub, block_mask);
        }
        let mut err = vec![7.0f32; rows * bw];
        obs_rows(&mut w, &mut mask, &mut err, b, i1, &ub, block_mask, &mut ObsScratch::default());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w), bits(&w2), "weights, rows {rows} bw {bw} seed {seed}");
        assert_eq!(mask, mask2, "mask, rows {rows} bw {bw} seed {seed}");
        assert_eq!(bits(&err), bits(&err2), "errors, rows {rows} bw {bw} seed {seed}");
    }

    #[test]
    fn lanes_equal_the_row_by_row_loop_bit_for_bit() {
        if !crate::simd::cpu_has_avx512() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let patterns = [
            (BlockMask::Given, 1),
            (BlockMask::NM { n: 2, m: 4 }, 4),
            (BlockMask::NM { n: 4, m: 8 }, 8),
            (BlockMask::NM { n: 1, m: 3 }, 3),
            (BlockMask::NM { n: 3, m: 6 }, 6),
            (BlockMask::NM { n: 2, m: 10 }, 10),
        ];
        for (seed, &(block_mask, m)) in patterns.iter().enumerate() {
            for (rows, groups) in [(1, 1), (5, 3), (16, 2), (13, 11)] {
                let bw = m * groups;
                for (i1, ties) in [(0, false), (3, false), (1, true)] {
                    case(rows, bw + i1 + 2, i1, bw, block_mask, seed as u64 * 100 + rows as u64, ties);
                }
            }
        }
        case(16, 300, 100, 128, BlockMask::Given, 9, false);
        case(7, 128, 0, 128, BlockMask::NM { n: 2, m: 4 }, 10, false);
        case(16, 128, 0, 128, BlockMask::NM { n: 2, m: 4 }, 11, true);
    }
}
