//! The kernel-dispatch map (`layerdrift probe`): for each backend and each
//! op that mixes values within a row, at the shipped scenarios' widths,
//! which row counts `M` give a row bitwise the same result (kernel
//! equivalence classes), and at which `M` a row's result depends on its
//! position in the batch or on the other rows' values.
//!
//! The probing itself is the backends' ([`layerdrift_backends::probe`]),
//! through the same adapter ops the models use; this module chooses the
//! shapes (from scenarios), checks a request against the memory limit,
//! and turns the points into a table, a JSON document and a snapshot
//! document. The SVG is `plot::dispatch_svg`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Instant;

use layerdrift_backends::probe::classes;
use layerdrift_backends::{
    Activation, AttentionForm, Backend, DType, ModelSpec, Norm, ProbeOp, ProbePoint, ProbeRequest,
};
use serde::Serialize;

use crate::scenario::Scenario;

/// One probed shape: an op at one width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Shape {
    /// The op.
    #[serde(serialize_with = "op_name")]
    pub op: ProbeOp,
    /// Row width (a linear's `in`, attention's head dim).
    pub width: usize,
    /// A linear's `out`, attention's key count; 0 otherwise.
    pub out: usize,
    /// Attention heads; 1 otherwise.
    pub heads: usize,
}

impl Shape {
    /// `linear 768→3072`, `layer_norm 768`, `attention 12×64 over 256 keys`.
    pub fn label(&self) -> String {
        match self.op {
            ProbeOp::Linear => format!("linear {}→{}", self.width, self.out),
            ProbeOp::Attention | ProbeOp::FusedAttention => format!(
                "{} {}×{} over {} keys",
                self.op, self.heads, self.width, self.out
            ),
            op => format!("{op} {}", self.width),
        }
    }

    /// The widest row the op reads or writes.
    pub fn max_width(&self) -> usize {
        self.width.max(self.out)
    }

    /// Peak bytes of one probe call at `m` rows in `dtype` (input, output
    /// and the library's temporaries, ×2 for the host copies), in f64 so no
    /// request can overflow it.
    pub fn bytes(&self, m: usize, dtype: DType) -> f64 {
        let (m, w, o, h) = (
            m as f64,
            self.width as f64,
            self.out as f64,
            self.heads as f64,
        );
        let size = dtype.size() as f64 + 8.0;
        size * match self.op {
            ProbeOp::Linear => 2.0 * m * (w + o) + w * o,
            ProbeOp::Attention | ProbeOp::FusedAttention => {
                h * (3.0 * m * w + 2.0 * o * w + 2.0 * m * o)
            }
            ProbeOp::LayerNorm | ProbeOp::RmsNorm | ProbeOp::Softmax | ProbeOp::Gelu => 4.0 * m * w,
        }
    }
}

fn op_name<S: serde::Serializer>(op: &ProbeOp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(op.name())
}

/// The row-mixing ops of `model`, as probe shapes; attention over `seq`
/// keys. What a layer of the model calls, so the map says what its runs see.
pub fn shapes_of_model(model: &ModelSpec, seq: usize) -> Vec<Shape> {
    let s = |op, width, out, heads| Shape {
        op,
        width,
        out,
        heads,
    };
    let norm = |n: Norm| match n {
        Norm::LayerNorm => ProbeOp::LayerNorm,
        Norm::RmsNorm => ProbeOp::RmsNorm,
    };
    let mut out = Vec::new();
    let (dim, hidden) = (model.dim(), model.hidden());
    out.push(s(norm(model.norm()), dim, 0, 1));
    for (i, o) in model.linear_shapes() {
        out.push(s(ProbeOp::Linear, i, o, 1));
    }
    if model.activation() == Activation::GeluErf {
        out.push(s(ProbeOp::Gelu, hidden, 0, 1));
    }
    if let (Some(form), Some((heads, _)), Some(hd)) =
        (model.attention(), model.heads(), model.head_dim())
    {
        match form {
            AttentionForm::Manual => {
                out.push(s(ProbeOp::Softmax, seq, 0, 1));
                out.push(s(ProbeOp::Attention, hd, seq, heads));
            }
            AttentionForm::Fused => out.push(s(ProbeOp::FusedAttention, hd, seq, heads)),
        }
    }
    out
}

