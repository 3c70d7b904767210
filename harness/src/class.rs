//! Machine classes: which snapshots a backend's numbers are compared with.
//!
//! A class belongs to a backend, not to the machine: it is named from the
//! facts that backend's kernels dispatch on ([`Backend::class`]): the SIMD
//! level for candle, burn and the oracle (`x86_64-avx512f`), the CPU's
//! vendor and model as well for libtorch, whose MKL and oneDNN pick kernels
//! by them (`x86_64-amd-26.2-avx512f`), the GPU for a GPU backend
//! (`cuda-nvidia-h200`). Snapshots live in `snapshots/{backend}/{class}/`.
//!
//! How a snapshot trial checks (see [`mode`]):
//! - this class has a folder: exactly, through insta — unless its
//!   `class.yaml` excludes the scenario (an ignored trial with the reason);
//! - it has none, but other classes recorded the scenario: through a
//!   tolerance band against them (`snapshot::band`), saying which;
//! - nobody recorded it: ignored, saying how to record
//!   (`LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use layerdrift_backends::{
    Activation, AttentionForm, Backend, BackendId, Checkpoints, DType, DecoderSpec, ModelSpec,
    Norm, ResidualMlpSpec, Row, RunRequest, Schedule, Weights, generate_input,
};
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
    /// Backend version → the [`probe`] hash the recording machine computed.
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

/// How the snapshot of `scenario` named by `matches` (a file name test) is
/// checked for backend `id` on `class`. With `probe`, a recorded class whose
/// `class.yaml` holds another probe hash for this library version is banded
/// rather than compared exactly (planning passes `false`: it only needs to
/// know whether the trial runs, and probing costs a few runs).
pub fn mode(
    id: BackendId,
    class: &str,
    scenario: &str,
    matches: &dyn Fn(&str) -> bool,
    probe: bool,
) -> Mode {
    let dir = class_dir(id, class);
    let banded_anyway = env().band;
    let mut differs = false;
    if (dir.is_dir() && !banded_anyway) || env().record {
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
        // Same class name, same library version, other probe bits: this
        // machine does not compute what the recording one did, so it is not
        // compared exactly (below: banded against every class, its own too).
        differs = probe
            && !env().record
            && probe_of(id).is_some_and(|(version, mine)| {
                c.probe.get(&version).is_some_and(|theirs| *theirs != mine)
            });
        if !differs {
            return Mode::Exact(dir);
        }
    }
    let own = if differs { "" } else { class };
    let others = recorded_elsewhere(id, own, matches);
    if others.is_empty() {
        Mode::Ignore(format!(
            "no snapshots of {id} recorded for class `{class}` or any other: record them with `LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test`"
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

/// `(library version, probe hash)`, or `None` where the probe cannot run.
type ProbeResult = Option<(String, String)>;

/// Probe results, once per backend and process.
static PROBES: OnceLock<Mutex<HashMap<BackendId, ProbeResult>>> = OnceLock::new();

/// Registered backends, for [`probe_of`] (set by the front ends).
static BACKENDS: OnceLock<Vec<std::sync::Arc<dyn Backend>>> = OnceLock::new();

/// Lets [`mode`] probe the backends of this process (the front ends call it
/// once with their session's backends).
pub fn register(backends: &[std::sync::Arc<dyn Backend>]) {
    let _ = BACKENDS.set(backends.to_vec());
}

/// `(version, probe hash)` of a registered, available backend.
fn probe_of(id: BackendId) -> ProbeResult {
    let b = BACKENDS.get()?.iter().find(|b| b.id() == id)?;
    let map = PROBES.get_or_init(Mutex::default);
    if let Some(hit) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return hit.clone();
    }
    let got = b
        .available()
        .ok()
        .and_then(|()| probe(b.as_ref()).ok())
        .map(|h| (b.info().version, h));
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, got.clone());
    got
}

/// A behavioural fingerprint of a backend on this machine: a few fixed
/// one-layer runs at the shipped scenarios' widths (768 wide, hidden 768 and
/// 3072, 12 heads; 1, 64 and 1024 rows; full, rows and KV-cache schedules),
/// every output bit hashed. Two machines with other bits here compute other
/// numbers; `class.yaml` records the hash of the machine that recorded a
/// class, so a machine whose class *name* matches but whose bits do not is
/// banded instead of compared exactly. About 0.1–0.5 s per backend.
pub fn probe(b: &dyn Backend) -> Result<String, String> {
    let mlp = ModelSpec::ResidualMlp(ResidualMlpSpec {
        layers: 1,
        dim: 768,
        hidden: 768,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        residual: true,
    });
    let decoder = ModelSpec::Decoder(DecoderSpec {
        layers: 1,
        dim: 768,
        heads: 12,
        hidden: 3072,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        rope_theta: Some(10_000.0),
        attention: AttentionForm::Manual,
    });
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |c: &Checkpoints| {
        for x in c.layers.iter().flatten() {
            for byte in x.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
            }
        }
    };
    let runs: [(&ModelSpec, usize, Schedule); 5] = [
        (&mlp, 1024, Schedule::Full),
        (&mlp, 64, Schedule::Full),
        (&mlp, 1, Schedule::Rows),
        (&decoder, 64, Schedule::Full),
        (&decoder, 64, Schedule::kv_cache(56, 64)),
    ];
    for (model, seq, schedule) in runs {
        let weights = Weights::init(model, 7, 0.05);
        let input = generate_input(1, seq, model.dim(), 3);
        let observed: Vec<Row> = (seq.saturating_sub(8)..seq)
            .map(|pos| Row { batch: 0, pos })
            .collect();
        let req = RunRequest {
            model,
            weights: &weights,
            input: &input,
            dtype: DType::F32,
            schedule: &schedule,
            observed: &observed,
            threads: Some(2),
            batch_invariant: false,
        };
        b.check(&req).map_err(|e| e.to_string())?;
        eat(&b.run(&req).map_err(|e| e.to_string())?);
    }
    Ok(format!("{hash:016x}"))
}
