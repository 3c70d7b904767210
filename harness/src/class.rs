//! Machine classes: which snapshots a backend's numbers are compared with.
//!
//! A class belongs to a backend, not to the machine: it is named from the
//! facts that backend's kernels dispatch on ([`Backend::class`]): the SIMD
//! level for candle, burn and the oracle (`x86_64-avx512f`), the CPU's
//! vendor and model as well for libtorch, whose MKL and oneDNN pick kernels
//! by them (`x86_64-amd-26.2-avx512f`), the GPU for a GPU backend
//! (`cuda-nvidia-h200`). Snapshots live in `snapshots/{backend}/{class}/`.
//!
//! How a snapshot trial checks (see [`mode`]); coverage is opt-in, a class
//! covers the snapshots its folder holds:
//! - this class recorded the file: exactly, through insta — unless its
//!   `class.yaml` excludes the scenario (an ignored trial with the reason);
//! - it did not (no folder, or a folder without that file), but other
//!   classes did: through a tolerance band against them (`snapshot::band`),
//!   saying which;
//! - nobody recorded it: ignored, saying how to record
//!   (`LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use layerdrift_backends::{Backend, BackendId};
use serde::Deserialize;

use crate::env::env;
use crate::workspace::root;

/// The class of a backend on this machine.
pub fn class_of(b: &dyn Backend) -> String {
    b.class()
}

/// `snapshots/{backend}/`.
pub fn backend_dir(id: BackendId) -> PathBuf {
    root().join("snapshots").join(id.to_string())
}

/// `snapshots/{backend}/{class}/`.
pub fn class_dir(id: BackendId, class: &str) -> PathBuf {
    backend_dir(id).join(class)
}

/// A class folder's `class.yaml`: what machine recorded it, and which
/// scenarios it deliberately does not cover.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    /// The machine that recorded the class, in words.
    pub machine: Option<String>,
    /// When.
    pub recorded: Option<String>,
    /// Scenario name → why this class does not cover it.
    #[serde(default)]
    pub excludes: BTreeMap<String, String>,
    /// Backend version → the probe hash the recording machine computed
    /// (`layerdrift_backends::fingerprint`).
    #[serde(default)]
    pub probe: BTreeMap<String, String>,
}

/// The coverage file of a class folder; none = covers everything. A file
/// that does not parse is an error naming it.
pub fn coverage(id: BackendId, class: &str) -> Result<Coverage, String> {
    let path = class_dir(id, class).join("class.yaml");
    match std::fs::read_to_string(&path) {
        Err(_) => Ok(Coverage::default()),
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| {
            format!(
                "{}: {e} (expected `machine:`, `recorded:` and `excludes: {{ scenario: reason }}`)",
                path.display()
            )
        }),
    }
}

/// The snapshot file name of a backend's own comparisons in `scenario`.
pub fn own_name(scenario: &str) -> String {
    scenario.to_string()
}

/// The snapshot file name of a cross pair: it names the other backend and
/// its class, since the pair's numbers depend on both.
pub fn pair_name(scenario: &str, b: BackendId, b_class: &str, strategy: &str) -> String {
    format!("{scenario}__vs__{b}__{b_class}__{strategy}")
}

/// Whether `file` is the snapshot of a pair with `b` on `strategy`, in any
/// class of `b`.
pub fn is_pair_file(file: &str, scenario: &str, b: BackendId, strategy: &str) -> bool {
    file.starts_with(&format!("{scenario}__vs__{b}__"))
        && file.ends_with(&format!("__{strategy}.snap"))
}

/// How one snapshot is checked on this machine.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Exactly, against (or recording into) this folder.
    Exact(PathBuf),
    /// Through the band, against these `(class, file)`s.
    Banded(Vec<(String, PathBuf)>),
    /// Not at all here, for this reason (an ignored trial).
    Ignore(String),
    /// The class folder is broken (a malformed `class.yaml`): a failing trial.
    Broken(String),
}

/// How the snapshot `file` of `scenario` is checked for backend `id` on
/// `class`; `related` accepts the files of other recordings it may be
/// banded against (the same file, or a cross pair's file for another class
/// of the other backend). `probe` is this machine's `(library version,
/// probe hash)` for the backend: a recorded class whose `class.yaml` holds
/// another hash for the same version is banded rather than compared exactly
/// (planning passes `None`: it only needs to know whether the trial runs,
/// and probing costs a few runs).
///
/// Coverage is opt-in: a class covers what it recorded (the file is in its
/// folder). A file it lacks is banded against the classes that have it, or
/// is an ignored trial saying how to record it — never a failing exact
/// comparison against nothing.
pub fn mode(
    id: BackendId,
    class: &str,
    scenario: &str,
    file: &str,
    related: &dyn Fn(&str) -> bool,
    probe: Option<&(String, String)>,
) -> Mode {
    let dir = class_dir(id, class);
    // Whether this class's own folder is left out of the band: only when it
    // holds the file and computes what it recorded (LAYERDRIFT_BAND=1 bands
    // a recorded class against the others).
    let mut own_excluded = false;
    if dir.is_dir() || env().record {
        let c = match coverage(id, class) {
            Err(e) => return Mode::Broken(e),
            Ok(c) => c,
        };
        if let Some(why) = c.excludes.get(scenario) {
            return Mode::Ignore(format!(
                "class `{class}` of {id} does not cover `{scenario}`: {why} ({})",
                dir.join("class.yaml").display()
            ));
        }
        if env().record {
            return Mode::Exact(dir);
        }
        // Same class name, same library version, other probe bits: this
        // machine does not compute what the recording one did, so it is not
        // compared exactly (below: banded against every class, its own too).
        let differs = probe.is_some_and(|(version, mine)| {
            c.probe.get(version).is_some_and(|theirs| theirs != mine)
        });
        let here = dir.join(file).is_file();
        if here && !differs && !env().band {
            return Mode::Exact(dir);
        }
        own_excluded = here && !differs;
    }
    let own = if own_excluded { class } else { "" };
    let others = recorded_elsewhere(id, own, related);
    if others.is_empty() {
        Mode::Ignore(format!(
            "no class of {id} has recorded `{file}` (this machine's class is `{class}`): record it with `LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test -- {scenario}`"
        ))
    } else {
        Mode::Banded(others)
    }
}

/// The `.snap` files `matches` accepts in the class folders of `id` other
/// than `own_class`, as `(class, file)`, sorted.
pub fn recorded_elsewhere(
    id: BackendId,
    own_class: &str,
    matches: &dyn Fn(&str) -> bool,
) -> Vec<(String, PathBuf)> {
    let Ok(classes) = std::fs::read_dir(backend_dir(id)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in classes.flatten() {
        let class = c.file_name().to_string_lossy().into_owned();
        if class == own_class || !c.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") && matches(&name) {
                out.push((class.clone(), f.path()));
            }
        }
    }
    out.sort();
    out
}
