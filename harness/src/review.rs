//! `layerdrift review`: what moved between two recordings of the same
//! profiles — the pending `.snap.new` files against their `.snap`, two JSON
//! results of `layerdrift run --json`, or two baselines of
//! `layerdrift run --save-baseline`.
//!
//! For each snapshot it says one of: unchanged; moved by at most the
//! tolerance at every layer; or moved, with the layers and metrics that moved
//! most, how the first divergence changed and whether the distance to the
//! f64 oracle grew or shrank. It writes an overlay SVG per comparison (old
//! dashed, new solid). It only reads: accepting or rejecting stays with
//! `cargo insta review`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layerdrift_backends::DType;

use crate::baseline::{self, Baseline};
use crate::metric::{Metric, sig3};
use crate::metrics::DriftProfile;
use crate::plot::{Panel, Series, svg};
use crate::snapshot::band::{self, Line};

/// One comparison on one variant, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Check name, e.g. `full-vs-rows`.
    pub check: String,
    /// Side `b`, e.g. `reference-cpu/full` (tells a vs-oracle comparison).
    pub b: String,
    /// Variant label.
    pub variant: String,
    /// Per layer: mean, max, rms |Δ| and the equal share.
    pub layers: Vec<Line>,
    /// `row R, layer L` or `none`.
    pub first_divergence: String,
}

impl Profile {
    fn key(&self) -> String {
        format!("{} [{}]", self.check, self.variant)
    }

    fn is_vs_oracle(&self) -> bool {
        self.b.starts_with("reference-")
    }
}

