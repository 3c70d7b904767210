//! The banded check: where this machine's class has no snapshot, a profile
//! is compared with the snapshots other classes recorded for the same
//! scenario and backend, through a tolerance band rather than exactly.
//!
//! Per comparison, variant and layer, against the values of every recorded
//! class:
//! - `mean_abs` and `rms` within [`MEAN_FACTOR`]× of the recorded range,
//!   `max_abs` within [`MAX_FACTOR`]× (the band: `min / F ≤ x ≤ max · F`);
//! - where every recorded class is bitwise equal (0, 100% equal), this one
//!   must be too; where a recorded class drifts, this one may be bitwise
//!   equal (measured: burn-flex is batch-invariant on the seed scenario on
//!   AVX-512 and drifts 5e-7 on AVX2);
//! - the first divergent layer within ±1 of the recorded ones;
//! - `max_rel` and `max_ulps` are not banded: maxima over single elements,
//!   they moved up to 68× between two CPU classes on the same numbers.
//!
//! The factors come from measurement: between the Intel AVX2+FMA and the AMD
//! AVX-512 snapshots of every shipped scenario, mean |Δ| and RMS moved by at
//! most 1.82×, max |Δ| by at most 2.49×. A wrong model moves them by two
//! orders of magnitude (exact vs tanh GELU against the oracle: ~4e-5 vs
//! ~3e-7), and so does a 10× regression.

use std::path::Path;

use super::doc::{DriftSnapshot, SnapComparison};

/// The band of `mean_abs` and `rms`.
pub const MEAN_FACTOR: f64 = 4.0;
/// The band of `max_abs`.
pub const MAX_FACTOR: f64 = 8.0;

/// One recorded snapshot: its class and its comparisons.
#[derive(Debug)]
pub struct Recorded {
    /// The class folder it came from.
    pub class: String,
    /// Its comparisons.
    pub comparisons: Vec<SnapComparison>,
}

/// Reads the comparisons of a `.snap` file (a drift snapshot, or the
/// oracle's, whose comparisons sit under `comparisons:`). An error names the
/// file: a snapshot that does not parse never passes.
pub fn read(path: &Path) -> Result<Vec<SnapComparison>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    // insta's format: a `---` header with metadata, then the document.
    let body = text
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map(|(_, body)| body)
        .ok_or_else(|| {
            format!(
                "{}: not an insta snapshot (no `---` header)",
                path.display()
            )
        })?;
    #[derive(serde::Deserialize)]
    struct Oracle {
        comparisons: DriftSnapshot,
    }
    if let Ok(d) = serde_yaml::from_str::<DriftSnapshot>(body) {
        return Ok(d.comparisons);
    }
    serde_yaml::from_str::<Oracle>(body)
        .map(|o| o.comparisons.comparisons)
        .map_err(|e| format!("{}: not a layerdrift snapshot: {e}", path.display()))
}

/// The numbers of one layer line (`  3: mean max rms rel ulps equal%`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    /// Mean |Δ|.
    pub mean: f64,
    /// Max |Δ|.
    pub max: f64,
    /// RMS of Δ.
    pub rms: f64,
    /// Share of bitwise-equal elements, in percent.
    pub equal: f64,
    /// Whether the layer held NaN or Inf.
    pub non_finite: bool,
}

/// Reads one layer line of a snapshot; `None` when it is not one.
pub fn parse_line(s: &str) -> Option<Line> {
    let (_, rest) = s.split_once(':')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    Some(Line {
        mean: num(0)?,
        max: num(1)?,
        rms: num(2)?,
        equal: f.get(5)?.trim_end_matches('%').parse().ok()?,
        non_finite: rest.contains("NON-FINITE"),
    })
}

fn first_layer(d: &Option<String>) -> Option<Option<usize>> {
    let d = d.as_deref()?;
    if d == "none" {
        return Some(None);
    }
    Some(
        d.rsplit("layer ")
            .next()
            .and_then(|l| l.trim().parse().ok()),
    )
}

