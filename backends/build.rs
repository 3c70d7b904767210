//! Records the exact versions of the tensor libraries this build links, read
//! from the workspace's Cargo.lock, so snapshots can say what produced them.

use std::path::Path;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            let var = match n.as_str() {
                "candle-core" => "LD_VERSION_CANDLE",
                "burn-flex" => "LD_VERSION_BURN_FLEX",
                "burn-ndarray" => "LD_VERSION_BURN_NDARRAY",
                "tch" => "LD_VERSION_TCH",
                _ => continue,
            };
            println!("cargo:rustc-env={var}={}", v.trim_matches('"'));
        }
    }
    for var in [
        "LD_VERSION_CANDLE",
        "LD_VERSION_BURN_FLEX",
        "LD_VERSION_BURN_NDARRAY",
        "LD_VERSION_TCH",
    ] {
        if !text.contains(match var {
            "LD_VERSION_CANDLE" => "name = \"candle-core\"",
            "LD_VERSION_BURN_FLEX" => "name = \"burn-flex\"",
            "LD_VERSION_BURN_NDARRAY" => "name = \"burn-ndarray\"",
            _ => "name = \"tch\"",
        }) {
            println!("cargo:rustc-env={var}=unknown");
        }
    }
    libtorch::main();
}

/// With the `tch` feature: the rpath to libtorch's library folder for this
/// crate's own test executables (the harness's build script does the same for
/// its binaries), and `LD_VERSION_LIBTORCH`, the version of the libtorch found
/// there (its `torch/version.py`, e.g. `2.11.0+cu130`).
///
/// The folder is `LAYERDRIFT_LIBTORCH_LIB`, else `$LIBTORCH/lib` (as
/// `.cargo/config.toml` sets it), else
/// `<workspace>/.venv/lib/python3.*/site-packages/torch/lib` (where
/// `scripts/setup-libtorch` puts it).
mod libtorch {
    use std::env;
    use std::path::{Path, PathBuf};

    /// The libtorch tch 0.24 is built for (torch-sys 0.24.0's `TORCH_VERSION`;
    /// its build script refuses any other in `LIBTORCH_USE_PYTORCH` mode).
    const PINNED: &str = "2.11.0";

    pub fn main() {
        if env::var_os("CARGO_FEATURE_TCH").is_none() {
            return;
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let version = match lib_dir(&workspace) {
            Some(dir) => {
                let dir = dir.canonicalize().unwrap_or(dir);
                println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
                // Keep libtorch_cuda linked although no symbol of ours names
                // it: it registers the CUDA hooks when loaded, and without it
                // `tch::Cuda::is_available()` is always false.
                if dir.join("libtorch_cuda.so").exists() {
                    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
                }
                read_version(&dir.join("../version.py"))
            }
            None => {
                println!(
                    "cargo:warning=libtorch not found (LAYERDRIFT_LIBTORCH_LIB, LIBTORCH, {}/.venv): run scripts/setup-libtorch; the tch test binaries will need LD_LIBRARY_PATH",
                    workspace.display()
                );
                None
            }
        };
        println!(
            "cargo:rustc-env=LD_VERSION_LIBTORCH={}",
            version.as_deref().unwrap_or(PINNED)
        );
    }

    /// `__version__ = '2.11.0+cu130'` from the wheel's `torch/version.py`.
    fn read_version(path: &Path) -> Option<String> {
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
    }

    fn lib_dir(workspace: &Path) -> Option<PathBuf> {
        println!("cargo:rerun-if-env-changed=LAYERDRIFT_LIBTORCH_LIB");
        println!("cargo:rerun-if-env-changed=LIBTORCH");
        // Missing until setup-libtorch has run: cargo then reruns this script
        // on every build, so the rpath appears as soon as libtorch does.
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(".venv/libtorch.env").display()
        );
        let has_lib = |d: &Path| d.join("libtorch_cpu.so").exists();
        if let Some(d) = env::var_os("LAYERDRIFT_LIBTORCH_LIB").map(PathBuf::from) {
            return has_lib(&d).then_some(d);
        }
        if let Some(d) = env::var_os("LIBTORCH").map(|t| PathBuf::from(t).join("lib"))
            && has_lib(&d)
        {
            return Some(d);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(workspace.join(".venv/lib"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
            .map(|e| e.path().join("site-packages/torch/lib"))
            .filter(|d| has_lib(d))
            .collect();
        found.sort();
        found.pop()
    }
}
