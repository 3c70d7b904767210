//! With the `tch` feature: bakes libtorch's library folder into the binaries
//! and test executables as an rpath, so `cargo test --features tch` and the
//! `layerdrift` binary run without `LD_LIBRARY_PATH` (a binary carried to
//! another machine needs `LD_LIBRARY_PATH` there instead).

use std::path::Path;

#[path = "../backends/build/libtorch.rs"]
mod libtorch;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../backends/build/libtorch.rs");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        libtorch::link(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    }
}