/// Every shape the variants of `scenarios` call whose widths are at most
/// `max_width`, sorted and without repeats.
pub fn shapes_of(scenarios: &[Scenario], max_width: usize) -> Vec<Shape> {
    let mut set = BTreeSet::new();
    for s in scenarios {
        for v in &s.variants {
            for shape in shapes_of_model(&v.model, v.seq) {
                if shape.max_width() <= max_width {
                    set.insert(shape);
                }
            }
        }
    }
    set.into_iter().collect()
}

/// The shapes of the scenario files `files` (loaded through `session`),
/// at widths up to `max_width`. With `everyday_only`, full-size
/// (`slow: manual`) scenarios are left out, as the dispatch-map snapshot
/// leaves them: `layerdrift probe` with no files and the test suite probe
/// the same shapes. The error is the first file's problems.
pub fn scenario_shapes(
    session: &crate::session::Session,
    files: &[std::path::PathBuf],
    max_width: usize,
    everyday_only: bool,
) -> Result<Vec<Shape>, crate::scenario::ScenarioErrors> {
    let mut scenarios = Vec::new();
    for f in files {
        // Downloaded models are not always here: the suite's map leaves
        // them out, so it is the same with or without them.
        if everyday_only && crate::scenario::Scenario::fetched_by(f).is_some() {
            continue;
        }
        let s = session.load(f)?;
        if !(everyday_only && s.slow == crate::scenario::Cost::Manual) {
            scenarios.push(s);
        }
    }
    Ok(shapes_of(&scenarios, max_width))
}

/// The row counts probed by default: every `M` from 1 to 64, then the
/// powers of two up to 4096.
pub fn default_rows() -> Vec<usize> {
    (1..=64).chain((7..=12).map(|k| 1 << k)).collect()
}

/// Parses `1-64,128,256` (ranges and single counts, comma-separated) into
/// sorted, distinct row counts, each ≥ 1.
pub fn parse_rows(s: &str) -> Result<Vec<usize>, String> {
    let mut set = BTreeSet::new();
    let count = |x: &str| {
        x.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("`{}` is not a row count ≥ 1", x.trim()))
    };
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (count(lo)?, count(hi)?);
                if lo > hi {
                    return Err(format!("`{}`: an empty range ({lo} > {hi})", part.trim()));
                }
                if hi - lo > 1 << 16 {
                    return Err(format!("`{}`: more than 65,536 row counts", part.trim()));
                }
                set.extend(lo..=hi);
            }
            None => {
                set.insert(count(part)?);
            }
        }
    }
    if set.is_empty() {
        return Err("no row counts: give e.g. `1-64,128,256`".into());
    }
    Ok(set.into_iter().collect())
}

/// The first shape and row count whose probe would need more than `limit`
/// bytes, as an error naming both and the estimate.
pub fn check_memory(
    shapes: &[Shape],
    rows: &[usize],
    dtype: DType,
    limit: u64,
) -> Result<(), String> {
    let m = rows.iter().copied().max().unwrap_or(1);
    for s in shapes {
        let b = s.bytes(m, dtype);
        if b > limit as f64 {
            return Err(format!(
                "probing {} at M = {m} would need about {:.2} GB, more than the {:.2} GB this machine allows (LAYERDRIFT_MEMORY_LIMIT): probe fewer rows (--rows) or narrower shapes (--max-width)",
                s.label(),
                b / 1e9,
                limit as f64 / 1e9
            ));
        }
    }
    Ok(())
}

/// One shape's result on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// The shape.
    pub shape: Shape,
    /// Its label (as in the table).
    pub label: String,
    /// The points, one per row count; `Err`: why the backend cannot probe it.
    #[serde(skip)]
    pub points: Result<Vec<ProbePoint>, String>,
    /// The classes, as runs `[lo, hi]` of probed row counts.
    pub classes: Vec<Vec<(usize, usize)>>,
    /// Row counts at which a row's result depended on its position.
    pub position_dependent: Vec<usize>,
    /// Row counts at which it depended on the other rows' values.
    pub values_dependent: Vec<usize>,
    /// Why the backend could not probe the shape.
    pub unsupported: Option<String>,
    /// Wall time of the probe, seconds (not in the snapshot).
    pub seconds: f64,
}

