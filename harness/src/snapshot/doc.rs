//! Snapshot documents: what a snapshot file holds, built from the engine's
//! outcomes and runs. Numbers keep three significant digits ([`sig3`]), so a
//! diff means the numbers really moved.

use std::fmt::Write as _;

use layerdrift_backends::{BackendInfo, Checkpoints};
use serde::{Deserialize, Serialize};

use crate::engine::Outcome;
use crate::metric::{Metric, sig3};
use crate::metrics::LayerDrift;
use crate::scenario::Scenario;

/// The columns of a snapshot's per-layer lines, from the [`Metric`] table:
/// `layer: mean|Δ| max|Δ| rms|Δ| max_rel max_ulps equal%`. Readers go by
/// this header ([`super::band::Columns`]), so a new metric is a new column
/// that older snapshots simply lack.
pub fn layer_columns() -> String {
    format!("layer: {}", Metric::ALL.map(Metric::column).join(" "))
}

/// One snapshot line for one layer.
pub fn layer_line(layer: usize, d: &LayerDrift) -> String {
    format!("{layer:>3}: {}", columns(d))
}

/// [`layer_line`] with a name instead of a layer number (`norm`, `logits`).
fn named_line(name: &str, d: &LayerDrift) -> String {
    format!("{name}: {}", columns(d))
}

/// The values of [`layer_columns`] after the layer field.
fn columns(d: &LayerDrift) -> String {
    let mut s = Metric::ALL.map(|m| m.format_value(m.value(d))).join(" ");
    if d.non_finite > 0 {
        let _ = write!(s, " NON-FINITE {}", d.non_finite);
    }
    s
}

/// A drift snapshot: one backend's comparisons in one scenario.
#[derive(Debug, Deserialize, Serialize)]
pub struct DriftSnapshot {
    /// Scenario name.
    pub scenario: String,
    /// Backend id.
    pub backend: String,
    /// What each layer line holds.
    pub columns: String,
    /// Every comparison of this backend.
    pub comparisons: Vec<SnapComparison>,
}

/// One comparison in a snapshot.
#[derive(Debug, Deserialize, Serialize)]
pub struct SnapComparison {
    /// Check name.
    pub check: String,
    /// `a` side: `backend/strategy`.
    pub a: String,
    /// `b` side: `backend/strategy`.
    pub b: String,
    /// Per variant.
    pub variants: Vec<SnapVariant>,
}

/// One variant of a comparison in a snapshot.
#[derive(Debug, Deserialize, Serialize)]
pub struct SnapVariant {
    /// Variant label.
    pub variant: String,
    /// Why it was not compared, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// `row R, layer L` of the first bitwise difference, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_divergence: Option<String>,
    /// Power-law exponent of mean |Δ| over layers (`none` when bitwise equal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_exponent: Option<String>,
    /// One line per layer, see `columns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// Mean |Δ| per layer at the last observed row (decoder: last decoded position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_row_mean_abs: Option<String>,
    /// A language model's head: the final norm's line, then the logits'
    /// (columns as `columns`, the layer field named `norm` and `logits`),
    /// then `log_softmax: max|Δ|` and `top1: agreement%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Vec<String>>,
}

impl DriftSnapshot {
    /// Builds the snapshot document from a backend's outcomes.
    pub fn new(scenario: &str, backend: &str, outcomes: &[Outcome]) -> DriftSnapshot {
        let comparisons = outcomes
            .iter()
            .map(|o| {
                let c = &o.comparison;
                SnapComparison {
                    check: c.name.clone(),
                    a: c.a.to_string(),
                    b: c.b.to_string(),
                    variants: o
                        .variants
                        .iter()
                        .map(|v| match &v.profile {
                            None => SnapVariant {
                                variant: v.variant.clone(),
                                skipped: v.skipped.clone(),
                                first_divergence: None,
                                growth_exponent: None,
                                layers: Vec::new(),
                                last_row_mean_abs: None,
                                head: None,
                            },
                            Some(p) => SnapVariant {
                                variant: v.variant.clone(),
                                skipped: None,
                                first_divergence: Some(
                                    p.first_divergence.map_or("none".into(), |d| d.to_string()),
                                ),
                                growth_exponent: Some(
                                    p.growth
                                        .exponent
                                        .map_or("none".into(), |e| format!("{e:.2}")),
                                ),
                                layers: p
                                    .layers
                                    .iter()
                                    .enumerate()
                                    .map(|(i, d)| layer_line(i + 1, d))
                                    .collect(),
                                last_row_mean_abs: p.last_row_mean_abs.as_ref().map(|v| {
                                    v.iter().map(|x| sig3(*x)).collect::<Vec<_>>().join(" ")
                                }),
                                head: p.head.as_ref().map(|h| {
                                    vec![
                                        named_line("norm", &h.final_norm),
                                        named_line("logits", &h.logits),
                                        format!("log_softmax: {}", sig3(h.max_log_softmax)),
                                        format!("top1: {:.1}%", 100.0 * h.top1_agreement),
                                    ]
                                }),
                            },
                        })
                        .collect(),
                }
            })
            .collect();
        DriftSnapshot {
            scenario: scenario.into(),
            backend: backend.into(),
            columns: layer_columns(),
            comparisons,
        }
    }
}

