//! A BERT-style encoder (`kind: bert`, or a `BertModel` checkpoint such as
//! all-MiniLM-L6-v2) as transformers' `BertModel` computes it, followed by
//! sentence-transformers' mean pooling and L2 normalisation:
//!
//! - embeddings: word + token type 0 + learned position (summed on the host
//!   in f32, in transformers' order), then `embeddings.LayerNorm` on the
//!   backend (op `embed_norm`, recorded in layer 1);
//! - post-norm blocks: `x = LN₁(x + O·attn(x))`, `x = LN₂(x + fc₂·gelu(fc₁·x))`;
//! - bidirectional attention, written out (`softmax(q·kᵀ·d⁻½ + mask)·v`), the
//!   keys beyond a sequence's real tokens masked with `-inf` (their
//!   probability is exactly 0, so padding never reaches a real row: only
//!   the shapes the kernels see change);
//! - one more checkpoint after the last block: each observed row's sequence
//!   embedding — the mean of its real tokens' last hidden states, divided by
//!   its L2 norm (computed on the backend: a `[1, n]` ones matmul, a scale,
//!   and an RMSNorm without epsilon scaled by `d⁻½`).
//!
//! Parameter names are Hugging Face's (`encoder.layer.N.attention.self.query.weight`).
//! An encoder has no KV cache: its strategies are `full` (the batch padded
//! to its longest sequence), `alone` (each sequence by itself, unpadded) and
//! `padded: { to: N }` ([`Schedule::Padded`], [`Schedule::Alone`]).

use super::transformer::{Layer, Mlp, Part, Plan, Qkv, gather_slots, merge_heads, split_heads};
use super::{Activation, AttentionForm, Norm, ParamInit, ParamSpec, push_linear, push_norm};
use crate::exec::{Pick, Taps, take_rows, upload_norm};
use crate::host::{HostTensor, Tokens};
use crate::ops::{Layout, OpResult, Ops};
use crate::request::{Checkpoints, Execution, RunRequest, Schedule};
use crate::weights::Weights;

/// A BERT-style encoder with mean pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct BertSpec {
    /// Encoder blocks (`num_hidden_layers`).
    pub layers: usize,
    /// Model width (`hidden_size`).
    pub dim: usize,
    /// Attention heads (`num_attention_heads`).
    pub heads: usize,
    /// MLP width (`intermediate_size`).
    pub hidden: usize,
    /// Vocabulary (`vocab_size`).
    pub vocab: usize,
    /// Learned positions (`max_position_embeddings`): the longest sequence.
    pub positions: usize,
    /// Token types (`type_vocab_size`); every token is type 0.
    pub type_vocab: usize,
    /// LayerNorm epsilon (`layer_norm_eps`; BERT's is 1e-12).
    pub eps: f64,
    /// MLP activation (`hidden_act`; BERT's is the exact GELU).
    pub activation: Activation,
}

const WORD: &str = "embeddings.word_embeddings.weight";
const POSITION: &str = "embeddings.position_embeddings.weight";
const TOKEN_TYPE: &str = "embeddings.token_type_embeddings.weight";
const EMBED_NORM: &str = "embeddings.LayerNorm";

/// The op names of one block, in execution order (the first, `embed_norm`,
/// is recorded in layer 1 only).
const OPS: &[&str] = &[
    crate::exec::FIRST_LAYER_ONLY,
    "q",
    "k",
    "v",
    "scores",
    "softmax",
    "attn",
    "o",
    "residual1",
    "norm1",
    "fc1",
    "act",
    "fc2",
    "residual2",
    "norm2",
];

impl BertSpec {
    fn name(l: usize, part: Part) -> String {
        let p = match part {
            Part::Q => "attention.self.query",
            Part::K => "attention.self.key",
            Part::V => "attention.self.value",
            Part::O => "attention.output.dense",
            Part::Norm1 => "attention.output.LayerNorm",
            Part::Fc1 => "intermediate.dense",
            Part::Fc2 => "output.dense",
            Part::Norm2 => "output.LayerNorm",
            // Not parts of this kind's block.
            Part::Qkv => "attention.self.qkv",
            Part::Up => "intermediate.up",
        };
        format!("encoder.layer.{l}.{p}")
    }