/// Checks `current` against every recorded class; `Err` lists what lies
/// outside the band.
pub fn check(current: &[SnapComparison], recorded: &[Recorded]) -> Result<(), String> {
    let mut out = Vec::new();
    for c in current {
        for v in &c.variants {
            if v.skipped.is_some() {
                continue;
            }
            let at = format!("{} [{}]", c.check, v.variant);
            let others: Vec<_> = recorded
                .iter()
                .filter_map(|r| r.comparisons.iter().find(|x| x.check == c.check))
                .filter_map(|x| x.variants.iter().find(|y| y.variant == v.variant))
                .filter(|y| y.skipped.is_none() && !y.layers.is_empty())
                .collect();
            if others.is_empty() {
                out.push(format!(
                    "{at}: no recorded class has it — record it on a class first"
                ));
                continue;
            }
            for (i, line) in v.layers.iter().enumerate() {
                let Some(x) = parse_line(line) else {
                    out.push(format!("{at}: cannot read layer line `{line}`"));
                    continue;
                };
                let rec: Vec<Line> = others
                    .iter()
                    .filter_map(|o| o.layers.get(i).and_then(|l| parse_line(l)))
                    .collect();
                if rec.len() != others.len() {
                    out.push(format!("{at} layer {}: not in every recorded class", i + 1));
                    continue;
                }
                if x.non_finite {
                    out.push(format!("{at} layer {}: NaN or Inf", i + 1));
                    continue;
                }
                let bitwise_everywhere = rec.iter().all(|r| r.equal == 100.0);
                if bitwise_everywhere && x.equal != 100.0 {
                    out.push(format!(
                        "{at} layer {}: every recorded class is bitwise equal here; this one is not ({:.1}% equal, mean {:.2e})",
                        i + 1,
                        x.equal,
                        x.mean
                    ));
                    continue;
                }
                if x.equal == 100.0 {
                    continue;
                }
                for (name, value, pick, factor) in [
                    (
                        "mean_abs",
                        x.mean,
                        (|l: &Line| l.mean) as fn(&Line) -> f64,
                        MEAN_FACTOR,
                    ),
                    ("rms", x.rms, |l: &Line| l.rms, MEAN_FACTOR),
                    ("max_abs", x.max, |l: &Line| l.max, MAX_FACTOR),
                ] {
                    let nonzero: Vec<f64> = rec.iter().map(pick).filter(|y| *y > 0.0).collect();
                    let (Some(lo), Some(hi)) = (
                        nonzero.iter().copied().reduce(f64::min),
                        nonzero.iter().copied().reduce(f64::max),
                    ) else {
                        continue;
                    };
                    if !(value >= lo / factor && value <= hi * factor) {
                        out.push(format!(
                            "{at} layer {}: {name} {value:.2e} outside the band [{:.2e}, {:.2e}] (recorded {lo:.2e}..{hi:.2e}, ×{factor})",
                            i + 1,
                            lo / factor,
                            hi * factor
                        ));
                    }
                }
            }
            // The first divergent layer, where this one and every recorded
            // class diverge.
            let rec: Vec<Option<Option<usize>>> = others
                .iter()
                .map(|o| first_layer(&o.first_divergence))
                .collect();
            if let Some(Some(cur)) = first_layer(&v.first_divergence)
                && rec.iter().all(|r| matches!(r, Some(Some(_))))
            {
                let layers: Vec<usize> = rec.iter().filter_map(|r| r.flatten()).collect();
                let (lo, hi) = (
                    layers.iter().min().copied().unwrap_or(cur),
                    layers.iter().max().copied().unwrap_or(cur),
                );
                if cur + 1 < lo || cur > hi + 1 {
                    out.push(format!(
                        "{at}: first divergence at layer {cur}, recorded {lo}..{hi} (±1 allowed)"
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        let n = out.len();
        out.truncate(12);
        if n > 12 {
            out.push(format!("… and {} more", n - 12));
        }
        Err(out.join("\n"))
    }
}
