//! The model section of a scenario, field by field: which kind, and the
//! fields that kind takes. `residual_mlp` and `decoder` are layerdrift's own
//! synthetic models; `llama` and `gpt2` are Hugging Face architectures with
//! generated weights; `checkpoint:` reads a Hugging Face folder's
//! `config.json` instead of any of these fields.

use std::path::PathBuf;

use layerdrift_backends::{
    Activation, AttentionForm, BertSpec, DecoderSpec, Gpt2Spec, LlamaSpec, ModelSpec, Norm,
    ResidualMlpSpec,
};

use super::raw::{Axis, RawAttention, RawKind, RawModel};
use super::validate::{Validator, act_of, att_of, norm_of};

/// What the model section describes, its fields checked.
#[derive(Clone, Debug)]
pub(super) enum GridKind {
    /// `kind: residual_mlp`.
    Mlp,
    /// `kind: decoder`.
    Decoder,
    /// `kind: llama` (generated weights with Hugging Face names).
    Llama {
        kv_heads: usize,
        vocab: usize,
        tie_embeddings: bool,
        attention_bias: bool,
    },
    /// `kind: gpt2`.
    Gpt2 { vocab: usize, positions: usize },
    /// `kind: bert`.
    Bert { vocab: usize, positions: usize },
    /// `checkpoint:`: the model its `config.json` describes.
    Checkpoint { dir: PathBuf, model: Box<ModelSpec> },
}

impl GridKind {
    /// Whether the model attends over positions (a decoder kind).
    pub(super) fn has_attention(&self) -> bool {
        match self {
            GridKind::Mlp => false,
            GridKind::Decoder
            | GridKind::Llama { .. }
            | GridKind::Gpt2 { .. }
            | GridKind::Bert { .. } => true,
            GridKind::Checkpoint { model, .. } => model.attention().is_some(),
        }
    }

    /// Whether the model is an encoder (sequences of their own lengths,
    /// padded and masked).
    pub(super) fn encoder(&self) -> bool {
        match self {
            GridKind::Mlp | GridKind::Decoder | GridKind::Llama { .. } | GridKind::Gpt2 { .. } => {
                false
            }
            GridKind::Bert { .. } => true,
            GridKind::Checkpoint { model, .. } => model.encoder(),
        }
    }

    /// The vocabulary of a language model (token ids in).
    pub(super) fn vocab(&self) -> Option<usize> {
        match self {
            GridKind::Mlp | GridKind::Decoder => None,
            GridKind::Llama { vocab, .. }
            | GridKind::Gpt2 { vocab, .. }
            | GridKind::Bert { vocab, .. } => Some(*vocab),
            GridKind::Checkpoint { model, .. } => model.vocab(),
        }
    }
}

/// The model fields every kind shares, as checked.
#[derive(Clone, Debug)]
pub(super) struct ModelFields {
    pub(super) kind: GridKind,
    pub(super) layers: usize,
    pub(super) dim: usize,
    pub(super) hidden: Option<usize>,
    pub(super) heads: usize,
    pub(super) eps: f64,
    pub(super) rope_theta: f64,
    pub(super) activations: Vec<Activation>,
    pub(super) norms: Vec<Norm>,
    pub(super) residuals: Vec<bool>,
    pub(super) ropes: Vec<bool>,
    pub(super) attentions: Vec<AttentionForm>,
}