/// A backend's dispatch map on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Map {
    /// The backend id.
    pub backend: String,
    /// Its library version.
    pub version: String,
    /// Its machine class.
    pub class: String,
    /// Intra-op threads.
    pub threads: Option<usize>,
    /// The dtype probed.
    pub dtype: String,
    /// The row counts probed.
    pub rows: Vec<usize>,
    /// One entry per shape.
    pub entries: Vec<Entry>,
}

/// Probes every shape on `b`.
pub fn probe_backend(
    b: &dyn Backend,
    class: &str,
    shapes: &[Shape],
    rows: &[usize],
    dtype: DType,
    threads: Option<usize>,
) -> Map {
    let entries = shapes
        .iter()
        .map(|shape| {
            let t = Instant::now();
            let points = b
                .probe(&ProbeRequest {
                    op: shape.op,
                    width: shape.width,
                    out: shape.out,
                    heads: shape.heads,
                    rows: rows.to_vec(),
                    dtype,
                    threads,
                })
                .map_err(|e| e.to_string());
            let seconds = t.elapsed().as_secs_f64();
            let ok = points.as_deref().unwrap_or(&[]);
            Entry {
                shape: *shape,
                label: shape.label(),
                classes: classes(ok),
                position_dependent: ok
                    .iter()
                    .filter(|p| p.position_dependent())
                    .map(|p| p.m)
                    .collect(),
                values_dependent: ok
                    .iter()
                    .filter(|p| p.values_dependent())
                    .map(|p| p.m)
                    .collect(),
                unsupported: points.as_ref().err().cloned(),
                points,
                seconds,
            }
        })
        .collect();
    let info = b.info();
    Map {
        backend: b.id().to_string(),
        version: info.version,
        class: class.to_string(),
        threads,
        dtype: dtype.name().to_string(),
        rows: rows.to_vec(),
        entries,
    }
}

pub use layerdrift_backends::probe::classes_text;

