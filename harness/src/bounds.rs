//! Bounds: what drift a check accepts, as plain data from the YAML.
//!
//! A NaN or infinite value anywhere is a violation before any bound is
//! looked at; a bound never passes a comparison it cannot evaluate.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::metric::{Metric, sig3};
use crate::metrics::{DriftProfile, LayerDrift};

/// Limits on per-layer metrics (each optional).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricBounds {
    /// Max of mean |a − b|.
    pub mean_abs: Option<f64>,
    /// Max of max |a − b|.
    pub max_abs: Option<f64>,
    /// Max of the RMS difference.
    pub rms: Option<f64>,
    /// Max of the max relative error.
    pub max_rel: Option<f64>,
    /// Max ULP distance.
    pub max_ulps: Option<u64>,
    /// Min share of bitwise-equal elements (0..=1).
    pub min_equal_share: Option<f64>,
}

/// A check's bounds.
///
/// ```yaml
/// bounds:
///   bitwise: true                     # every element equal at every layer
///   every_layer: { max_abs: 1.0e-4 }  # a limit at each layer
///   last_layer: { mean_abs: 3.0e-6 }  # a limit at the last layer only
///   growth_exponent: 1.5              # mean_abs ≈ c·layer^p with p ≤ 1.5
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// Every element bitwise equal at every layer.
    #[serde(default)]
    pub bitwise: bool,
    /// Limits that hold at every layer.
    pub every_layer: Option<MetricBounds>,
    /// Limits that hold at the last layer.
    pub last_layer: Option<MetricBounds>,
    /// Max exponent of the power-law fit of mean |a − b| over layers.
    pub growth_exponent: Option<f64>,
    /// How `layerdrift calibrate` made these bounds (kept with them, never
    /// judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<Calibration>,
}

/// How a bound was made by `layerdrift calibrate`: from what, by which
/// statistic and margin, and the false-alarm rate that implies.
///
/// ```yaml
/// calibrated: { on: 2026-12-04, seeds: 8, classes: [x86_64-amd-26.2-avx512f], samples: 24,
///               statistic: max, margin: 3, false_alarm: 2.0e-6 }
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The day it was measured (UTC, `YYYY-MM-DD`).
    pub on: String,
    /// Weight and input seeds run on the calibrating machine.
    pub seeds: usize,
    /// The machine classes measured: the calibrating machine's, then those
    /// read from committed snapshots.
    pub classes: Vec<String>,
    /// Profiles measured (seeds × backends, plus one per recorded class and
    /// backend).
    pub samples: usize,
    /// The statistic the bound multiplies: `max` over samples, variants and
    /// layers.
    pub statistic: String,
    /// The factor on the statistic (an exponent's bound adds it instead).
    pub margin: f64,
    /// The chance that one trial of an unchanged backend exceeds a bound,
    /// from a log-normal fit of the per-sample maxima (the worst backend,
    /// every metric together).
    pub false_alarm: f64,
}

impl MetricBounds {
    /// The limit on `m`, if one is set.
    pub fn limit(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::MeanAbs => self.mean_abs,
            Metric::MaxAbs => self.max_abs,
            Metric::Rms => self.rms,
            Metric::MaxRel => self.max_rel,
            Metric::MaxUlps => self.max_ulps.map(|u| u as f64),
            Metric::Equal => self.min_equal_share,
        }
    }

    /// `(key, problem)` for every limit that makes no sense.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for m in Metric::ALL {
            let Some(v) = self.limit(m) else { continue };
            let key = m.bound_key().to_string();
            if !(v >= 0.0 && v.is_finite()) {
                out.push((key, format!("must be a finite number ≥ 0, got {v}")));
            } else if m.is_floor() && v > 1.0 {
                out.push((key, format!("is a share between 0 and 1, got {v}")));
            }
        }
        out
    }

    /// Violations at one layer, as `metric value > bound` phrases. A NaN
    /// metric value is a violation (`!(v <= b)`).
    fn violations(&self, d: &LayerDrift) -> Vec<String> {
        let mut out = Vec::new();
        for m in Metric::ALL {
            let Some(b) = self.limit(m) else { continue };
            let v = m.value(d);
            if m.is_floor() {
                if !(v >= b) {
                    out.push(format!("equal_share {v:.4} < {b}"));
                }
            } else if !(v <= b) {
                out.push(match m {
                    Metric::MaxUlps => format!("max_ulps {v:.0} > {b:.0}"),
                    Metric::MeanAbs
                    | Metric::MaxAbs
                    | Metric::Rms
                    | Metric::MaxRel
                    | Metric::Equal => {
                        format!("{} {v:.3e} > {b:.3e}", m.name())
                    }
                });
            }
        }
        out
    }
}

