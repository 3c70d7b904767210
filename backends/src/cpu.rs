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

/// A field of `/proc/cpuinfo` for the first CPU (Linux), e.g. `vendor_id`.
fn cpuinfo(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The CPU vendor: `intel`, `amd`, or `unknown`.
pub fn vendor() -> &'static str {
    match cpuinfo("vendor_id").as_deref() {
        Some("GenuineIntel") => "intel",
        Some("AuthenticAMD") => "amd",
        _ => "unknown",
    }
}

/// `family.model` from `/proc/cpuinfo` (`26.2` for a Zen 5 EPYC), or `unknown`.
pub fn family_model() -> String {
    match (cpuinfo("cpu family"), cpuinfo("model")) {
        (Some(f), Some(m)) => format!("{f}.{m}"),
        _ => "unknown".into(),
    }
}

/// The CPU model name, for snapshot metadata (`AMD EPYC …`).
pub fn model_name() -> String {
    cpuinfo("model name").unwrap_or_else(|| "unknown CPU".into())
}

/// A class for libraries that dispatch on the CPU's vendor and model as well
/// as its SIMD level (MKL, oneDNN): `x86_64-amd-26.2-avx512f`.
pub fn vendor_class() -> String {
    format!(
        "{}-{}-{}-{}",
        std::env::consts::ARCH,
        vendor(),
        family_model(),
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
