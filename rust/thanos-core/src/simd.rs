//! Runtime SIMD dispatch for the streaming loops.
//!
//! The crate is built for the baseline x86-64 target (SSE2) so one wheel
//! runs everywhere. [`multiversion!`] defines a function whose body is
//! compiled three times, for AVX-512, for AVX2+FMA and for the baseline, and
//! picks one at run time. Everything the body calls on its hot path must be
//! `#[inline(always)]` (or a plain loop): a function that is not inlined is
//! compiled for the baseline only.
//!
//! `THANOS_SIMD=baseline|avx2|avx512` caps the level (other values are
//! ignored): results then match, bit for bit, a CPU that has only that level.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The vector extensions a kernel may use, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Baseline = 0,
    Avx2 = 1,
    Avx512 = 2,
}

/// A cap set by tests (`u8::MAX`: none).
static TEST_CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// The widest level this CPU supports, capped by `THANOS_SIMD`.
#[inline(always)]
pub fn level() -> Level {
    static CAPPED: OnceLock<Level> = OnceLock::new();
    let level = *CAPPED.get_or_init(|| {
        let cap = match std::env::var("THANOS_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        cpu_level().min(cap)
    });
    match TEST_CAP.load(Ordering::Relaxed) {
        0 => Level::Baseline,
        1 => level.min(Level::Avx2),
        _ => level,
    }
}

/// The widest level this CPU supports, whatever the caps: what a kernel's
/// safety check asks (dispatch asks [`level`], which tests may lower at any
/// moment from another thread).
pub fn cpu_level() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// Whether the AVX-512 kernels (the f32 block product, SparseGPT's lanes)
/// are to run: dispatch.
pub fn avx512() -> bool {
    level() == Level::Avx512
}

/// Whether this CPU has AVX-512: the safety check of those kernels.
pub fn cpu_has_avx512() -> bool {
    cpu_level() == Level::Avx512
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !has!("popcnt") {
            return Level::Baseline;
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Runs `f` with the level capped at `cap` (tests of every compiled variant).
/// Global: concurrent tests see the cap too, which only changes their speed
/// (kernels check [`cpu_level`], not the cap, before running unsafe code).
#[cfg(test)]
pub fn with_cap<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    TEST_CAP.store(cap as u8, Ordering::Relaxed);
    let out = f();
    TEST_CAP.store(u8::MAX, Ordering::Relaxed);
    out
}

macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident[$($gen:tt)*]($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$($gen)*>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
            unsafe fn avx512<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,popcnt")]
            unsafe fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            match $crate::simd::level() {
                // SAFETY: level() only reports features detected on this CPU.
                $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                $crate::simd::Level::Baseline => {}
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// Asks the CPU to start loading `data` into cache (a hint: no effect on
/// results, and nothing on other architectures). SSE is in the x86-64
/// baseline, so this needs no dispatch.
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: offset < bytes, inside `data`; a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
