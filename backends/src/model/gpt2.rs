//! GPT-2 (`kind: gpt2`) as Hugging Face's `GPT2LMHeadModel` computes it:
//! learned position embeddings, pre-norm LayerNorm, a fused `c_attn`
//! projection, `Conv1D` weights stored `[in, out]`, the `gelu_new`
//! activation written out, and the LM head tied to the token embedding.
//! Parameter names are Hugging Face's (`transformer.h.N.attn.c_attn.weight`).

use super::transformer::{HeadPlan, Mlp, Part, Plan, Qkv};
use super::{Activation, AttentionForm, Norm, ParamInit, ParamSpec, push_linear, push_norm};
use crate::host::{HostTensor, Tokens};
use crate::ops::Layout;
use crate::weights::Weights;

/// A GPT-2 model.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Spec {
    /// Blocks (`n_layer`).
    pub layers: usize,
    /// Model width (`n_embd`).
    pub dim: usize,
    /// Attention heads (`n_head`).
    pub heads: usize,
    /// MLP width (`n_inner`, default `4 · n_embd`).
    pub hidden: usize,
    /// Vocabulary (`vocab_size`).
    pub vocab: usize,
    /// Learned positions (`n_positions`): the longest sequence.
    pub positions: usize,
    /// LayerNorm epsilon (`layer_norm_epsilon`).
    pub eps: f64,
    /// MLP activation (`activation_function`; GPT-2's is `gelu_new`).
    pub activation: Activation,
    /// Manual (transformers' eager) or the library's fused attention.
    pub attention: AttentionForm,
}

const WTE: &str = "transformer.wte.weight";
const WPE: &str = "transformer.wpe.weight";

impl Gpt2Spec {
    fn name(l: usize, part: Part) -> String {
        let p = match part {
            Part::Norm1 => "ln_1",
            Part::Qkv => "attn.c_attn",
            Part::O => "attn.c_proj",
            Part::Norm2 => "ln_2",
            Part::Fc1 => "mlp.c_fc",
            Part::Fc2 => "mlp.c_proj",
            // Not parts of this kind's block.
            Part::Q => "attn.q",
            Part::K => "attn.k",
            Part::V => "attn.v",
            Part::Up => "mlp.up",
        };
        format!("transformer.h.{l}.{p}")
    }

    /// Head dimension, `dim / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads.max(1)
    }

    pub(super) fn plan(&self) -> Plan {
        Plan {
            layers: self.layers,
            dim: self.dim,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.head_dim(),
            scale: (self.head_dim() as f64).powf(-0.5),
            hidden: self.hidden,
            norm: Norm::LayerNorm,
            eps: self.eps,
            rope: None,
            attention: self.attention,
            qkv: Qkv::Fused,
            qkv_bias: true,
            out_bias: true,
            mlp: Mlp::Plain(self.activation),
            layout: Layout::InOut,
            names: Gpt2Spec::name,
            head: Some(HeadPlan {
                norm: "transformer.ln_f",
                lm_head: WTE,
                vocab: self.vocab,
            }),
        }
    }

    /// Parameters in Hugging Face's `state_dict` order (`Conv1D` weights
    /// `[in, out]`).
    pub(super) fn parameters(&self) -> Vec<ParamSpec> {
        let (d, h) = (self.dim, self.hidden);
        let emb = |name: &str, rows| ParamSpec {
            name: name.into(),
            shape: vec![rows, d],
            init: ParamInit::Normal,
        };
        let mut out = vec![emb(WTE, self.vocab), emb(WPE, self.positions)];
        for l in 0..self.layers {
            let n = |p| Gpt2Spec::name(l, p);
            push_norm(&mut out, &n(Part::Norm1), Norm::LayerNorm, d);
            push_linear(&mut out, &n(Part::Qkv), [d, 3 * d], Some(3 * d));
            push_linear(&mut out, &n(Part::O), [d, d], Some(d));
            push_norm(&mut out, &n(Part::Norm2), Norm::LayerNorm, d);
            push_linear(&mut out, &n(Part::Fc1), [d, h], Some(h));
            push_linear(&mut out, &n(Part::Fc2), [h, d], Some(d));
        }
        push_norm(&mut out, "transformer.ln_f", Norm::LayerNorm, d);
        out
    }

    pub(super) fn embed(&self, w: &Weights, tokens: &Tokens) -> Result<HostTensor, String> {
        super::gather_embeddings(w.get(WTE), Some(w.get(WPE)), tokens)
    }

    /// Checks the shape rules a GPT-2 must keep; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "`heads` ({}) must divide `dim` ({})",
                self.heads, self.dim
            ));
        }
        Ok(())
    }

    /// The spec a Hugging Face `config.json` of `GPT2LMHeadModel` describes;
    /// the error names the field.
    pub fn from_hf_config(c: &serde_json::Value) -> Result<Gpt2Spec, String> {
        let f = super::hf_field;
        let dim = f(c, "n_embd")?;
        let activation = match c.get("activation_function").and_then(|a| a.as_str()) {
            None | Some("gelu_new") => Activation::GeluNew,
            Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some("gelu") => Activation::GeluErf,
            Some(other) => {
                return Err(format!(
                    "`activation_function: {other}` is not supported (gelu_new, gelu_pytorch_tanh, gelu)"
                ));
            }
        };
        for (flag, want) in [
            ("scale_attn_weights", true),
            ("scale_attn_by_inverse_layer_idx", false),
            ("reorder_and_upcast_attn", false),
        ] {
            if let Some(v) = c.get(flag).and_then(|v| v.as_bool())
                && v != want
            {
                return Err(format!("`{flag}: {v}` is not supported"));
            }
        }
        let spec = Gpt2Spec {
            layers: f(c, "n_layer")?,
            dim,
            heads: f(c, "n_head")?,
            hidden: super::hf_opt(c, "n_inner")?.unwrap_or(4 * dim),
            vocab: f(c, "vocab_size")?,
            positions: f(c, "n_positions")?,
            eps: c
                .get("layer_norm_epsilon")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            activation,
            attention: AttentionForm::Manual,
        };
        spec.validate()?;
        Ok(spec)
    }
}
