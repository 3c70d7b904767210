//! What the hardware is, for the device descriptions in snapshots: float
//! results can legitimately differ between SIMD levels and GPU models.

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

/// The name of NVIDIA GPU 0 (`NVIDIA H200`), from `nvidia-smi` — neither
/// candle nor tch exposes device properties; `CUDA device 0` if unknown.
pub fn nvidia_gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "CUDA device 0".into())
}
