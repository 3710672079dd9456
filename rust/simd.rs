//! The one place that decides which SIMD kernels run, and the one way to write a kernel for every level.
//!
//! [`level`] picks AVX-512, AVX2 + FMA or the baseline once per process, from what the CPU has and what the
//! environment variable `ZIPFNCE_SIMD` allows; every kernel family (the samplers' math in `vmath`, the
//! losses' element-wise kernels, the random streams' fill in `rng`) asks it and nothing else.
//!
//! [`dispatch!`] compiles the body of a function once per level (as plain safe code, with the level's target
//! features enabled) and calls the widest one [`level`] allows. The Rust compiler never contracts
//! `a * b + c` into an FMA on its own and the kernels fix the order of their reductions, so every level gives
//! bit-identical results: the choice changes the speed, never a value. Kernels written with intrinsics (the
//! random streams, `vmath::one_minus_exp_into`) match on [`level`] themselves and are tested against the
//! portable code.

/// The SIMD level of the kernels that run, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What every CPU of the target has (SSE2 on x86_64).
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, DQ and VL, with AVX2 and FMA.
    Avx512,
}

/// The target features of [`Level::Avx512`] kernels, as `#[target_feature(enable = ...)]` spells them.
/// (A macro cannot splice a constant into that attribute, so [`dispatch!`] and the hand-written kernels
/// repeat the literal; this constant documents it and a test keeps them equal.)
pub const AVX512_FEATURES: &str = "avx512f,avx512dq,avx512vl,avx2,fma";
/// The target features of [`Level::Avx2`] kernels.
pub const AVX2_FEATURES: &str = "avx2,fma";

/// The widest level the environment variable `ZIPFNCE_SIMD` allows: `baseline`, `avx2`, or anything else
/// (the default): whatever the CPU has. It lets tests compare the kernels with each other and lets
/// valgrind, which does not know AVX-512, run the narrower kernels.
fn allowed() -> Level {
    match std::env::var("ZIPFNCE_SIMD").as_deref().map(str::trim) {
        Ok("baseline") => Level::Baseline,
        Ok("avx2") => Level::Avx2,
        _ => Level::Avx512,
    }
}

/// The widest level the CPU has.
#[cfg(target_arch = "x86_64")]
fn detected() -> Level {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma");
    if avx2 && has!("avx512f") && has!("avx512dq") && has!("avx512vl") {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> Level {
    Level::Baseline
}

/// The level every kernel runs at: the narrower of what the CPU has and what `ZIPFNCE_SIMD` allows.
/// Decided once per process.
#[inline]
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| detected().min(allowed()))
}

/// Whether AVX-512 kernels run (see [`level`]).
#[inline]
pub fn has_avx512() -> bool {
    level() == Level::Avx512
}

/// Whether AVX2 + FMA kernels (or wider) run (see [`level`]).
#[inline]
pub fn has_avx2() -> bool {
    level() >= Level::Avx2
}