    /// Head dimension, `dim / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads.max(1)
    }

    /// The block as the shared transformer code describes one (parameter
    /// upload, linear shapes, probes); the forward pass is this file's.
    pub(super) fn plan(&self) -> Plan {
        Plan {
            layers: self.layers,
            dim: self.dim,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.head_dim(),
            // transformers' `BertSelfAttention` (eager) multiplies by
            // `head_dim ** -0.5`.
            scale: (self.head_dim() as f64).powf(-0.5),
            hidden: self.hidden,
            norm: Norm::LayerNorm,
            eps: self.eps,
            rope: None,
            attention: AttentionForm::Manual,
            qkv: Qkv::Separate,
            qkv_bias: true,
            out_bias: true,
            mlp: Mlp::Plain(self.activation),
            layout: Layout::OutIn,
            names: BertSpec::name,
            head: None,
        }
    }

    /// The op names of one block ([`super::ModelSpec::op_names`]).
    pub(super) fn op_names(&self) -> Vec<&'static str> {
        OPS.to_vec()
    }

    /// Parameters in Hugging Face's `state_dict` order.
    pub(super) fn parameters(&self) -> Vec<ParamSpec> {
        let (d, h) = (self.dim, self.hidden);
        let emb = |name: &str, rows| ParamSpec {
            name: name.into(),
            shape: vec![rows, d],
            init: ParamInit::Normal,
        };
        let mut out = vec![
            emb(WORD, self.vocab),
            emb(POSITION, self.positions),
            emb(TOKEN_TYPE, self.type_vocab),
        ];
        push_norm(&mut out, EMBED_NORM, Norm::LayerNorm, d);
        for l in 0..self.layers {
            let n = |p| BertSpec::name(l, p);
            for part in [Part::Q, Part::K, Part::V, Part::O] {
                push_linear(&mut out, &n(part), [d, d], Some(d));
            }
            push_norm(&mut out, &n(Part::Norm1), Norm::LayerNorm, d);
            push_linear(&mut out, &n(Part::Fc1), [h, d], Some(h));
            push_linear(&mut out, &n(Part::Fc2), [d, h], Some(d));
            push_norm(&mut out, &n(Part::Norm2), Norm::LayerNorm, d);
        }
        out
    }

    /// `word[id] + token_type[0] + position[p]` in f32, in that order (as
    /// `BertEmbeddings` adds them), for every position — padding included
    /// (its rows are masked out of every real row's attention).
    pub(super) fn embed(&self, w: &Weights, tokens: &Tokens) -> Result<HostTensor, String> {
        let (word, pos, ty) = (w.get(WORD), w.get(POSITION), w.get(TOKEN_TYPE));
        let d = self.dim;
        if tokens.seq > pos.shape[0] {
            return Err(format!(
                "{} positions, but the model has {} learned positions",
                tokens.seq, pos.shape[0]
            ));
        }
        let type0 = &ty.data[..d];
        let mut data = Vec::with_capacity(tokens.ids.len() * d);
        for (i, &id) in tokens.ids.iter().enumerate() {
            let id = id as usize;
            if id >= word.shape[0] {
                return Err(format!(
                    "token id {id} (batch {}, position {}) is outside the vocabulary of {}",
                    i / tokens.seq,
                    i % tokens.seq,
                    word.shape[0]
                ));
            }
            let p = i % tokens.seq;
            let (wr, pr) = (
                &word.data[id * d..(id + 1) * d],
                &pos.data[p * d..(p + 1) * d],
            );
            data.extend((0..d).map(|j| (wr[j] + type0[j]) + pr[j]));
        }
        Ok(HostTensor::new(vec![tokens.batch, tokens.seq, d], data))
    }

    /// Checks the shape rules a BERT must keep; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "`heads` ({}) must divide `dim` ({})",
                self.heads, self.dim
            ));
        }
        if self.type_vocab == 0 {
            return Err("`type_vocab_size` must be at least 1".into());
        }
        Ok(())
    }

    /// The spec a Hugging Face `config.json` of `BertModel` describes; the
    /// error names the field.
    pub fn from_hf_config(c: &serde_json::Value) -> Result<BertSpec, String> {
        let f = super::hf_field;
        let activation = match c.get("hidden_act").and_then(|a| a.as_str()) {
            None | Some("gelu") => Activation::GeluErf,
            Some("gelu_new") => Activation::GeluNew,
            Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(format!(
                    "`hidden_act: {other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh)"
                ));
            }
        };
        if let Some(p) = c.get("position_embedding_type").and_then(|v| v.as_str())
            && p != "absolute"
        {
            return Err(format!(
                "`position_embedding_type: {p}` is not supported (absolute)"
            ));
        }
        if c.get("is_decoder").and_then(|v| v.as_bool()) == Some(true) {
            return Err("`is_decoder: true` is not supported: layerdrift's bert is an encoder (bidirectional attention)".into());
        }
        let spec = BertSpec {
            layers: f(c, "num_hidden_layers")?,
            dim: f(c, "hidden_size")?,
            heads: f(c, "num_attention_heads")?,
            hidden: f(c, "intermediate_size")?,
            vocab: f(c, "vocab_size")?,
            positions: f(c, "max_position_embeddings")?,
            type_vocab: super::hf_opt(c, "type_vocab_size")?.unwrap_or(2),
            eps: c
                .get("layer_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-12),
            activation,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// One forward pass of the encoder: batch elements `batch` of the input,
/// `len` positions each (padded with zero rows past the input's length),
/// sequence `i` holding `real[i]` tokens.
struct Pass {
    batch: Vec<usize>,
    len: usize,
    real: Vec<usize>,
}

/// The passes `req`'s schedule asks for, each checked against the input.
fn passes(req: &RunRequest<'_>) -> OpResult<Vec<Pass>> {
    let (batch, seq) = (req.input.shape[0], req.input.shape[1]);
    let check = |lengths: &[usize]| -> OpResult<()> {
        if lengths.len() != batch {
            return Err(format!(
                "internal: {} sequence lengths for a batch of {batch}",
                lengths.len()
            ));
        }
        match lengths.iter().position(|&n| n == 0 || n > seq) {
            Some(b) => Err(format!(
                "sequence {b} has {} real tokens; the input has {seq} positions",
                lengths[b]
            )),
            None => Ok(()),
        }
    };
    match req.schedule {
        Schedule::Full => Ok(vec![Pass {
            batch: (0..batch).collect(),
            len: seq,
            real: vec![seq; batch],
        }]),
        Schedule::Padded { lengths, to } => {
            check(lengths)?;
            if *to < seq {
                return Err(format!(
                    "`padded: {{ to: {to} }}` is shorter than the input's {seq} positions"
                ));
            }
            Ok(vec![Pass {
                batch: (0..batch).collect(),
                len: *to,
                real: lengths.clone(),
            }])
        }
        Schedule::Alone { lengths } => {
            check(lengths)?;
            Ok(lengths
                .iter()
                .enumerate()
                .map(|(b, &n)| Pass {
                    batch: vec![b],
                    len: n,
                    real: vec![n],
                })
                .collect())
        }
        Schedule::Rows | Schedule::Segments(_) => Err(
            "an encoder runs `full`, `alone` or `padded`: its rows attend both ways and it has no KV cache"
                .into(),
        ),
    }
}

/// The additive key mask of a pass, `[batch, heads, len, len]` (0, or
/// `-inf` on keys past a sequence's real tokens); `None` when no key is
/// padding. Full-sized, so every library adds it elementwise (no
/// broadcasting over middle dimensions).
fn key_mask(pass: &Pass, heads: usize) -> Option<HostTensor> {
    if pass.real.iter().all(|&n| n == pass.len) {
        return None;
    }
    let l = pass.len;
    let mut data = Vec::with_capacity(pass.real.len() * heads * l * l);
    for &n in &pass.real {
        let row: Vec<f32> = (0..l)
            .map(|j| if j < n { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        for _ in 0..heads * l {
            data.extend_from_slice(&row);
        }
    }
    Some(HostTensor::new(vec![pass.real.len(), heads, l, l], data))
}

/// Runs the encoder `m` on `req`.
pub(crate) fn run<O: Ops>(ops: &O, m: &BertSpec, req: &RunRequest<'_>) -> OpResult<Checkpoints> {
    if req.diagnose.forced.is_some() {
        return Err(
            "teacher forcing needs row-independent layers; an encoder's rows attend to each other"
                .into(),
        );
    }
    if req.execution != Execution::Standard {
        return Err(format!(
            "an encoder runs in standard execution only (asked: {:?})",
            req.execution
        ));
    }
    let p = m.plan();
    let all = passes(req)?;
    let real_of = |b: usize| {
        all.iter()
            .find_map(|ps| ps.batch.iter().position(|&x| x == b).map(|i| ps.real[i]))
    };
    for r in req.observed {
        match real_of(r.batch) {
            Some(n) if r.pos < n => {}
            Some(n) => {
                return Err(format!(
                    "observed row [{}, {}] is padding: sequence {} has {n} real tokens",
                    r.batch, r.pos, r.batch
                ));
            }
            None => return Err(format!("observed batch {} is not in the input", r.batch)),
        }
    }
    // Passes without an observed row are not run (each sequence alone).
    let passes: Vec<(Pass, Vec<Pick>)> = all
        .into_iter()
        .map(|ps| {
            let picks: Vec<Pick> = req
                .observed
                .iter()
                .enumerate()
                .filter_map(|(slot, r)| {
                    ps.batch.iter().position(|&b| b == r.batch).map(|i| Pick {
                        slot,
                        b: i,
                        s: r.pos,
                        pos: r.pos,
                    })
                })
                .collect();
            (ps, picks)
        })
        .filter(|(_, picks)| !picks.is_empty())
        .collect();
    let taps = Taps::new(req.model, req.diagnose.ops, req.observed.len());
    let rows = req.observed.len();
    let (d, seq) = (p.dim, req.input.shape[1]);
    let mut out: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; rows]; p.layers + 1];

    // Each pass's input, after the embedding LayerNorm.
    let input = ops.upload(req.input, req.dtype)?;
    let embed_norm = upload_norm(ops, req.weights, EMBED_NORM, true, req)?;
    let mut xs = Vec::with_capacity(passes.len());
    let mut masks = Vec::with_capacity(passes.len());
    taps.layer.set(0);
    for (ps, at) in &passes {
        let x = if ps.batch.len() == req.input.shape[0] {
            input.clone()
        } else {
            // One sequence alone.
            ops.narrow(&input, 0, ps.batch[0], 1)?
        };
        let x = match ps.len.cmp(&seq) {
            std::cmp::Ordering::Less => ops.narrow(&x, 1, 0, ps.len)?,
            std::cmp::Ordering::Equal => x,
            std::cmp::Ordering::Greater => {
                let pad = crate::exec::zeros(ops, &[ps.batch.len(), ps.len - seq, d], req.dtype)?;
                ops.cat(&[x, pad], 1)?
            }
        };
        let x = ops.norm(
            Norm::LayerNorm,
            &x,
            &embed_norm.0,
            embed_norm.1.as_ref(),
            p.eps,
        )?;
        taps.rows(ops, crate::exec::FIRST_LAYER_ONLY, &x, at)?;
        xs.push(x);
        masks.push(match key_mask(ps, p.heads) {
            Some(t) => Some(ops.upload(&t, req.dtype)?),
            None => None,
        });
    }
    drop(input);

    for (l, rows_out) in out.iter_mut().take(p.layers).enumerate() {
        taps.layer.set(l);
        let layer: Layer<O> = super::transformer::upload_layer(ops, &p, l, req)?;
        for (pi, (ps, at)) in passes.iter().enumerate() {
            let x = block(
                ops,
                &p,
                &layer,
                &xs[pi],
                masks[pi].as_ref(),
                (&taps, at, ps),
            )?;
            for pk in at {
                rows_out[pk.slot] = Some(take_rows(ops, &x, std::iter::once((pk.b, pk.s)))?);
            }
            xs[pi] = x;
        }
    }

    // The pooled, normalised sequence embedding of each observed row.
    let ones_d = ops.upload(&HostTensor::new(vec![d], vec![1.0; d]), req.dtype)?;
    let pooled = &mut out[p.layers];
    for ((ps, at), x) in passes.iter().zip(&xs) {
        for (i, &n) in ps.real.iter().enumerate() {
            let slots: Vec<usize> = at.iter().filter(|pk| pk.b == i).map(|pk| pk.slot).collect();
            if slots.is_empty() {
                continue;
            }
            let xb = ops.narrow(&ops.narrow(x, 0, i, 1)?, 1, 0, n)?;
            let ones = ops.upload(&HostTensor::new(vec![1, 1, n], vec![1.0; n]), req.dtype)?;
            let mean = ops.scale(&ops.matmul(&ones, &xb)?, 1.0 / n as f64)?;
            let unit = ops.norm(Norm::RmsNorm, &mean, &ones_d, None, 0.0)?;
            let unit = ops.scale(&unit, (d as f64).powf(-0.5))?;
            let row = ops.download(&unit)?;
            for s in slots {
                pooled[s] = Some(row.clone());
            }
        }
    }
    let layers = out
        .into_iter()
        .map(gather_slots)
        .collect::<OpResult<Vec<_>>>()?;
    Ok(Checkpoints {
        dim: d,
        rows,
        layers,
        ops: taps.finish()?,
        head: None,
    })
}

/// One post-norm encoder block over one pass's `[batch, len, dim]` states.
fn block<O: Ops>(
    ops: &O,
    p: &Plan,
    layer: &Layer<O>,
    x: &O::T,
    mask: Option<&O::T>,
    (taps, at, ps): (&Taps, &[Pick], &Pass),
) -> OpResult<O::T> {
    let lin = |w: &O::Linear, name: &'static str, input: &O::T| -> OpResult<O::T> {
        let y = ops.linear(input, w)?;
        taps.rows(ops, name, &y, at)?;
        Ok(y)
    };
    let q = split_heads(ops, &lin(&layer.qkv[0], "q", x)?, p.heads)?;
    let k = split_heads(ops, &lin(&layer.qkv[1], "k", x)?, p.heads)?;
    let v = split_heads(ops, &lin(&layer.qkv[2], "v", x)?, p.heads)?;
    // The scores and probabilities over a sequence's real keys only: the
    // same values whatever it was padded to.
    let seen = |pk: &Pick| Some(ps.real[pk.b]);
    let scores = ops.scale(&ops.matmul(&q, &ops.transpose(&k, 2, 3)?)?, p.scale)?;
    taps.heads_upto(ops, "scores", &scores, at, &seen)?;
    let scores = match mask {
        Some(mk) => ops.add(&scores, mk)?,
        None => scores,
    };
    let probs = ops.softmax_last(&scores)?;
    taps.heads_upto(ops, "softmax", &probs, at, &seen)?;
    let merged = merge_heads(ops, &ops.matmul(&probs, &v)?)?;
    drop((q, k, v, probs));
    taps.rows(ops, "attn", &merged, at)?;
    let o = lin(&layer.o, "o", &merged)?;
    let r1 = ops.add(&o, x)?;
    taps.rows(ops, "residual1", &r1, at)?;
    let a = ops.norm(p.norm, &r1, &layer.n1.0, layer.n1.1.as_ref(), p.eps)?;
    taps.rows(ops, "norm1", &a, at)?;
    let Mlp::Plain(act) = p.mlp else {
        return Err("internal: an encoder block with a gated MLP".into());
    };
    let h = lin(&layer.fc1, "fc1", &a)?;
    let h = ops.activation(&h, act)?;
    taps.rows(ops, "act", &h, at)?;
    let f = lin(&layer.fc2, "fc2", &h)?;
    let r2 = ops.add(&f, &a)?;
    taps.rows(ops, "residual2", &r2, at)?;
    let y = ops.norm(p.norm, &r2, &layer.n2.0, layer.n2.1.as_ref(), p.eps)?;
    taps.rows(ops, "norm2", &y, at)?;
    Ok(y)
}
