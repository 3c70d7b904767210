//! The models and schedules, written once over [`Ops`].
//!
//! Only observed rows leave: after each layer the observed rows are sliced
//! out, downloaded, and the activation is dropped when the next layer
//! replaces it.

use std::cell::{Cell, RefCell};

use crate::backend::BackendError;
use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{AttentionForm, DecoderSpec, ModelSpec, Norm, ResidualMlpSpec};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbeOp, ProbeRequest};
use crate::request::{Checkpoints, Execution, OpCheckpoint, Row, RunRequest, Schedule};
use crate::weights::Weights;

/// Runs `req` with `ops`; `backend` names the backend in errors.
pub(crate) fn run<O: Ops>(
    ops: &O,
    backend: &str,
    req: &RunRequest<'_>,
) -> Result<Checkpoints, BackendError> {
    let lib = |message: String| BackendError::Library {
        backend: backend.to_string(),
        message,
    };
    match req.model {
        ModelSpec::ResidualMlp(m) => run_mlp(ops, m, req).map_err(lib),
        ModelSpec::Decoder(m) => run_decoder(ops, m, req).map_err(lib),
    }
}

/// One observed row inside the tensor an op is called on: checkpoint slot
/// `slot`, at `[b, s, …]` of that tensor (`[b, heads, s, …]` once split into
/// heads), absolute sequence position `pos`.
#[derive(Clone, Copy, Debug)]
struct Pick {
    slot: usize,
    b: usize,
    s: usize,
    pos: usize,
}

/// The picks of `at` that fall in row `(b, s)` of a tensor, re-addressed to
/// row `(0, 0)` of that row alone.
fn picks_at(at: &[Pick], b: usize, s: usize) -> Vec<Pick> {
    at.iter()
        .filter(|p| p.b == b && p.s == s)
        .map(|p| Pick { b: 0, s: 0, ..*p })
        .collect()
}

/// Op-level checkpoints being recorded ([`crate::Diagnose::ops`]):
/// `rec[layer][op][slot]`, filled as the ops run. Off, every call is a
/// no-op, so an unobserved run computes exactly what it always did; on, it
/// only narrows and downloads the observed rows (no op's result changes).
struct Taps {
    names: Vec<&'static str>,
    layer: Cell<usize>,
    rec: RefCell<Vec<Vec<OpRows>>>,
}

/// One op's rows as they are recorded: a slot per observed row.
type OpRows = Vec<Option<Vec<f64>>>;

impl Taps {
    fn new(model: &ModelSpec, on: bool, rows: usize) -> Taps {
        let names = if on { model.op_names() } else { Vec::new() };
        let layers = if on { model.layers() } else { 0 };
        Taps {
            rec: RefCell::new(vec![vec![vec![None; rows]; names.len()]; layers]),
            names,
            layer: Cell::new(0),
        }
    }

    fn put(&self, op: &'static str, slot: usize, values: Vec<f64>) -> OpResult<()> {
        let i = self
            .names
            .iter()
            .position(|n| *n == op)
            .ok_or_else(|| format!("internal: op `{op}` is not in the model's op list"))?;
        self.rec.borrow_mut()[self.layer.get()][i][slot]
            .get_or_insert_with(Vec::new)
            .extend(values);
        Ok(())
    }

    /// Records op `op`'s output `y` (`[b, s, width]`) at the picks.
    fn rows<O: Ops>(&self, ops: &O, op: &'static str, y: &O::T, at: &[Pick]) -> OpResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        for p in at {
            let r = ops.narrow(&ops.narrow(y, 0, p.b, 1)?, 1, p.s, 1)?;
            self.put(op, p.slot, ops.download(&r)?)?;
        }
        Ok(())
    }

    /// Records `y` (`[b, heads, s, width]`) at the picks; with `keys`, only
    /// the keys `0..=pos` a query at `pos` may see.
    fn heads<O: Ops>(
        &self,
        ops: &O,
        op: &'static str,
        y: &O::T,
        at: &[Pick],
        keys: bool,
    ) -> OpResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        for p in at {
            let mut r = ops.narrow(&ops.narrow(y, 0, p.b, 1)?, 2, p.s, 1)?;
            if keys {
                r = ops.narrow(&r, 3, 0, p.pos + 1)?;
            }
            self.put(op, p.slot, ops.download(&r)?)?;
        }
        Ok(())
    }

    fn finish(self) -> OpResult<Vec<OpCheckpoint>> {
        let mut out = Vec::new();
        for (l, per_op) in self.rec.into_inner().into_iter().enumerate() {
            for (&op, rows) in self.names.iter().zip(per_op) {
                let rows = rows
                    .into_iter()
                    .map(|r| {
                        r.ok_or_else(|| {
                            format!(
                                "internal: op `{op}` of layer {} was not recorded for every observed row",
                                l + 1
                            )
                        })
                    })
                    .collect::<OpResult<_>>()?;
                out.push(OpCheckpoint { layer: l, op, rows });
            }
        }
        Ok(out)
    }
}