impl ModelFields {
    /// The model of one point of the grid.
    pub(super) fn model(
        &self,
        activation: Activation,
        norm: Norm,
        residual: bool,
        rope: bool,
        attention: AttentionForm,
    ) -> ModelSpec {
        let hidden = self.hidden.unwrap_or(0);
        match &self.kind {
            GridKind::Mlp => ModelSpec::ResidualMlp(ResidualMlpSpec {
                layers: self.layers,
                dim: self.dim,
                hidden,
                activation,
                norm,
                eps: self.eps,
                residual,
            }),
            GridKind::Decoder => ModelSpec::Decoder(DecoderSpec {
                layers: self.layers,
                dim: self.dim,
                heads: self.heads,
                hidden,
                activation,
                norm,
                eps: self.eps,
                rope_theta: rope.then_some(self.rope_theta),
                attention,
            }),
            GridKind::Llama {
                kv_heads,
                vocab,
                tie_embeddings,
                attention_bias,
            } => ModelSpec::Llama(LlamaSpec {
                layers: self.layers,
                dim: self.dim,
                heads: self.heads,
                kv_heads: *kv_heads,
                head_dim: self.dim / self.heads.max(1),
                hidden,
                vocab: *vocab,
                eps: self.eps,
                rope_theta: self.rope_theta,
                tie_embeddings: *tie_embeddings,
                attention_bias: *attention_bias,
                attention,
            }),
            GridKind::Gpt2 { vocab, positions } => ModelSpec::Gpt2(Gpt2Spec {
                layers: self.layers,
                dim: self.dim,
                heads: self.heads,
                hidden,
                vocab: *vocab,
                positions: *positions,
                eps: self.eps,
                activation: Activation::GeluNew,
                attention,
            }),
            GridKind::Bert { vocab, positions } => ModelSpec::Bert(BertSpec {
                layers: self.layers,
                dim: self.dim,
                heads: self.heads,
                hidden,
                vocab: *vocab,
                positions: *positions,
                type_vocab: 2,
                eps: self.eps,
                activation,
            }),
            GridKind::Checkpoint { model, .. } => model.with_attention(attention),
        }
    }
}

/// Fields only some kinds take: `(key, set, kinds that take it)`.
fn only_for(m: &RawModel) -> Vec<(&'static str, bool, &'static [RawKind])> {
    use RawKind::*;
    vec![
        ("heads", m.heads.is_some(), &[Decoder, Llama, Gpt2, Bert]),
        ("rope", m.rope.is_some(), &[Decoder]),
        ("rope_theta", m.rope_theta.is_some(), &[Decoder, Llama]),
        ("residual", m.residual.is_some(), &[ResidualMlp]),
        (
            "activation",
            m.activation.is_some(),
            &[ResidualMlp, Decoder, Bert],
        ),
        ("norm", m.norm.is_some(), &[ResidualMlp, Decoder]),
        ("attention", m.attention.is_some(), &[Decoder, Llama, Gpt2]),
        ("kv_heads", m.kv_heads.is_some(), &[Llama]),
        ("vocab", m.vocab.is_some(), &[Llama, Gpt2, Bert]),
        ("tie_embeddings", m.tie_embeddings.is_some(), &[Llama]),
        ("attention_bias", m.attention_bias.is_some(), &[Llama]),
        ("positions", m.positions.is_some(), &[Gpt2, Bert]),
    ]
}

fn kind_name(k: RawKind) -> &'static str {
    match k {
        RawKind::ResidualMlp => "residual_mlp",
        RawKind::Decoder => "decoder",
        RawKind::Llama => "llama",
        RawKind::Gpt2 => "gpt2",
        RawKind::Bert => "bert",
    }
}

