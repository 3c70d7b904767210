//! insta snapshots of per-layer profiles, under the workspace's `snapshots/`.
//!
//! One snapshot per scenario × backend × device holds that backend's own
//! comparisons (strategy vs strategy, vs the oracle); a cross-backend
//! comparison depends on two backends being built, so each pair has its own
//! snapshot (`{scenario}__{a}__vs__{b}`) — a build without tch then leaves
//! candle's snapshot untouched. Metadata (versions, device, dtype, threads,
//! SIMD level) goes into insta's `info`, shown by `cargo insta review` but not
//! compared: only the numbers fail a test.
//!
//! Float results legitimately differ between machine classes (a CPU's SIMD
//! level picks other kernels; each GPU model has its own), so snapshots live
//! in one folder per class: `snapshots/x86_64-avx2-fma/`,
//! `snapshots/cuda-nvidia-h200/`. On a class with no folder yet the snapshot
//! trials are ignored and say how to record one (`LAYERDRIFT_RECORD=1`);
//! the bounds are checked everywhere.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use serde::Serialize;

use crate::plan::{Outcome, comparisons, evaluate};
use crate::report::{DriftSnapshot, OracleEntry, OracleSnapshot, activation_lines};
use crate::scenario::{Pairing, Scenario};
use crate::session::{ORACLE, RunError, Session};

/// The workspace root: `LAYERDRIFT_ROOT`, else where this crate was built.
pub fn root() -> PathBuf {
    std::env::var_os("LAYERDRIFT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            built.canonicalize().unwrap_or(built)
        })
}

/// What the numbers depend on, recorded beside them.
#[derive(Debug, Serialize)]
pub struct Meta {
    /// Scenario file.
    pub scenario: String,
    /// Backends in the snapshot, with versions, devices and threads.
    pub backends: Vec<BackendMeta>,
    /// dtypes of the variants.
    pub dtypes: Vec<String>,
    /// Host CPU and SIMD level.
    pub host: String,
    /// layerdrift version.
    pub layerdrift: &'static str,
}

/// One backend's identity in a snapshot's metadata.
#[derive(Debug, Serialize)]
pub struct BackendMeta {
    /// Backend id.
    pub id: String,
    /// Library version.
    pub version: String,
    /// Device in words.
    pub device: String,
    /// Threads.
    pub threads: usize,
}

fn meta(s: &Scenario, session: &Session, ids: &[&str]) -> Meta {
    let mut dtypes: Vec<String> = s.variants.iter().map(|v| v.dtype.to_string()).collect();
    dtypes.dedup();
    Meta {
        scenario: s
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backends: ids
            .iter()
            .filter_map(|id| session.backend(id))
            .map(|b| {
                let i = b.info();
                BackendMeta {
                    id: i.id(),
                    version: i.version,
                    device: i.device_name,
                    threads: i.threads,
                }
            })
            .collect(),
        dtypes,
        host: layerdrift_backends::cpu::describe(),
        layerdrift: env!("CARGO_PKG_VERSION"),
    }
}

/// The machine class of a backend: the host's for CPU backends and the
/// oracle, the GPU's name for GPU backends (`cuda-nvidia-h200`).
pub fn class_of(info: &layerdrift_backends::BackendInfo) -> String {
    if info.device == "cpu" {
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

/// The snapshot folder of a machine class.
pub fn class_dir(class: &str) -> PathBuf {
    root().join("snapshots").join(class)
}

/// Why snapshots of `class` cannot be checked here, if they cannot: no
/// folder was ever recorded for it (and `LAYERDRIFT_RECORD=1` is not set).
pub fn unrecorded(class: &str) -> Option<String> {
    let record = std::env::var_os("LAYERDRIFT_RECORD").is_some_and(|v| v == "1");
    (!record && !class_dir(class).is_dir()).then(|| {
        format!(
            "no snapshots recorded for machine class `{class}` (float results legitimately differ between \
             SIMD levels and GPU models): record them with `LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test`"
        )
    })
}

/// Asserts `doc` against `snapshots/{class}/{name}.snap` with `meta` as its info.
pub fn assert_snapshot<T: Serialize>(
    class: &str,
    name: &str,
    meta: &Meta,
    description: &str,
    doc: &T,
) -> Result<(), String> {
    if let Some(why) = unrecorded(class) {
        return Err(why);
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(class_dir(class));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(
        root()
            .join("scenarios")
            .join(format!("{}.yaml", meta.scenario.trim_end_matches(".yaml"))),
    );
    settings.set_info(meta);
    settings.set_description(description);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name.to_string(), doc));
    }));
    result.map_err(|_| {
        format!(
            "snapshot `{name}` does not match snapshots/{class}/{name}.snap (diff above). If the change is expected \
             (a backend upgrade, a new scenario), run `cargo insta review` to accept it; on CI nothing is written."
        )
    })
}

