//! Model descriptions: what a backend must compute, as plain data.
//!
//! Parameter names follow PyTorch's `state_dict` of the equivalent
//! `nn.Module`, so weights saved from PyTorch load unchanged (see
//! [`ModelSpec::parameters`]).

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
}

impl Activation {
    /// The scenario spelling (`gelu`, `gelu_tanh`, `silu`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
        }
    }
}

/// Normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `nn.LayerNorm(dim, eps)` with affine weight and bias.
    LayerNorm,
    /// RMSNorm with an affine weight and no bias.
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

/// The seed's `TestMod`: `layers` × (`x + LN2(Linear2(act(Linear1(LN1(x)))))`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualMlpSpec {
    /// Number of residual blocks.
    pub layers: usize,
    /// Model width (input and output features).
    pub dim: usize,
    /// Width between the two linear layers.
    pub hidden: usize,
    /// Activation between the linear layers.
    pub activation: Activation,
    /// Normalisation (LN1 and LN2).
    pub norm: Norm,
    /// Norm epsilon (PyTorch's default 1e-5).
    pub eps: f64,
    /// Whether each block adds its input back (`x + out`).
    pub residual: bool,
}

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
}

/// A model a backend can run.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    /// The seed's residual feed-forward stack.
    ResidualMlp(ResidualMlpSpec),
    /// A decoder-only transformer.
    Decoder(DecoderSpec),
}

/// One named parameter: its `state_dict` name, shape, and seed-init rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// PyTorch `state_dict` name, e.g. `layers.0.linear1.weight`.
    pub name: String,
    /// PyTorch shape (`Linear.weight` is `[out, in]`).
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
    /// Normal with the scenario's std (linear weights).
    Normal,
}

impl ModelSpec {
    /// Number of layers (blocks); checkpoints are taken after each.
    pub fn layers(&self) -> usize {
        match self {
            ModelSpec::ResidualMlp(m) => m.layers,
            ModelSpec::Decoder(m) => m.layers,
        }
    }

    /// Model width.
    pub fn dim(&self) -> usize {
        match self {
            ModelSpec::ResidualMlp(m) => m.dim,
            ModelSpec::Decoder(m) => m.dim,
        }
    }

    /// The scenario spelling of the kind (`residual_mlp`, `decoder`).
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::ResidualMlp(_) => "residual_mlp",
            ModelSpec::Decoder(_) => "decoder",
        }
    }

    /// The ops of one layer, in execution order: the names op-level
    /// checkpoints ([`crate::Diagnose::ops`]) and scenarios' `diagnose: {
    /// ops: … }` use. The last is the layer's output.
    ///
    /// Residual MLP: `norm1`, `linear1`, `act`, `linear2`, `norm2`, and
    /// `residual` when it adds its input back. Decoder: `norm1`, `q`, `k`,
    /// `v`, `rope` (with rotary embeddings), `scores` and `softmax` (written-
    /// out attention only: a fused kernel has neither), `attn` (the heads
    /// merged), `o`, `residual1`, `norm2`, `fc1`, `act`, `fc2`, `residual2`.
    ///
    /// ```
    /// use layerdrift_backends::{ModelSpec, ResidualMlpSpec, Activation, Norm};
    /// let m = ModelSpec::ResidualMlp(ResidualMlpSpec {
    ///     layers: 2, dim: 4, hidden: 4, activation: Activation::GeluErf,
    ///     norm: Norm::LayerNorm, eps: 1e-5, residual: true });
    /// assert_eq!(m.op_names(), ["norm1", "linear1", "act", "linear2", "norm2", "residual"]);
    /// ```
    pub fn op_names(&self) -> Vec<&'static str> {
        match self {
            ModelSpec::ResidualMlp(m) => {
                let mut v = vec!["norm1", "linear1", "act", "linear2", "norm2"];
                if m.residual {
                    v.push("residual");
                }
                v
            }
            ModelSpec::Decoder(m) => {
                let mut v = vec!["norm1", "q", "k", "v"];
                if m.rope_theta.is_some() {
                    v.push("rope");
                }
                if m.attention == AttentionForm::Manual {
                    v.extend(["scores", "softmax"]);
                }
                v.extend([
                    "attn",
                    "o",
                    "residual1",
                    "norm2",
                    "fc1",
                    "act",
                    "fc2",
                    "residual2",
                ]);
                v
            }
        }
    }

    /// Every parameter, in `state_dict` order.
    pub fn parameters(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, init: ParamInit| {
            out.push(ParamSpec { name, shape, init })
        };
        let norm = |push: &mut dyn FnMut(String, Vec<usize>, ParamInit), p: String, n: Norm, d| {
            push(format!("{p}.weight"), vec![d], ParamInit::Ones);
            if n.has_bias() {
                push(format!("{p}.bias"), vec![d], ParamInit::Zeros);
            }
        };
        let linear = |push: &mut dyn FnMut(String, Vec<usize>, ParamInit), p: String, i, o| {
            push(format!("{p}.weight"), vec![o, i], ParamInit::Normal);
            push(format!("{p}.bias"), vec![o], ParamInit::Zeros);
        };
        match self {
            ModelSpec::ResidualMlp(m) => {
                for l in 0..m.layers {
                    norm(&mut push, format!("layers.{l}.norm1"), m.norm, m.dim);
                    norm(&mut push, format!("layers.{l}.norm2"), m.norm, m.dim);
                    linear(&mut push, format!("layers.{l}.linear1"), m.dim, m.hidden);
                    linear(&mut push, format!("layers.{l}.linear2"), m.hidden, m.dim);
                }
            }
            ModelSpec::Decoder(m) => {
                for l in 0..m.layers {
                    norm(&mut push, format!("layers.{l}.norm1"), m.norm, m.dim);
                    for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                        linear(&mut push, format!("layers.{l}.attn.{p}"), m.dim, m.dim);
                    }
                    norm(&mut push, format!("layers.{l}.norm2"), m.norm, m.dim);
                    linear(&mut push, format!("layers.{l}.mlp.fc1"), m.dim, m.hidden);
                    linear(&mut push, format!("layers.{l}.mlp.fc2"), m.hidden, m.dim);
                }
            }
        }
        out
    }
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