/// The profiles in a `.snap`/`.snap.new` file or a `--json` result.
pub fn load_profiles(path: &Path) -> Result<Vec<Profile>, String> {
    let name = path.to_string_lossy();
    if name.ends_with(".json") {
        return load_json(path);
    }
    let mut out = Vec::new();
    let (columns, comparisons) = band::read(path)?;
    for c in comparisons {
        for v in c.variants {
            if v.skipped.is_some() {
                continue;
            }
            let layers = v
                .layers
                .iter()
                .map(|l| {
                    band::parse_line(l, &columns)
                        .ok_or_else(|| format!("{}: cannot read layer line `{l}`", path.display()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Profile {
                check: c.check.clone(),
                b: c.b.clone(),
                variant: v.variant,
                layers,
                first_divergence: v.first_divergence.unwrap_or_else(|| "none".into()),
            });
        }
    }
    Ok(out)
}

fn load_json(path: &Path) -> Result<Vec<Profile>, String> {
    let doc = crate::engine::JsonReport::read(path)?;
    let mut out = Vec::new();
    for o in doc.outcomes {
        let c = &o.comparison;
        // Two backends' comparisons share a check name: key by side a too.
        let check = format!("{} ({})", c.name, c.a);
        for v in o.variants {
            let Some(p) = v.profile else { continue };
            let layers = p
                .layers
                .iter()
                .map(|l| Line::new(&Metric::ALL.map(|m| (m, m.value(l))), l.non_finite > 0))
                .collect();
            out.push(Profile {
                check: check.clone(),
                b: c.b.to_string(),
                variant: v.variant,
                layers,
                first_divergence: p.first_divergence.map_or("none".into(), |d| d.to_string()),
            });
        }
    }
    Ok(out)
}

/// How one snapshot (or result) moved.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every number as before.
    Unchanged,
    /// Moved, but by at most the tolerance at every layer; the largest move.
    Within(f64),
    /// Moved by more than the tolerance somewhere.
    Moved,
    /// No number moved, but comparisons were added or removed.
    Reshaped,
    /// Nothing recorded before (a new snapshot).
    New,
}

/// The review of one snapshot or result pair.
#[derive(Clone, Debug)]
pub struct Review {
    /// What was reviewed (the snapshot's path).
    pub title: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// The details, one line each.
    pub details: Vec<String>,
    /// `(file stem, svg)` overlays, one per comparison.
    pub overlays: Vec<(String, String)>,
}

impl Review {
    /// The verdict in one line.
    pub fn headline(&self, tolerance: f64) -> String {
        match &self.verdict {
            Verdict::Unchanged => "unchanged".into(),
            Verdict::Within(x) => format!(
                "moved ≤ {:.0}% at every layer (largest {:.2}%)",
                100.0 * tolerance,
                100.0 * x
            ),
            Verdict::Moved => "MOVED".into(),
            Verdict::Reshaped => {
                "numbers unchanged; comparisons added or removed (see below)".into()
            }
            Verdict::New => "new (nothing recorded before)".into(),
        }
    }
}

/// Relative move of `new` from `old`: 0 when equal, infinite from zero.
fn rel(old: f64, new: f64) -> f64 {
    if old == new || (old.is_nan() && new.is_nan()) {
        0.0
    } else if old == 0.0 {
        f64::INFINITY
    } else {
        (new - old).abs() / old.abs()
    }
}

/// The signed change from `old` to `new`, in percent.
fn pct(old: f64, new: f64) -> String {
    if old == 0.0 && new != 0.0 {
        "from 0".into()
    } else if old == new || old == 0.0 {
        "±0%".into()
    } else {
        format!("{:+.1}%", 100.0 * (new - old) / old.abs())
    }
}

/// Reviews `new` against `old` profiles. `tolerance` is the relative move
/// (0.05 = 5%) that still counts as "moved ≤ x%".
pub fn review(title: &str, old: &[Profile], new: &[Profile], tolerance: f64) -> Review {
    let mut details = Vec::new();
    let old_by: BTreeMap<String, &Profile> = old.iter().map(|p| (p.key(), p)).collect();
    let new_by: BTreeMap<String, &Profile> = new.iter().map(|p| (p.key(), p)).collect();
    // (relative move, description) of every metric at every layer that moved.
    let mut moves: Vec<(f64, String)> = Vec::new();
    let mut structural = false;
    for (k, n) in &new_by {
        let Some(o) = old_by.get(k) else {
            details.push(format!("{k}: new comparison"));
            structural = true;
            continue;
        };
        if o.layers.len() != n.layers.len() {
            details.push(format!(
                "{k}: {} layers before, {} now",
                o.layers.len(),
                n.layers.len()
            ));
            structural = true;
            continue;
        }
        for (i, (a, b)) in o.layers.iter().zip(&n.layers).enumerate() {
            for (metric, x, y) in [
                ("mean|Δ|", a.mean(), b.mean()),
                ("max|Δ|", a.max(), b.max()),
                ("rms|Δ|", a.rms(), b.rms()),
            ] {
                let r = rel(x, y);
                if r > 0.0 {
                    moves.push((
                        r,
                        format!(
                            "{k} layer {}: {metric} {} → {} ({})",
                            i + 1,
                            sig3(x),
                            sig3(y),
                            pct(x, y)
                        ),
                    ));
                }
            }
            if a.equal() != b.equal() {
                // From or to bitwise equality is the largest move there is.
                let r = if a.equal() == 1.0 || b.equal() == 1.0 {
                    f64::INFINITY
                } else {
                    rel(a.equal(), b.equal())
                };
                moves.push((
                    r,
                    format!(
                        "{k} layer {}: bitwise-equal share {:.1}% → {:.1}%",
                        i + 1,
                        100.0 * a.equal(),
                        100.0 * b.equal()
                    ),
                ));
            }
            if a.non_finite != b.non_finite {
                moves.push((
                    f64::INFINITY,
                    format!(
                        "{k} layer {}: NaN/Inf {}",
                        i + 1,
                        if b.non_finite { "appeared" } else { "gone" }
                    ),
                ));
            }
        }
        if o.first_divergence != n.first_divergence {
            details.push(format!(
                "{k}: first divergence {} → {}",
                o.first_divergence, n.first_divergence
            ));
        }
        if n.is_vs_oracle()
            && let (Some(a), Some(b)) = (o.layers.last(), n.layers.last())
            && a.mean() != b.mean()
        {
            let word = if b.mean() < a.mean() {
                "nearer"
            } else {
                "further from"
            };
            details.push(format!(
                "{k}: {word} the oracle at the last layer (mean|Δ| {} → {}, {})",
                sig3(a.mean()),
                sig3(b.mean()),
                pct(a.mean(), b.mean())
            ));
        }
    }
    for k in old_by.keys().filter(|k| !new_by.contains_key(*k)) {
        details.push(format!("{k}: gone"));
        structural = true;
    }
    moves.sort_by(|a, b| b.0.total_cmp(&a.0));
    let largest = moves.first().map_or(0.0, |m| m.0);
    let diverged = details.iter().any(|d| d.contains("first divergence"));
    let verdict = if moves.is_empty() && !diverged {
        if structural {
            Verdict::Reshaped
        } else {
            Verdict::Unchanged
        }
    } else if largest <= tolerance && !diverged {
        Verdict::Within(largest)
    } else {
        Verdict::Moved
    };
    if !moves.is_empty() {
        // The largest moves, at most two per comparison, so one comparison
        // that moved everywhere does not hide the others.
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        let mut top = Vec::new();
        for (_, m) in &moves {
            let key = m.split(" layer ").next().unwrap_or(m);
            let n = shown.entry(key).or_default();
            if *n < 2 && top.len() < 8 {
                *n += 1;
                top.push(format!("  {m}"));
            }
        }
        details.push(format!("{} number(s) moved; the largest:", moves.len()));
        details.extend(top);
    }
    Review {
        title: title.to_string(),
        verdict,
        details,
        overlays: overlays(title, old, new),
    }
}

/// One SVG per check: a panel per variant, mean |Δ| per layer, old dashed
/// and new solid in the same colour.
fn overlays(title: &str, old: &[Profile], new: &[Profile]) -> Vec<(String, String)> {
    let mut checks: Vec<&str> = new.iter().map(|p| p.check.as_str()).collect();
    checks.dedup();
    let stem = Path::new(title)
        .file_name()
        .map(|f| {
            f.to_string_lossy()
                .replace(".snap.new", "")
                .replace(".snap", "")
        })
        .unwrap_or_default()
        .replace(".json", "");
    let mut out = Vec::new();
    for check in checks {
        let panels: Vec<Panel> = new
            .iter()
            .filter(|p| p.check == check)
            .map(|n| {
                let mut series = Vec::new();
                if let Some(o) = old.iter().find(|o| o.key() == n.key()) {
                    series.push(Series {
                        dashed: true,
                        color: Some(0),
                        ..Series::new("old", o.layers.iter().map(Line::mean).collect())
                    });
                }
                series.push(Series {
                    color: Some(0),
                    ..Series::new("new", n.layers.iter().map(Line::mean).collect())
                });
                Panel {
                    title: n.variant.clone(),
                    series,
                }
            })
            .collect();
        let file = format!("{stem}__{}", check.replace(['/', ' ', '(', ')'], "_"));
        let head = format!("{stem}: {check} — mean |Δ| per layer, old (dashed) vs new");
        out.push((
            file,
            svg(&head, "mean |Δ| of the observed rows", &panels, true),
        ));
    }
    out
}

/// Every pending `.snap.new` under `dir`, sorted.
pub fn pending(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".snap.new") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reviews a pending snapshot against the `.snap` beside it.
pub fn review_pending(new: &Path, tolerance: f64) -> Result<Review, String> {
    let old = PathBuf::from(new.to_string_lossy().trim_end_matches(".new"));
    let title = new.display().to_string();
    let n = load_profiles(new)?;
    if !old.exists() {
        return Ok(Review {
            title,
            verdict: Verdict::New,
            details: Vec::new(),
            overlays: overlays(&new.display().to_string(), &[], &n),
        });
    }
    Ok(review(&title, &load_profiles(&old)?, &n, tolerance))
}

/// Reviews two baselines: per run present in both, how far the outputs
/// moved (the drift between old and new checkpoints, layer by layer), with
/// the versions of each side.
pub fn review_baselines(old: &Baseline, new: &Baseline) -> Result<Review, String> {
    if old.scenario != new.scenario {
        return Err(format!(
            "{} is a baseline of `{}`, {} of `{}`: they hold different computations",
            old.path.display(),
            old.scenario,
            new.path.display(),
            new.scenario
        ));
    }
    let mut details = Vec::new();
    let mut moved = false;
    let mut panels: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for n in &new.entries {
        let Some(o) = old.entries.iter().find(|o| {
            (&o.info.backend, &o.info.strategy, &o.info.variant)
                == (&n.info.backend, &n.info.strategy, &n.info.variant)
        }) else {
            continue;
        };
        let key = n.info.tensor_name();
        if let (Some(a), Some(b)) = (
            old.variants.iter().find(|v| v.label == n.info.variant),
            new.variants.iter().find(|v| v.label == n.info.variant),
        ) && a != b
        {
            return Err(format!(
                "{key}: the two baselines computed different things (model, shapes, rows or data differ): {} vs {}",
                old.path.display(),
                new.path.display()
            ));
        }
        let dtype = DType::parse(&n.info.dtype).unwrap_or(DType::F64);
        let p = DriftProfile::compare(&o.checkpoints, &n.checkpoints, dtype)
            .map_err(|e| format!("{key}: {e}"))?;
        let versions = if o.info.version == n.info.version {
            o.info.version.clone()
        } else {
            format!("{} → {}", o.info.version, n.info.version)
        };
        match p.first_divergence {
            None => details.push(format!("{key} ({versions}): bitwise equal at every layer")),
            Some(d) => {
                moved = true;
                let last = p.layers.last().expect("a divergence has a layer");
                details.push(format!(
                    "{key} ({versions}): differs from layer {} (row {}); last layer mean|Δ| {} max|Δ| {}, {:.1}% equal",
                    d.layer,
                    d.row,
                    sig3(last.mean_abs),
                    sig3(last.max_abs),
                    100.0 * last.equal_share
                ));
            }
        }
        panels
            .entry(format!("{} {}", n.info.strategy, n.info.variant))
            .or_default()
            .push(Series::new(
                n.info.backend.clone(),
                p.layers.iter().map(|l| l.mean_abs).collect(),
            ));
    }
    if details.is_empty() {
        return Err(format!(
            "{} and {} have no run in common (old: {}; new: {})",
            old.path.display(),
            new.path.display(),
            old.runs().join(", "),
            new.runs().join(", ")
        ));
    }
    let panels: Vec<Panel> = panels
        .into_iter()
        .map(|(title, series)| Panel { title, series })
        .collect();
    let head = format!(
        "{}: old vs new outputs — mean |Δ| of the observed rows per layer",
        new.scenario
    );
    Ok(Review {
        title: format!("{} → {}", old.path.display(), new.path.display()),
        verdict: if moved {
            Verdict::Moved
        } else {
            Verdict::Unchanged
        },
        details,
        overlays: vec![(
            format!("{}__baseline-vs-baseline", new.scenario),
            svg(&head, "mean |old − new|", &panels, true),
        )],
    })
}

/// Reviews two files of the same kind: snapshots, JSON results or
/// baselines (by extension).
pub fn review_files(old: &Path, new: &Path, tolerance: f64) -> Result<Review, String> {
    let is_baseline = |p: &Path| p.extension().is_some_and(|e| e == "safetensors");
    match (is_baseline(old), is_baseline(new)) {
        (true, true) => review_baselines(&baseline::read(old)?, &baseline::read(new)?),
        (false, false) => Ok(review(
            &format!("{} → {}", old.display(), new.display()),
            &load_profiles(old)?,
            &load_profiles(new)?,
            tolerance,
        )),
        _ => Err(format!(
            "{} and {}: review compares two files of one kind (two snapshots, two JSON results or two .safetensors baselines)",
            old.display(),
            new.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(lines: &[&str], first: &str) -> String {
        let mut s = format!(
            "---\nsource: x\n---\nscenario: t\nbackend: tch-cpu\ncolumns: \"{}\"\ncomparisons:\n",
            crate::snapshot::doc::layer_columns()
        );
        for (check, b) in [
            ("full-vs-rows", "tch-cpu/rows"),
            ("full-vs-oracle", "reference-cpu/full"),
        ] {
            s.push_str(&format!(
                "  - check: {check}\n    a: tch-cpu/full\n    b: {b}\n    variants:\n      - variant: base\n        first_divergence: \"{first}\"\n        growth_exponent: \"1.00\"\n        layers:\n"
            ));
            for l in lines {
                s.push_str(&format!("          - \"{l}\"\n"));
            }
        }
        s
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("layerdrift-review-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        let p = d.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn unchanged_within_and_moved_are_told_apart() {
        let base = [
            "  1: 1.00e-7 2.00e-7 1.10e-7 0.1 3 50.0%",
            "  2: 2.00e-7 4.00e-7 2.10e-7 0.1 3 40.0%",
        ];
        let old = write("a.snap", &snap(&base, "row 0, layer 1"));
        let same = write("a.snap.new", &snap(&base, "row 0, layer 1"));
        let r = review_pending(&same, 0.05).expect("review");
        assert_eq!(r.verdict, Verdict::Unchanged, "{:?}", r.details);
        assert_eq!(r.overlays.len(), 2);
        assert!(r.overlays[0].1.contains("stroke-dasharray"));

        let near = [
            "  1: 1.00e-7 2.00e-7 1.10e-7 0.1 3 50.0%",
            "  2: 1.96e-7 4.00e-7 2.10e-7 0.1 3 40.0%",
        ];
        let r = review(
            "t",
            &load_profiles(&old).expect("old"),
            &load_profiles(&write("b.snap", &snap(&near, "row 0, layer 1"))).expect("new"),
            0.05,
        );
        assert!(
            matches!(r.verdict, Verdict::Within(x) if (x - 0.02).abs() < 1e-9),
            "{:?}",
            r.verdict
        );
        assert!(
            r.details.iter().any(|d| d.contains("nearer the oracle")),
            "{:?}",
            r.details
        );

        let far = [
            "  1: 0 0 0 0 0 100.0%",
            "  2: 4.00e-7 4.00e-7 2.10e-7 0.1 3 40.0%",
        ];
        let r = review(
            "t",
            &load_profiles(&old).expect("old"),
            &load_profiles(&write("c.snap", &snap(&far, "row 0, layer 2"))).expect("new"),
            0.05,
        );
        assert_eq!(r.verdict, Verdict::Moved);
        let all = r.details.join("\n");
        assert!(
            all.contains("first divergence row 0, layer 1 → row 0, layer 2"),
            "{all}"
        );
        assert!(all.contains("further from the oracle"), "{all}");
        assert!(
            all.contains("full-vs-rows [base] layer 1: bitwise-equal share 50.0% → 100.0%"),
            "{all}"
        );
        assert!(all.contains("10 number(s) moved"), "{all}");
        assert!(
            all.contains("layer 1: mean|Δ| 1.00e-7 → 0 (-100.0%)"),
            "{all}"
        );
    }

    #[test]
    fn a_missing_old_snapshot_is_new_and_garbage_is_an_error() {
        let n = write("only.snap.new", &snap(&["  1: 0 0 0 0 0 100.0%"], "none"));
        assert_eq!(
            review_pending(&n, 0.05).expect("review").verdict,
            Verdict::New
        );
        let bad = write("bad.snap", "no header here");
        assert!(load_profiles(&bad).unwrap_err().contains("bad.snap"));
        let e = review_files(&bad, Path::new("x.safetensors"), 0.05).unwrap_err();
        assert!(e.contains("two files of one kind"), "{e}");
    }
}
