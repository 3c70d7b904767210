//! Text tables of outcomes, for the CLI.

use std::fmt::Write as _;

use crate::engine::Outcome;
use crate::metric::{Metric, sig3};
use crate::origin::{LocalProfile, OpProfile};

/// A per-layer table of one comparison: a column per variant.
pub fn table(o: &Outcome, metric: Metric) -> String {
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
            let cell = metric.format(d);
            let _ = write!(s, "  {cell:>width$}");
        }
        s.push('\n');
    }
    // A language model's head: the final norm and the logits.
    let heads: Option<Vec<&crate::metrics::HeadDrift>> = cols
        .iter()
        .map(|v| v.profile.as_ref().and_then(|p| p.head.as_ref()))
        .collect();
    type Pick = fn(&crate::metrics::HeadDrift) -> &crate::metrics::LayerDrift;
    let rows: [(&str, Pick); 2] = [("norm", |h| &h.final_norm), ("logits", |h| &h.logits)];
    for (label, pick) in rows.iter().filter(|_| heads.is_some()) {
        let _ = write!(s, "  {label:>5}");
        for h in heads.iter().flatten() {
            let cell = metric.format(pick(h));
            let _ = write!(s, "  {cell:>width$}");
        }
        s.push('\n');
    }
    s
}

/// One line per op of `layer` (1-based) of an op profile: `name mean|Δ|`,
/// only the ops `wants` keeps.
///
/// ```
/// use layerdrift::origin::OpProfile;
/// use layerdrift_backends::{Checkpoints, DType, OpCheckpoint};
/// let ck = |x: f64| Checkpoints {
///     dim: 1, rows: 1, layers: vec![vec![x]],
///     ops: vec![OpCheckpoint { layer: 0, op: "linear1", rows: vec![vec![x]] }],
///     head: None,
/// };
/// let p = OpProfile::compare(&ck(1.0), &ck(1.5), DType::F32).unwrap();
/// assert_eq!(layerdrift::table::op_line(&p, 1, &|_| true), "linear1 5.00e-1");
/// ```
pub fn op_line(p: &OpProfile, layer: usize, wants: &dyn Fn(&str) -> bool) -> String {
    p.layer(layer)
        .filter(|d| wants(&d.op))
        .map(|d| {
            let v = if d.drift.non_finite > 0 {
                "NaN/Inf".to_string()
            } else {
                sig3(d.drift.mean_abs)
            };
            format!("{} {v}", d.op)
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Local vs inherited error per layer: total, local, inherited, the local
/// share, the layer's gain and cos(local, inherited), then the fits.
pub fn local_table(p: &LocalProfile) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:>5}  {:>9}  {:>9}  {:>9}  {:>11}  {:>6}  {:>6}",
        "layer", "total", "local", "inherited", "local/total", "gain", "cos"
    );
    let opt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
    for o in &p.layers {
        let _ = writeln!(
            s,
            "  {:>5}  {:>9}  {:>9}  {:>9}  {:>11}  {:>6}  {:>6}",
            o.layer,
            sig3(o.total),
            sig3(o.local),
            sig3(o.inherited),
            opt(o.local_share),
            opt(o.gain),
            opt(o.coherence)
        );
    }
    s
}
