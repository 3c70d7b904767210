//! Finding libtorch and linking against it, for the `tch` feature. Shared by
//! the build scripts of both crates (each includes this file with `#[path]`).
//!
//! The folder is `LAYERDRIFT_LIBTORCH_LIB`, else `$LIBTORCH/lib` (as
//! `.cargo/config.toml` sets it), else
//! `<workspace>/.venv/lib/python3.*/site-packages/torch/lib` (where
//! `scripts/setup-libtorch` puts it).

use std::env;
use std::path::{Path, PathBuf};

/// Embeds libtorch's `lib` folder as an rpath in this crate's binaries and
/// test executables (so they run without `LD_LIBRARY_PATH`), keeps
/// `libtorch_cuda` linked, and returns the folder; warns when there is none.
pub fn link(workspace: &Path) -> Option<PathBuf> {
    let Some(dir) = lib_dir(workspace) else {
        println!(
            "cargo:warning=libtorch not found (LAYERDRIFT_LIBTORCH_LIB, LIBTORCH, {}/.venv): run scripts/setup-libtorch; the tch binaries will need LD_LIBRARY_PATH",
            workspace.display()
        );
        return None;
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // Keep libtorch_cuda linked although no symbol of ours names it: it
    // registers the CUDA hooks when loaded, and without it
    // `tch::Cuda::is_available()` is always false.
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    Some(dir)
}

fn lib_dir(workspace: &Path) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LAYERDRIFT_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // Missing until setup-libtorch has run: cargo then reruns the script on
    // every build, so the rpath appears as soon as libtorch does.
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