impl Bounds {
    /// Whether any bound is set (a check without bounds still fails on NaN/Inf).
    pub fn is_empty(&self) -> bool {
        *self == Bounds::default()
    }

    /// `(key path below the bounds, problem)` for every value that makes no
    /// sense (negative limits, NaN, a share above 1).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (at, b) in [
            ("every_layer", &self.every_layer),
            ("last_layer", &self.last_layer),
        ] {
            if let Some(b) = b {
                out.extend(
                    b.problems()
                        .into_iter()
                        .map(|(k, m)| (format!("{at}.{k}"), m)),
                );
            }
        }
        if let Some(g) = self.growth_exponent
            && !(g.is_finite() && g > 0.0)
        {
            out.push((
                "growth_exponent".into(),
                format!("must be a finite exponent > 0 (1 = linear growth with depth), got {g}"),
            ));
        }
        out
    }

    /// Every violation of these bounds by `p`, each naming the layer, the
    /// value and the bound. NaN/Inf is always a violation.
    ///
    /// ```
    /// use layerdrift::bounds::Bounds;
    /// use layerdrift::metrics::DriftProfile;
    /// use layerdrift_backends::{Checkpoints, DType};
    /// let a = Checkpoints { dim: 1, rows: 1, layers: vec![vec![1.0], vec![f64::NAN]], ..Default::default() };
    /// let b = Checkpoints { dim: 1, rows: 1, layers: vec![vec![1.0], vec![1.0]], ..Default::default() };
    /// let p = DriftProfile::compare(&a, &b, DType::F32).unwrap();
    /// // No bound set at all, and the NaN still fails:
    /// let v = Bounds::default().violations(&p);
    /// assert!(v[0].contains("layer 2") && v[0].contains("NaN or Inf"));
    /// ```
    pub fn violations(&self, p: &DriftProfile) -> Vec<String> {
        let mut out = Vec::new();
        for (i, d) in p.layers.iter().enumerate() {
            if d.non_finite > 0 {
                out.push(format!(
                    "layer {}: {} NaN or Inf values — never within bounds",
                    i + 1,
                    d.non_finite
                ));
            }
        }
        if !out.is_empty() {
            return out;
        }
        if self.bitwise
            && let Some(dv) = p.first_divergence
        {
            let d = &p.layers[dv.layer - 1];
            out.push(format!(
                    "not bitwise equal: first at observed row {} layer {} (max_abs {:.3e}, {:.2}% equal, max_ulps {})",
                    dv.row,
                    dv.layer,
                    d.max_abs,
                    100.0 * d.equal_share,
                    d.max_ulps
                ));
        }
        if let Some(b) = &self.every_layer {
            for (i, d) in p.layers.iter().enumerate() {
                for v in b.violations(d) {
                    out.push(format!("layer {}: {v} (every_layer)", i + 1));
                }
            }
        }
        if let (Some(b), Some(d)) = (&self.last_layer, p.layers.last()) {
            for v in b.violations(d) {
                out.push(format!("layer {} (last): {v}", p.layers.len()));
            }
        }
        if let Some(g) = self.growth_exponent
            && let Some(e) = p.growth.exponent
            && !(e <= g)
        {
            out.push(format!("growth exponent {e:.3} > {g}"));
        }
        out
    }
}

