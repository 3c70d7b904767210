//! Model descriptions: what a backend must compute, as plain data.
//!
//! A model kind is one module here: its spec (the YAML fields and, for the
//! Hugging Face kinds, the `config.json` fields), its parameter names and
//! shapes, its op names, and its forward pass over the backends' `Ops`:
//! - [`mlp`]: the seed's residual feed-forward stack (`residual_mlp`);
//! - [`decoder`]: layerdrift's own GPT-style decoder (`decoder`);
//! - [`llama`]: the Llama family (Llama, Mistral, Qwen2, SmolLM; `llama`);
//! - [`gpt2`]: GPT-2 (`gpt2`);
//! - [`bert`]: a BERT-style encoder with mean pooling (`bert`).
//!
//! The three decoder kinds share one transformer forward ([`transformer`]),
//! each describing its block as a [`transformer::Plan`]; the encoder
//! describes its block as one too (upload, shapes, probes) and runs its own
//! post-norm, bidirectional forward. What a model can
//! do — rows independent, attention, a KV cache, token ids in and logits out
//! — is asked of the spec ([`ModelSpec::rows_independent`],
//! [`ModelSpec::attention`], [`ModelSpec::vocab`]) and answered by one
//! exhaustive match per question, here, so a new kind cannot inherit a
//! capability by default.
//!
//! Parameter names follow PyTorch's `state_dict` of the equivalent
//! `nn.Module` (Hugging Face's for `llama` and `gpt2`), so weights saved
//! from PyTorch load unchanged (see [`ModelSpec::parameters`]).

pub mod bert;
pub mod decoder;
pub mod gpt2;
pub mod llama;
pub mod mlp;
pub(crate) mod transformer;

pub use bert::BertSpec;
pub use decoder::DecoderSpec;
pub use gpt2::Gpt2Spec;
pub use llama::LlamaSpec;
pub use mlp::ResidualMlpSpec;

use crate::host::HostTensor;
use crate::probe::ProbeOp;

/// Activation function between the two linear layers of an MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function — PyTorch's `nn.GELU()`.
    GeluErf,
    /// The tanh approximation of GELU — `nn.GELU(approximate="tanh")`
    /// (and candle's `Tensor::gelu`).
    GeluTanh,
    /// SiLU / swish, `x·σ(x)`.
    Silu,
    /// The tanh approximation of GELU written out op by op as Hugging
    /// Face's `NewGELUActivation` (GPT-2's `gelu_new`):
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluNew,
}

impl Activation {
    /// The scenario spelling (`gelu`, `gelu_tanh`, `silu`, `gelu_new`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::GeluNew => "gelu_new",
        }
    }
}

/// Normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `nn.LayerNorm(dim, eps)` with affine weight and bias.
    LayerNorm,
    /// RMSNorm with an affine weight and no bias: `w · x / √(mean(x²) + eps)`
    /// (libtorch computes it as Hugging Face's `LlamaRMSNorm` writes it).
    RmsNorm,
}

impl Norm {
    /// The scenario spelling (`layer_norm`, `rms_norm`).
    pub fn name(self) -> &'static str {
        match self {
            Norm::LayerNorm => "layer_norm",
            Norm::RmsNorm => "rms_norm",
        }
    }

    /// Whether the norm has a bias parameter.
    pub fn has_bias(self) -> bool {
        matches!(self, Norm::LayerNorm)
    }
}

/// How attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionForm {
    /// matmul, causal mask, softmax, matmul — the same ops on every backend.
    Manual,
    /// The library's own fused attention kernel where it has one (libtorch's
    /// `scaled_dot_product_attention`); backends without one decline.
    Fused,
}

impl AttentionForm {
    /// The scenario spelling (`manual`, `fused`).
    pub fn name(self) -> &'static str {
        match self {
            AttentionForm::Manual => "manual",
            AttentionForm::Fused => "fused",
        }
    }
}

/// A model a backend can run.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    /// The seed's residual feed-forward stack.
    ResidualMlp(ResidualMlpSpec),
    /// layerdrift's own decoder-only transformer.
    Decoder(DecoderSpec),
    /// A Llama-family decoder (Hugging Face `LlamaForCausalLM` and kin).
    Llama(LlamaSpec),
    /// GPT-2 (Hugging Face `GPT2LMHeadModel`).
    Gpt2(Gpt2Spec),
    /// A BERT-style encoder with mean pooling (Hugging Face `BertModel`,
    /// sentence-transformers' pooling).
    Bert(BertSpec),
}