/// `x` (`[batch, len, dim]`) with the rows at `at` replaced by `rows`
/// (row-major by slot, `dim` wide): teacher forcing
/// ([`crate::Diagnose::forced`]). The other rows keep their values and the
/// tensor its shape, so every kernel of the layer sees what it would have.
fn replace_rows<O: Ops>(
    ops: &O,
    x: &O::T,
    at: &[Pick],
    rows: &[f64],
    dtype: DType,
) -> OpResult<O::T> {
    let s = ops.shape(x);
    let (n, dim) = (s[0] * s[1], s[2]);
    let flat = ops.reshape(x, &[1, n, dim])?;
    let mut flat_at: Vec<(usize, usize)> = at.iter().map(|p| (p.b * s[1] + p.s, p.slot)).collect();
    flat_at.sort_unstable();
    flat_at.dedup_by_key(|(f, _)| *f);
    let mut parts = Vec::with_capacity(2 * flat_at.len() + 1);
    let mut next = 0;
    for (f, slot) in flat_at {
        if f > next {
            parts.push(ops.narrow(&flat, 1, next, f - next)?);
        }
        let row = rows
            .get(slot * dim..(slot + 1) * dim)
            .ok_or("teacher forcing: the forced rows are fewer than the observed rows")?;
        parts.push(ops.upload_f64(&[1, 1, dim], row, dtype)?);
        next = f + 1;
    }
    if next < n {
        parts.push(ops.narrow(&flat, 1, next, n - next)?);
    }
    let y = match parts.len() {
        1 => ops.fresh(&parts[0])?,
        _ => ops.cat(&parts, 1)?,
    };
    ops.reshape(&y, &s)
}

/// Gathers `rows` of a `[batch, len, dim]` tensor whose position 0 is
/// absolute position `offset`, in the order given, onto the host.
fn take_rows<O: Ops>(
    ops: &O,
    x: &O::T,
    rows: impl Iterator<Item = (usize, usize)>,
) -> OpResult<Vec<f64>> {
    let mut out = Vec::new();
    for (b, s) in rows {
        let r = ops.narrow(&ops.narrow(x, 0, b, 1)?, 1, s, 1)?;
        out.extend(ops.download(&r)?);
    }
    Ok(out)
}

/// A row-wise function: the op(s) on a `[b, len, width]` tensor, told where
/// the observed rows sit in it (for op-level checkpoints).
type RowFn<'a, O> = dyn Fn(&<O as Ops>::T, &[Pick]) -> OpResult<<O as Ops>::T> + 'a;

/// `f` applied to every `[1, 1, width]` row of `x` (`[batch, len, width]`)
/// alone, the results put back in place. No op inside `f` sees more than one
/// row, so no row's result can depend on how many rows were computed with it:
/// [`Execution::BatchInvariant`].
fn each_row<O: Ops>(ops: &O, x: &O::T, at: &[Pick], f: &RowFn<'_, O>) -> OpResult<O::T> {
    let s = ops.shape(x);
    let mut batch = Vec::with_capacity(s[0]);
    for b in 0..s[0] {
        let xb = ops.narrow(x, 0, b, 1)?;
        let mut rows = Vec::with_capacity(s[1]);
        for p in 0..s[1] {
            rows.push(f(&ops.narrow(&xb, 1, p, 1)?, &picks_at(at, b, p))?);
        }
        batch.push(ops.cat(&rows, 1)?);
    }
    ops.cat(&batch, 0)
}

/// `[1, rows, width]` zeros in `dtype`.
fn zeros<O: Ops>(ops: &O, shape: &[usize], dtype: DType) -> OpResult<O::T> {
    let n = shape.iter().product();
    ops.upload(&HostTensor::new(shape.to_vec(), vec![0.0; n]), dtype)
}

/// `x` (`[1, rows, …]`, `rows <= tile`) padded along dim `dim` to `tile`
/// with the leading entries of `pad`, which holds at least `tile` zeros
/// along `dim` — always a fresh contiguous tensor ([`Ops::fresh`]).
fn pad_to<O: Ops>(ops: &O, x: O::T, dim: usize, tile: usize, pad: &O::T) -> OpResult<O::T> {
    let len = ops.shape(&x)[dim];
    if len == tile {
        return ops.fresh(&x);
    }
    ops.fresh(&ops.cat(&[x, ops.narrow(pad, dim, 0, tile - len)?], dim)?)
}

/// How the row-mixing ops of one run are called ([`Execution`]), and the
/// zeros fixed-shape execution pads its tiles with.
struct Mode<O: Ops> {
    execution: Execution,
    /// Fixed shape: `[1, tile, dim]` zeros.
    pad: Option<O::T>,
}

