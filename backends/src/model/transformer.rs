//! The decoder-only transformer forward pass shared by every decoder kind
//! (`decoder`, `llama`, `gpt2`): pre-norm blocks of causal self-attention
//! and an MLP, run in segments through a per-layer K/V cache, in every
//! execution mode. A kind describes its block as a [`Plan`] — parameter
//! names, biases, grouped-query heads, rotary or learned positions, plain or
//! gated MLP, fused QKV, the LM head — and this file computes it.

use super::{Activation, AttentionForm, Norm};
use crate::exec::{
    Mode, Pick, Pins, Taps, pad_to, picks_at, take_rows, upload_linear, upload_norm, zeros,
};
use crate::host::HostTensor;
use crate::ops::{Layout, OpResult, Ops};
use crate::probe::ProbeOp;
use crate::request::{Checkpoints, Execution, HeadCheckpoints, Row, RunRequest, Schedule};

/// One parameter group of a block, named per kind by [`Plan::names`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The norm before attention.
    Norm1,
    /// Query, key, value projections (separate).
    Q,
    /// See [`Part::Q`].
    K,
    /// See [`Part::Q`].
    V,
    /// The fused query-key-value projection (GPT-2's `c_attn`).
    Qkv,
    /// The attention output projection.
    O,
    /// The norm before the MLP.
    Norm2,
    /// The MLP's first linear (plain MLP) or gate projection (gated).
    Fc1,
    /// The gated MLP's up projection.
    Up,
    /// The MLP's last linear.
    Fc2,
}

/// How a block projects queries, keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qkv {
    /// Three linears (`q_proj`, `k_proj`, `v_proj`).
    Separate,
    /// One linear to `[q | k | v]` (GPT-2's `c_attn`), split after.
    Fused,
}

/// A block's MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mlp {
    /// `fc2(act(fc1(x)))`.
    Plain(Activation),
    /// SwiGLU: `down(act(gate(x)) · up(x))`.
    Gated(Activation),
}

/// How the rotary tables are computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RopeTables {
    /// In f64 on the host, rounded once (layerdrift's own `decoder`).
    HostF64,
    /// In f32, by each library, as Hugging Face's `LlamaRotaryEmbedding`
    /// does ([`crate::ops::Ops::rope_tables_f32`]).
    HfF32,
}

/// Rotary position embeddings (rotate-half layout).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rope {
    pub(crate) theta: f64,
    pub(crate) tables: RopeTables,
}

/// The LM head: final norm, then logits.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeadPlan {
    /// The final norm's parameter prefix (`model.norm`, `transformer.ln_f`).
    pub(crate) norm: &'static str,
    /// The output projection's weight (`[vocab, dim]`; the token embedding
    /// itself when tied).
    pub(crate) lm_head: &'static str,
    /// Vocabulary size.
    pub(crate) vocab: usize,
}

/// One decoder kind's block, as the forward pass needs it.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) layers: usize,
    pub(crate) dim: usize,
    pub(crate) heads: usize,
    /// Key/value heads (`heads` without grouped-query attention).
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// The attention scale on `q·kᵀ`. Hugging Face multiplies by
    /// `head_dim ** -0.5` (C's `pow`); layerdrift's own decoder by
    /// `1 / sqrt(head_dim)`, which differs in the last bit at some widths
    /// (128: …845 vs …843).
    pub(crate) scale: f64,
    pub(crate) hidden: usize,
    pub(crate) norm: Norm,
    pub(crate) eps: f64,
    pub(crate) rope: Option<Rope>,
    pub(crate) attention: AttentionForm,
    pub(crate) qkv: Qkv,
    /// Whether the Q/K/V projections have biases.
    pub(crate) qkv_bias: bool,
    /// Whether the output projection and the MLP linears have biases.
    pub(crate) out_bias: bool,
    pub(crate) mlp: Mlp,
    pub(crate) layout: Layout,
    /// `{prefix}` of a block's parameter group (`{prefix}.weight`).
    pub(crate) names: fn(usize, Part) -> String,
    pub(crate) head: Option<HeadPlan>,
}

