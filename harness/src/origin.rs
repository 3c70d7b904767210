//! Where drift is born: the drift of every op (op-level checkpoints) and,
//! per layer, the error a layer adds by itself against the error it
//! inherits (teacher forcing).
//!
//! For a comparison of run A with run B, and B's layers run again on A's
//! inputs (B′, [`layerdrift_backends::Diagnose::forced`]), the error after
//! layer `l` splits exactly:
//!
//! ```text
//! e_l = A_l − B_l = (A_l − B′_l) + (B′_l − B_l) = d_l + p_l
//! ```
//!
//! `d_l`, the *local* error, is what layer `l` adds given the same input;
//! `p_l`, the *inherited* error, is the incoming error `e_{l−1}` carried
//! through B's layer `l`. Their sizes, the layer's gain `|p_l| / |e_{l−1}|`
//! and the cosine between `d_l` and `p_l` say whether depth growth is fresh
//! error carried along (gain ≈ 1, local error at every layer) or one early
//! error amplified (gain > 1, little local error after layer 1).

use layerdrift_backends::{Checkpoints, DType};
use serde::{Deserialize, Serialize};

use crate::metrics::{LayerDrift, layer_drift};

/// The drift of one op at one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpDrift {
    /// Layer, 1-based.
    pub layer: usize,
    /// The op's name ([`layerdrift_backends::ModelSpec::op_names`]).
    pub op: String,
    /// The drift over every observed row's values of this op.
    pub drift: LayerDrift,
}

/// Where two runs first differ, op by op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpDivergence {
    /// Layer, 1-based.
    pub layer: usize,
    /// The first op of that layer (in execution order) whose output differs.
    pub op: String,
    /// The first observed row (0-based) where it differs.
    pub row: usize,
}

impl std::fmt::Display for OpDivergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layer {}, {}, row {}", self.layer, self.op, self.row)
    }
}

/// The drift of every op both runs recorded, layer by layer in execution
/// order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpProfile {
    /// One entry per layer × op (ops only one side computes — the oracle's
    /// written-out attention against a fused kernel — are left out).
    pub ops: Vec<OpDrift>,
    /// The first layer, op and row where the runs are not bitwise equal;
    /// `None` if no op ever differs.
    pub first_divergence: Option<OpDivergence>,
}

impl OpProfile {
    /// Compares the op-level checkpoints of `a` and `b` (ULPs in `dtype`);
    /// `None` when either has none.
    ///
    /// ```
    /// use layerdrift::origin::OpProfile;
    /// use layerdrift_backends::{Checkpoints, DType, OpCheckpoint};
    /// let ck = |x: f64| Checkpoints {
    ///     dim: 1, rows: 1, layers: vec![vec![x]],
    ///     ops: vec![
    ///         OpCheckpoint { layer: 0, op: "norm1", rows: vec![vec![1.0]] },
    ///         OpCheckpoint { layer: 0, op: "linear1", rows: vec![vec![x]] },
    ///     ],
    ///     head: None,
    /// };
    /// let p = OpProfile::compare(&ck(2.0), &ck(2.5), DType::F32).unwrap();
    /// assert!(p.ops[0].drift.bitwise());
    /// assert_eq!(p.ops[1].drift.max_abs, 0.5);
    /// assert_eq!(p.first_divergence.unwrap().to_string(), "layer 1, linear1, row 0");
    /// ```
    pub fn compare(a: &Checkpoints, b: &Checkpoints, dtype: DType) -> Option<OpProfile> {
        if a.ops.is_empty() || b.ops.is_empty() {
            return None;
        }
        let mut ops = Vec::new();
        let mut first_divergence = None;
        for x in &a.ops {
            let Some(y) = b.ops.iter().find(|y| y.layer == x.layer && y.op == x.op) else {
                continue;
            };
            let same_shape = x.rows.len() == y.rows.len()
                && x.rows.iter().zip(&y.rows).all(|(p, q)| p.len() == q.len());
            if !same_shape {
                continue;
            }
            if first_divergence.is_none()
                && let Some(row) = x
                    .rows
                    .iter()
                    .zip(&y.rows)
                    .position(|(p, q)| p.iter().zip(q).any(|(u, v)| u.to_bits() != v.to_bits()))
            {
                first_divergence = Some(OpDivergence {
                    layer: x.layer + 1,
                    op: x.op.to_string(),
                    row,
                });
            }
            let (p, q): (Vec<f64>, Vec<f64>) = (x.rows.concat(), y.rows.concat());
            ops.push(OpDrift {
                layer: x.layer + 1,
                op: x.op.to_string(),
                drift: layer_drift(&p, &q, dtype),
            });
        }
        Some(OpProfile {
            ops,
            first_divergence,
        })
    }

