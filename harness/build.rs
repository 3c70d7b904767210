//! With the `tch` feature: bakes libtorch's library folder into the binaries
//! and test executables as an rpath, so `cargo test --features tch` and the
//! `layerdrift` binary run without `LD_LIBRARY_PATH` (a binary carried to
//! another machine needs `LD_LIBRARY_PATH` there instead). Also the build
//! script of the root package (`layerdrift-suite`), whose scenario suite
//! needs the same rpath: an rpath applies only to its own package's targets.

use std::path::{Path, PathBuf};

#[path = "../backends/build/libtorch.rs"]
mod libtorch;

/// The workspace root: the first folder up from this package that holds
/// `backends/build/libtorch.rs` (this package is `harness/` or the root).
fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("backends/build/libtorch.rs").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(here)
}

fn main() {
    let ws = workspace();
    println!(
        "cargo:rerun-if-changed={}",
        ws.join("harness/build.rs").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ws.join("backends/build/libtorch.rs").display()
    );
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        libtorch::link(&ws);
    }
}