impl Plan {
    /// The op names of one block ([`super::ModelSpec::op_names`]).
    pub(crate) fn op_names(&self) -> Vec<&'static str> {
        let mut v = vec!["norm1"];
        if self.qkv == Qkv::Fused {
            v.push("qkv");
        }
        v.extend(["q", "k", "v"]);
        if self.rope.is_some() {
            v.push("rope");
        }
        if self.attention == AttentionForm::Manual {
            v.extend(["scores", "softmax"]);
        }
        v.extend(["attn", "o", "residual1", "norm2"]);
        match self.mlp {
            Mlp::Plain(_) => v.extend(["fc1", "act", "fc2"]),
            Mlp::Gated(_) => v.extend(["gate", "act", "up", "mul", "down"]),
        }
        v.push("residual2");
        v
    }

    /// The `(in, out)` widths of the block's linears (each shape once), then
    /// the LM head's.
    pub(crate) fn linear_shapes(&self) -> Vec<(usize, usize)> {
        let (d, kv) = (self.dim, self.kv_heads * self.head_dim);
        let mut v = match self.qkv {
            Qkv::Separate if kv != d => vec![(d, d), (d, kv)],
            Qkv::Separate => vec![(d, d)],
            Qkv::Fused => vec![(d, 3 * d), (d, d)],
        };
        v.extend([(d, self.hidden), (self.hidden, d)]);
        if let Some(h) = &self.head {
            v.push((d, h.vocab));
        }
        v
    }

    /// The row-mixing ops, as kernel-dispatch probes `(op, width, out, heads)`.
    pub(crate) fn probes(&self, capacity: usize) -> Vec<(ProbeOp, usize, usize, usize)> {
        let att = match self.attention {
            AttentionForm::Manual => ProbeOp::Attention,
            AttentionForm::Fused => ProbeOp::FusedAttention,
        };
        let mut v = vec![(super::norm_probe(self.norm), self.dim, 0, 1)];
        v.extend(
            self.linear_shapes()
                .into_iter()
                .map(|(i, o)| (ProbeOp::Linear, i, o, 1)),
        );
        v.push((att, self.head_dim, capacity, self.heads));
        v
    }

    fn linear(&self, part: Part) -> (bool, Layout) {
        let bias = match part {
            Part::Q | Part::K | Part::V | Part::Qkv => self.qkv_bias,
            Part::O | Part::Fc1 | Part::Up | Part::Fc2 => self.out_bias,
            Part::Norm1 | Part::Norm2 => false,
        };
        (bias, self.layout)
    }
}

/// One block's parameters on the device.
pub(super) struct Layer<O: Ops> {
    pub(super) n1: (O::T, Option<O::T>),
    /// `[q, k, v]`, or the fused projection alone.
    pub(super) qkv: Vec<O::Linear>,
    pub(super) o: O::Linear,
    pub(super) n2: (O::T, Option<O::T>),
    pub(super) fc1: O::Linear,
    pub(super) up: Option<O::Linear>,
    pub(super) fc2: O::Linear,
}

pub(super) fn upload_layer<O: Ops>(
    ops: &O,
    p: &Plan,
    l: usize,
    req: &RunRequest<'_>,
) -> OpResult<Layer<O>> {
    let w = req.weights;
    let bias = p.norm.has_bias();
    let name = |part| (p.names)(l, part);
    let lin = |part| upload_linear(ops, w, &name(part), p.linear(part), req);
    Ok(Layer::<O> {
        n1: upload_norm(ops, w, &name(Part::Norm1), bias, req)?,
        qkv: match p.qkv {
            Qkv::Separate => vec![lin(Part::Q)?, lin(Part::K)?, lin(Part::V)?],
            Qkv::Fused => vec![lin(Part::Qkv)?],
        },
        o: lin(Part::O)?,
        n2: upload_norm(ops, w, &name(Part::Norm2), bias, req)?,
        fc1: lin(Part::Fc1)?,
        up: match p.mlp {
            Mlp::Plain(_) => None,
            Mlp::Gated(_) => Some(lin(Part::Up)?),
        },
        fc2: lin(Part::Fc2)?,
    })
}

