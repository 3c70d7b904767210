//! Records what this build links, so snapshots can say what produced them:
//! the exact versions of the tensor libraries (from the workspace's
//! Cargo.lock) and, with the `tch` feature, libtorch's version (from the
//! wheel's `torch/version.py`); with `tch` it also links libtorch (rpath).

use std::collections::HashMap;
use std::path::Path;

#[path = "build/libtorch.rs"]
mod libtorch;

/// `(crate, env var)`: the versions `env!` reads in the adapters.
const LIBRARIES: [(&str, &str); 8] = [
    ("candle-core", "LD_VERSION_CANDLE"),
    ("burn-flex", "LD_VERSION_BURN_FLEX"),
    ("burn-ndarray", "LD_VERSION_BURN_NDARRAY"),
    ("burn-wgpu", "LD_VERSION_BURN_WGPU"),
    ("burn-cuda", "LD_VERSION_BURN_CUDA"),
    ("cubecl", "LD_VERSION_CUBECL"),
    ("wgpu", "LD_VERSION_WGPU"),
    ("tch", "LD_VERSION_TCH"),
];

/// The libtorch tch 0.26 is built for (torch-sys 0.26.0's `TORCH_VERSION`),
/// reported when the wheel's own version file cannot be read.
const LIBTORCH_PINNED: &str = "2.13.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/libtorch.rs");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut versions = HashMap::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            versions.insert(n, v.trim_matches('"'));
        }
    }
    for (krate, var) in LIBRARIES {
        let v = versions.get(krate).copied().unwrap_or("unknown");
        println!("cargo:rustc-env={var}={v}");
    }

    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        let version =
            libtorch::link(&workspace).and_then(|dir| read_version(&dir.join("../version.py")));
        println!(
            "cargo:rustc-env=LD_VERSION_LIBTORCH={}",
            version.as_deref().unwrap_or(LIBTORCH_PINNED)
        );
    }
}

/// `__version__ = '2.13.0+cu130'` from the wheel's `torch/version.py`.
fn read_version(path: &Path) -> Option<String> {
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}