/// Phase one for `model:`.
pub(super) fn model_fields(v: &mut Validator<'_>, m: RawModel) -> ModelFields {
    let attentions: Vec<AttentionForm> = v
        .axis(
            "model.attention",
            m.attention
                .clone()
                .unwrap_or(Axis(vec![RawAttention::Manual])),
        )
        .into_iter()
        .map(att_of)
        .collect();
    v.unique(
        "model.attention",
        &attentions.iter().map(|a| a.name()).collect::<Vec<_>>(),
    );
    if let Some(dir) = &m.checkpoint {
        return checkpoint_fields(v, &m, v.relative(dir), attentions);
    }
    if m.fetched_by.is_some() {
        v.err(
            "model.fetched_by",
            "names the command that downloads a `checkpoint:`; there is none here — remove it",
        );
    }
    let Some(kind) = m.kind else {
        v.err(
            "model",
            "no `kind:` — write `kind: residual_mlp`, `decoder`, `llama`, `gpt2` or `bert`, or `checkpoint: <Hugging Face folder>`",
        );
        return fallback(attentions);
    };
    for (key, set, kinds) in only_for(&m) {
        if set && !kinds.contains(&kind) {
            let takes: Vec<&str> = kinds.iter().map(|k| kind_name(*k)).collect();
            let why = match key {
                "residual" => ": its blocks are always residual",
                _ => "",
            };
            v.err(
                &format!("model.{key}"),
                format!(
                    "a `{}` has no `{key}` (only {} take it){why}; remove it",
                    kind_name(kind),
                    takes.join(", ")
                ),
            );
        }
    }
    let layers = required(v, "model.layers", m.layers);
    let dim = required(v, "model.dim", m.dim);
    if let Some(h) = m.hidden {
        v.positive("model.hidden", h);
    }
    let eps = m.eps.unwrap_or(match kind {
        RawKind::Llama => 1e-6,
        RawKind::Bert => 1e-12,
        RawKind::ResidualMlp | RawKind::Decoder | RawKind::Gpt2 => 1e-5,
    });
    v.finite_positive("model.eps", eps);
    let rope_theta = m.rope_theta.unwrap_or(10_000.0);
    v.finite_positive("model.rope_theta", rope_theta);
    let heads = match (kind, m.heads) {
        (RawKind::ResidualMlp, _) => 1,
        (_, None) => {
            v.err(
                "model.kind",
                format!("a {} needs `heads:` (a divisor of dim)", kind_name(kind)),
            );
            1
        }
        (_, Some(h)) => {
            v.positive("model.heads", h);
            h.max(1)
        }
    };
    let activations: Vec<Activation> = v
        .axis(
            "model.activation",
            m.activation
                .unwrap_or(Axis(vec![super::raw::RawActivation::Gelu])),
        )
        .into_iter()
        .map(act_of)
        .collect();
    let norms: Vec<Norm> = v
        .axis(
            "model.norm",
            m.norm.unwrap_or(Axis(vec![super::raw::RawNorm::LayerNorm])),
        )
        .into_iter()
        .map(norm_of)
        .collect();
    v.unique(
        "model.activation",
        &activations.iter().map(|a| a.name()).collect::<Vec<_>>(),
    );
    v.unique(
        "model.norm",
        &norms.iter().map(|n| n.name()).collect::<Vec<_>>(),
    );
    let residuals = v.axis("model.residual", m.residual.unwrap_or(Axis(vec![true])));
    let ropes = v.axis("model.rope", m.rope.unwrap_or(Axis(vec![false])));
    v.unique("model.residual", &residuals);
    v.unique("model.rope", &ropes);
    let kind = match kind {
        RawKind::ResidualMlp => GridKind::Mlp,
        RawKind::Decoder => GridKind::Decoder,
        RawKind::Llama => {
            let vocab = required(v, "model.vocab", m.vocab);
            let kv_heads = m.kv_heads.unwrap_or(heads);
            v.positive("model.kv_heads", kv_heads);
            if kv_heads > 0 && !heads.is_multiple_of(kv_heads) {
                v.err(
                    "model.kv_heads",
                    format!(
                        "{kv_heads} key/value heads do not divide {heads} heads: each key/value head serves heads / kv_heads query heads; pick a divisor of {heads}"
                    ),
                );
            }
            GridKind::Llama {
                kv_heads: kv_heads.max(1),
                vocab,
                tie_embeddings: m.tie_embeddings.unwrap_or(false),
                attention_bias: m.attention_bias.unwrap_or(false),
            }
        }
        RawKind::Gpt2 => {
            let vocab = required(v, "model.vocab", m.vocab);
            let positions = m.positions.unwrap_or(1024);
            v.positive("model.positions", positions);
            GridKind::Gpt2 { vocab, positions }
        }
        RawKind::Bert => {
            let vocab = required(v, "model.vocab", m.vocab);
            let positions = m.positions.unwrap_or(512);
            v.positive("model.positions", positions);
            GridKind::Bert { vocab, positions }
        }
    };
    ModelFields {
        kind,
        layers,
        dim,
        hidden: m.hidden,
        heads,
        eps,
        rope_theta,
        activations,
        norms,
        residuals,
        ropes,
        attentions,
    }
}