/// One named parameter: its `state_dict` name, shape, and seed-init rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// PyTorch `state_dict` name, e.g. `layers.0.linear1.weight`.
    pub name: String,
    /// PyTorch shape (`Linear.weight` is `[out, in]`; GPT-2's `Conv1D.weight`
    /// is `[in, out]`).
    pub shape: Vec<usize>,
    /// How the seed's init fills it.
    pub init: ParamInit,
}

/// The seed's initialisation rule for one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamInit {
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
    /// Normal with the scenario's std (linear weights, embeddings).
    Normal,
}

/// Appends `{prefix}.weight` (and `{prefix}.bias` if `norm` has one).
pub(crate) fn push_norm(out: &mut Vec<ParamSpec>, prefix: &str, norm: Norm, dim: usize) {
    out.push(ParamSpec {
        name: format!("{prefix}.weight"),
        shape: vec![dim],
        init: ParamInit::Ones,
    });
    if norm.has_bias() {
        out.push(ParamSpec {
            name: format!("{prefix}.bias"),
            shape: vec![dim],
            init: ParamInit::Zeros,
        });
    }
}

/// Appends `{prefix}.weight` of `shape` and, with `bias`, `{prefix}.bias`
/// of `[bias_len]`.
pub(crate) fn push_linear(
    out: &mut Vec<ParamSpec>,
    prefix: &str,
    shape: [usize; 2],
    bias: Option<usize>,
) {
    out.push(ParamSpec {
        name: format!("{prefix}.weight"),
        shape: shape.to_vec(),
        init: ParamInit::Normal,
    });
    if let Some(n) = bias {
        out.push(ParamSpec {
            name: format!("{prefix}.bias"),
            shape: vec![n],
            init: ParamInit::Zeros,
        });
    }
}

impl ModelSpec {
    /// The transformer plan of a decoder kind (`None` for the residual MLP):
    /// the one place that says which kinds run [`transformer::run`].
    pub(crate) fn plan(&self) -> Option<transformer::Plan> {
        match self {
            ModelSpec::ResidualMlp(_) => None,
            ModelSpec::Decoder(m) => Some(m.plan()),
            ModelSpec::Llama(m) => Some(m.plan()),
            ModelSpec::Gpt2(m) => Some(m.plan()),
            ModelSpec::Bert(m) => Some(m.plan()),
        }
    }

    /// Whether the model is an encoder: bidirectional attention over a
    /// batch of sequences of their own lengths, padded and masked — what
    /// the `alone` and `padded` strategies need.
    pub fn encoder(&self) -> bool {
        match self {
            ModelSpec::Bert(_) => true,
            ModelSpec::ResidualMlp(_)
            | ModelSpec::Decoder(_)
            | ModelSpec::Llama(_)
            | ModelSpec::Gpt2(_) => false,
        }
    }

    /// Whether each row's output depends on that row alone — what the
    /// `rows` strategy and teacher forcing need. Attention mixes positions,
    /// so no decoder kind has it.
    pub fn rows_independent(&self) -> bool {
        match self {
            ModelSpec::ResidualMlp(_) => true,
            ModelSpec::Decoder(_)
            | ModelSpec::Llama(_)
            | ModelSpec::Gpt2(_)
            | ModelSpec::Bert(_) => false,
        }
    }

    /// How the model computes attention; `None` for a model without
    /// attention (and so without a KV cache: `kv_cache` and `chunked` need
    /// one).
    pub fn attention(&self) -> Option<AttentionForm> {
        match self {
            ModelSpec::ResidualMlp(_) => None,
            ModelSpec::Decoder(m) => Some(m.attention),
            ModelSpec::Llama(m) => Some(m.attention),
            ModelSpec::Gpt2(m) => Some(m.attention),
            // Written out, as transformers' eager `BertSelfAttention`.
            ModelSpec::Bert(_) => Some(AttentionForm::Manual),
        }
    }

    /// Whether the model keeps a per-layer K/V cache, so that a sequence can
    /// be computed in segments (`kv_cache`, `chunked`): the decoder kinds.
    pub fn kv_cache(&self) -> bool {
        match self {
            ModelSpec::ResidualMlp(_) | ModelSpec::Bert(_) => false,
            ModelSpec::Decoder(_) | ModelSpec::Llama(_) | ModelSpec::Gpt2(_) => true,
        }
    }

    /// The vocabulary of a model fed token ids (a decoder's logits come
    /// out too: [`crate::Checkpoints::head`]); `None` for a model fed hidden
    /// states.
    pub fn vocab(&self) -> Option<usize> {
        match self {
            ModelSpec::ResidualMlp(_) | ModelSpec::Decoder(_) => None,
            ModelSpec::Llama(m) => Some(m.vocab),
            ModelSpec::Gpt2(m) => Some(m.vocab),
            ModelSpec::Bert(m) => Some(m.vocab),
        }
    }

