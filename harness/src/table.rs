//! Text tables of outcomes, for the CLI.

use std::fmt::Write as _;

use crate::engine::Outcome;
use crate::metric::Metric;

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
    s
}
