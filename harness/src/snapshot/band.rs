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

use super::doc::{DriftSnapshot, SnapComparison, SnapVariant};
use crate::metric::Metric;

/// The banded metrics and their factors.
const BANDED: [(Metric, f64); 3] = [
    (Metric::MeanAbs, MEAN_FACTOR),
    (Metric::Rms, MEAN_FACTOR),
    (Metric::MaxAbs, MAX_FACTOR),
];

/// The band of `mean_abs` and `rms`.
pub const MEAN_FACTOR: f64 = 4.0;
/// The band of `max_abs`.
pub const MAX_FACTOR: f64 = 8.0;

/// One recorded snapshot: its class, its columns and its comparisons.
#[derive(Debug)]
pub struct Recorded {
    /// The class folder it came from.
    pub class: String,
    /// Its layer lines' columns.
    pub columns: Columns,
    /// Its comparisons.
    pub comparisons: Vec<SnapComparison>,
}

impl Recorded {
    /// Reads the snapshot at `path` recorded by class `class`.
    pub fn read(class: &str, path: &Path) -> Result<Recorded, String> {
        let (columns, comparisons) = read(path)?;
        Ok(Recorded {
            class: class.into(),
            columns,
            comparisons,
        })
    }
}

/// Reads the columns and comparisons of a `.snap` file (a drift snapshot,
/// or the oracle's, whose comparisons sit under `comparisons:`). An error
/// names the file: a snapshot that does not parse never passes.
pub fn read(path: &Path) -> Result<(Columns, Vec<SnapComparison>), String> {
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
    let doc = match serde_yaml::from_str::<DriftSnapshot>(body) {
        Ok(d) => d,
        Err(_) => serde_yaml::from_str::<Oracle>(body)
            .map(|o| o.comparisons)
            .map_err(|e| format!("{}: not a layerdrift snapshot: {e}", path.display()))?,
    };
    let columns =
        Columns::parse(&doc.columns).map_err(|e| format!("{}: `columns:` {e}", path.display()))?;
    Ok((columns, doc.comparisons))
}

/// What each field of a snapshot's layer lines holds, read from its
/// `columns:` header (`layer: mean|Δ| max|Δ| …`): a metric, or `None` for a
/// column this version does not know (kept so later fields stay aligned).
#[derive(Clone, Debug, PartialEq)]
pub struct Columns(Vec<Option<Metric>>);

impl Columns {
    /// Parses a `columns:` header.
    pub fn parse(header: &str) -> Result<Columns, String> {
        let rest = header
            .strip_prefix("layer:")
            .ok_or_else(|| format!("`{header}` does not start with `layer:`"))?;
        let cols: Vec<Option<Metric>> = rest.split_whitespace().map(Metric::from_column).collect();
        if cols.iter().all(Option::is_none) {
            return Err(format!("`{header}` names no metric layerdrift knows"));
        }
        Ok(Columns(cols))
    }

    /// The columns this version writes.
    pub fn current() -> Columns {
        Columns(Metric::ALL.map(Some).to_vec())
    }
}

/// The numbers of one layer line (`  3: mean max rms rel ulps equal%`), by
/// metric; a metric the snapshot's columns lack is `None`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    values: [Option<f64>; Metric::ALL.len()],
    /// Whether the layer held NaN or Inf.
    pub non_finite: bool,
}

impl Line {
    /// A line of the given values.
    pub fn new(values: &[(Metric, f64)], non_finite: bool) -> Line {
        let mut v = [None; Metric::ALL.len()];
        for (m, x) in values {
            v[m.index()] = Some(*x);
        }
        Line {
            values: v,
            non_finite,
        }
    }

    /// Metric `m`'s value, if the line has it.
    pub fn get(&self, m: Metric) -> Option<f64> {
        self.values[m.index()]
    }

    /// Mean |Δ| (NaN where absent, so it never compares equal).
    pub fn mean(&self) -> f64 {
        self.get(Metric::MeanAbs).unwrap_or(f64::NAN)
    }

    /// Max |Δ| (NaN where absent).
    pub fn max(&self) -> f64 {
        self.get(Metric::MaxAbs).unwrap_or(f64::NAN)
    }