impl Bounds {
    /// Per bounded metric, the smallest bound `p` would have passed, and
    /// where it is reached (Polygraphy's "minimum required tolerance"):
    /// `every_layer.max_abs ≥ 2.1e-5 (layer 12)`. For a bitwise bound, the
    /// every-layer `mean_abs` and `max_abs` it would need instead. `None`
    /// when `p` holds a NaN or Inf (no bound passes it) or sets nothing.
    pub fn smallest_passing(&self, p: &DriftProfile) -> Option<String> {
        if p.layers.is_empty() || p.layers.iter().any(|d| d.non_finite > 0) {
            return None;
        }
        let mut parts = Vec::new();
        let worst = |m: Metric| {
            p.layers
                .iter()
                .enumerate()
                .map(|(i, d)| (m.value(d), i + 1))
                .fold((f64::NEG_INFINITY, 0), |a, b| if b.0 > a.0 { b } else { a })
        };
        let mut every: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| {
                self.every_layer
                    .as_ref()
                    .is_some_and(|b| b.limit(*m).is_some())
            })
            .collect();
        if self.bitwise && p.first_divergence.is_some() {
            for m in [Metric::MeanAbs, Metric::MaxAbs] {
                if !every.contains(&m) {
                    every.push(m);
                }
            }
        }
        for m in every {
            if m.is_floor() {
                let (v, l) = p
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (m.value(d), i + 1))
                    .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
                parts.push(format!(
                    "every_layer.{} ≤ {v:.4} (layer {l})",
                    m.bound_key()
                ));
            } else {
                let (v, l) = worst(m);
                parts.push(format!(
                    "every_layer.{} ≥ {} (layer {l})",
                    m.bound_key(),
                    sig3(v)
                ));
            }
        }
        if let (Some(b), Some(d)) = (&self.last_layer, p.layers.last()) {
            for m in Metric::ALL.into_iter().filter(|m| b.limit(*m).is_some()) {
                let op = if m.is_floor() { "≤" } else { "≥" };
                parts.push(format!(
                    "last_layer.{} {op} {}",
                    m.bound_key(),
                    sig3(m.value(d))
                ));
            }
        }
        if self.growth_exponent.is_some()
            && let Some(e) = p.growth.exponent
        {
            parts.push(format!("growth_exponent ≥ {e:.3}"));
        }
        (!parts.is_empty()).then(|| format!("would pass with {}", parts.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerdrift_backends::{Checkpoints, DType};

    fn profile(diffs: &[f64]) -> DriftProfile {
        let a = Checkpoints {
            dim: 1,
            rows: 1,
            layers: diffs.iter().map(|_| vec![1.0]).collect(),
            ops: Vec::new(),
            head: None,
        };
        let b = Checkpoints {
            dim: 1,
            rows: 1,
            layers: diffs.iter().map(|d| vec![1.0 + d]).collect(),
            ops: Vec::new(),
            head: None,
        };
        DriftProfile::compare(&a, &b, DType::F64).unwrap()
    }

    #[test]
    fn every_layer_names_the_layer() {
        let b = Bounds {
            every_layer: Some(MetricBounds {
                max_abs: Some(1e-3),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(b.violations(&profile(&[1e-4, 5e-4])).is_empty());
        let v = b.violations(&profile(&[1e-4, 2e-3]));
        assert_eq!(v.len(), 1);
        assert!(
            v[0].starts_with("layer 2: max_abs 2.000e-3 > 1.000e-3"),
            "{v:?}"
        );
    }

    #[test]
    fn a_failure_says_the_smallest_bound_that_passes_and_where() {
        let b = Bounds {
            every_layer: Some(MetricBounds {
                max_abs: Some(1e-3),
                ..Default::default()
            }),
            growth_exponent: Some(1.5),
            ..Default::default()
        };
        let p = profile(&[1e-4, 3e-3, 2e-3]);
        let s = b.smallest_passing(&p).unwrap();
        assert!(s.contains("every_layer.max_abs ≥ 3.00e-3 (layer 2)"), "{s}");
        assert!(s.contains("growth_exponent ≥ "), "{s}");
        // Bitwise: the every-layer bounds it would need instead.
        let bw = Bounds {
            bitwise: true,
            ..Default::default()
        };
        let s = bw.smallest_passing(&p).unwrap();
        assert!(
            s.contains("every_layer.mean_abs ≥") && s.contains("every_layer.max_abs ≥ 3.00e-3"),
            "{s}"
        );
        // NaN: no bound passes it.
        let nan = profile(&[1e-4, f64::NAN]);
        assert_eq!(b.smallest_passing(&nan), None);
    }

    #[test]
    fn bitwise_fails_on_any_difference() {
        let b = Bounds {
            bitwise: true,
            ..Default::default()
        };
        assert!(b.violations(&profile(&[0.0, 0.0])).is_empty());
        assert!(!b.violations(&profile(&[0.0, 1e-12])).is_empty());
    }

    #[test]
    fn growth_exponent() {
        let b = Bounds {
            growth_exponent: Some(1.5),
            ..Default::default()
        };
        let quad: Vec<f64> = (1..=10).map(|l| 1e-8 * (l * l) as f64).collect();
        let lin: Vec<f64> = (1..=10).map(|l| 1e-8 * l as f64).collect();
        assert!(b.violations(&profile(&lin)).is_empty());
        assert!(b.violations(&profile(&quad))[0].contains("growth exponent 2.0"));
    }

    #[test]
    fn negative_bound_is_a_problem() {
        let b = Bounds {
            every_layer: Some(MetricBounds {
                max_abs: Some(-1.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(b.problems().len(), 1);
    }
}