/// An encoder's attention is written out (transformers' eager
/// `BertSelfAttention`): `attention: fused` is refused.
fn refuse_fused(v: &mut Validator<'_>, attentions: &[AttentionForm]) {
    if attentions.contains(&AttentionForm::Fused) {
        v.err(
            "model.attention",
            "an encoder's attention is written out (`manual`): its padding mask is per sequence, which no backend's fused kernel here takes — remove `fused`",
        );
    }
}

fn required(v: &mut Validator<'_>, path: &str, x: Option<usize>) -> usize {
    match x {
        None => {
            v.err(path, "missing: give a positive integer");
            1
        }
        Some(n) => {
            v.positive(path, n);
            n.max(1)
        }
    }
}

/// The fields of a model section that said nothing usable (its errors are
/// already reported), and the defaults a checkpoint's spec does not use.
fn fallback(attentions: Vec<AttentionForm>) -> ModelFields {
    ModelFields {
        kind: GridKind::Mlp,
        layers: 1,
        dim: 1,
        hidden: Some(1),
        heads: 1,
        eps: 1e-5,
        rope_theta: 10_000.0,
        activations: vec![Activation::GeluErf],
        norms: vec![Norm::LayerNorm],
        residuals: vec![true],
        ropes: vec![false],
        attentions,
    }
}

/// `checkpoint:`: every shape comes from `config.json`; only `layers`
/// (the first N blocks) and `attention` may stand beside it.
fn checkpoint_fields(
    v: &mut Validator<'_>,
    m: &RawModel,
    dir: PathBuf,
    attentions: Vec<AttentionForm>,
) -> ModelFields {
    let mut set: Vec<&str> = only_for(m)
        .into_iter()
        .filter(|(k, s, _)| *s && *k != "attention")
        .map(|(k, _, _)| k)
        .collect();
    for (k, s) in [
        ("kind", m.kind.is_some()),
        ("dim", m.dim.is_some()),
        ("hidden", m.hidden.is_some()),
        ("eps", m.eps.is_some()),
    ] {
        if s {
            set.push(k);
        }
    }
    for key in set {
        v.err(
            &format!("model.{key}"),
            "set by the checkpoint's config.json; remove it (only `layers:` and `attention:` may stand beside `checkpoint:`)",
        );
    }
    if let Some(n) = m.layers {
        v.positive("model.layers", n);
    }
    if let Some(by) = &m.fetched_by
        && !dir.exists()
    {
        v.err("model.checkpoint", super::not_fetched(&dir, by));
        return fallback(attentions);
    }
    // The headers too (names, dtypes, shapes): what loading would refuse is
    // refused here, before any tensor is read.
    let model = match layerdrift_backends::hf::inspect(&dir, m.layers) {
        Ok((model, _)) => {
            if model.encoder() {
                refuse_fused(v, &attentions);
            }
            model
        }
        Err(e) => {
            let at = if matches!(e, layerdrift_backends::hf::HfError::Config { ref message, .. } if message.contains("`layers:"))
            {
                "model.layers"
            } else {
                "model.checkpoint"
            };
            v.err(at, e.to_string());
            return fallback(attentions);
        }
    };
    ModelFields {
        layers: model.layers(),
        dim: model.dim(),
        hidden: Some(model.hidden()),
        kind: GridKind::Checkpoint {
            dir,
            model: Box::new(model),
        },
        ..fallback(attentions)
    }
}