/// `[b, heads, len, hd]` keys or values with each of `kv_heads` heads
/// repeated `heads / kv_heads` times in place (`kv0, kv0, kv1, kv1, …`), as
/// transformers' `repeat_kv`; unchanged without grouped-query attention.
fn repeat_kv<O: Ops>(ops: &O, x: O::T, rep: usize) -> OpResult<O::T> {
    if rep == 1 {
        return Ok(x);
    }
    let kv = ops.shape(&x)[1];
    let mut parts = Vec::with_capacity(kv * rep);
    for h in 0..kv {
        let one = ops.narrow(&x, 1, h, 1)?;
        for _ in 0..rep {
            parts.push(one.clone());
        }
    }
    ops.cat(&parts, 1)
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
    rope_grid(head_dim, start, end, |p, i| {
        let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
        let a = p as f64 * freq;
        (libm::cos(a) as f32, libm::sin(a) as f32)
    })
}

/// The rotary tables of positions `start..end` as Hugging Face computes
/// them, in f32 ([`RopeTables::HfF32`]), with `libm`'s f32 functions: every
/// backend but libtorch (which computes its own) uses these.
pub(crate) fn rope_tables_f32(
    theta: f64,
    head_dim: usize,
    start: usize,
    end: usize,
) -> (HostTensor, HostTensor) {
    let theta = theta as f32;
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / libm::powf(theta, (2 * i) as f32 / head_dim as f32))
        .collect();
    rope_grid(head_dim, start, end, |p, i| {
        let a = p as f32 * inv[i];
        (libm::cosf(a), libm::sinf(a))
    })
}