/// The row-mixing ops `model` calls, as probes `(op, width, out, heads)`;
/// attention over `capacity` keys.
fn model_probes(model: &ModelSpec, capacity: usize) -> Vec<(ProbeOp, usize, usize, usize)> {
    let norm = |n: Norm| match n {
        Norm::LayerNorm => ProbeOp::LayerNorm,
        Norm::RmsNorm => ProbeOp::RmsNorm,
    };
    match model {
        ModelSpec::ResidualMlp(m) => vec![
            (norm(m.norm), m.dim, 0, 1),
            (ProbeOp::Linear, m.dim, m.hidden, 1),
            (ProbeOp::Linear, m.hidden, m.dim, 1),
        ],
        ModelSpec::Decoder(m) => {
            let att = match m.attention {
                AttentionForm::Manual => ProbeOp::Attention,
                AttentionForm::Fused => ProbeOp::FusedAttention,
            };
            vec![
                (norm(m.norm), m.dim, 0, 1),
                (ProbeOp::Linear, m.dim, m.dim, 1),
                (ProbeOp::Linear, m.dim, m.hidden, 1),
                (ProbeOp::Linear, m.hidden, m.dim, 1),
                (att, m.head_dim(), capacity, m.heads),
            ]
        }
    }
}

/// Fixed shape keeps its promise only if every row-mixing op gives a row the
/// same bits wherever it sits in a tile and whatever the other rows hold.
/// Checked here with the kernel-dispatch probe at `M = tile`, before the
/// run, so a tile the library cannot honour is an error that says why —
/// never a run that silently drifts.
fn check_tile<O: Ops>(ops: &O, req: &RunRequest<'_>, tile: usize, capacity: usize) -> OpResult<()> {
    for (op, width, out, heads) in model_probes(req.model, capacity) {
        let p = probe::run(
            ops,
            &ProbeRequest {
                op,
                width,
                out,
                heads,
                rows: vec![tile],
                dtype: req.dtype,
                threads: req.threads,
            },
        )?[0];
        let shape = if out > 0 {
            format!("{op} {width}→{out}")
        } else {
            format!("{op} over {width}")
        };
        if p.position_dependent() {
            return Err(format!(
                "fixed-shape execution cannot be batch-invariant with a tile of {tile} rows here: the library's {shape} gives one row {} different results at the {tile} positions of a tile (the kernel-dispatch probe); choose a tile whose row count the library computes position-independently",
                p.positions
            ));
        }
        if p.values_dependent() {
            return Err(format!(
                "fixed-shape execution cannot be batch-invariant with a tile of {tile} rows here: the library's {shape} gives a row other results when the other rows of its tile hold other values (the kernel-dispatch probe); choose another tile"
            ));
        }
    }
    Ok(())
}

impl<O: Ops> Mode<O> {
    fn new(ops: &O, req: &RunRequest<'_>, dim: usize, capacity: usize) -> OpResult<Mode<O>> {
        let pad = match req.execution {
            Execution::FixedShape { tile: 0 } => {
                return Err("fixed-shape execution needs a tile of at least one row".into());
            }
            Execution::FixedShape { tile } => {
                check_tile(ops, req, tile, capacity)?;
                Some(zeros(ops, &[1, tile, dim], req.dtype)?)
            }
            _ => None,
        };
        Ok(Mode {
            execution: req.execution,
            pad,
        })
    }

    /// `f` on `x` (`[batch, len, dim]`, the observed rows at `at`) as the
    /// mode says: on the whole of `x`, on each row alone, or on fixed tiles
    /// of rows.
    fn rowwise(&self, ops: &O, x: &O::T, at: &[Pick], f: &RowFn<'_, O>) -> OpResult<O::T> {
        match (self.execution, &self.pad) {
            (Execution::BatchInvariant, _) => each_row(ops, x, at, f),
            (Execution::FixedShape { tile }, Some(pad)) => each_tile(ops, x, at, tile, pad, f),
            _ => f(x, at),
        }
    }
}

/// `f` applied to `x` (`[batch, len, dim]`) as `[1, tile, dim]` tiles of its
/// rows in order, the last tile padded with zero rows from `pad` and the
/// padding dropped again: every call of `f` sees the same shape, however
/// many rows `x` has ([`Execution::FixedShape`]).
fn each_tile<O: Ops>(
    ops: &O,
    x: &O::T,
    at: &[Pick],
    tile: usize,
    pad: &O::T,
    f: &RowFn<'_, O>,
) -> OpResult<O::T> {
    let s = ops.shape(x);
    let n = s[0] * s[1];
    let flat = ops.reshape(x, &[1, n, s[2]])?;
    let mut outs = Vec::with_capacity(n.div_ceil(tile));
    for start in (0..n).step_by(tile) {
        let len = tile.min(n - start);
        let t = pad_to(ops, ops.narrow(&flat, 1, start, len)?, 1, tile, pad)?;
        let in_tile: Vec<Pick> = at
            .iter()
            .filter_map(|p| {
                let f = p.b * s[1] + p.s;
                (start..start + len).contains(&f).then(|| Pick {
                    b: 0,
                    s: f - start,
                    ..*p
                })
            })
            .collect();
        let y = f(&t, &in_tile)?;
        outs.push(if len < tile {
            ops.narrow(&y, 1, 0, len)?
        } else {
            y
        });
    }
    let y = match outs.len() {
        1 => outs.pop().expect("one tile"),
        _ => ops.cat(&outs, 1)?,
    };
    let width = *ops.shape(&y).last().expect("3-d tensor");
    ops.reshape(&y, &[s[0], s[1], width])
}

