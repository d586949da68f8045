//! The rows' sets of one Thanos block: each row's mask in the block packed
//! into bits while the marking has the row in cache, then from the bits the
//! positions Q_k of its pruned entries, the rows in order of |Q_k|, and a
//! row's lambdas put back at Q_k (its row of L).
//!
//! Read from the c x b mask instead, every row costs cache misses (its
//! block is 4 KiB or more from the next row's); a scalar loop over the
//! entries spends several cycles on each. With AVX-512 the bits become
//! positions by a compress of the column numbers, and values go back by the
//! inverse expand, 16 entries per step.

#[cfg(target_arch = "x86_64")]
use crate::simd::{level, Level};
use crate::Real;

/// Words of bits for a row of `n` mask entries (16 per word).
pub const fn words(n: usize) -> usize {
    n.div_ceil(16)
}

/// The block's mask of one row as bits (`bits` has [`words`] of the mask's
/// length): what [`positions`] and [`expand`] read, taken while the row is
/// in cache.
pub fn pack(mask: &[bool], bits: &mut [u16]) {
    assert_eq!(bits.len(), words(mask.len()));
    for (word, chunk) in bits.iter_mut().zip(mask.chunks(16)) {
        #[cfg(target_arch = "x86_64")]
        if let Ok(chunk) = <&[bool; 16]>::try_from(chunk) {
            use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_slli_epi16};
            // SSE2 (the x86-64 baseline): a bool is the byte 0 or 1, so its
            // bit 0 moved to bit 7 is what movemask collects.
            // SAFETY: 16 bytes are read from a 16-byte array.
            *word = unsafe { _mm_movemask_epi8(_mm_slli_epi16::<7>(_mm_loadu_si128(chunk.as_ptr().cast()))) } as u16;
            continue;
        }
        *word = chunk.iter().rev().fold(0, |acc, &m| acc << 1 | u16::from(m));
    }
}

/// Writes the positions of the set bits among the first `n` to the front of
/// `set` (at least `n` long) and returns how many there are.
pub fn positions(bits: &[u16], n: usize, set: &mut [u32]) -> usize {
    assert!(set.len() >= n && bits.len() == words(n) && n <= u32::MAX as usize);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: level() only reports features detected on this CPU.
        return unsafe { avx512::positions(bits, set) };
    }
    let mut count = 0;
    for (at, &word) in bits.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            set[count] = (at * 16) as u32 + rest.trailing_zeros();
            count += 1;
            rest &= rest - 1;
        }
    }
    count
}

/// Row k of L (`out`, as long as the mask `bits` describe): `values[i]` at
/// the i-th set bit, zero elsewhere.
pub fn expand<T: Real>(bits: &[u16], values: &[T], out: &mut [T]) {
    assert!(bits.len() == words(out.len()));
    assert_eq!(values.len(), bits.iter().map(|w| w.count_ones() as usize).sum::<usize>());
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        if let (Some(values), Some(out)) = (T::as_f32(values), T::as_f32_mut(out)) {
            // SAFETY: as above; the lengths were checked.
            return unsafe { avx512::expand(bits, values, out) };
        }
    }
    let mut next = values.iter();
    for (chunk, &word) in out.chunks_mut(16).zip(bits) {
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = if word >> j & 1 == 1 { *next.next().expect("counted above") } else { T::from_f64(0.0) };
        }
    }
}

/// The rows with a nonempty set, largest first and by row among equals: a
/// counting sort (every size is at most `most`).
pub fn largest_first(len: &[usize], most: usize) -> Vec<usize> {
    let mut start = vec![0usize; most + 2];
    for &n in len {
        start[most - n + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let mut rows = vec![0; len.len()];
    for (k, &n) in len.iter().enumerate() {
        rows[start[most - n]] = k;
        start[most - n] += 1;
    }
    rows.truncate(len.len() - len.iter().filter(|&&n| n == 0).count());
    rows
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The low n lanes.
    #[inline(always)]
    fn low(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    pub(super) unsafe fn positions(bits: &[u16], set: &mut [u32]) -> usize {
        let mut count = 0;
        let step = _mm512_set1_epi32(16);
        let mut at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for &hit in bits {
            let n = hit.count_ones() as usize;
            // A masked store of the compressed lanes: a full one could write
            // past `set`, and a compress to memory is slow on AMD.
            // SAFETY: count + n <= set bits <= set.len() (checked by the caller).
            _mm512_mask_storeu_epi32(set.as_mut_ptr().add(count).cast(), low(n), _mm512_maskz_compress_epi32(hit, at));
            count += n;
            at = _mm512_add_epi32(at, step);
        }
        count
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    pub(super) unsafe fn expand(bits: &[u16], values: &[f32], out: &mut [f32]) {
        let mut next = 0;
        for (i, &hit) in bits.iter().enumerate() {
            let (n, j) = (hit.count_ones() as usize, i * 16);
            // SAFETY: the caller checked that values holds every set bit's
            // value and out every position: masked loads and stores stay inside.
            let v = _mm512_maskz_loadu_ps(low(n), values.as_ptr().add(next));
            _mm512_mask_storeu_ps(
                out.as_mut_ptr().add(j),
                low((out.len() - j).min(16)),
                _mm512_maskz_expand_ps(hit, v),
            );
            next += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{with_cap, Level};

    fn masks() -> Vec<Vec<bool>> {
        let mut out: Vec<Vec<bool>> = [0usize, 1, 15, 16, 17, 33, 128, 131]
            .iter()
            .flat_map(|&n| (0..4).map(move |seed| (0..n).map(|j| (j * 7 + seed * 3) % (seed + 2) == 0).collect()))
            .collect();
        out.push(vec![true; 40]);
        out
    }

    #[test]
    fn pack_positions_and_expand_agree_with_the_mask_at_every_level() {
        for cap in [Level::Baseline, Level::Avx512] {
            with_cap(cap, || {
                for mask in masks() {
                    let mut bits = vec![0; words(mask.len())];
                    pack(&mask, &mut bits);
                    let mut set = vec![u32::MAX; mask.len()];
                    let n = positions(&bits, mask.len(), &mut set);
                    let want: Vec<u32> = (0..mask.len() as u32).filter(|&j| mask[j as usize]).collect();
                    assert_eq!(&set[..n], &want[..]);
                    let values: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
                    let mut row = vec![f32::NAN; mask.len()];
                    expand(&bits, &values, &mut row);
                    for (j, &x) in row.iter().enumerate() {
                        let at = want.iter().position(|&q| q as usize == j);
                        assert_eq!(x, at.map_or(0.0, |i| i as f32 + 1.0));
                    }
                }
            });
        }
    }

    #[test]
    fn largest_first_orders_by_size_then_row() {
        let len = [3, 0, 5, 3, 1, 5, 0];
        assert_eq!(largest_first(&len, 5), vec![2, 5, 0, 3, 4]);
        assert_eq!(largest_first(&[0, 0], 4), Vec::<usize>::new());
    }
}