    /// The longest sequence the model can read: GPT-2's learned positions;
    /// `None` where positions are rotary or absent.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            ModelSpec::ResidualMlp(_) | ModelSpec::Decoder(_) | ModelSpec::Llama(_) => None,
            ModelSpec::Gpt2(m) => Some(m.positions),
            ModelSpec::Bert(m) => Some(m.positions),
        }
    }

    /// The same model computing attention as `form` (the oracle writes
    /// fused attention out); an encoder's attention is always written out.
    pub fn with_attention(&self, form: AttentionForm) -> ModelSpec {
        match self {
            ModelSpec::ResidualMlp(m) => ModelSpec::ResidualMlp(m.clone()),
            ModelSpec::Bert(m) => ModelSpec::Bert(m.clone()),
            ModelSpec::Decoder(m) => ModelSpec::Decoder(DecoderSpec {
                attention: form,
                ..m.clone()
            }),
            ModelSpec::Llama(m) => ModelSpec::Llama(LlamaSpec {
                attention: form,
                ..m.clone()
            }),
            ModelSpec::Gpt2(m) => ModelSpec::Gpt2(Gpt2Spec {
                attention: form,
                ..m.clone()
            }),
        }
    }

    /// The same model with only its first `n` blocks (a quick look at a
    /// big checkpoint: `layers: N` beside `checkpoint:`).
    pub fn with_layers(&self, n: usize) -> ModelSpec {
        match self {
            ModelSpec::ResidualMlp(m) => ModelSpec::ResidualMlp(ResidualMlpSpec {
                layers: n,
                ..m.clone()
            }),
            ModelSpec::Decoder(m) => ModelSpec::Decoder(DecoderSpec {
                layers: n,
                ..m.clone()
            }),
            ModelSpec::Llama(m) => ModelSpec::Llama(LlamaSpec {
                layers: n,
                ..m.clone()
            }),
            ModelSpec::Gpt2(m) => ModelSpec::Gpt2(Gpt2Spec {
                layers: n,
                ..m.clone()
            }),
            ModelSpec::Bert(m) => ModelSpec::Bert(BertSpec {
                layers: n,
                ..m.clone()
            }),
        }
    }

    /// Number of layers (blocks); checkpoints are taken after each (an
    /// encoder adds one more: its pooled sequence embedding,
    /// [`ModelSpec::checkpoints`]).
    pub fn layers(&self) -> usize {
        match self {
            ModelSpec::Bert(m) => m.layers,
            ModelSpec::ResidualMlp(m) => m.layers,
            ModelSpec::Decoder(m) => m.layers,
            ModelSpec::Llama(m) => m.layers,
            ModelSpec::Gpt2(m) => m.layers,
        }
    }

    /// The layer checkpoints a run returns: one per block, and an encoder's
    /// pooled, L2-normalised sequence embedding after them.
    pub fn checkpoints(&self) -> usize {
        self.layers() + usize::from(self.encoder())
    }

    /// Model width.
    pub fn dim(&self) -> usize {
        match self {
            ModelSpec::Bert(m) => m.dim,
            ModelSpec::ResidualMlp(m) => m.dim,
            ModelSpec::Decoder(m) => m.dim,
            ModelSpec::Llama(m) => m.dim,
            ModelSpec::Gpt2(m) => m.dim,
        }
    }

    /// The MLP width (between a block's two or three MLP linears).
    pub fn hidden(&self) -> usize {
        match self {
            ModelSpec::Bert(m) => m.hidden,
            ModelSpec::ResidualMlp(m) => m.hidden,
            ModelSpec::Decoder(m) => m.hidden,
            ModelSpec::Llama(m) => m.hidden,
            ModelSpec::Gpt2(m) => m.hidden,
        }
    }

    /// Attention heads (query heads) and key/value heads; `None` without
    /// attention.
    pub fn heads(&self) -> Option<(usize, usize)> {
        match self {
            ModelSpec::ResidualMlp(_) => None,
            ModelSpec::Decoder(m) => Some((m.heads, m.heads)),
            ModelSpec::Llama(m) => Some((m.heads, m.kv_heads)),
            ModelSpec::Gpt2(m) => Some((m.heads, m.heads)),
            ModelSpec::Bert(m) => Some((m.heads, m.heads)),
        }
    }

    /// Per-head width; `None` without attention.
    pub fn head_dim(&self) -> Option<usize> {
        match self {
            ModelSpec::ResidualMlp(_) => None,
            ModelSpec::Decoder(m) => Some(m.head_dim()),
            ModelSpec::Llama(m) => Some(m.head_dim),
            ModelSpec::Gpt2(m) => Some(m.head_dim()),
            ModelSpec::Bert(m) => Some(m.head_dim()),
        }
    }

    /// The normalisation every norm of the model uses.
    pub fn norm(&self) -> Norm {
        match self {
            ModelSpec::ResidualMlp(m) => m.norm,
            ModelSpec::Decoder(m) => m.norm,
            ModelSpec::Llama(_) => Norm::RmsNorm,
            ModelSpec::Gpt2(_) | ModelSpec::Bert(_) => Norm::LayerNorm,
        }
    }

    /// The MLP's activation.
    pub fn activation(&self) -> Activation {
        match self {
            ModelSpec::ResidualMlp(m) => m.activation,
            ModelSpec::Decoder(m) => m.activation,
            ModelSpec::Llama(_) => Activation::Silu,
            ModelSpec::Gpt2(m) => m.activation,
            ModelSpec::Bert(m) => m.activation,
        }
    }

    /// The scenario spelling of the kind (`residual_mlp`, `decoder`,
    /// `llama`, `gpt2`, `bert`).
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::ResidualMlp(_) => "residual_mlp",
            ModelSpec::Decoder(_) => "decoder",
            ModelSpec::Llama(_) => "llama",
            ModelSpec::Gpt2(_) => "gpt2",
            ModelSpec::Bert(_) => "bert",
        }
    }

    /// The ops of one layer, in execution order: the names op-level
    /// checkpoints ([`crate::Diagnose::ops`]) and scenarios' `diagnose: {
    /// ops: … }` use. The last is the layer's output.
    ///
    /// Residual MLP: `norm1`, `linear1`, `act`, `linear2`, `norm2`, and
    /// `residual` when it adds its input back. Decoder kinds: `norm1`, `q`,
    /// `k`, `v` (GPT-2: `qkv`, its fused projection, then `q`, `k`, `v`),
    /// `rope` (with rotary embeddings), `scores` and `softmax` (written-out
    /// attention only: a fused kernel has neither), `attn` (the heads
    /// merged), `o`, `residual1`, `norm2`, the MLP — `fc1`, `act`, `fc2`, or
    /// for Llama's SwiGLU `gate`, `act`, `up`, `mul`, `down` — and
    /// `residual2`. The encoder (`bert`, post-norm): `embed_norm` (the
    /// embedding LayerNorm, layer 1 only), `q`, `k`, `v`, `scores`,
    /// `softmax`, `attn`, `o`, `residual1`, `norm1`, `fc1`, `act`, `fc2`,
    /// `residual2`, `norm2`.
    ///
    /// ```
    /// use layerdrift_backends::{ModelSpec, ResidualMlpSpec, Activation, Norm};
    /// let m = ModelSpec::ResidualMlp(ResidualMlpSpec {
    ///     layers: 2, dim: 4, hidden: 4, activation: Activation::GeluErf,
    ///     norm: Norm::LayerNorm, eps: 1e-5, residual: true });
    /// assert_eq!(m.op_names(), ["norm1", "linear1", "act", "linear2", "norm2", "residual"]);
    /// ```
    pub fn op_names(&self) -> Vec<&'static str> {
        match (self, self.plan()) {
            (ModelSpec::ResidualMlp(m), _) => m.op_names(),
            (ModelSpec::Bert(m), _) => m.op_names(),
            (_, Some(plan)) => plan.op_names(),
            (_, None) => Vec::new(),
        }
    }

    /// Every parameter, in `state_dict` order.
    pub fn parameters(&self) -> Vec<ParamSpec> {
        match self {
            ModelSpec::ResidualMlp(m) => m.parameters(),
            ModelSpec::Decoder(m) => m.parameters(),
            ModelSpec::Llama(m) => m.parameters(),
            ModelSpec::Gpt2(m) => m.parameters(),
            ModelSpec::Bert(m) => m.parameters(),
        }
    }

    /// The `(in, out)` widths of every linear the model calls, each shape
    /// once (a language model's LM head last).
    pub fn linear_shapes(&self) -> Vec<(usize, usize)> {
        match (self, self.plan()) {
            (ModelSpec::ResidualMlp(m), _) => vec![(m.dim, m.hidden), (m.hidden, m.dim)],
            (_, Some(plan)) => plan.linear_shapes(),
            (_, None) => Vec::new(),
        }
    }

    /// The row-mixing ops the model calls, as kernel-dispatch probes
    /// `(op, width, out, heads)`; attention over `capacity` keys.
    pub(crate) fn probes(&self, capacity: usize) -> Vec<(ProbeOp, usize, usize, usize)> {
        match (self, self.plan()) {
            (ModelSpec::ResidualMlp(m), _) => std::iter::once((norm_probe(m.norm), m.dim, 0, 1))
                .chain(
                    self.linear_shapes()
                        .into_iter()
                        .map(|(i, o)| (ProbeOp::Linear, i, o, 1)),
                )
                .collect(),
            (_, Some(plan)) => plan.probes(capacity),
            (_, None) => Vec::new(),
        }
    }

    /// The `[batch, seq, dim]` hidden states a language model's first block
    /// reads for `tokens`: the token embeddings (and GPT-2's learned
    /// position embeddings added, in f32). A lookup and one f32 addition are
    /// exact, so they are computed once on the host and every backend starts
    /// from the same bits. `Err` for a model fed hidden states, or a token
    /// id outside the vocabulary.
    pub fn embed(
        &self,
        weights: &crate::Weights,
        tokens: &crate::Tokens,
    ) -> Result<HostTensor, String> {
        match self {
            ModelSpec::ResidualMlp(_) | ModelSpec::Decoder(_) => Err(format!(
                "a {} model reads hidden states, not token ids",
                self.kind()
            )),
            ModelSpec::Llama(m) => m.embed(weights, tokens),
            ModelSpec::Gpt2(m) => m.embed(weights, tokens),
            ModelSpec::Bert(m) => m.embed(weights, tokens),
        }
    }
}

