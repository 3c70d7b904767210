//! What the host CPU offers, for the device description in snapshots: float
//! results can legitimately differ between SIMD levels.

/// The widest SIMD level the CPU supports, e.g. `avx512f`, `avx2+fma`, `neon`.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
        if std::arch::is_x86_feature_detected!("avx") {
            return "avx";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// `"{arch} {simd}"`, e.g. `x86_64 avx512f`.
pub fn describe() -> String {
    format!("{} {}", std::env::consts::ARCH, simd_level())
}

/// A file-name-safe class of machines whose float results should agree:
/// `x86_64-avx2-fma`, `x86_64-avx512f`, `aarch64-neon`.
pub fn class() -> String {
    format!(
        "{}-{}",
        std::env::consts::ARCH,
        simd_level().replace('+', "-")
    )
}