    /// The ops of layer `layer` (1-based).
    pub fn layer(&self, layer: usize) -> impl Iterator<Item = &OpDrift> {
        self.ops.iter().filter(move |o| o.layer == layer)
    }
}

/// One layer's error, split into what it adds and what it inherits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerOrigin {
    /// Layer, 1-based.
    pub layer: usize,
    /// Mean |e_l| = mean |A_l − B_l|: the total error after the layer.
    pub total: f64,
    /// Mean |d_l| = mean |A_l − B′_l|: the error the layer adds given the
    /// same input.
    pub local: f64,
    /// Mean |p_l| = mean |B′_l − B_l|: the incoming error carried through
    /// the layer.
    pub inherited: f64,
    /// `local / total` (`None` when the total is 0).
    pub local_share: Option<f64>,
    /// `inherited_l / total_{l−1}`: how much the layer amplifies the error
    /// it receives (`None` at layer 1, or when nothing came in).
    pub gain: Option<f64>,
    /// cos(d_l, p_l) over the observed values: near 1 the fresh error adds
    /// to the inherited one coherently, near 0 like a random walk (`None`
    /// when either is zero).
    pub coherence: Option<f64>,
}

/// A least-squares fit through the origin, `total_l ≈ c · x_l`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// The coefficient `c`.
    pub c: f64,
    /// R² of the fit (1 = exact); `None` when the totals do not vary.
    pub r2: Option<f64>,
}

/// Local vs inherited error of one comparison, layer by layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalProfile {
    /// Per layer.
    pub layers: Vec<LayerOrigin>,
    /// `total_l ≈ c · Σ_{k≤l} local_k`: every layer's fresh error adding up
    /// coherently (c = 1: exactly their sum).
    pub fit_sum: Fit,
    /// `total_l ≈ c · sqrt(Σ_{k≤l} local_k²)`: fresh errors adding like
    /// independent random vectors.
    pub fit_walk: Fit,
    /// The answer in one sentence, from the numbers above.
    pub verdict: String,
}

fn mean_abs(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().map(|v| v.abs()).sum::<f64>() / x.len() as f64
}

fn fit(total: &[f64], x: &[f64]) -> Fit {
    let sxx: f64 = x.iter().map(|v| v * v).sum();
    let c = if sxx > 0.0 {
        x.iter().zip(total).map(|(a, t)| a * t).sum::<f64>() / sxx
    } else {
        0.0
    };
    let mean = total.iter().sum::<f64>() / total.len().max(1) as f64;
    let sst: f64 = total.iter().map(|t| (t - mean).powi(2)).sum();
    let sse: f64 = total.iter().zip(x).map(|(t, a)| (t - c * a).powi(2)).sum();
    Fit {
        c,
        r2: (sst > 0.0).then(|| 1.0 - sse / sst),
    }
}