struct MlpLayer<O: Ops> {
    n1: (O::T, Option<O::T>),
    n2: (O::T, Option<O::T>),
    l1: O::Linear,
    l2: O::Linear,
}

fn upload_norm<O: Ops>(
    ops: &O,
    w: &Weights,
    p: &str,
    has_bias: bool,
    req: &RunRequest<'_>,
) -> OpResult<(O::T, Option<O::T>)> {
    let weight = ops.upload(w.get(&format!("{p}.weight")), req.dtype)?;
    let bias = if has_bias {
        Some(ops.upload(w.get(&format!("{p}.bias")), req.dtype)?)
    } else {
        None
    };
    Ok((weight, bias))
}

fn upload_linear<O: Ops>(
    ops: &O,
    w: &Weights,
    p: &str,
    req: &RunRequest<'_>,
) -> OpResult<O::Linear> {
    ops.prepare_linear(
        w.get(&format!("{p}.weight")),
        w.get(&format!("{p}.bias")),
        req.dtype,
    )
}

fn upload_mlp_layer<O: Ops>(
    ops: &O,
    m: &ResidualMlpSpec,
    l: usize,
    req: &RunRequest<'_>,
) -> OpResult<MlpLayer<O>> {
    let (w, bias) = (req.weights, m.norm.has_bias());
    Ok(MlpLayer::<O> {
        n1: upload_norm(ops, w, &format!("layers.{l}.norm1"), bias, req)?,
        n2: upload_norm(ops, w, &format!("layers.{l}.norm2"), bias, req)?,
        l1: upload_linear(ops, w, &format!("layers.{l}.linear1"), req)?,
        l2: upload_linear(ops, w, &format!("layers.{l}.linear2"), req)?,
    })
}

fn run_mlp<O: Ops>(ops: &O, m: &ResidualMlpSpec, req: &RunRequest<'_>) -> OpResult<Checkpoints> {
    // `full` keeps the input's layout and slices the observed rows;
    // `rows` feeds exactly the observed rows, as `[rows, 1, dim]`.
    let gathered;
    let (input, picks): (&HostTensor, Vec<(usize, usize)>) = match req.schedule {
        Schedule::Full => (
            req.input,
            req.observed.iter().map(|r| (r.batch, r.pos)).collect(),
        ),
        Schedule::Rows => {
            gathered = req.input.gather_rows(req.observed);
            (&gathered, (0..req.observed.len()).map(|i| (i, 0)).collect())
        }
        Schedule::Segments(_) => {
            return Err("a KV-cache schedule needs a decoder model, not residual_mlp".into());
        }
    };
    let at: Vec<Pick> = picks
        .iter()
        .zip(req.observed)
        .enumerate()
        .map(|(slot, (&(b, s), r))| Pick {
            slot,
            b,
            s,
            pos: r.pos,
        })
        .collect();
    let forced = req.diagnose.forced;
    if let Some(f) = forced
        && (f.rows, f.dim, f.layers.len()) != (req.observed.len(), m.dim, m.layers)
    {
        return Err(format!(
            "teacher forcing: the forced run has {} rows × {} wide × {} layers, this one {} × {} × {}",
            f.rows,
            f.dim,
            f.layers.len(),
            req.observed.len(),
            m.dim,
            m.layers
        ));
    }
    let taps = Taps::new(req.model, req.diagnose.ops, req.observed.len());
    let mode = Mode::new(ops, req, m.dim, 0)?;
    let mut x = ops.upload(input, req.dtype)?;
    let mut out = Vec::with_capacity(m.layers);
    for l in 0..m.layers {
        taps.layer.set(l);
        if let (Some(f), true) = (forced, l > 0) {
            x = replace_rows(ops, &x, &at, &f.layers[l - 1], req.dtype)?;
        }
        // One layer's weights on the device at a time: a pass uses each layer
        // once, so the model's weights never sit on the device in full.
        let layer = upload_mlp_layer(ops, m, l, req)?;
        let block = |x: &O::T, at: &[Pick]| -> OpResult<O::T> {
            // One binding, reassigned: each intermediate is dropped as soon
            // as the next exists (shadowing would keep all five alive).
            let mut h = ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps)?;
            taps.rows(ops, "norm1", &h, at)?;
            h = ops.linear(&h, &layer.l1)?;
            taps.rows(ops, "linear1", &h, at)?;
            h = ops.activation(&h, m.activation)?;
            taps.rows(ops, "act", &h, at)?;
            h = ops.linear(&h, &layer.l2)?;
            taps.rows(ops, "linear2", &h, at)?;
            h = ops.norm(m.norm, &h, &layer.n2.0, layer.n2.1.as_ref(), m.eps)?;
            taps.rows(ops, "norm2", &h, at)?;
            Ok(h)
        };
        let h = mode.rowwise(ops, &x, &at, &block)?;
        x = if m.residual {
            let y = ops.add(&x, &h)?;
            taps.rows(ops, "residual", &y, &at)?;
            y
        } else {
            h
        };
        out.push(take_rows(ops, &x, picks.iter().copied())?);
    }
    Ok(Checkpoints {
        dim: m.dim,
        rows: req.observed.len(),
        layers: out,
        ops: taps.finish()?,
    })
}

