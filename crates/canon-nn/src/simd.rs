//! Run-time choice of the widest vector unit for the element-wise training kernels: one generic
//! body `imp::<FMA>` compiled three times (AVX-512, AVX2 + FMA, baseline) and picked per call from
//! the CPU's features. The bodies use explicit lanes for their sums, so every copy gives the same
//! result bit for bit on a given input whatever the vector width (FMA aside: the baseline copy
//! rounds the product separately).

/// The vector unit a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Base,
    Avx2,
    Avx512,
}

/// The widest level this CPU supports (std caches the CPUID answer).
pub(crate) fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Base
}

/// Defines `$vis fn $name(args) -> ret` running `$imp::<true>` compiled for AVX-512 or AVX2 + FMA
/// when the CPU has them, else `$imp::<false>`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $imp:ident ($($a:ident : $t:ty),*) $(-> $ret:ty)?) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled with AVX-512.
                ///
                /// # Safety
                /// The CPU must have AVX-512F, AVX-512VL, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($a: $t),*) $(-> $ret)? {
                    $imp::<true>($($a),*)
                }
                /// The body compiled with AVX2.
                ///
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($a: $t),*) $(-> $ret)? {
                    $imp::<true>($($a),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` found the features these copies were compiled for.
                    $crate::simd::Level::Avx512 => return unsafe { wide($($a),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($a),*) },
                    $crate::simd::Level::Base => {}
                }
            }
            $imp::<false>($($a),*)
        }
    };
}
pub(crate) use simd_fn;