impl LocalProfile {
    /// From A, B and B′ (B's layers on A's inputs). `Err` when their shapes
    /// differ or a value is not finite (a NaN never explains anything).
    ///
    /// ```
    /// use layerdrift::origin::LocalProfile;
    /// use layerdrift_backends::Checkpoints;
    /// let ck = |l: Vec<Vec<f64>>| Checkpoints { dim: 1, rows: 1, layers: l, ..Default::default() };
    /// // Each layer adds 1e-6 afresh and carries the earlier error unchanged.
    /// let a = ck(vec![vec![1.0], vec![1.0], vec![1.0]]);
    /// let b = ck(vec![vec![1.0 + 1e-6], vec![1.0 + 2e-6], vec![1.0 + 3e-6]]);
    /// let forced = ck(vec![vec![1.0 + 1e-6], vec![1.0 + 1e-6], vec![1.0 + 1e-6]]);
    /// let p = LocalProfile::compare(&a, &b, &forced).unwrap();
    /// assert!((p.layers[2].gain.unwrap() - 1.0).abs() < 1e-6);
    /// assert!((p.fit_sum.c - 1.0).abs() < 1e-6);
    /// ```
    pub fn compare(
        a: &Checkpoints,
        b: &Checkpoints,
        forced: &Checkpoints,
    ) -> Result<LocalProfile, String> {
        let shape = |c: &Checkpoints| (c.rows, c.dim, c.layers.len());
        if shape(a) != shape(b) || shape(a) != shape(forced) {
            return Err(format!(
                "teacher forcing: checkpoints of different shapes ({:?}, {:?}, forced {:?})",
                shape(a),
                shape(b),
                shape(forced)
            ));
        }
        let mut layers: Vec<LayerOrigin> = Vec::new();
        for l in 0..a.layers.len() {
            let (x, y, f) = (&a.layers[l], &b.layers[l], &forced.layers[l]);
            if x.iter().chain(y).chain(f).any(|v| !v.is_finite()) {
                return Err(format!(
                    "layer {}: a value is NaN or infinite, so local and inherited error are undefined",
                    l + 1
                ));
            }
            let e: Vec<f64> = x.iter().zip(y).map(|(p, q)| p - q).collect();
            let d: Vec<f64> = x.iter().zip(f).map(|(p, q)| p - q).collect();
            let p: Vec<f64> = f.iter().zip(y).map(|(p, q)| p - q).collect();
            let (total, local, inherited) = (mean_abs(&e), mean_abs(&d), mean_abs(&p));
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let (nd, np) = (norm(&d), norm(&p));
            let coherence = (nd > 0.0 && np > 0.0)
                .then(|| d.iter().zip(&p).map(|(u, v)| u * v).sum::<f64>() / (nd * np));
            let gain = layers
                .last()
                .filter(|prev| prev.total > 0.0)
                .map(|prev| inherited / prev.total);
            layers.push(LayerOrigin {
                layer: l + 1,
                total,
                local,
                inherited,
                local_share: (total > 0.0).then(|| local / total),
                gain,
                coherence,
            });
        }
        let total: Vec<f64> = layers.iter().map(|o| o.total).collect();
        let mut sum = 0.0;
        let mut sq = 0.0;
        let (mut sums, mut walks) = (Vec::new(), Vec::new());
        for o in &layers {
            sum += o.local;
            sq += o.local * o.local;
            sums.push(sum);
            walks.push(sq.sqrt());
        }
        let fit_sum = fit(&total, &sums);
        let fit_walk = fit(&total, &walks);
        let verdict = verdict(&layers, fit_sum, fit_walk);
        Ok(LocalProfile {
            layers,
            fit_sum,
            fit_walk,
            verdict,
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The one-sentence answer: fresh error carried along, or early error
/// amplified — with the numbers it rests on.
fn verdict(layers: &[LayerOrigin], fit_sum: Fit, fit_walk: Fit) -> String {
    let Some(last) = layers.last() else {
        return "no layers".into();
    };
    if last.total == 0.0 && layers.iter().all(|o| o.total == 0.0) {
        return "bitwise equal at every layer: nothing to explain".into();
    }
    let first = layers[0].local;
    let later = median(layers[1..].iter().map(|o| o.local).collect()).unwrap_or(0.0);
    let gain = median(layers.iter().filter_map(|o| o.gain).collect());
    let coherence = median(layers.iter().filter_map(|o| o.coherence).collect());
    let g = gain.map_or("–".into(), |g| format!("{g:.2}"));
    let fits = format!(
        "total ≈ {:.2}·Σlocal (R² {}), ≈ {:.2}·√Σlocal² (R² {})",
        fit_sum.c,
        fit_sum.r2.map_or("–".into(), |r| format!("{r:.2}")),
        fit_walk.c,
        fit_walk.r2.map_or("–".into(), |r| format!("{r:.2}")),
    );
    let fresh = layers.len() > 1 && later >= 0.3 * first;
    let what = match (fresh, gain) {
        (true, Some(m)) if m <= 1.25 => format!(
            "fresh error at every layer, carried by the residual stream: every layer adds about as much as layer 1 (median local {} vs {} at layer 1) and passes its input's error on at gain {g}",
            sig(later),
            sig(first)
        ),
        (true, _) => format!(
            "fresh error at every layer, amplified on the way: median local {} vs {} at layer 1, median gain {g}",
            sig(later),
            sig(first)
        ),
        (false, Some(m)) if m > 1.0 => format!(
            "amplification of early error: after layer 1 the layers add little (median local {} vs {} at layer 1) and multiply what they receive by {g}",
            sig(later),
            sig(first)
        ),
        (false, _) => format!(
            "error born early and carried: after layer 1 the layers add little (median local {} vs {} at layer 1), gain {g}",
            sig(later),
            sig(first)
        ),
    };
    let adds = match coherence {
        Some(c) if c > 0.5 => format!("; fresh and inherited error add coherently (cos {c:.2})"),
        Some(c) => format!("; fresh and inherited error add like independent noise (cos {c:.2})"),
        None => String::new(),
    };
    format!("{what}{adds}; {fits}")
}

fn sig(x: f64) -> String {
    format!("{x:.2e}")
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

    /// Two observed values per layer, A all zeros: `b` is B's error and
    /// `forced` B's local error, per layer.
    fn profile(b: &[[f64; 2]], forced: &[[f64; 2]]) -> LocalProfile {
        let a = ck(b.iter().map(|_| vec![0.0, 0.0]).collect());
        let lift = |x: &[[f64; 2]]| ck(x.iter().map(|r| r.to_vec()).collect());
        LocalProfile::compare(&a, &lift(b), &lift(forced)).unwrap()
    }

    #[test]
    fn an_error_made_once_and_doubled_each_layer_is_amplification() {
        // Layer 1 errs by 1e-6; later layers add nothing of their own (B on
        // A's input equals A) and double what they receive.
        let b = [[1e-6, 1e-6], [2e-6, 2e-6], [4e-6, 4e-6], [8e-6, 8e-6]];
        let forced = [[1e-6, 1e-6], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]];
        let p = profile(&b, &forced);
        assert_eq!(p.layers[1].local, 0.0);
        assert!((p.layers[2].gain.unwrap() - 2.0).abs() < 1e-9);
        assert!(
            p.verdict.starts_with("amplification of early error"),
            "{}",
            p.verdict
        );
    }

    #[test]
    fn fresh_independent_errors_carried_unchanged_are_a_random_walk() {
        // Each layer adds a fresh error orthogonal to what it carries
        // (cos 0) and passes the incoming error on unchanged (gain 1):
        // e_l = e_{l-1} + d_l with d_l ⟂ e_{l-1}.
        let b = [[1e-6, 0.0], [1e-6, 1e-6], [2e-6, 0.0], [2e-6, 2e-6]];
        let forced = [[1e-6, 0.0], [0.0, 1e-6], [1e-6, -1e-6], [0.0, 2e-6]];
        let p = profile(&b, &forced);
        for l in &p.layers[1..] {
            assert_eq!(l.coherence, Some(0.0), "layer {}", l.layer);
            assert!((l.gain.unwrap() - 1.0).abs() < 1e-12, "layer {}", l.layer);
        }
        assert!(
            p.verdict.starts_with("fresh error at every layer, carried"),
            "{}",
            p.verdict
        );
        assert!(p.verdict.contains("independent noise"), "{}", p.verdict);
    }

    #[test]
    fn equal_runs_have_nothing_to_explain_and_non_finite_values_are_refused() {
        let same = [[0.0, 0.0], [0.0, 0.0]];
        let p = profile(&same, &same);
        assert!(p.layers.iter().all(|l| l.total == 0.0 && l.local == 0.0));
        assert!(p.verdict.contains("nothing to explain"));
        let a = ck(vec![vec![1.0], vec![1.0]]);
        let nan = ck(vec![vec![1.0], vec![f64::NAN]]);
        let e = LocalProfile::compare(&a, &nan, &a).unwrap_err();
        assert!(e.contains("layer 2") && e.contains("NaN"), "{e}");
        let short = ck(vec![vec![1.0]]);
        assert!(LocalProfile::compare(&a, &short, &a).is_err());
    }
}
