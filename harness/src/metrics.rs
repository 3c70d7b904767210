//! Per-layer drift metrics between two sets of checkpoints.
//!
//! Everything here works on the observed rows only. Non-finite values are
//! found first and reported with their layer; they never enter an average.

use layerdrift_backends::{Checkpoints, DType};
use serde::{Deserialize, Deserializer, Serialize};

/// JSON writes NaN as `null`: read it back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The drift between two runs at one layer, over every observed element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerDrift {
    /// Mean |a − b| — the seed's metric.
    pub mean_abs: f64,
    /// Max |a − b|.
    pub max_abs: f64,
    /// sqrt(mean (a − b)²).
    pub rms: f64,
    /// Max |a − b| / max(|a|, |b|) over elements where that is non-zero.
    pub max_rel: f64,
    /// Max distance in units in the last place of the run's dtype.
    pub max_ulps: u64,
    /// Share of elements that are bitwise equal (0..=1).
    pub equal_share: f64,
    /// Elements where either side is NaN or ±Inf.
    pub non_finite: usize,
}

impl LayerDrift {
    /// Whether every element is bitwise equal and finite.
    pub fn bitwise(&self) -> bool {
        self.non_finite == 0 && self.equal_share == 1.0
    }
}

/// Power-law and linear fits of mean |a − b| over layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Least-squares slope of mean |a − b| against the layer number (1-based).
    #[serde(deserialize_with = "nan_if_null")]
    pub slope: f64,
    /// `p` of the fit `mean_abs ≈ c · layer^p` over layers with non-zero
    /// drift; `None` with fewer than two such layers (e.g. bitwise equal).
    pub exponent: Option<f64>,
}

/// Where two runs first stop being bitwise equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Index of the observed row (position order), 0-based.
    pub row: usize,
    /// Layer, 1-based.
    pub layer: usize,
}

impl std::fmt::Display for Divergence {
    /// `row 0, layer 3`, as snapshots and reviews write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}, layer {}", self.row, self.layer)
    }
}

/// The drift between two runs, layer by layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftProfile {
    /// `layers[l]` is the drift after layer `l + 1`.
    pub layers: Vec<LayerDrift>,
    /// Fits over the layers.
    pub growth: Growth,
    /// The first observed row (in order) and, within it, the first layer
    /// where the runs are not bitwise equal; `None` if they never differ.
    pub first_divergence: Option<Divergence>,
    /// Mean |a − b| per layer at the last observed row alone (for a decoder:
    /// the last decoded position); `None` with a single observed row.
    pub last_row_mean_abs: Option<Vec<f64>>,
    /// A language model's head: the final norm and the logits; `None` for a
    /// model without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadDrift>,
}

/// The drift of a language model's outputs: what an LLM user sees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadDrift {
    /// After the final norm, over every observed element.
    pub final_norm: LayerDrift,
    /// The logits, over every observed element.
    pub logits: LayerDrift,
    /// Max |Δ log-softmax| over the vocabulary and the observed rows (NaN
    /// if either side has a non-finite logit).
    #[serde(deserialize_with = "nan_if_null")]
    pub max_log_softmax: f64,
    /// Share of observed rows whose argmax token agrees (0..=1; a row with a
    /// non-finite logit never agrees).
    pub top1_agreement: f64,
}

impl HeadDrift {
    /// Compares two heads' rows (`vocab` wide logits).
    ///
    /// ```
    /// use layerdrift::metrics::HeadDrift;
    /// use layerdrift_backends::{DType, HeadCheckpoints};
    /// let a = HeadCheckpoints { vocab: 3, final_norm: vec![1.0], logits: vec![0.0, 2.0, 1.0] };
    /// let b = HeadCheckpoints { vocab: 3, final_norm: vec![1.0], logits: vec![0.0, 1.0, 2.0] };
    /// let d = HeadDrift::compare(&a, &b, DType::F32);
    /// assert_eq!(d.top1_agreement, 0.0);
    /// assert_eq!(d.logits.max_abs, 1.0);
    /// ```
    pub fn compare(
        a: &layerdrift_backends::HeadCheckpoints,
        b: &layerdrift_backends::HeadCheckpoints,
        dtype: DType,
    ) -> HeadDrift {
        let v = a.vocab.max(1);
        let rows = a.logits.len() / v;
        let mut max_ls = 0.0f64;
        let mut agree = 0usize;
        for r in 0..rows {
            let (x, y) = (&a.logits[r * v..(r + 1) * v], &b.logits[r * v..(r + 1) * v]);
            let finite = x.iter().chain(y).all(|z| z.is_finite());
            if !finite {
                max_ls = f64::NAN;
                continue;
            }
            let (lx, ly) = (log_softmax(x), log_softmax(y));
            for (p, q) in lx.iter().zip(&ly) {
                max_ls = max_ls.max((p - q).abs());
            }
            if argmax(x) == argmax(y) {
                agree += 1;
            }
        }
        HeadDrift {
            final_norm: layer_drift(&a.final_norm, &b.final_norm, dtype),
            logits: layer_drift(&a.logits, &b.logits, dtype),
            max_log_softmax: max_ls,
            top1_agreement: if rows == 0 {
                1.0
            } else {
                agree as f64 / rows as f64
            },
        }
    }
}