struct DecoderLayer<O: Ops> {
    n1: (O::T, Option<O::T>),
    q: O::Linear,
    k: O::Linear,
    v: O::Linear,
    o: O::Linear,
    n2: (O::T, Option<O::T>),
    fc1: O::Linear,
    fc2: O::Linear,
}

/// Per-layer K/V cache, `[batch, heads, cached, head_dim]`.
struct Cache<O: Ops> {
    k: Option<O::T>,
    v: Option<O::T>,
}

/// The rotary tables for positions `start..end`: `cos`, `sin` as
/// `[len, head_dim]`, computed in f64 on the host and rounded once, so every
/// backend multiplies by the same values.
fn rope_tables(theta: f64, head_dim: usize, start: usize, end: usize) -> (HostTensor, HostTensor) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity((end - start) * head_dim);
    let mut sin = Vec::with_capacity((end - start) * head_dim);
    for p in start..end {
        for j in 0..head_dim {
            let i = j % half;
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let a = p as f64 * freq;
            cos.push(libm::cos(a) as f32);
            sin.push(libm::sin(a) as f32);
        }
    }
    let shape = vec![end - start, head_dim];
    (
        HostTensor::new(shape.clone(), cos),
        HostTensor::new(shape, sin),
    )
}

/// NeoX/Llama rotary embedding: `x·cos + rotate_half(x)·sin`, where
/// `rotate_half([a, b]) = [-b, a]` over the two halves of the head dim.
fn apply_rope<O: Ops>(ops: &O, x: &O::T, cos: &O::T, sin: &O::T) -> OpResult<O::T> {
    let hd = *ops.shape(x).last().expect("4-d tensor");
    let a = ops.narrow(x, 3, 0, hd / 2)?;
    let b = ops.narrow(x, 3, hd / 2, hd / 2)?;
    let rot = ops.cat(&[ops.scale(&b, -1.0)?, a], 3)?;
    ops.add(&ops.mul(x, cos)?, &ops.mul(&rot, sin)?)
}

/// `[b, len, dim]` → `[b, heads, len, head_dim]`.
fn split_heads<O: Ops>(ops: &O, x: &O::T, heads: usize) -> OpResult<O::T> {
    let s = ops.shape(x);
    let x = ops.reshape(x, &[s[0], s[1], heads, s[2] / heads])?;
    ops.transpose(&x, 1, 2)
}

/// `[b, heads, len, head_dim]` → `[b, len, dim]`.
fn merge_heads<O: Ops>(ops: &O, x: &O::T) -> OpResult<O::T> {
    let s = ops.shape(x);
    let x = ops.transpose(x, 1, 2)?;
    ops.reshape(&x, &[s[0], s[2], s[1] * s[3]])
}

/// The additive causal mask for queries at `start..end` over keys `0..end`,
/// or `None` when no key needs hiding (a single decoded query).
fn causal_mask(start: usize, end: usize) -> Option<HostTensor> {
    let q = end - start;
    if q == 1 {
        return None;
    }
    let mut data = Vec::with_capacity(q * end);
    for i in 0..q {
        for j in 0..end {
            data.push(if j <= start + i {
                0.0
            } else {
                f32::NEG_INFINITY
            });
        }
    }
    Some(HostTensor::new(vec![q, end], data))
}

