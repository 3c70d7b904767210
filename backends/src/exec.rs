//! The models and schedules, written once over [`Ops`].
//!
//! Only observed rows leave: after each layer the observed rows are sliced
//! out, downloaded, and the activation is dropped when the next layer
//! replaces it.

use crate::backend::BackendError;
use crate::host::HostTensor;
use crate::model::{AttentionForm, DecoderSpec, ModelSpec, ResidualMlpSpec};
use crate::ops::{OpResult, Ops};
use crate::request::{Checkpoints, Row, RunRequest, Schedule};
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
/// batch-invariant execution ([`RunRequest::batch_invariant`]).
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

/// `f` on the whole of `x`, or on each row alone when `invariant`.
fn rowwise<O: Ops>(
    ops: &O,
    invariant: bool,
    x: &O::T,
    f: &dyn Fn(&O::T) -> OpResult<O::T>,
) -> OpResult<O::T> {
    if invariant { each_row(ops, x, f) } else { f(x) }
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
        let h = rowwise(ops, req.batch_invariant, &x, &block)?;
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

/// One segment's constants: its causal mask and rotary tables.
struct SegmentConsts<O: Ops> {
    mask: Option<O::T>,
    rope: Option<(O::T, O::T)>,
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

    let input = ops.upload(req.input, req.dtype)?;
    let inv = req.batch_invariant;
    let mut consts = Vec::with_capacity(segments.len());
    let mut xs = Vec::with_capacity(segments.len());
    for &(start, end) in &segments {
        xs.push(ops.narrow(&input, 1, start, end - start)?);
        // Batch-invariant attention narrows the keys instead of masking them.
        let mask = causal_mask(start, end)
            .filter(|_| !inv)
            .map(|t| ops.upload(&t, req.dtype))
            .transpose()?;
        let rope = m
            .rope_theta
            .map(|theta| {
                let (c, s) = rope_tables(theta, hd, start, end);
                Ok::<_, String>((ops.upload(&c, req.dtype)?, ops.upload(&s, req.dtype)?))
            })
            .transpose()?;
        consts.push(SegmentConsts::<O> { mask, rope });
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
            let SegmentConsts { mask, rope } = &consts[si];
            let x = &xs[si];
            let norm1 = |x: &O::T| ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps);
            let h = rowwise(ops, inv, x, &norm1)?;
            let proj = |w: &O::Linear| -> OpResult<O::T> {
                let y = rowwise(ops, inv, &h, &|r: &O::T| ops.linear(r, w))?;
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
            let att = if inv {
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
            } else {
                attention(ops, m.attention, &q, &k, &v, mask.as_ref(), scale)?
            };
            // The last segment's K/V are never read again.
            if si + 1 < segments.len() {
                cache.k = Some(k);
                cache.v = Some(v);
            }
            let merged = merge_heads(ops, &att)?;
            let att = rowwise(ops, inv, &merged, &|r: &O::T| ops.linear(r, &layer.o))?;
            let mut x = ops.add(x, &att)?;
            let mlp = |x: &O::T| -> OpResult<O::T> {
                let h = ops.norm(m.norm, x, &layer.n2.0, layer.n2.1.as_ref(), m.eps)?;
                ops.linear(
                    &ops.activation(&ops.linear(&h, &layer.fc1)?, m.activation)?,
                    &layer.fc2,
                )
            };
            let h = rowwise(ops, inv, &x, &mlp)?;
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