/// `log_softmax` in f64 (max-subtracted).
fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - lse).collect()
}

/// Index of the largest value (the first on ties).
fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

impl DriftProfile {
    /// Compares `a` with `b`, computing ULPs in `dtype`.
    ///
    /// ```
    /// use layerdrift::metrics::DriftProfile;
    /// use layerdrift_backends::{Checkpoints, DType};
    /// let a = Checkpoints { dim: 2, rows: 1, layers: vec![vec![1.0, 2.0], vec![1.0, 4.0]], ..Default::default() };
    /// let b = Checkpoints { dim: 2, rows: 1, layers: vec![vec![1.0, 2.0], vec![1.5, 4.0]], ..Default::default() };
    /// let p = DriftProfile::compare(&a, &b, DType::F32).unwrap();
    /// assert!(p.layers[0].bitwise());
    /// assert_eq!(p.layers[1].max_abs, 0.5);
    /// assert_eq!(p.layers[1].mean_abs, 0.25);
    /// assert_eq!(p.layers[1].equal_share, 0.5);
    /// assert_eq!(p.first_divergence.map(|d| d.layer), Some(2));
    /// ```
    ///
    /// `Err` when the two sets of checkpoints differ in shape (rows, width,
    /// layers, or a layer's length): they are not the same computation.
    pub fn compare(a: &Checkpoints, b: &Checkpoints, dtype: DType) -> Result<DriftProfile, String> {
        let shape = |c: &Checkpoints| (c.rows, c.dim, c.layers.len());
        let consistent = |c: &Checkpoints| {
            c.layers
                .iter()
                .all(|l| Some(l.len()) == c.rows.checked_mul(c.dim))
        };
        let head_shape = |c: &Checkpoints| {
            c.head
                .as_ref()
                .map(|h| (h.vocab, h.logits.len(), h.final_norm.len()))
        };
        if head_shape(a) != head_shape(b) {
            return Err(format!(
                "checkpoints of different heads: {:?} vs {:?} (vocab, logits, final-norm values)",
                head_shape(a),
                head_shape(b)
            ));
        }
        if shape(a) != shape(b) || !consistent(a) || !consistent(b) {
            return Err(format!(
                "checkpoints of different shapes: {} rows × {} wide × {} layers vs {} × {} × {}",
                a.rows,
                a.dim,
                a.layers.len(),
                b.rows,
                b.dim,
                b.layers.len()
            ));
        }
        let layers: Vec<LayerDrift> = a
            .layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| layer_drift(x, y, dtype))
            .collect();
        let mut first_divergence = None;
        'rows: for r in 0..a.rows {
            for l in 0..a.layers.len() {
                let differs = a
                    .row(l, r)
                    .iter()
                    .zip(b.row(l, r))
                    .any(|(x, y)| x.to_bits() != y.to_bits());
                if differs {
                    first_divergence = Some(Divergence {
                        row: r,
                        layer: l + 1,
                    });
                    break 'rows;
                }
            }
        }
        let last_row_mean_abs = (a.rows > 1).then(|| {
            (0..a.layers.len())
                .map(|l| {
                    let (x, y) = (a.row(l, a.rows - 1), b.row(l, a.rows - 1));
                    x.iter().zip(y).map(|(p, q)| (p - q).abs()).sum::<f64>() / a.dim as f64
                })
                .collect()
        });
        let growth = growth(&layers.iter().map(|l| l.mean_abs).collect::<Vec<_>>());
        let head = match (&a.head, &b.head) {
            (Some(x), Some(y)) => Some(HeadDrift::compare(x, y, dtype)),
            _ => None,
        };
        Ok(DriftProfile {
            layers,
            growth,
            first_divergence,
            last_row_mean_abs,
            head,
        })
    }

    /// The first layer (1-based) with a NaN or infinite value, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.non_finite > 0)
            .map(|i| i + 1)
    }
}