/// `cos`, `sin` tables `[end - start, head_dim]`: entry `(p, j)` is
/// `angle(p, j % (head_dim / 2))` — the two halves of a head repeat.
fn rope_grid(
    head_dim: usize,
    start: usize,
    end: usize,
    angle: impl Fn(usize, usize) -> (f32, f32),
) -> (HostTensor, HostTensor) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity((end - start) * head_dim);
    let mut sin = Vec::with_capacity((end - start) * head_dim);
    for p in start..end {
        for j in 0..head_dim {
            let (c, s) = angle(p, j % half);
            cos.push(c);
            sin.push(s);
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
pub(super) fn split_heads<O: Ops>(ops: &O, x: &O::T, heads: usize) -> OpResult<O::T> {
    let s = ops.shape(x);
    let x = ops.reshape(x, &[s[0], s[1], heads, s[2] / heads])?;
    ops.transpose(&x, 1, 2)
}

/// `[b, heads, len, head_dim]` → `[b, len, dim]`.
pub(super) fn merge_heads<O: Ops>(ops: &O, x: &O::T) -> OpResult<O::T> {
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

/// The observed rows among positions `start..end`.
fn picks_in(req: &RunRequest<'_>, start: usize, end: usize) -> Vec<Pick> {
    req.observed
        .iter()
        .enumerate()
        .filter(|(_, r)| (start..end).contains(&r.pos))
        .map(|(slot, r)| Pick {
            slot,
            b: r.batch,
            s: r.pos - start,
            pos: r.pos,
        })
        .collect()
}

/// `slots[i]` for every observed row, concatenated; an error if a row was
/// never computed.
pub(super) fn gather_slots(slots: Vec<Option<Vec<f64>>>) -> OpResult<Vec<f64>> {
    slots
        .into_iter()
        .map(|r| r.ok_or_else(|| "an observed position lies outside the schedule".to_string()))
        .collect::<OpResult<Vec<_>>>()
        .map(|v| v.concat())
}

/// Runs the transformer `p` on `req`.
pub(crate) fn run<O: Ops>(
    ops: &O,
    p: &Plan,
    req: &RunRequest<'_>,
    pins: Option<&Pins>,
) -> OpResult<Checkpoints> {
    if req.diagnose.forced.is_some() {
        return Err("teacher forcing needs row-independent layers: a decoder row's layer input includes every earlier position's, which never leaves a backend".into());
    }
    let taps = Taps::new(req.model, req.diagnose.ops, req.observed.len());
    let seq = req.input.shape[1];
    let segments = match req.schedule {
        Schedule::Full => vec![(0, seq)],
        Schedule::Segments(s) => s.clone(),
        Schedule::Rows => return Err("the `rows` strategy does not apply to attention".into()),
        Schedule::Padded { .. } | Schedule::Alone { .. } => {
            return Err("`alone` and `padded` apply to an encoder, not a decoder".into());
        }
    };
    let hd = p.head_dim;
    let rep = p.heads / p.kv_heads;
    let scale = p.scale;
    let rows = req.observed.len();
    let mut out: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; rows]; p.layers];

    // Fixed shape: every query tile attends over the same key capacity, the
    // input's whole sequence, whatever the schedule.
    let capacity = seq;
    let mode = Mode::new(ops, req, p.dim, capacity, pins)?;
    // Pinned: one tile per segment, its queries padded to the certified
    // count.
    let query_tile = |start: usize, end: usize| -> OpResult<usize> {
        match (req.execution, pins) {
            (Execution::Pinned { .. }, Some(pins)) => Pins::padded(&pins.queries, end - start),
            (Execution::FixedShape { tile }, _) => Ok(tile),
            (Execution::Pinned { .. }, None)
            | (Execution::Standard | Execution::BatchInvariant, _) => {
                Err("internal: a query tile outside fixed-shape and pinned execution".into())
            }
        }
    };
    let head_pad = match req.execution {
        Execution::FixedShape { tile } => Some(zeros(
            ops,
            &[1, p.heads, tile.max(capacity), hd],
            req.dtype,
        )?),
        Execution::Pinned { .. } => {
            let most = pins
                .map(|p| p.queries.values().copied().max().unwrap_or(1))
                .unwrap_or(1);
            Some(zeros(
                ops,
                &[1, p.heads, most.max(capacity), hd],
                req.dtype,
            )?)
        }
        Execution::Standard | Execution::BatchInvariant => None,
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
            Execution::FixedShape { .. } | Execution::Pinned { .. } => {
                tile_masks(start, end, query_tile(start, end)?, capacity)
            }
        };
        let masks = masks
            .iter()
            .map(|t| ops.upload(t, req.dtype))
            .collect::<OpResult<Vec<_>>>()?;
        let rope = match p.rope {
            None => None,
            Some(Rope {
                theta,
                tables: RopeTables::HostF64,
            }) => {
                let (c, s) = rope_tables(theta, hd, start, end);
                Some((ops.upload(&c, req.dtype)?, ops.upload(&s, req.dtype)?))
            }
            Some(Rope {
                theta,
                tables: RopeTables::HfF32,
            }) => Some(ops.rope_tables_f32(theta, hd, (start, end), req.dtype)?),
        };
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
        let layer = upload_layer(ops, p, l, req)?;
        let mut cache = Cache::<O> { k: None, v: None };
        for (si, &(start, end)) in segments.iter().enumerate() {
            let SegmentConsts { masks, rope } = &consts[si];
            let x = &xs[si];
            let at = picks_in(req, start, end);
            let norm1 = |x: &O::T, at: &[Pick]| {
                let y = ops.norm(p.norm, x, &layer.n1.0, layer.n1.1.as_ref(), p.eps)?;
                taps.rows(ops, "norm1", &y, at)?;
                Ok(y)
            };
            let h = mode.rowwise(ops, x, &at, &norm1)?;
            let lin = |w: &O::Linear, name: &'static str, input: &O::T| -> OpResult<O::T> {
                let f = |r: &O::T, at: &[Pick]| {
                    let y = ops.linear(r, w)?;
                    taps.rows(ops, name, &y, at)?;
                    Ok(y)
                };
                mode.rowwise(ops, input, &at, &f)
            };
            let (q, k, v) = match p.qkv {
                Qkv::Separate => (
                    lin(&layer.qkv[0], "q", &h)?,
                    lin(&layer.qkv[1], "k", &h)?,
                    lin(&layer.qkv[2], "v", &h)?,
                ),
                Qkv::Fused => {
                    // GPT-2: `c_attn(x).split(dim, dim=2)`.
                    let y = lin(&layer.qkv[0], "qkv", &h)?;
                    let part = |i: usize, name: &'static str| -> OpResult<O::T> {
                        let part = ops.narrow(&y, 2, i * p.dim, p.dim)?;
                        taps.rows(ops, name, &part, &at)?;
                        Ok(part)
                    };
                    (part(0, "q")?, part(1, "k")?, part(2, "v")?)
                }
            };
            drop(h);
            let mut q = split_heads(ops, &q, p.heads)?;
            let mut k = split_heads(ops, &k, p.kv_heads)?;
            let v = split_heads(ops, &v, p.kv_heads)?;
            if let Some((c, s)) = rope {
                q = apply_rope(ops, &q, c, s)?;
                k = apply_rope(ops, &k, c, s)?;
                taps.heads(ops, "rope", &q, &at, false)?;
                taps.heads(ops, "rope", &k, &at, false)?;
            }
            // The cache holds the key/value heads as computed (before
            // grouped-query repetition, as transformers' cache does).
            let k = match cache.k.take() {
                Some(prev) => ops.cat(&[prev, k], 2)?,
                None => k,
            };
            let v = match cache.v.take() {
                Some(prev) => ops.cat(&[prev, v], 2)?,
                None => v,
            };
            let (kr, vr) = (
                repeat_kv(ops, k.clone(), rep)?,
                repeat_kv(ops, v.clone(), rep)?,
            );
            let att = match (req.execution, &head_pad) {
                (Execution::BatchInvariant, _) => {
                    // Each query alone, over exactly the keys it may see: the
                    // same shapes whether the position is prefilled or decoded.
                    let qs = ops.shape(&q);
                    let mut batch = Vec::with_capacity(qs[0]);
                    for b in 0..qs[0] {
                        let (qb, kb, vb) = (
                            ops.narrow(&q, 0, b, 1)?,
                            ops.narrow(&kr, 0, b, 1)?,
                            ops.narrow(&vr, 0, b, 1)?,
                        );
                        let mut rows = Vec::with_capacity(qs[2]);
                        for i in 0..qs[2] {
                            let seen = start + i + 1;
                            rows.push(attention(
                                ops,
                                p.attention,
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
                (Execution::FixedShape { .. } | Execution::Pinned { .. }, Some(pad)) => {
                    fixed_attention(
                        ops,
                        p.attention,
                        (&q, &kr, &vr),
                        masks,
                        query_tile(start, end)?,
                        pad,
                        capacity,
                        scale,
                        (&taps, &at),
                    )?
                }
                _ => attention(
                    ops,
                    p.attention,
                    &q,
                    &kr,
                    &vr,
                    masks.first(),
                    scale,
                    (&taps, &at),
                )?,
            };
            drop((kr, vr, q));
            // The last segment's K/V are never read again.
            if si + 1 < segments.len() {
                cache.k = Some(k);
                cache.v = Some(v);
            }
            let merged = merge_heads(ops, &att)?;
            taps.rows(ops, "attn", &merged, &at)?;
            let att = lin(&layer.o, "o", &merged)?;
            let mut x = ops.add(x, &att)?;
            taps.rows(ops, "residual1", &x, &at)?;
            let mlp = |x: &O::T, at: &[Pick]| -> OpResult<O::T> {
                let h = ops.norm(p.norm, x, &layer.n2.0, layer.n2.1.as_ref(), p.eps)?;
                taps.rows(ops, "norm2", &h, at)?;
                match (p.mlp, &layer.up) {
                    (Mlp::Gated(act), Some(up)) => {
                        let g = ops.linear(&h, &layer.fc1)?;
                        taps.rows(ops, "gate", &g, at)?;
                        let g = ops.activation(&g, act)?;
                        taps.rows(ops, "act", &g, at)?;
                        let u = ops.linear(&h, up)?;
                        taps.rows(ops, "up", &u, at)?;
                        let m = ops.mul(&g, &u)?;
                        taps.rows(ops, "mul", &m, at)?;
                        let y = ops.linear(&m, &layer.fc2)?;
                        taps.rows(ops, "down", &y, at)?;
                        Ok(y)
                    }
                    (Mlp::Plain(act), _) => {
                        let mut y = ops.linear(&h, &layer.fc1)?;
                        taps.rows(ops, "fc1", &y, at)?;
                        y = ops.activation(&y, act)?;
                        taps.rows(ops, "act", &y, at)?;
                        y = ops.linear(&y, &layer.fc2)?;
                        taps.rows(ops, "fc2", &y, at)?;
                        Ok(y)
                    }
                    (Mlp::Gated(_), None) => {
                        Err("internal: a gated MLP without its up projection".into())
                    }
                }
            };
            let h = mode.rowwise(ops, &x, &at, &mlp)?;
            x = ops.add(&x, &h)?;
            taps.rows(ops, "residual2", &x, &at)?;
            for pk in &at {
                rows_out[pk.slot] = Some(take_rows(ops, &x, std::iter::once((pk.b, pk.s)))?);
            }
            xs[si] = x;
        }
    }
    let head = match &p.head {
        None => None,
        Some(hp) => Some(run_head(ops, p, hp, req, &segments, &xs, &mode)?),
    };
    let layers = out
        .into_iter()
        .map(gather_slots)
        .collect::<OpResult<Vec<_>>>()?;
    Ok(Checkpoints {
        dim: p.dim,
        rows,
        layers,
        ops: taps.finish()?,
        head,
    })
}

/// The final norm and the logits over every position of each segment (as a
/// plain forward pass computes them), the observed rows kept.
fn run_head<O: Ops>(
    ops: &O,
    p: &Plan,
    hp: &HeadPlan,
    req: &RunRequest<'_>,
    segments: &[(usize, usize)],
    xs: &[O::T],
    mode: &Mode<'_, O>,
) -> OpResult<HeadCheckpoints> {
    let w = req.weights;
    let norm = upload_norm(ops, w, hp.norm, p.norm.has_bias(), req)?;
    let lm = ops.prepare_linear(w.get(hp.lm_head), None, req.dtype)?;
    let rows = req.observed.len();
    let (mut normed, mut logits) = (vec![None; rows], vec![None; rows]);
    for (&(start, end), x) in segments.iter().zip(xs) {
        let at = picks_in(req, start, end);
        let f = |x: &O::T, _: &[Pick]| ops.norm(p.norm, x, &norm.0, norm.1.as_ref(), p.eps);
        let h = mode.rowwise(ops, x, &at, &f)?;
        let g = |x: &O::T, _: &[Pick]| ops.linear(x, &lm);
        let y = mode.rowwise(ops, &h, &at, &g)?;
        for pk in &at {
            normed[pk.slot] = Some(take_rows(ops, &h, std::iter::once((pk.b, pk.s)))?);
            logits[pk.slot] = Some(take_rows(ops, &y, std::iter::once((pk.b, pk.s)))?);
        }
    }
    Ok(HeadCheckpoints {
        vocab: hp.vocab,
        final_norm: gather_slots(normed)?,
        logits: gather_slots(logits)?,
    })
}

/// Positions the decoder must compute for `observed`: batch elements that
/// hold an observed row, and positions `0..=max observed position`. The
/// oracle runs on exactly this sub-input.
pub(crate) fn support(observed: &[Row]) -> (Vec<usize>, usize) {
    let mut batches: Vec<usize> = observed.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let len = observed.iter().map(|r| r.pos + 1).max().unwrap_or(0);
    (batches, len)
}
