//! The float types the kernels run on (f32 and f64) and the few operations
//! they need beyond faer's `RealField`.

use faer::traits::RealField;

/// An unsigned integer key that orders like a non-negative score: u32 for f32
/// scores, u64 for f64 (narrow keys halve the work of the selection passes).
pub trait Key: Copy + Ord + Send + Sync + Default + 'static {
    fn widen(self) -> u64;
    /// `x` narrowed, saturating: keys of finite scores never reach the top,
    /// so a saturated bound still compares the same with every key.
    fn narrow(x: u64) -> Self;
    /// The keys as u32 if that is their type (the AVX-512 selection scan
    /// handles only those).
    fn as_u32(keys: &[Self]) -> Option<&[u32]>;
    fn as_u32_vec(keys: &mut Vec<Self>) -> Option<&mut Vec<u32>>;
}

impl Key for u32 {
    #[inline(always)]
    fn widen(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn narrow(x: u64) -> Self {
        x.min(u32::MAX as u64) as u32
    }
    fn as_u32(keys: &[Self]) -> Option<&[u32]> {
        Some(keys)
    }
    fn as_u32_vec(keys: &mut Vec<Self>) -> Option<&mut Vec<u32>> {
        Some(keys)
    }
}

impl Key for u64 {
    #[inline(always)]
    fn widen(self) -> u64 {
        self
    }
    #[inline(always)]
    fn narrow(x: u64) -> Self {
        x
    }
    fn as_u32(_: &[Self]) -> Option<&[u32]> {
        None
    }
    fn as_u32_vec(_: &mut Vec<Self>) -> Option<&mut Vec<u32>> {
        None
    }
}

pub trait Real: RealField + Copy + Send + Sync + Default + 'static {
    /// The type of [`Real::narrow_key`].
    type Key: Key;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    /// An integer that orders like the value, for non-negative finite values:
    /// the IEEE bit pattern. Selections work on these keys.
    /// -0.0 maps to the key of +0.0 (its sign bit would rank it last).
    fn key(self) -> u64;
    /// [`Real::key`] in the type's own width (`key() == narrow_key().widen()`).
    fn narrow_key(self) -> Self::Key;
    /// `c - a * b`, fused (one rounding) when `FUSED`; only pass true where
    /// the CPU's FMA feature is enabled, or it becomes a slow libm call.
    fn mul_sub<const FUSED: bool>(a: Self, b: Self, c: Self) -> Self;
    /// `xs` as f32 if that is the type (for kernels written for f32 only).
    fn as_f32(xs: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    type Key = u32;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    #[inline(always)]
    fn key(self) -> u64 {
        (self + 0.0).to_bits() as u64
    }
    #[inline(always)]
    fn narrow_key(self) -> u32 {
        (self + 0.0).to_bits()
    }
    #[inline(always)]
    fn mul_sub<const FUSED: bool>(a: Self, b: Self, c: Self) -> Self {
        if FUSED {
            f32::mul_add(-a, b, c)
        } else {
            c - a * b
        }
    }
    fn as_f32(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
        Some(xs)
    }
}

impl Real for f64 {
    type Key = u64;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    #[inline(always)]
    fn key(self) -> u64 {
        (self + 0.0).to_bits()
    }
    #[inline(always)]
    fn narrow_key(self) -> u64 {
        (self + 0.0).to_bits()
    }
    #[inline(always)]
    fn mul_sub<const FUSED: bool>(a: Self, b: Self, c: Self) -> Self {
        if FUSED {
            f64::mul_add(-a, b, c)
        } else {
            c - a * b
        }
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}
