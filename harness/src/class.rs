//! Machine classes: which snapshot folder a backend's numbers belong to.
//!
//! Float results legitimately differ between machine classes (a CPU's SIMD
//! level picks other kernels; each GPU model has its own), so snapshots live
//! in one folder per class: `snapshots/x86_64-avx2-fma/`,
//! `snapshots/cuda-nvidia-h200/`. On a class with no folder yet the snapshot
//! trials are ignored and say how to record one (`LAYERDRIFT_RECORD=1`);
//! the bounds are checked everywhere.

use layerdrift_backends::{BackendInfo, DeviceKind};

use crate::env::env;
use crate::workspace::class_dir;

/// The machine class of a backend: the host's for CPU backends and the
/// oracle, the GPU's name for GPU backends (`cuda-nvidia-h200`).
pub fn class_of(info: &BackendInfo) -> String {
    if info.device == DeviceKind::Cpu {
        layerdrift_backends::cpu::class()
    } else {
        let name: String = info
            .device_name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!(
            "{}-{}",
            info.device,
            name.split('-')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-")
        )
    }
}

/// Why snapshots of `class` cannot be checked here, if they cannot: no
/// folder was ever recorded for it (and `LAYERDRIFT_RECORD=1` is not set).
pub fn unrecorded(class: &str) -> Option<String> {
    (!env().record && !class_dir(class).is_dir()).then(|| {
        format!(
            "no snapshots recorded for machine class `{class}` (float results legitimately differ between \
             SIMD levels and GPU models): record them with `LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test`"
        )
    })
}

/// The class of a cross-backend pair: the shared class, or both joined.
pub fn pair_class(a: &BackendInfo, b: &BackendInfo) -> String {
    let (a, b) = (class_of(a), class_of(b));
    if a == b { a } else { format!("{a}+{b}") }
}