/// A required non-negative integer field of a Hugging Face `config.json`.
pub(crate) fn hf_field(c: &serde_json::Value, name: &str) -> Result<usize, String> {
    hf_opt(c, name)?.ok_or_else(|| format!("config.json has no `{name}`"))
}

/// An optional non-negative integer field of a `config.json` (`null` = absent).
pub(crate) fn hf_opt(c: &serde_json::Value, name: &str) -> Result<Option<usize>, String> {
    match c.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            format!("config.json: `{name}` must be a non-negative integer, found {v}")
        }),
    }
}

pub(crate) fn norm_probe(n: Norm) -> ProbeOp {
    match n {
        Norm::LayerNorm => ProbeOp::LayerNorm,
        Norm::RmsNorm => ProbeOp::RmsNorm,
    }
}

/// Gathers the rows `ids` of `table` (`[vocab, dim]`) into a
/// `[batch, seq, dim]` tensor, adding `positions` (`[n_pos, dim]`) row `p`
/// to position `p` when given.
pub(crate) fn gather_embeddings(
    table: &HostTensor,
    positions: Option<&HostTensor>,
    tokens: &crate::Tokens,
) -> Result<HostTensor, String> {
    let (vocab, dim) = (table.shape[0], table.shape[1]);
    let mut data = Vec::with_capacity(tokens.ids.len() * dim);
    for (i, &id) in tokens.ids.iter().enumerate() {
        let id = id as usize;
        if id >= vocab {
            return Err(format!(
                "token id {id} (batch {}, position {}) is outside the vocabulary of {vocab}",
                i / tokens.seq,
                i % tokens.seq
            ));
        }
        let row = &table.data[id * dim..(id + 1) * dim];
        match positions {
            Some(p) => {
                let pos = i % tokens.seq;
                if pos >= p.shape[0] {
                    return Err(format!(
                        "position {pos} is beyond the model's {} learned positions",
                        p.shape[0]
                    ));
                }
                let prow = &p.data[pos * dim..(pos + 1) * dim];
                data.extend(row.iter().zip(prow).map(|(a, b)| a + b));
            }
            None => data.extend_from_slice(row),
        }
    }
    Ok(HostTensor::new(vec![tokens.batch, tokens.seq, dim], data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_mlp_names_match_pytorch_state_dict() {
        let m = ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers: 1,
            dim: 4,
            hidden: 6,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            residual: true,
        });
        let names: Vec<_> = m
            .parameters()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect();
        // The order of `TestMod(1, 4).state_dict()` in the seed's script.
        assert_eq!(
            names,
            vec![
                ("layers.0.norm1.weight".into(), vec![4]),
                ("layers.0.norm1.bias".into(), vec![4]),
                ("layers.0.norm2.weight".into(), vec![4]),
                ("layers.0.norm2.bias".into(), vec![4]),
                ("layers.0.linear1.weight".into(), vec![6, 4]),
                ("layers.0.linear1.bias".into(), vec![6]),
                ("layers.0.linear2.weight".into(), vec![4, 6]),
                ("layers.0.linear2.bias".into(), vec![4]),
            ]
        );
    }
}