/// The snapshot trial of `backend` in `s`: its own comparisons, or for the
/// oracle its activation profile (and its own strategy comparisons).
pub fn backend_snapshot(s: &Scenario, session: &Session, backend: &str) -> Result<(), String> {
    let b = session
        .backend(backend)
        .ok_or_else(|| format!("no backend `{backend}`"))?;
    let own: Vec<_> = comparisons(s, session, b.as_ref())
        .into_iter()
        .filter(|c| c.b.backend == backend || c.b.backend == ORACLE)
        .collect();
    let outcomes: Vec<Outcome> = own
        .iter()
        .map(|c| evaluate(s, session, c))
        .collect::<Result<_, _>>()?;
    let name = format!("{}__{backend}", s.name);
    if backend == ORACLE {
        let mut activations = Vec::new();
        for st in &s.strategies {
            for (i, v) in s.variants.iter().enumerate() {
                match session.run(s, i, ORACLE, st.name) {
                    Ok(run) => activations.push(OracleEntry {
                        strategy: st.name.to_string(),
                        variant: v.label.clone(),
                        layers: activation_lines(&run.checkpoints),
                    }),
                    Err(RunError::Skip(_)) => {}
                    Err(RunError::Fail(m)) => return Err(m),
                }
                // For row-independent models the oracle computes every
                // strategy the same way: record it once.
                if !matches!(v.model, layerdrift_backends::ModelSpec::Decoder(_))
                    && st.name != s.strategies[0].name
                {
                    activations.pop();
                }
            }
        }
        #[derive(Serialize)]
        struct Doc {
            oracle: OracleSnapshot,
            comparisons: DriftSnapshot,
        }
        let doc = Doc {
            oracle: OracleSnapshot {
                scenario: s.name.clone(),
                columns: "layer: rms max|x| sum (observed rows, f64)",
                activations,
            },
            comparisons: DriftSnapshot::new(&s.name, backend, &outcomes),
        };
        let class = class_of(&b.info());
        return assert_snapshot(
            &class,
            &name,
            &meta(s, session, &[ORACLE]),
            &s.description,
            &doc,
        );
    }
    let doc = DriftSnapshot::new(&s.name, backend, &outcomes);
    assert_snapshot(
        &class_of(&b.info()),
        &name,
        &meta(s, session, &[backend, ORACLE]),
        &s.description,
        &doc,
    )
}

/// The snapshot of one cross-backend comparison, `{scenario}__{a}__vs__{b}`.
pub fn cross_snapshot(s: &Scenario, session: &Session, outcome: &Outcome) -> Result<(), String> {
    let c = &outcome.comparison;
    debug_assert!(
        s.checks
            .iter()
            .any(|k| matches!(k.pairing, Pairing::Cross(_)))
    );
    let name = format!(
        "{}__{}__vs__{}__{}",
        s.name, c.a.backend, c.b.backend, c.a.strategy
    );
    let doc = DriftSnapshot::new(&s.name, &c.a.backend, std::slice::from_ref(outcome));
    assert_snapshot(
        &cross_class(session, c),
        &name,
        &meta(s, session, &[&c.a.backend, &c.b.backend]),
        &s.description,
        &doc,
    )
}

/// The class of a cross-backend pair: the shared class, or both joined.
pub fn cross_class(session: &Session, c: &crate::plan::Comparison) -> String {
    let class = |id: &str| {
        session
            .backend(id)
            .map(|b| class_of(&b.info()))
            .unwrap_or_default()
    };
    let (a, b) = (class(&c.a.backend), class(&c.b.backend));
    if a == b { a } else { format!("{a}+{b}") }
}