/// Scaled dot-product attention of `q` over `k`, `v` (`[b, heads, len,
/// head_dim]`), written out (`softmax(q·kᵀ·scale + mask)·v`) or the backend's
/// fused kernel; the written-out form records `scores` (before the mask)
/// and `softmax` at the observed queries `at`.
#[allow(clippy::too_many_arguments)]
fn attention<O: Ops>(
    ops: &O,
    form: AttentionForm,
    q: &O::T,
    k: &O::T,
    v: &O::T,
    mask: Option<&O::T>,
    scale: f64,
    (taps, at): (&Taps, &[Pick]),
) -> OpResult<O::T> {
    match form {
        AttentionForm::Manual => {
            let kt = ops.transpose(k, 2, 3)?;
            let scores = ops.scale(&ops.matmul(q, &kt)?, scale)?;
            taps.heads(ops, "scores", &scores, at, true)?;
            let scores = match mask {
                Some(mk) => ops.add(&scores, mk)?,
                None => scores,
            };
            let p = ops.softmax_last(&scores)?;
            taps.heads(ops, "softmax", &p, at, true)?;
            ops.matmul(&p, v)
        }
        AttentionForm::Fused => ops
            .fused_attention(q, k, v, mask, scale)
            .unwrap_or_else(|| Err("this backend has no fused attention".into())),
    }
}

fn upload_decoder_layer<O: Ops>(
    ops: &O,
    m: &DecoderSpec,
    l: usize,
    req: &RunRequest<'_>,
) -> OpResult<DecoderLayer<O>> {
    let (w, bias) = (req.weights, m.norm.has_bias());
    let p = |s: &str| format!("layers.{l}.{s}");
    Ok(DecoderLayer::<O> {
        n1: upload_norm(ops, w, &p("norm1"), bias, req)?,
        q: upload_linear(ops, w, &p("attn.q_proj"), req)?,
        k: upload_linear(ops, w, &p("attn.k_proj"), req)?,
        v: upload_linear(ops, w, &p("attn.v_proj"), req)?,
        o: upload_linear(ops, w, &p("attn.o_proj"), req)?,
        n2: upload_norm(ops, w, &p("norm2"), bias, req)?,
        fc1: upload_linear(ops, w, &p("mlp.fc1"), req)?,
        fc2: upload_linear(ops, w, &p("mlp.fc2"), req)?,
    })
}

/// One segment's constants: its causal mask (fixed shape: one per query
/// tile) and rotary tables.
struct SegmentConsts<O: Ops> {
    masks: Vec<O::T>,
    rope: Option<(O::T, O::T)>,
}

/// The additive masks of fixed-shape attention for queries at `start..end`:
/// one `[tile, capacity]` mask per tile of `tile` queries, a query at
/// position `p` seeing keys `0..=p`. A padding row sees key 0 only (its
/// result is dropped; a row that saw no key would be NaN).
fn tile_masks(start: usize, end: usize, tile: usize, capacity: usize) -> Vec<HostTensor> {
    (start..end)
        .step_by(tile)
        .map(|t0| {
            let mut data = Vec::with_capacity(tile * capacity);
            for i in 0..tile {
                let p = if t0 + i < end { t0 + i } else { 0 };
                data.extend((0..capacity).map(|j| if j <= p { 0.0 } else { f32::NEG_INFINITY }));
            }
            HostTensor::new(vec![tile, capacity], data)
        })
        .collect()
}

/// Fixed-shape attention ([`Execution::FixedShape`]) of `q` (`[batch,
/// heads, len, head_dim]`, positions from `start`) over `k`, `v` (`[batch,
/// heads, end, head_dim]`, positions `0..end`): per batch element, the keys
/// padded with zeros to `capacity` and the queries taken `tile` at a time
/// (the last tile padded with zero rows), each tile against the whole
/// capacity under its mask from [`tile_masks`]. Every call sees
/// `[1, heads, tile, head_dim]` queries over `[1, heads, capacity, head_dim]`
/// keys, in prefill, chunked prefill and decode alike; a hidden key's
/// probability is exactly 0 and its value row exactly 0, so it adds exactly
/// nothing.
#[allow(clippy::too_many_arguments)]
fn fixed_attention<O: Ops>(
    ops: &O,
    form: AttentionForm,
    (q, k, v): (&O::T, &O::T, &O::T),
    masks: &[O::T],
    tile: usize,
    // `[1, heads, max(tile, capacity), head_dim]` zeros.
    pad: &O::T,
    capacity: usize,
    scale: f64,
    (taps, at): (&Taps, &[Pick]),
) -> OpResult<O::T> {
    let qs = ops.shape(q);
    let mut batch = Vec::with_capacity(qs[0]);
    for b in 0..qs[0] {
        let kb = pad_to(ops, ops.narrow(k, 0, b, 1)?, 2, capacity, pad)?;
        let vb = pad_to(ops, ops.narrow(v, 0, b, 1)?, 2, capacity, pad)?;
        let qb = ops.narrow(q, 0, b, 1)?;
        let mut tiles = Vec::with_capacity(masks.len());
        for (t0, mask) in (0..qs[2]).step_by(tile).zip(masks) {
            let len = tile.min(qs[2] - t0);
            let qt = pad_to(ops, ops.narrow(&qb, 2, t0, len)?, 2, tile, pad)?;
            let in_tile: Vec<Pick> = at
                .iter()
                .filter(|p| p.b == b && (t0..t0 + len).contains(&p.s))
                .map(|p| Pick {
                    b: 0,
                    s: p.s - t0,
                    ..*p
                })
                .collect();
            let att = attention(
                ops,
                form,
                &qt,
                &kb,
                &vb,
                Some(mask),
                scale,
                (taps, &in_tile),
            )?;
            tiles.push(if len < tile {
                ops.narrow(&att, 2, 0, len)?
            } else {
                att
            });
        }
        batch.push(match tiles.len() {
            1 => tiles.pop().expect("one tile"),
            _ => ops.cat(&tiles, 2)?,
        });
    }
    match batch.len() {
        1 => Ok(batch.pop().expect("one batch element")),
        _ => ops.cat(&batch, 0),
    }
}

