//! SVG plots like the seed's figure: error against layer, one panel per
//! setting (e.g. residual on/off), one line per backend and batch size.
//!
//! Hand-written SVG, no plotting or font dependency: the files open in any
//! browser and diff as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::engine::Outcome;
use crate::metric::Metric;

/// One line: a label and a value per layer (NaN breaks the line).
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Value per layer, layer 1 first.
    pub values: Vec<f64>,
    /// Dashed (e.g. the old side of an overlay).
    pub dashed: bool,
    /// Palette index; `None`: the series' position in its panel.
    pub color: Option<usize>,
}

impl Series {
    /// A solid line in the panel's next colour.
    pub fn new(label: impl Into<String>, values: Vec<f64>) -> Series {
        Series {
            label: label.into(),
            values,
            dashed: false,
            color: None,
        }
    }
}

/// One panel of a figure.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const PW: f64 = 520.0;
const PH: f64 = 380.0;
const ML: f64 = 78.0;
const MR: f64 = 16.0;
const MT: f64 = 34.0;
const MB: f64 = 46.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round-number ticks covering `0..=max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    if !(max > 0.0) {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (0..=((max / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

/// The start of an SVG document `w` × `h` on white, `title` centred at
/// height `title_y`.
fn open_svg(w: f64, h: f64, title: &str, title_y: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{title_y}" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    s
}

/// Renders `panels` side by side (three per row) under `title`.
pub fn svg(title: &str, ylabel: &str, panels: &[Panel], log_y: bool) -> String {
    let cols = panels.len().clamp(1, 3);
    let rows = panels.len().div_ceil(cols).max(1);
    // Wide enough for the title (≈8 px per character at 15 px).
    let w = (PW * cols as f64).max(title.chars().count() as f64 * 8.0 + 40.0);
    let h = PH * rows as f64 + 40.0;
    let mut s = open_svg(w, h, title, 24.0);
    for (i, p) in panels.iter().enumerate() {
        let ox = (i % cols) as f64 * PW;
        let oy = 40.0 + (i / cols) as f64 * PH;
        panel(&mut s, p, ox, oy, ylabel, log_y);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel, ox: f64, oy: f64, ylabel: &str, log_y: bool) {
    let (x0, x1) = (ox + ML, ox + PW - MR);
    let (y0, y1) = (oy + PH - MB, oy + MT);
    let layers = p
        .series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let finite = || {
        p.series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite())
    };
    let max = finite().fold(0.0f64, f64::max);
    let min_pos = finite().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let (lo, hi, ticks): (f64, f64, Vec<f64>) = if log_y && min_pos.is_finite() {
        let (a, b) = (
            min_pos.log10().floor(),
            max.log10().ceil().max(min_pos.log10().floor() + 1.0),
        );
        (a, b, (a as i32..=b as i32).map(f64::from).collect())
    } else {
        let t = linear_ticks(max);
        (0.0, *t.last().unwrap_or(&1.0), t)
    };
    let log = log_y && min_pos.is_finite();
    let ymap = |v: f64| -> Option<f64> {
        let t = if log {
            if v <= 0.0 {
                return None;
            }
            v.log10()
        } else {
            v
        };
        Some(y0 - (t - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (y0 - y1))
    };
    let xmap = |l: usize| {
        x0 + if layers > 1 {
            (l as f64) / (layers - 1) as f64 * (x1 - x0)
        } else {
            (x1 - x0) / 2.0
        }
    };

    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        (x0 + x1) / 2.0,
        oy + 20.0,
        esc(&p.title)
    );
    // Grid and y ticks.
    for t in &ticks {
        let y = if log {
            y0 - (t - lo) / (hi - lo) * (y0 - y1)
        } else {
            ymap(*t).unwrap_or(y0)
        };
        let label = if log {
            format!("1e{}", *t as i32)
        } else {
            crate::metric::sig3(*t)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            x0 - 6.0,
            y + 4.0
        );
    }
    // x ticks: about ten.
    let step = layers.div_ceil(10).max(1);
    for l in (0..layers).step_by(step) {
        let x = xmap(l);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#333"/>"##,
            y0 + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + 18.0,
            l + 1
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">layer</text>"#,
        (x0 + x1) / 2.0,
        y0 + 36.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        ox + 16.0,
        (y0 + y1) / 2.0,
        esc(ylabel)
    );
    // Lines.
    for (i, series) in p.series.iter().enumerate() {
        let color = PALETTE[series.color.unwrap_or(i) % PALETTE.len()];
        let dash = if series.dashed || (series.color.is_none() && i >= PALETTE.len()) {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let mut d = String::new();
        let mut pen_down = false;
        for (l, v) in series.values.iter().enumerate() {
            match ymap(*v).filter(|_| v.is_finite()) {
                Some(y) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        xmap(l),
                        y
                    );
                    pen_down = true;
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{y:.1}" r="2.5" fill="{color}"/>"#,
                        xmap(l)
                    );
                }
                None => pen_down = false,
            }
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>"#
        );
        let ly = y1 + 14.0 + 15.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="2"{dash}/>"#,
            x0 + 8.0,
            ly - 4.0,
            x0 + 28.0,
            ly - 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}">{}</text>"#,
            x0 + 33.0,
            esc(&series.label)
        );
    }
}

/// Figures for a scenario's outcomes: one per check family (`full-vs-rows`,
/// `full-vs-oracle`, `full-cross`), panels by the variant without its batch
/// axis, one line per backend (pair) and batch size. Returns `(file stem, svg)`.
pub fn figures(
    scenario: &str,
    outcomes: &[Outcome],
    metric: Metric,
    log_y: bool,
) -> Vec<(String, String)> {
    // family → panel → series; panels keep the scenario's variant order
    // (e.g. residual on before off, as listed).
    let mut fams: BTreeMap<String, Vec<(String, Vec<Series>)>> = BTreeMap::new();
    for o in outcomes {
        let (family, who) = family_of(&o.comparison);
        for v in &o.variants {
            let Some(p) = &v.profile else { continue };
            let (panel_parts, line_parts): (Vec<&str>, Vec<&str>) = v
                .variant
                .split(',')
                .filter(|x| *x != "base")
                .partition(|kv| !kv.starts_with("batch="));
            let panel = if panel_parts.is_empty() {
                "all".to_string()
            } else {
                panel_parts.join(", ")
            };
            let label = if line_parts.is_empty() {
                who.clone()
            } else {
                format!("{who}, {}", line_parts.join(","))
            };
            let values = p
                .layers
                .iter()
                .map(|d| {
                    if d.non_finite > 0 {
                        f64::NAN
                    } else {
                        metric.value(d)
                    }
                })
                .collect();
            let panels = fams.entry(family.clone()).or_default();
            let at = match panels.iter().position(|(t, _)| *t == panel) {
                Some(i) => i,
                None => {
                    panels.push((panel, Vec::new()));
                    panels.len() - 1
                }
            };
            panels[at].1.push(Series::new(label, values));
        }
    }
    fams.into_iter()
        .map(|(family, panels)| {
            let panels: Vec<Panel> = panels
                .into_iter()
                .map(|(title, series)| Panel { title, series })
                .collect();
            let title = format!("{scenario}: {family} — {metric} of the observed rows per layer");
            (family, svg(&title, metric.describe(), &panels, log_y))
        })
        .collect()
}

/// The kernel-dispatch map as an SVG: one panel per backend, one band per
/// probed shape, one cell per probed row count `M` (equal widths, so the
/// powers of two past 64 get room), coloured by kernel-equivalence class
/// (class 1 = the class of the first probed `M`); a cell with a dot is a
/// row count at which a row's result depended on its position in the batch,
/// a ring on the other rows' values.
pub fn dispatch_svg(maps: &[crate::dispatch::Map]) -> String {
    const LABEL: f64 = 300.0;
    const CELL: f64 = 9.0;
    const BAND: f64 = 18.0;
    let cols = maps.iter().map(|m| m.rows.len()).max().unwrap_or(1);
    let w = LABEL + cols as f64 * CELL + 30.0;
    let heights: Vec<f64> = maps
        .iter()
        .map(|m| 40.0 + m.entries.len() as f64 * BAND + 40.0)
        .collect();
    let h = 60.0 + heights.iter().sum::<f64>();
    let mut s = open_svg(
        w,
        h,
        "Kernel-dispatch map: which row counts M give a row the same bits (one colour per class)",
        22.0,
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">dot: the row's result depends on its position at that M; ring: on the other rows' values; grey: not probed</text>"##,
        w / 2.0
    );
    let mut oy = 60.0;
    for (map, ph) in maps.iter().zip(&heights) {
        let _ = writeln!(
            s,
            r#"<text x="8" y="{}" font-weight="bold">{} — {}, class {}</text>"#,
            oy + 16.0,
            esc(&map.backend),
            esc(&map.version),
            esc(&map.class)
        );
        let top = oy + 28.0;
        for (r, e) in map.entries.iter().enumerate() {
            let y = top + r as f64 * BAND;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL - 8.0,
                y + BAND * 0.7,
                esc(&e.label)
            );
            let points = e.points.as_deref().unwrap_or(&[]);
            let class_of = |m: usize| {
                e.classes
                    .iter()
                    .position(|runs| runs.iter().any(|&(lo, hi)| lo <= m && m <= hi))
            };
            // One rectangle per run of cells in the same class.
            let mut c = 0;
            while c < map.rows.len() {
                let class = class_of(map.rows[c]);
                let mut end = c + 1;
                while end < map.rows.len() && class_of(map.rows[end]) == class {
                    end += 1;
                }
                let fill = class.map_or("#dddddd", |k| PALETTE[k % PALETTE.len()]);
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{y}" width="{}" height="{}" fill="{fill}"><title>{} M={}–{}: class {}</title></rect>"#,
                    LABEL + c as f64 * CELL,
                    (end - c) as f64 * CELL,
                    BAND - 2.0,
                    esc(&e.label),
                    map.rows[c],
                    map.rows[end - 1],
                    class.map_or("—".into(), |k| (k + 1).to_string())
                );
                c = end;
            }
            for (c, &m) in map.rows.iter().enumerate() {
                let x = LABEL + c as f64 * CELL;
                let (cx, cy) = (x + CELL / 2.0, y + (BAND - 2.0) / 2.0);
                if let Some(p) = points.iter().find(|p| p.m == m) {
                    if p.position_dependent() {
                        let _ =
                            writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="2.2" fill="black"/>"#);
                    }
                    if p.values_dependent() {
                        let _ = writeln!(
                            s,
                            r#"<circle cx="{cx}" cy="{cy}" r="3.6" fill="none" stroke="black"/>"#
                        );
                    }
                }
            }
        }
        // M labels under the bands: 1, every multiple of 8 up to 64, then each power of two.
        let ly = top + map.entries.len() as f64 * BAND + 14.0;
        for (c, &m) in map.rows.iter().enumerate() {
            if m == 1 || (m <= 64 && m % 16 == 0) || (m > 64 && m.is_power_of_two()) {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{ly}" text-anchor="middle" font-size="10">{m}</text>"#,
                    LABEL + c as f64 * CELL + CELL / 2.0
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" font-size="10">M =</text>"#,
            LABEL - 8.0,
            ly
        );
        oy += ph;
    }
    s.push_str("</svg>\n");
    s
}

/// The family (file stem) and line label of comparison `c`, as in
/// [`figures`]: one family per check, backend pairs for cross checks.
fn family_of(c: &crate::engine::Comparison) -> (String, String) {
    if c.is_cross() {
        (
            format!("{}-cross", c.a.strategy),
            format!("{} vs {}", c.a.backend, c.b.backend),
        )
    } else {
        (c.name.clone(), c.a.backend.to_string())
    }
}

/// Local vs total error per layer (`diagnose: { local: true }`): one figure
/// per check, one panel per variant, per backend the total error (solid)
/// and the error each layer adds by itself (dashed, same colour).
pub fn local_figures(scenario: &str, outcomes: &[Outcome], log_y: bool) -> Vec<(String, String)> {
    let mut fams: BTreeMap<String, Vec<(String, Vec<Series>)>> = BTreeMap::new();
    for o in outcomes {
        let (family, who) = family_of(&o.comparison);
        let panels = fams.entry(family).or_default();
        for v in &o.variants {
            let Some(p) = &v.local else { continue };
            let at = match panels.iter().position(|(t, _)| *t == v.variant) {
                Some(i) => i,
                None => {
                    panels.push((v.variant.clone(), Vec::new()));
                    panels.len() - 1
                }
            };
            let series = &mut panels[at].1;
            let color = Some(series.len() / 2);
            series.push(Series {
                color,
                ..Series::new(
                    format!("{who} total"),
                    p.layers.iter().map(|l| l.total).collect(),
                )
            });
            series.push(Series {
                color,
                dashed: true,
                ..Series::new(
                    format!("{who} local"),
                    p.layers.iter().map(|l| l.local).collect(),
                )
            });
        }
    }
    fams.into_iter()
        .filter(|(_, panels)| !panels.is_empty())
        .map(|(family, panels)| {
            let panels: Vec<Panel> = panels
                .into_iter()
                .map(|(title, series)| Panel { title, series })
                .collect();
            let title = format!(
                "{scenario}: {family} — total error vs the error each layer adds by itself (teacher forcing)"
            );
            (
                format!("{family}-local"),
                svg(&title, "mean |Δ| of the observed rows", &panels, log_y),
            )
        })
        .collect()
}

/// The per-op view (`diagnose: { ops }`): one figure per check; per
/// backend (first variant), one bar per op of the layer where the runs
/// first differ — the layer where drift is born — or of the last layer
/// when they never differ.
pub fn op_figures(
    scenario: &str,
    outcomes: &[Outcome],
    wants: &dyn Fn(&str) -> bool,
) -> Vec<(String, String)> {
    type Group = (String, usize, Vec<(String, f64)>);
    let mut fams: BTreeMap<String, Vec<Group>> = BTreeMap::new();
    for o in outcomes {
        let (family, who) = family_of(&o.comparison);
        let Some((variant, p)) = o
            .variants
            .iter()
            .find_map(|v| v.ops.as_ref().map(|p| (&v.variant, p)))
        else {
            continue;
        };
        let layer = p
            .first_divergence
            .as_ref()
            .map_or_else(|| p.ops.last().map_or(1, |o| o.layer), |d| d.layer);
        let bars = p
            .layer(layer)
            .filter(|d| wants(&d.op))
            .map(|d| {
                let v = if d.drift.non_finite > 0 {
                    f64::NAN
                } else {
                    d.drift.mean_abs
                };
                (d.op.clone(), v)
            })
            .collect();
        fams.entry(family)
            .or_default()
            .push((format!("{who} [{variant}]"), layer, bars));
    }
    const LABEL: f64 = 110.0;
    const BAR: f64 = 16.0;
    const WIDTH: f64 = 760.0;
    let mut out = Vec::new();
    for (family, groups) in fams {
        let max = groups
            .iter()
            .flat_map(|g| g.2.iter().map(|b| b.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let h = 70.0
            + groups
                .iter()
                .map(|g| 34.0 + g.2.len() as f64 * BAR)
                .sum::<f64>();
        let title = format!(
            "{scenario}: {family} — mean |Δ| per op at the layer where the runs first differ"
        );
        let mut s = open_svg(WIDTH, h, &title, 22.0);
        let mut y = 50.0;
        for (gi, (who, layer, bars)) in groups.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="8" y="{}" font-weight="bold">{} — layer {layer}</text>"#,
                y + 12.0,
                esc(who)
            );
            y += 22.0;
            for (op, v) in bars {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    LABEL - 6.0,
                    y + BAR * 0.75,
                    esc(op)
                );
                let span = WIDTH - LABEL - 120.0;
                let len = if v.is_finite() && max > 0.0 {
                    v / max * span
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{LABEL}" y="{}" width="{len:.1}" height="{}" fill="{}"/>"#,
                    y + 2.0,
                    BAR - 4.0,
                    PALETTE[gi % PALETTE.len()]
                );
                let text = if v.is_nan() {
                    "NaN/Inf".to_string()
                } else if *v == 0.0 {
                    "0 (bitwise equal)".to_string()
                } else {
                    format!("{v:.3e}")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}">{text}</text>"#,
                    LABEL + len + 6.0,
                    y + BAR * 0.75
                );
                y += BAR;
            }
            y += 12.0;
        }
        s.push_str("</svg>\n");
        out.push((format!("{family}-ops"), s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_path_per_series_and_escapes_text() {
        let p = Panel {
            title: "residual=<on>".into(),
            series: vec![
                Series::new("a", vec![1e-7, 2e-7, 3e-7]),
                Series::new("b", vec![0.0, f64::NAN, 0.0]),
            ],
        };
        let s = svg("t", "mean", &[p], false);
        assert_eq!(s.matches("<path").count(), 2);
        assert!(s.contains("residual=&lt;on&gt;"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn ticks_cover_the_max() {
        let t = linear_ticks(3.2e-6);
        assert!(*t.last().unwrap() >= 3.2e-6 && t[0] == 0.0);
    }
}