    /// RMS of Δ (NaN where absent).
    pub fn rms(&self) -> f64 {
        self.get(Metric::Rms).unwrap_or(f64::NAN)
    }

    /// The bitwise-equal share, 0–1 (NaN where absent).
    pub fn equal(&self) -> f64 {
        self.get(Metric::Equal).unwrap_or(f64::NAN)
    }
}

/// Reads one layer line of a snapshot whose header is `columns`; `None`
/// when it is not one (too few fields, or a field that is not a number).
pub fn parse_line(s: &str, columns: &Columns) -> Option<Line> {
    let (_, rest) = s.split_once(':')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < columns.0.len() {
        return None;
    }
    let mut values = Vec::new();
    for (col, field) in columns.0.iter().zip(&fields) {
        if let Some(m) = col {
            values.push((*m, m.parse_value(field)?));
        }
    }
    let non_finite = fields[columns.0.len()..].first() == Some(&"NON-FINITE");
    Some(Line::new(&values, non_finite))
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
    let current_columns = Columns::current();
    let mut out = Vec::new();
    for c in current {
        for v in &c.variants {
            if v.skipped.is_some() {
                continue;
            }
            let at = format!("{} [{}]", c.check, v.variant);
            let others: Vec<(&Columns, &SnapVariant)> = recorded
                .iter()
                .filter_map(|r| {
                    let x = r.comparisons.iter().find(|x| x.check == c.check)?;
                    let y = x.variants.iter().find(|y| y.variant == v.variant)?;
                    (y.skipped.is_none() && !y.layers.is_empty()).then_some((&r.columns, y))
                })
                .collect();
            if others.is_empty() {
                out.push(format!(
                    "{at}: no recorded class has it — record it on a class first"
                ));
                continue;
            }
            for (i, line) in v.layers.iter().enumerate() {
                let Some(x) = parse_line(line, &current_columns) else {
                    out.push(format!("{at}: cannot read layer line `{line}`"));
                    continue;
                };
                let rec: Vec<Line> = others
                    .iter()
                    .filter_map(|(cols, o)| o.layers.get(i).and_then(|l| parse_line(l, cols)))
                    .collect();
                if rec.len() != others.len() {
                    out.push(format!("{at} layer {}: not in every recorded class", i + 1));
                    continue;
                }
                if x.non_finite {
                    out.push(format!("{at} layer {}: NaN or Inf", i + 1));
                    continue;
                }
                let bitwise = |l: &Line| l.get(Metric::Equal) == Some(1.0);
                let bitwise_everywhere = rec.iter().all(bitwise);
                if bitwise_everywhere && !bitwise(&x) {
                    out.push(format!(
                        "{at} layer {}: every recorded class is bitwise equal here; this one is not ({:.1}% equal, mean {:.2e})",
                        i + 1,
                        100.0 * x.equal(),
                        x.mean()
                    ));
                    continue;
                }
                if bitwise(&x) {
                    continue;
                }
                for (metric, factor) in BANDED {
                    let Some(value) = x.get(metric) else {
                        continue;
                    };
                    // A class whose snapshot lacks the column does not band it.
                    let nonzero: Vec<f64> = rec
                        .iter()
                        .filter_map(|l| l.get(metric))
                        .filter(|y| *y > 0.0)
                        .collect();
                    let (Some(lo), Some(hi)) = (
                        nonzero.iter().copied().reduce(f64::min),
                        nonzero.iter().copied().reduce(f64::max),
                    ) else {
                        continue;
                    };
                    if !(value >= lo / factor && value <= hi * factor) {
                        out.push(format!(
                            "{at} layer {}: {metric} {value:.2e} outside the band [{:.2e}, {:.2e}] (recorded {lo:.2e}..{hi:.2e}, ×{factor})",
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
                .map(|(_, o)| first_layer(&o.first_divergence))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::doc::layer_columns;

    const LINE: &str = "  3: 4.21e-7 3.05e-6 5.00e-7 1.20e-2 310 12.5%";

    fn recorded(columns: &str, line: &str) -> Recorded {
        let yaml = format!(
            "scenario: s\nbackend: b\ncolumns: \"{columns}\"\ncomparisons:\n  - check: c\n    a: x/full\n    b: x/rows\n    variants:\n      - variant: v\n        first_divergence: \"row 0, layer 1\"\n        layers:\n          - \"{line}\"\n"
        );
        let doc: DriftSnapshot = serde_yaml::from_str(&yaml).unwrap();
        Recorded {
            class: "k".into(),
            columns: Columns::parse(&doc.columns).unwrap(),
            comparisons: doc.comparisons,
        }
    }

    #[test]
    fn the_header_is_the_metric_table() {
        // Every shipped snapshot carries this header: changing it is a
        // change of format, made on purpose.
        assert_eq!(
            layer_columns(),
            "layer: mean|Δ| max|Δ| rms|Δ| max_rel max_ulps equal%"
        );
        assert_eq!(
            Columns::parse(&layer_columns()).unwrap(),
            Columns::current()
        );
        let l = parse_line(LINE, &Columns::current()).unwrap();
        assert_eq!(l.mean(), 4.21e-7);
        assert_eq!(l.get(Metric::MaxUlps), Some(310.0));
        assert_eq!(l.equal(), 0.125);
        assert!(!l.non_finite);
        let nf = format!("{LINE} NON-FINITE 4");
        assert!(parse_line(&nf, &Columns::current()).unwrap().non_finite);
    }

    #[test]
    fn lines_are_read_by_their_header_reordered_or_lacking_a_column() {
        // Reordered: rms first.
        let cols = Columns::parse("layer: rms|Δ| mean|Δ| max|Δ| max_rel max_ulps equal%").unwrap();
        let l = parse_line("  3: 5.00e-7 4.21e-7 3.05e-6 1.20e-2 310 12.5%", &cols).unwrap();
        assert_eq!((l.mean(), l.rms(), l.max()), (4.21e-7, 5.00e-7, 3.05e-6));
        // An older snapshot without `rms|Δ|`: the metric is absent, the
        // others are where the header says.
        let cols = Columns::parse("layer: mean|Δ| max|Δ| max_rel max_ulps equal%").unwrap();
        let l = parse_line("  3: 4.21e-7 3.05e-6 1.20e-2 310 12.5%", &cols).unwrap();
        assert_eq!(
            (l.mean(), l.get(Metric::Rms), l.equal()),
            (4.21e-7, None, 0.125)
        );
        // A column this version does not know is skipped, not misread.
        let cols =
            Columns::parse("layer: mean|Δ| future_metric max|Δ| rms|Δ| max_rel max_ulps equal%")
                .unwrap();
        let l = parse_line("  3: 4.21e-7 9.99 3.05e-6 5.00e-7 1.20e-2 310 12.5%", &cols).unwrap();
        assert_eq!((l.max(), l.rms()), (3.05e-6, 5.00e-7));
        // Too few fields for the header, or a header naming nothing known.
        assert_eq!(
            parse_line("  3: 4.21e-7 3.05e-6", &Columns::current()),
            None
        );
        assert!(Columns::parse("layer: a b c").is_err());
        assert!(Columns::parse("mean|Δ|").is_err());
    }

    #[test]
    fn the_band_compares_by_metric_across_layouts() {
        let current = recorded(&layer_columns(), LINE).comparisons;
        // The same numbers under a reordered header: inside the band.
        let reordered = recorded(
            "layer: rms|Δ| mean|Δ| max|Δ| max_rel max_ulps equal%",
            "  3: 5.00e-7 4.21e-7 3.05e-6 1.20e-2 310 12.5%",
        );
        check(&current, &[reordered]).unwrap();
        // Read by position, that file would put rms where mean is: a 10x
        // larger rms in the same place is outside the band by metric.
        let far = recorded(
            "layer: rms|Δ| mean|Δ| max|Δ| max_rel max_ulps equal%",
            "  3: 5.00e-6 4.21e-7 3.05e-6 1.20e-2 310 12.5%",
        );
        let e = check(&current, &[far]).unwrap_err();
        assert!(e.contains("rms 5.00e-7 outside the band"), "{e}");
        // A class lacking rms bands mean and max only.
        let old = recorded(
            "layer: mean|Δ| max|Δ| max_rel max_ulps equal%",
            "  3: 4.21e-7 3.05e-6 1.20e-2 310 12.5%",
        );
        check(&current, &[old]).unwrap();
    }
}
