//! The models and schedules, written once over [`Ops`].
//!
//! Only observed rows leave: after each layer the observed rows are sliced
//! out, downloaded, and the activation is dropped when the next layer
//! replaces it.

use crate::backend::BackendError;
use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{AttentionForm, DecoderSpec, ModelSpec, Norm, ResidualMlpSpec};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbeOp, ProbeRequest};
use crate::request::{Checkpoints, Execution, Row, RunRequest, Schedule};
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

/// `f` applied to every `[1, 1, width]` row of `x` (`[batch, len, width]`)
/// alone, the results put back in place. No op inside `f` sees more than one
/// row, so no row's result can depend on how many rows were computed with it:
/// [`Execution::BatchInvariant`].
fn each_row<O: Ops>(ops: &O, x: &O::T, f: &dyn Fn(&O::T) -> OpResult<O::T>) -> OpResult<O::T> {
    let s = ops.shape(x);
    let mut batch = Vec::with_capacity(s[0]);
    for b in 0..s[0] {
        let xb = ops.narrow(x, 0, b, 1)?;
        let mut rows = Vec::with_capacity(s[1]);
        for p in 0..s[1] {
            rows.push(f(&ops.narrow(&xb, 1, p, 1)?)?);
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

    /// `f` on `x` (`[batch, len, dim]`) as the mode says: on the whole of
    /// `x`, on each row alone, or on fixed tiles of rows.
    fn rowwise(&self, ops: &O, x: &O::T, f: &dyn Fn(&O::T) -> OpResult<O::T>) -> OpResult<O::T> {
        match (self.execution, &self.pad) {
            (Execution::BatchInvariant, _) => each_row(ops, x, f),
            (Execution::FixedShape { tile }, Some(pad)) => each_tile(ops, x, tile, pad, f),
            _ => f(x),
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
    tile: usize,
    pad: &O::T,
    f: &dyn Fn(&O::T) -> OpResult<O::T>,
) -> OpResult<O::T> {
    let s = ops.shape(x);
    let n = s[0] * s[1];
    let flat = ops.reshape(x, &[1, n, s[2]])?;
    let mut outs = Vec::with_capacity(n.div_ceil(tile));
    for start in (0..n).step_by(tile) {
        let len = tile.min(n - start);
        let t = pad_to(ops, ops.narrow(&flat, 1, start, len)?, 1, tile, pad)?;
        let y = f(&t)?;
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
    let mode = Mode::new(ops, req, m.dim, 0)?;
    let mut x = ops.upload(input, req.dtype)?;
    let mut out = Vec::with_capacity(m.layers);
    for l in 0..m.layers {
        // One layer's weights on the device at a time: a pass uses each layer
        // once, so the model's weights never sit on the device in full.
        let layer = upload_mlp_layer(ops, m, l, req)?;
        let block = |x: &O::T| -> OpResult<O::T> {
            // One binding, reassigned: each intermediate is dropped as soon
            // as the next exists (shadowing would keep all five alive).
            let mut h = ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps)?;
            h = ops.linear(&h, &layer.l1)?;
            h = ops.activation(&h, m.activation)?;
            h = ops.linear(&h, &layer.l2)?;
            ops.norm(m.norm, &h, &layer.n2.0, layer.n2.1.as_ref(), m.eps)
        };
        let h = mode.rowwise(ops, &x, &block)?;
        x = if m.residual { ops.add(&x, &h)? } else { h };
        out.push(take_rows(ops, &x, picks.iter().copied())?);
    }
    Ok(Checkpoints {
        dim: m.dim,
        rows: req.observed.len(),
        layers: out,
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
/// fused kernel.
fn attention<O: Ops>(
    ops: &O,
    form: AttentionForm,
    q: &O::T,
    k: &O::T,
    v: &O::T,
    mask: Option<&O::T>,
    scale: f64,
) -> OpResult<O::T> {
    match form {
        AttentionForm::Manual => {
            let kt = ops.transpose(k, 2, 3)?;
            let scores = ops.scale(&ops.matmul(q, &kt)?, scale)?;
            let scores = match mask {
                Some(mk) => ops.add(&scores, mk)?,
                None => scores,
            };
            ops.matmul(&ops.softmax_last(&scores)?, v)
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
            let att = attention(ops, form, &qt, &kb, &vb, Some(mask), scale)?;
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
        let layer = upload_decoder_layer(ops, m, l, req)?;
        let mut cache = Cache::<O> { k: None, v: None };
        for (si, &(start, end)) in segments.iter().enumerate() {
            let SegmentConsts { masks, rope } = &consts[si];
            let x = &xs[si];
            let norm1 = |x: &O::T| ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps);
            let h = mode.rowwise(ops, x, &norm1)?;
            let proj = |w: &O::Linear| -> OpResult<O::T> {
                let y = mode.rowwise(ops, &h, &|r: &O::T| ops.linear(r, w))?;
                split_heads(ops, &y, m.heads)
            };
            let mut q = proj(&layer.q)?;
            let mut k = proj(&layer.k)?;
            let v = proj(&layer.v)?;
            if let Some((c, s)) = rope {
                q = apply_rope(ops, &q, c, s)?;
                k = apply_rope(ops, &k, c, s)?;
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
                )?,
                _ => attention(ops, m.attention, &q, &k, &v, masks.first(), scale)?,
            };
            // The last segment's K/V are never read again.
            if si + 1 < segments.len() {
                cache.k = Some(k);
                cache.v = Some(v);
            }
            let merged = merge_heads(ops, &att)?;
            let att = mode.rowwise(ops, &merged, &|r: &O::T| ops.linear(r, &layer.o))?;
            let mut x = ops.add(x, &att)?;
            let mlp = |x: &O::T| -> OpResult<O::T> {
                let h = ops.norm(m.norm, x, &layer.n2.0, layer.n2.1.as_ref(), m.eps)?;
                ops.linear(
                    &ops.activation(&ops.linear(&h, &layer.fc1)?, m.activation)?,
                    &layer.fc2,
                )
            };
            let h = mode.rowwise(ops, &x, &mlp)?;
            x = ops.add(&x, &h)?;
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
