//! The Llama family (`kind: llama`): Llama, Mistral, Qwen2, SmolLM and kin as
//! Hugging Face's `LlamaForCausalLM` computes them — RMSNorm, SwiGLU MLP,
//! rotary embeddings (rotate-half layout, tables in f32), grouped-query
//! attention, no biases but Qwen2's on Q/K/V, an untied or tied LM head.
//! Parameter names are Hugging Face's (`model.layers.N.self_attn.q_proj.weight`).

use super::transformer::{HeadPlan, Mlp, Part, Plan, Qkv, Rope, RopeTables};
use super::{Activation, AttentionForm, Norm, ParamInit, ParamSpec, push_linear, push_norm};
use crate::host::{HostTensor, Tokens};
use crate::ops::Layout;
use crate::weights::Weights;

/// A Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaSpec {
    /// Decoder blocks (`num_hidden_layers`).
    pub layers: usize,
    /// Model width (`hidden_size`).
    pub dim: usize,
    /// Query heads (`num_attention_heads`).
    pub heads: usize,
    /// Key/value heads (`num_key_value_heads`; grouped-query attention when
    /// fewer than `heads`, which it must divide).
    pub kv_heads: usize,
    /// Per-head width (`head_dim`; default `dim / heads`).
    pub head_dim: usize,
    /// SwiGLU width (`intermediate_size`).
    pub hidden: usize,
    /// Vocabulary (`vocab_size`).
    pub vocab: usize,
    /// RMSNorm epsilon (`rms_norm_eps`).
    pub eps: f64,
    /// RoPE base (`rope_theta`).
    pub rope_theta: f64,
    /// Whether the LM head reuses the token embedding (`tie_word_embeddings`).
    pub tie_embeddings: bool,
    /// Biases on the Q/K/V projections (`attention_bias`; Qwen2 has them).
    pub attention_bias: bool,
    /// Manual (transformers' eager) or the library's fused attention.
    pub attention: AttentionForm,
}

const EMBED: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

impl LlamaSpec {
    fn name(l: usize, part: Part) -> String {
        let p = match part {
            Part::Norm1 => "input_layernorm",
            Part::Q => "self_attn.q_proj",
            Part::K => "self_attn.k_proj",
            Part::V => "self_attn.v_proj",
            Part::O => "self_attn.o_proj",
            Part::Norm2 => "post_attention_layernorm",
            Part::Fc1 => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::Fc2 => "mlp.down_proj",
            // Not a part of this kind's block.
            Part::Qkv => "self_attn.qkv_proj",
        };
        format!("model.layers.{l}.{p}")
    }

    pub(super) fn plan(&self) -> Plan {
        Plan {
            layers: self.layers,
            dim: self.dim,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: (self.head_dim as f64).powf(-0.5),
            hidden: self.hidden,
            norm: Norm::RmsNorm,
            eps: self.eps,
            rope: Some(Rope {
                theta: self.rope_theta,
                tables: RopeTables::HfF32,
            }),
            attention: self.attention,
            qkv: Qkv::Separate,
            qkv_bias: self.attention_bias,
            out_bias: false,
            mlp: Mlp::Gated(Activation::Silu),
            layout: Layout::OutIn,
            names: LlamaSpec::name,
            head: Some(HeadPlan {
                norm: "model.norm",
                lm_head: if self.tie_embeddings { EMBED } else { LM_HEAD },
                vocab: self.vocab,
            }),
        }
    }

    /// Parameters in Hugging Face's `state_dict` order.
    pub(super) fn parameters(&self) -> Vec<ParamSpec> {
        let (d, h, q) = (self.dim, self.hidden, self.heads * self.head_dim);
        let kv = self.kv_heads * self.head_dim;
        let qb = |n: usize| self.attention_bias.then_some(n);
        let mut out = vec![ParamSpec {
            name: EMBED.into(),
            shape: vec![self.vocab, d],
            init: ParamInit::Normal,
        }];
        for l in 0..self.layers {
            let n = |p| LlamaSpec::name(l, p);
            push_linear(&mut out, &n(Part::Q), [q, d], qb(q));
            push_linear(&mut out, &n(Part::K), [kv, d], qb(kv));
            push_linear(&mut out, &n(Part::V), [kv, d], qb(kv));
            push_linear(&mut out, &n(Part::O), [d, q], None);
            push_linear(&mut out, &n(Part::Fc1), [h, d], None);
            push_linear(&mut out, &n(Part::Up), [h, d], None);
            push_linear(&mut out, &n(Part::Fc2), [d, h], None);
            push_norm(&mut out, &n(Part::Norm1), Norm::RmsNorm, d);
            push_norm(&mut out, &n(Part::Norm2), Norm::RmsNorm, d);
        }
        push_norm(&mut out, "model.norm", Norm::RmsNorm, d);
        if !self.tie_embeddings {
            out.push(ParamSpec {
                name: LM_HEAD.into(),
                shape: vec![self.vocab, d],
                init: ParamInit::Normal,
            });
        }
        out
    }

    pub(super) fn embed(&self, w: &Weights, tokens: &Tokens) -> Result<HostTensor, String> {
        super::gather_embeddings(w.get(EMBED), None, tokens)
    }

    /// Checks the shape rules a Llama must keep; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 {
            return Err("`heads` and `kv_heads` must be at least 1".into());
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "`kv_heads` ({}) must divide `heads` ({}): grouped-query attention shares each key/value head among heads / kv_heads query heads",
                self.kv_heads, self.heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "the head dimension ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// The spec a Hugging Face `config.json` describes (`LlamaForCausalLM`,
    /// `MistralForCausalLM`, `Qwen2ForCausalLM`, whose Q/K/V always have
    /// biases: `qkv_bias`); the error names the field.
    pub fn from_hf_config(c: &serde_json::Value, qkv_bias: bool) -> Result<LlamaSpec, String> {
        let f = super::hf_field;
        let dim = f(c, "hidden_size")?;
        let heads = f(c, "num_attention_heads")?;
        let kv_heads = super::hf_opt(c, "num_key_value_heads")?.unwrap_or(heads);
        let head_dim = super::hf_opt(c, "head_dim")?.unwrap_or(dim / heads.max(1));
        // transformers 5 keeps the base in `rope_parameters`; 4.x at the top.
        let rope = c.get("rope_parameters").or_else(|| c.get("rope_scaling"));
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(|t| t.as_str())
            && kind != "default"
        {
            return Err(format!(
                "rope type `{kind}` is not supported (only the default, unscaled RoPE)"
            ));
        }
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| c.get("rope_theta"))
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| format!("`rope_theta` must be a number, found {v}"))
            })
            .transpose()?
            .unwrap_or(10000.0);
        if let Some(act) = c.get("hidden_act").and_then(|a| a.as_str())
            && act != "silu"
        {
            return Err(format!(
                "`hidden_act: {act}` is not supported for a Llama (only `silu`)"
            ));
        }
        if c.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err("`mlp_bias: true` is not supported".into());
        }
        let spec = LlamaSpec {
            layers: f(c, "num_hidden_layers")?,
            dim,
            heads,
            kv_heads,
            head_dim,
            hidden: f(c, "intermediate_size")?,
            vocab: f(c, "vocab_size")?,
            eps: c
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-6),
            rope_theta,
            tie_embeddings: c
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            attention_bias: qkv_bias
                || c.get("attention_bias").and_then(|v| v.as_bool()) == Some(true),
            attention: AttentionForm::Manual,
        };
        spec.validate()?;
        Ok(spec)
    }
}
