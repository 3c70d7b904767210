//! Human-readable forms of the results: snapshot documents, per-layer tables
//! and summaries.

use std::fmt::Write as _;

use layerdrift_backends::Checkpoints;
use serde::Serialize;

use crate::metrics::LayerDrift;
use crate::plan::Outcome;

/// A number with three significant digits (`4.21e-7`), `0` for zero — the
/// precision snapshots keep, so a diff means the numbers really moved.
///
/// ```
/// assert_eq!(layerdrift::report::sig3(0.0), "0");
/// assert_eq!(layerdrift::report::sig3(4.2149e-7), "4.21e-7");
/// assert_eq!(layerdrift::report::sig3(f64::NAN), "NaN");
/// ```
pub fn sig3(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_nan() {
        "NaN".into()
    } else {
        format!("{x:.2e}")
    }
}

/// The columns of a snapshot's per-layer lines.
pub const LAYER_COLUMNS: &str = "layer: mean|Δ| max|Δ| rms|Δ| max_rel max_ulps equal%";

/// One snapshot line for one layer.
pub fn layer_line(layer: usize, d: &LayerDrift) -> String {
    let mut s = format!(
        "{layer:>3}: {} {} {} {} {} {:.1}%",
        sig3(d.mean_abs),
        sig3(d.max_abs),
        sig3(d.rms),
        sig3(d.max_rel),
        d.max_ulps,
        100.0 * d.equal_share
    );
    if d.non_finite > 0 {
        let _ = write!(s, " NON-FINITE {}", d.non_finite);
    }
    s
}

/// A drift snapshot: one backend's comparisons in one scenario.
#[derive(Debug, Serialize)]
pub struct DriftSnapshot {
    /// Scenario name.
    pub scenario: String,
    /// Backend id.
    pub backend: String,
    /// What each layer line holds.
    pub columns: &'static str,
    /// Every comparison of this backend.
    pub comparisons: Vec<SnapComparison>,
}

/// One comparison in a snapshot.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// Mean |Δ| per layer at the last observed row (decoder: last decoded position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_row_mean_abs: Option<String>,
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
                    a: format!("{}/{}", c.a.backend, c.a.strategy),
                    b: format!("{}/{}", c.b.backend, c.b.strategy),
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
                            },
                            Some(p) => SnapVariant {
                                variant: v.variant.clone(),
                                skipped: None,
                                first_divergence: Some(
                                    p.first_divergence.map_or("none".into(), |d| {
                                        format!("row {}, layer {}", d.row, d.layer)
                                    }),
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
                            },
                        })
                        .collect(),
                }
            })
            .collect();
        DriftSnapshot {
            scenario: scenario.into(),
            backend: backend.into(),
            columns: LAYER_COLUMNS,
            comparisons,
        }
    }
}

/// The oracle's snapshot: the size of the true activations, per strategy and
/// variant — it moves when weights, inputs or the model change, whatever the
/// backends do.
#[derive(Debug, Serialize)]
pub struct OracleSnapshot {
    /// Scenario name.
    pub scenario: String,
    /// What each layer line holds.
    pub columns: &'static str,
    /// `strategy [variant]` → per-layer lines.
    pub activations: Vec<OracleEntry>,
}

/// One oracle run in the snapshot.
#[derive(Debug, Serialize)]
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

/// A per-layer table of one comparison: a column per variant, `metric` of
/// [`LayerDrift`] (`mean_abs`, `max_abs`, `rms`, `max_rel`, `max_ulps`, `equal`).
pub fn table(o: &Outcome, metric: &str) -> String {
    let cols: Vec<_> = o.variants.iter().filter(|v| v.profile.is_some()).collect();
    let mut s = String::new();
    if cols.is_empty() {
        return s;
    }
    let width = cols
        .iter()
        .map(|v| v.variant.len())
        .max()
        .unwrap_or(8)
        .max(9);
    let _ = write!(s, "  {:>5}", "layer");
    for v in &cols {
        let _ = write!(s, "  {:>width$}", v.variant);
    }
    s.push('\n');
    let layers = cols[0].profile.as_ref().map_or(0, |p| p.layers.len());
    for l in 0..layers {
        let _ = write!(s, "  {:>5}", l + 1);
        for v in &cols {
            let d = &v.profile.as_ref().expect("filtered").layers[l];
            let cell = metric_value(d, metric);
            let _ = write!(s, "  {cell:>width$}");
        }
        s.push('\n');
    }
    s
}

/// One metric of a layer, formatted.
pub fn metric_value(d: &LayerDrift, metric: &str) -> String {
    if d.non_finite > 0 {
        return format!("NaN/Inf×{}", d.non_finite);
    }
    match metric {
        "max_abs" => sig3(d.max_abs),
        "rms" => sig3(d.rms),
        "max_rel" => sig3(d.max_rel),
        "max_ulps" => d.max_ulps.to_string(),
        "equal" => format!("{:.1}%", 100.0 * d.equal_share),
        _ => sig3(d.mean_abs),
    }
}

/// The metric names [`metric_value`] knows.
pub const METRICS: [&str; 6] = ["mean_abs", "max_abs", "rms", "max_rel", "max_ulps", "equal"];