/// The drift between two equally long value lists (ULPs in `dtype`).
pub fn layer_drift(a: &[f64], b: &[f64], dtype: DType) -> LayerDrift {
    let mut non_finite = 0;
    let (mut sum, mut sq, mut max_abs, mut max_rel) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut max_ulps, mut equal, mut n) = (0u64, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            non_finite += 1;
            continue;
        }
        n += 1;
        if x.to_bits() == y.to_bits() {
            equal += 1;
            continue;
        }
        let d = (x - y).abs();
        sum += d;
        sq += d * d;
        max_abs = max_abs.max(d);
        let scale = x.abs().max(y.abs());
        if scale > 0.0 {
            max_rel = max_rel.max(d / scale);
        }
        max_ulps = max_ulps.max(dtype.ulps(x, y).unwrap_or(u64::MAX));
    }
    let total = a.len().max(1) as f64;
    let nf = n.max(1) as f64;
    LayerDrift {
        mean_abs: sum / nf,
        max_abs,
        rms: (sq / nf).sqrt(),
        max_rel,
        max_ulps,
        // Non-finite elements never count as equal.
        equal_share: equal as f64 / total,
        non_finite,
    }
}

fn growth(mean_abs: &[f64]) -> Growth {
    let n = mean_abs.len() as f64;
    let xs: Vec<f64> = (1..=mean_abs.len()).map(|l| l as f64).collect();
    let slope = if mean_abs.len() < 2 {
        0.0
    } else {
        let mx = xs.iter().sum::<f64>() / n;
        let my = mean_abs.iter().sum::<f64>() / n;
        let cov: f64 = xs
            .iter()
            .zip(mean_abs)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum();
        let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        cov / var
    };
    let pts: Vec<(f64, f64)> = xs
        .iter()
        .zip(mean_abs)
        .filter(|(_, y)| **y > 0.0 && y.is_finite())
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let exponent = (pts.len() >= 2).then(|| {
        let k = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / k;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / k;
        let cov: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let var: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        cov / var
    });
    Growth { slope, exponent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(layers: Vec<Vec<f64>>) -> Checkpoints {
        Checkpoints {
            dim: layers[0].len(),
            rows: 1,
            layers,
            ops: Vec::new(),
            head: None,
        }
    }

    #[test]
    fn linear_growth_has_exponent_one() {
        let a = ck((1..=20).map(|_| vec![1.0; 4]).collect());
        let b = ck((1..=20).map(|l| vec![1.0 + 1e-7 * l as f64; 4]).collect());
        let p = DriftProfile::compare(&a, &b, DType::F64).unwrap();
        let e = p.growth.exponent.unwrap();
        assert!((e - 1.0).abs() < 1e-3, "{e}");
        assert!((p.growth.slope - 1e-7).abs() < 1e-10);
    }

    #[test]
    fn nan_is_counted_never_equal() {
        let a = ck(vec![vec![f64::NAN, 1.0]]);
        let p = DriftProfile::compare(&a, &a, DType::F32).unwrap();
        assert_eq!(p.layers[0].non_finite, 1);
        assert!(!p.layers[0].bitwise());
        assert_eq!(p.first_non_finite(), Some(1));
    }

    #[test]
    fn ulps_in_run_dtype() {
        let x = 1.0f32;
        let y = f32::from_bits(x.to_bits() + 3);
        let p = DriftProfile::compare(
            &ck(vec![vec![x as f64]]),
            &ck(vec![vec![y as f64]]),
            DType::F32,
        )
        .unwrap();
        assert_eq!(p.layers[0].max_ulps, 3);
    }

    #[test]
    fn bitwise_equal_has_no_exponent() {
        let a = ck(vec![vec![1.0], vec![2.0]]);
        let p = DriftProfile::compare(&a, &a, DType::F32).unwrap();
        assert_eq!(p.growth.exponent, None);
        assert_eq!(p.first_divergence, None);
    }
}