fn run_decoder<O: Ops>(ops: &O, m: &DecoderSpec, req: &RunRequest<'_>) -> OpResult<Checkpoints> {
    if req.diagnose.forced.is_some() {
        return Err("teacher forcing needs row-independent layers: a decoder row's layer input includes every earlier position's, which never leaves a backend".into());
    }
    let taps = Taps::new(req.model, req.diagnose.ops, req.observed.len());
    let seq = req.input.shape[1];
    let segments = match req.schedule {
        Schedule::Full => vec![(0, seq)],
        Schedule::Segments(s) => s.clone(),
        Schedule::Rows => return Err("the `rows` strategy does not apply to a decoder".into()),
    };
    let hd = m.head_dim();
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; req.observed.len()]; m.layers];

    // Fixed shape: every query tile attends over the same key capacity, the
    // input's whole sequence, whatever the schedule.
    let capacity = seq;
    let mode = Mode::new(ops, req, m.dim, capacity)?;
    let head_pad = match req.execution {
        Execution::FixedShape { tile } => Some(zeros(
            ops,
            &[1, m.heads, tile.max(capacity), hd],
            req.dtype,
        )?),
        _ => None,
    };
    let input = ops.upload(req.input, req.dtype)?;
    let mut consts = Vec::with_capacity(segments.len());
    let mut xs = Vec::with_capacity(segments.len());
    for &(start, end) in &segments {
        xs.push(ops.narrow(&input, 1, start, end - start)?);
        // Batch-invariant attention narrows the keys instead of masking them.
        let masks = match req.execution {
            Execution::Standard => causal_mask(start, end).into_iter().collect(),
            Execution::BatchInvariant => Vec::new(),
            Execution::FixedShape { tile } => tile_masks(start, end, tile, capacity),
        };
        let masks = masks
            .iter()
            .map(|t| ops.upload(t, req.dtype))
            .collect::<OpResult<Vec<_>>>()?;
        let rope = m
            .rope_theta
            .map(|theta| {
                let (c, s) = rope_tables(theta, hd, start, end);
                Ok::<_, String>((ops.upload(&c, req.dtype)?, ops.upload(&s, req.dtype)?))
            })
            .transpose()?;
        consts.push(SegmentConsts::<O> { masks, rope });
    }
    drop(input);
    // Layer by layer, each layer over every segment in schedule order: the
    // same ops on the same shapes as segment by segment (a segment's layer
    // `l` needs only its own layer `l - 1` and the cache of earlier
    // segments' layer `l`), so the numbers are the same — but only one
    // layer's weights and one layer's K/V cache are on the device at a time.
    for (l, rows_out) in out.iter_mut().enumerate() {
        taps.layer.set(l);
        let layer = upload_decoder_layer(ops, m, l, req)?;
        let mut cache = Cache::<O> { k: None, v: None };
        for (si, &(start, end)) in segments.iter().enumerate() {
            let SegmentConsts { masks, rope } = &consts[si];
            let x = &xs[si];
            // The observed rows this segment computes.
            let at: Vec<Pick> = req
                .observed
                .iter()
                .enumerate()
                .filter(|(_, r)| (start..end).contains(&r.pos))
                .map(|(slot, r)| Pick {
                    slot,
                    b: r.batch,
                    s: r.pos - start,
                    pos: r.pos,
                })
                .collect();
            let norm1 = |x: &O::T, at: &[Pick]| {
                let y = ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps)?;
                taps.rows(ops, "norm1", &y, at)?;
                Ok(y)
            };
            let h = mode.rowwise(ops, x, &at, &norm1)?;
            let proj = |w: &O::Linear, name: &'static str| -> OpResult<O::T> {
                let lin = |r: &O::T, at: &[Pick]| {
                    let y = ops.linear(r, w)?;
                    taps.rows(ops, name, &y, at)?;
                    Ok(y)
                };
                let y = mode.rowwise(ops, &h, &at, &lin)?;
                split_heads(ops, &y, m.heads)
            };
            let mut q = proj(&layer.q, "q")?;
            let mut k = proj(&layer.k, "k")?;
            let v = proj(&layer.v, "v")?;
            if let Some((c, s)) = rope {
                q = apply_rope(ops, &q, c, s)?;
                k = apply_rope(ops, &k, c, s)?;
                taps.heads(ops, "rope", &q, &at, false)?;
                taps.heads(ops, "rope", &k, &at, false)?;
            }
            let k = match cache.k.take() {
                Some(prev) => ops.cat(&[prev, k], 2)?,
                None => k,
            };
            let v = match cache.v.take() {
                Some(prev) => ops.cat(&[prev, v], 2)?,
                None => v,
            };
            let att = match (req.execution, &head_pad) {
                (Execution::BatchInvariant, _) => {
                    // Each query alone, over exactly the keys it may see: the
                    // same shapes whether the position is prefilled or decoded.
                    let qs = ops.shape(&q);
                    let mut batch = Vec::with_capacity(qs[0]);
                    for b in 0..qs[0] {
                        let (qb, kb, vb) = (
                            ops.narrow(&q, 0, b, 1)?,
                            ops.narrow(&k, 0, b, 1)?,
                            ops.narrow(&v, 0, b, 1)?,
                        );
                        let mut rows = Vec::with_capacity(qs[2]);
                        for i in 0..qs[2] {
                            let seen = start + i + 1;
                            rows.push(attention(
                                ops,
                                m.attention,
                                &ops.narrow(&qb, 2, i, 1)?,
                                &ops.narrow(&kb, 2, 0, seen)?,
                                &ops.narrow(&vb, 2, 0, seen)?,
                                None,
                                scale,
                                (&taps, &picks_at(&at, b, i)),
                            )?);
                        }
                        batch.push(ops.cat(&rows, 2)?);
                    }
                    ops.cat(&batch, 0)?
                }
                (Execution::FixedShape { tile }, Some(pad)) => fixed_attention(
                    ops,
                    m.attention,
                    (&q, &k, &v),
                    masks,
                    tile,
                    pad,
                    capacity,
                    scale,
                    (&taps, &at),
                )?,
                _ => attention(
                    ops,
                    m.attention,
                    &q,
                    &k,
                    &v,
                    masks.first(),
                    scale,
                    (&taps, &at),
                )?,
            };
            // The last segment's K/V are never read again.
            if si + 1 < segments.len() {
                cache.k = Some(k);
                cache.v = Some(v);
            }
            let merged = merge_heads(ops, &att)?;
            taps.rows(ops, "attn", &merged, &at)?;
            let o = |r: &O::T, at: &[Pick]| {
                let y = ops.linear(r, &layer.o)?;
                taps.rows(ops, "o", &y, at)?;
                Ok(y)
            };
            let att = mode.rowwise(ops, &merged, &at, &o)?;
            let mut x = ops.add(x, &att)?;
            taps.rows(ops, "residual1", &x, &at)?;
            let mlp = |x: &O::T, at: &[Pick]| -> OpResult<O::T> {
                let mut h = ops.norm(m.norm, x, &layer.n2.0, layer.n2.1.as_ref(), m.eps)?;
                taps.rows(ops, "norm2", &h, at)?;
                h = ops.linear(&h, &layer.fc1)?;
                taps.rows(ops, "fc1", &h, at)?;
                h = ops.activation(&h, m.activation)?;
                taps.rows(ops, "act", &h, at)?;
                h = ops.linear(&h, &layer.fc2)?;
                taps.rows(ops, "fc2", &h, at)?;
                Ok(h)
            };
            let h = mode.rowwise(ops, &x, &at, &mlp)?;
            x = ops.add(&x, &h)?;
            taps.rows(ops, "residual2", &x, &at)?;
            for (i, r) in req.observed.iter().enumerate() {
                if (start..end).contains(&r.pos) {
                    rows_out[i] = Some(take_rows(
                        ops,
                        &x,
                        std::iter::once((r.batch, r.pos - start)),
                    )?);
                }
            }
            xs[si] = x;
        }
    }
    let layers = out
        .into_iter()
        .map(|rows| {
            rows.into_iter()
                .map(|r| {
                    r.ok_or_else(|| "an observed position lies outside the schedule".to_string())
                })
                .collect::<OpResult<Vec<_>>>()
                .map(|v| v.concat())
        })
        .collect::<OpResult<Vec<_>>>()?;
    Ok(Checkpoints {
        dim: m.dim,
        rows: req.observed.len(),
        layers,
        ops: taps.finish()?,
    })
}

/// Positions the decoder must compute for `observed`: batch elements that
/// hold an observed row, and positions `0..=max observed position`. The
/// oracle runs on exactly this sub-input.
pub(crate) fn decoder_support(observed: &[Row]) -> (Vec<usize>, usize) {
    let mut batches: Vec<usize> = observed.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let len = observed.iter().map(|r| r.pos + 1).max().unwrap_or(0);
    (batches, len)
}