/// Whether the F16C conversions (`vcvtph2ps`) run: AVX2 kernels or wider are allowed (see [`level`]) and
/// the CPU has F16C (every AVX2 CPU in practice; checked all the same). Decided once per process.
#[inline]
pub fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static F16C: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *F16C.get_or_init(|| has_avx2() && std::arch::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Ask the CPU to start loading the cache lines of `bytes` bytes from `p` (a hint: gathers of random rows
/// wait on memory otherwise). Never faults, whatever the address.
#[inline(always)]
pub fn prefetch<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch is only a hint; it never faults or changes memory, whatever the address
            // (`wrapping_add` keeps the pointer arithmetic defined too).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// `out[i] = f(inp[i])` over the shorter of the two, in blocks of `N` elements held in fixed-size arrays.
/// Inside a [`dispatch!`] body this is how element-wise kernels with a long dependency chain per element (a
/// polynomial, a division) are written: the compiler turns each block into N / (lanes per register)
/// independent vector chains that overlap, where a plain loop gives one chain at a time (the SSE2 baseline's
/// two lanes per register need four chains to keep its units busy). Each element's operations, and so its
/// bits, are those of `f` alone.
#[inline(always)]
pub fn map_blocks<const N: usize, I: Copy, O: Copy + Default>(inp: &[I], out: &mut [O], f: impl Fn(I) -> O) {
    let n = inp.len().min(out.len());
    let (inp, out) = (&inp[..n], &mut out[..n]);
    let whole = n / N * N;
    for (o, i) in out[..whole].chunks_exact_mut(N).zip(inp[..whole].chunks_exact(N)) {
        let mut v = [O::default(); N];
        for l in 0..N {
            v[l] = f(i[l]);
        }
        o.copy_from_slice(&v);
    }
    for (o, &i) in out[whole..].iter_mut().zip(&inp[whole..]) {
        *o = f(i);
    }
}

/// Define a function whose body is compiled for every [`Level`] and run at the widest one [`level`] allows.
/// Bodies must be plain safe code over their arguments. Two forms:
///
/// ```ignore
/// dispatch! { /// doc
///     pub fn name(x: &[f64], out: &mut [f32]) { ... } }
/// dispatch! { /// doc, generic over the float type (bound: `Float`)
///     pub fn name<T>(x: &mut [T], c: T) -> T { ... } }
/// ```
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$t:ident>($($a:ident : $ty:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$t: $crate::float::Float>($($a: $ty),*) $(-> $r)? {
            #[inline(always)]
            fn body<$t: $crate::float::Float>($($a: $ty),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                // The literals are `simd::AVX512_FEATURES` and `simd::AVX2_FEATURES`.
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wider<$t: $crate::float::Float>($($a: $ty),*) $(-> $r)? { body::<$t>($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide<$t: $crate::float::Float>($($a: $ty),*) $(-> $r)? { body::<$t>($($a),*) }
                match $crate::simd::level() {
                    // SAFETY: the CPU has every feature `wider` is compiled for (`simd::level` checked them),
                    // its only requirement; it runs the same safe code as `body`.
                    $crate::simd::Level::Avx512 => return unsafe { wider::<$t>($($a),*) },
                    // SAFETY: as above, AVX2 and FMA for `wide`.
                    $crate::simd::Level::Avx2 => return unsafe { wide::<$t>($($a),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            body::<$t>($($a),*)
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $ty:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $ty),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $ty),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                // The literals are `simd::AVX512_FEATURES` and `simd::AVX2_FEATURES`.
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wider($($a: $ty),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($a: $ty),*) $(-> $r)? { body($($a),*) }
                match $crate::simd::level() {
                    // SAFETY: the CPU has every feature `wider` is compiled for (`simd::level` checked them),
                    // its only requirement; it runs the same safe code as `body`.
                    $crate::simd::Level::Avx512 => return unsafe { wider($($a),*) },
                    // SAFETY: as above, AVX2 and FMA for `wide`.
                    $crate::simd::Level::Avx2 => return unsafe { wide($($a),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_honours_the_environment_and_the_cpu() {
        let l = level();
        assert!(l <= allowed() && l <= detected());
        assert_eq!(has_avx512(), l == Level::Avx512);
        assert_eq!(has_avx2(), l >= Level::Avx2);
        // The features the macro and the hand-written kernels enable are the ones documented here.
        let src = include_str!("simd.rs");
        assert!(src.contains(&format!("enable = \"{AVX512_FEATURES}\"")));
        assert!(src.contains(&format!("enable = \"{AVX2_FEATURES}\"")));
    }

    dispatch! {
        fn twice<T>(x: &mut [T]) -> T {
            let mut s = T::ZERO;
            for v in x.iter_mut() {
                *v += *v;
                s += *v;
            }
            s
        }
    }

    #[test]
    fn dispatched_kernels_run() {
        let mut x = vec![1.5f32, -2.0, 4.0];
        assert_eq!(twice(&mut x), 7.0);
        assert_eq!(x, vec![3.0, -4.0, 8.0]);
    }
}