/// `5, 6, 9–11`: row counts, consecutive probed ones joined.
pub fn counts_text(ms: &[usize], rows: &[usize]) -> String {
    if ms.is_empty() {
        return "—".into();
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &m in ms {
        let next_of = |x: usize| rows.iter().copied().find(|r| *r > x);
        match runs.last_mut() {
            Some(r) if next_of(r.1) == Some(m) => r.1 = m,
            _ => runs.push((m, m)),
        }
    }
    runs.iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}–{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1–64, 128, 256, …`: the probed row counts, consecutive integers joined.
pub fn rows_text(rows: &[usize]) -> String {
    let all: Vec<usize> = (1..=rows.iter().copied().max().unwrap_or(0)).collect();
    counts_text(rows, &all)
}

impl Map {
    /// The table `layerdrift probe` prints.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} — {}, class {}, {} thread(s), {}; M = {}",
            self.backend,
            self.version,
            self.class,
            self.threads
                .map_or("library default".into(), |t| t.to_string()),
            self.dtype,
            rows_text(&self.rows)
        );
        let w = self
            .entries
            .iter()
            .map(|e| e.label.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            s,
            "  {:<w$}  {:<40}  {:<16}  {:<16}  {:>6}",
            "op", "classes (same bits for a row)", "position-dep. M", "values-dep. M", "s"
        );
        for e in &self.entries {
            match &e.unsupported {
                Some(why) => {
                    let _ = writeln!(s, "  {:<w$}  not probed: {why}", e.label);
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  {:<w$}  {:<40}  {:<16}  {:<16}  {:>6.2}",
                        e.label,
                        classes_text(&e.classes),
                        counts_text(&e.position_dependent, &self.rows),
                        counts_text(&e.values_dependent, &self.rows),
                        e.seconds
                    );
                }
            }
        }
        s
    }

    /// The snapshot document: everything but the timings and the library
    /// version (which belongs to the snapshot's info), one line per shape.
    pub fn snapshot_doc(&self) -> SnapshotDoc {
        SnapshotDoc {
            rows: rows_text(&self.rows),
            threads: self.threads,
            dtype: self.dtype.clone(),
            ops: self
                .entries
                .iter()
                .map(|e| match &e.unsupported {
                    Some(why) => format!("{}: not probed: {why}", e.label),
                    None => format!(
                        "{}: classes {}; position-dependent at M = {}; values-dependent at M = {}",
                        e.label,
                        classes_text(&e.classes),
                        counts_text(&e.position_dependent, &self.rows),
                        counts_text(&e.values_dependent, &self.rows)
                    ),
                })
                .collect(),
        }
    }
}

/// What a dispatch-map snapshot holds.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotDoc {
    /// The row counts probed.
    pub rows: String,
    /// Intra-op threads.
    pub threads: Option<usize>,
    /// The dtype probed.
    pub dtype: String,
    /// One line per shape.
    pub ops: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_ranges_and_counts() {
        assert_eq!(parse_rows("1-3, 8,2").unwrap(), vec![1, 2, 3, 8]);
        assert!(
            parse_rows("0")
                .unwrap_err()
                .contains("`0` is not a row count")
        );
        assert!(parse_rows("5-2").unwrap_err().contains("empty range"));
        assert!(parse_rows(" , ").unwrap_err().contains("no row counts"));
        assert!(parse_rows("1-x").unwrap_err().contains("`x`"));
        assert_eq!(default_rows().len(), 64 + 6);
        assert_eq!(*default_rows().last().unwrap(), 4096);
    }

    #[test]
    fn texts_join_consecutive_probed_counts() {
        let rows = default_rows();
        assert_eq!(
            classes_text(&[vec![(1, 1)], vec![(2, 15), (64, 4096)]]),
            "{1} {2–15, 64–4096}"
        );
        assert_eq!(
            counts_text(&[5, 6, 7, 9, 128, 256], &rows),
            "5–7, 9, 128–256"
        );
        assert_eq!(counts_text(&[], &rows), "—");
        assert_eq!(rows_text(&rows), "1–64, 128, 256, 512, 1024, 2048, 4096");
        assert_eq!(rows_text(&[1, 2, 4, 8]), "1–2, 4, 8");
    }

    /// A Llama's map probes its grouped-query K/V width, both SwiGLU widths
    /// and the LM head, with RMSNorm; a GPT-2's its fused QKV and head, with
    /// LayerNorm and no erf GELU (its `gelu_new` is elementwise tanh).
    #[test]
    fn llama_and_gpt2_shapes_follow_their_plans() {
        use layerdrift_backends::{Gpt2Spec, LlamaSpec};
        let llama = ModelSpec::Llama(LlamaSpec {
            layers: 2,
            dim: 64,
            heads: 8,
            kv_heads: 2,
            head_dim: 8,
            hidden: 160,
            vocab: 512,
            eps: 1e-6,
            rope_theta: 1e4,
            tie_embeddings: false,
            attention_bias: false,
            attention: AttentionForm::Manual,
        });
        let labels = |m: &ModelSpec| -> Vec<String> {
            shapes_of_model(m, 40).iter().map(Shape::label).collect()
        };
        assert_eq!(
            labels(&llama),
            [
                "rms_norm 64",
                "linear 64→64",
                "linear 64→16",
                "linear 64→160",
                "linear 160→64",
                "linear 64→512",
                "softmax 40",
                "attention 8×8 over 40 keys",
            ]
        );
        let gpt2 = ModelSpec::Gpt2(Gpt2Spec {
            layers: 2,
            dim: 48,
            heads: 4,
            hidden: 192,
            vocab: 300,
            positions: 64,
            eps: 1e-5,
            activation: Activation::GeluNew,
            attention: AttentionForm::Fused,
        });
        assert_eq!(
            labels(&gpt2),
            [
                "layer_norm 48",
                "linear 48→144",
                "linear 48→48",
                "linear 48→192",
                "linear 192→48",
                "linear 48→300",
                "fused_attention 4×12 over 40 keys",
            ]
        );
    }

    #[test]
    fn a_probe_too_large_for_memory_is_refused_naming_the_shape() {
        let s = Shape {
            op: ProbeOp::Linear,
            width: 3072,
            out: 768,
            heads: 1,
        };
        assert!(check_memory(&[s], &[4096], DType::F32, 1 << 34).is_ok());
        let e = check_memory(&[s], &[1 << 24], DType::F32, 1 << 34).unwrap_err();
        assert!(e.contains("linear 3072→768 at M = 16777216"), "{e}");
    }
}
