//! The registry: every backend this build knows, compiled in or not. It
//! is the one module that names the adapters; the adapters know only the
//! [`Backend`] trait, so there is no import circle.

use crate::backend::{Absent, Backend};
use crate::device::DeviceKind;

fn not_compiled(name: &'static str, device: DeviceKind, how: &str) -> Box<dyn Backend> {
    Box::new(Absent {
        name,
        device,
        reason: format!("{name}-{device} is not compiled in: {how}"),
    })
}

/// Every backend this build knows, compiled in or not, in a stable order:
/// `reference-cpu` first, then candle, burn, tch — CPU before GPU.
/// Entries that cannot run here answer [`Backend::available`] with the reason.
pub fn registry() -> Vec<Box<dyn Backend>> {
    let mut out: Vec<Box<dyn Backend>> = vec![Box::new(crate::adapters::reference::Reference)];

    #[cfg(feature = "candle")]
    out.extend(crate::adapters::candle::backends());
    #[cfg(not(feature = "candle"))]
    out.push(not_compiled(
        "candle",
        DeviceKind::Cpu,
        "build with `--features candle` (on by default)",
    ));
    #[cfg(not(feature = "candle-cuda"))]
    out.push(not_compiled(
        "candle",
        DeviceKind::Cuda,
        "build with `--features cuda` (needs nvcc; see docs/backends.md, GPU)",
    ));

    #[cfg(feature = "burn")]
    out.extend(crate::adapters::burn::backends());
    #[cfg(not(feature = "burn"))]
    {
        out.push(not_compiled(
            "burn-flex",
            DeviceKind::Cpu,
            "build with `--features burn` (on by default)",
        ));
        out.push(not_compiled(
            "burn-ndarray",
            DeviceKind::Cpu,
            "build with `--features burn` (on by default)",
        ));
    }

    #[cfg(not(feature = "burn-wgpu"))]
    out.push(not_compiled(
        "burn-cubecl",
        DeviceKind::Wgpu,
        "build with `--features burn-wgpu` (builds offline; see docs/backends.md, GPU)",
    ));
    #[cfg(not(feature = "burn-cuda"))]
    out.push(not_compiled(
        "burn-cubecl",
        DeviceKind::Cuda,
        "build with `--features burn-cuda` (its build needs the tracel-llvm bundle; see docs/backends.md, GPU)",
    ));

    #[cfg(feature = "tch")]
    out.extend(crate::adapters::tch::backends());
    #[cfg(not(feature = "tch"))]
    for device in [DeviceKind::Cpu, DeviceKind::Cuda] {
        out.push(not_compiled(
            "tch",
            device,
            "build with `--features tch` after `scripts/setup-libtorch` (or run `cargo test-tch`)",
        ));
    }
    out
}