/// The oracle's snapshot: the size of the true activations, per strategy and
/// variant — it moves when weights, inputs or the model change, whatever the
/// backends do.
#[derive(Debug, Deserialize, Serialize)]
pub struct OracleSnapshot {
    /// Scenario name.
    pub scenario: String,
    /// What each layer line holds.
    pub columns: String,
    /// `strategy [variant]` → per-layer lines.
    pub activations: Vec<OracleEntry>,
}

/// One oracle run in the snapshot.
#[derive(Debug, Deserialize, Serialize)]
pub struct OracleEntry {
    /// Strategy.
    pub strategy: String,
    /// Variant label.
    pub variant: String,
    /// `layer: rms max|x| sum` of the observed rows.
    pub layers: Vec<String>,
}

/// `layer: rms max|x| sum` lines for the oracle's checkpoints.
pub fn activation_lines(c: &Checkpoints) -> Vec<String> {
    c.layers
        .iter()
        .enumerate()
        .map(|(i, xs)| {
            let n = xs.len().max(1) as f64;
            let rms = (xs.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
            let max = xs.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let sum: f64 = xs.iter().sum();
            format!("{:>3}: {} {} {}", i + 1, sig3(rms), sig3(max), sig3(sum))
        })
        .collect()
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
    /// Host CPU, its SIMD level and vendor/model (what classes are made of).
    pub host: String,
    /// The class the snapshot belongs to.
    pub class: String,
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

impl Meta {
    /// The metadata of a snapshot of `s` holding the runs of `backends`.
    pub fn new(s: &Scenario, backends: &[BackendInfo], class: &str) -> Meta {
        let mut dtypes: Vec<String> = s.variants.iter().map(|v| v.dtype.to_string()).collect();
        dtypes.dedup();
        Meta {
            scenario: s
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            backends: backends
                .iter()
                .map(|i| BackendMeta {
                    id: i.id().to_string(),
                    version: i.version.clone(),
                    device: i.device_name.clone(),
                    threads: i.threads,
                })
                .collect(),
            dtypes,
            host: format!(
                "{} ({}, {} {})",
                layerdrift_backends::cpu::model_name(),
                layerdrift_backends::cpu::describe(),
                layerdrift_backends::cpu::vendor(),
                layerdrift_backends::cpu::family_model()
            ),
            class: class.to_string(),
            layerdrift: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The oracle's snapshot document: its activations and its own comparisons.
#[derive(Debug, Deserialize, Serialize)]
pub struct OracleDoc {
    /// The size of the true activations.
    pub oracle: OracleSnapshot,
    /// The oracle's strategy comparisons (a decoder's KV cache in f64).
    pub comparisons: DriftSnapshot,
}

impl OracleDoc {
    /// Builds it from the oracle's runs (`(strategy, variant, run)`, see
    /// [`crate::engine::oracle_runs`]) and its comparisons.
    pub fn new(
        scenario: &str,
        runs: &[(String, String, std::sync::Arc<crate::session::Run>)],
        outcomes: &[Outcome],
    ) -> OracleDoc {
        OracleDoc {
            oracle: OracleSnapshot {
                scenario: scenario.to_string(),
                columns: "layer: rms max|x| sum (observed rows, f64)".into(),
                activations: runs
                    .iter()
                    .map(|(st, v, run)| OracleEntry {
                        strategy: st.clone(),
                        variant: v.clone(),
                        layers: activation_lines(&run.checkpoints),
                    })
                    .collect(),
            },
            comparisons: DriftSnapshot::new(
                scenario,
                &crate::session::ORACLE.to_string(),
                outcomes,
            ),
        }
    }
}
