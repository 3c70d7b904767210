//! layerdrift's own decoder-only transformer (`kind: decoder`): pre-norm
//! blocks, causal multi-head self-attention with separate Q, K, V and output
//! projections, a plain MLP, every linear with a bias. Fed hidden states,
//! not tokens; no LM head.

use super::transformer::{Mlp, Part, Plan, Qkv, Rope, RopeTables};
use super::{Activation, AttentionForm, Norm, ParamSpec, push_linear, push_norm};
use crate::ops::Layout;

/// A pre-norm decoder-only transformer: `layers` × (`x + Attn(N1(x))`, then
/// `x + MLP(N2(x))`), causal multi-head self-attention with separate Q, K, V
/// and output projections (all with biases).
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    /// Number of transformer blocks.
    pub layers: usize,
    /// Model width.
    pub dim: usize,
    /// Attention heads; `dim / heads` is the head dimension.
    pub heads: usize,
    /// MLP width.
    pub hidden: usize,
    /// MLP activation.
    pub activation: Activation,
    /// Normalisation (N1 and N2).
    pub norm: Norm,
    /// Norm epsilon.
    pub eps: f64,
    /// Rotary position embeddings (NeoX/Llama half-split form) with this
    /// base; `None` = no positional encoding at all.
    pub rope_theta: Option<f64>,
    /// Manual or fused attention.
    pub attention: AttentionForm,
}

impl DecoderSpec {
    /// Head dimension, `dim / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    fn name(l: usize, part: Part) -> String {
        let p = match part {
            Part::Norm1 => "norm1",
            Part::Q => "attn.q_proj",
            Part::K => "attn.k_proj",
            Part::V => "attn.v_proj",
            Part::O => "attn.o_proj",
            Part::Norm2 => "norm2",
            Part::Fc1 => "mlp.fc1",
            Part::Fc2 => "mlp.fc2",
            // Not parts of this kind's block.
            Part::Qkv => "attn.qkv",
            Part::Up => "mlp.up",
        };
        format!("layers.{l}.{p}")
    }

    pub(super) fn plan(&self) -> Plan {
        Plan {
            layers: self.layers,
            dim: self.dim,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.head_dim(),
            scale: 1.0 / (self.head_dim() as f64).sqrt(),
            hidden: self.hidden,
            norm: self.norm,
            eps: self.eps,
            rope: self.rope_theta.map(|theta| Rope {
                theta,
                tables: RopeTables::HostF64,
            }),
            attention: self.attention,
            qkv: Qkv::Separate,
            qkv_bias: true,
            out_bias: true,
            mlp: Mlp::Plain(self.activation),
            layout: Layout::OutIn,
            names: DecoderSpec::name,
            head: None,
        }
    }

    pub(super) fn parameters(&self) -> Vec<ParamSpec> {
        let (d, h) = (self.dim, self.hidden);
        let mut out = Vec::new();
        for l in 0..self.layers {
            let n = |p| DecoderSpec::name(l, p);
            push_norm(&mut out, &n(Part::Norm1), self.norm, d);
            for p in [Part::Q, Part::K, Part::V, Part::O] {
                push_linear(&mut out, &n(p), [d, d], Some(d));
            }
            push_norm(&mut out, &n(Part::Norm2), self.norm, d);
            push_linear(&mut out, &n(Part::Fc1), [h, d], Some(h));
            push_linear(&mut out, &n(Part::Fc2), [d, h], Some(d));
        }
        out
    }
}
