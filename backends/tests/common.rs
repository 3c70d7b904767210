//! Tiny models shared by the backend integration tests.

#![allow(dead_code, missing_docs)]

use layerdrift_backends::{
    Activation, AttentionForm, Backend, Checkpoints, DType, DecoderSpec, Diagnose, Execution,
    ModelSpec, Norm, ResidualMlpSpec, Row, RunRequest, Schedule, Weights, generate_input, registry,
};

/// Every backend of this build that can run here, without the oracle. Fails
/// loudly when there is none: a loop over nothing would pass silently.
pub fn available() -> Vec<Box<dyn Backend>> {
    let out: Vec<Box<dyn Backend>> = registry()
        .into_iter()
        .filter(|b| !b.id().is_oracle() && b.available().is_ok())
        .collect();
    assert!(
        !out.is_empty(),
        "no backend besides the oracle can run in this build: these tests need one (the default features build candle and burn)"
    );
    out
}

pub fn mlp(residual: bool) -> ModelSpec {
    mlp_sized(residual, 8, 12)
}

pub fn mlp_sized(residual: bool, dim: usize, hidden: usize) -> ModelSpec {
    ModelSpec::ResidualMlp(ResidualMlpSpec {
        layers: 2,
        dim,
        hidden,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        residual,
    })
}

pub fn decoder(rope: bool, attention: AttentionForm) -> ModelSpec {
    ModelSpec::Decoder(DecoderSpec {
        layers: 2,
        dim: 8,
        heads: 2,
        hidden: 16,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        rope_theta: rope.then_some(10_000.0),
        attention,
    })
}

/// A tiny Llama: grouped-query attention (4 heads over 2 KV heads), SwiGLU,
/// an untied head over a vocabulary of 11.
pub fn llama(attention: AttentionForm) -> ModelSpec {
    ModelSpec::Llama(layerdrift_backends::LlamaSpec {
        layers: 2,
        dim: 8,
        heads: 4,
        kv_heads: 2,
        head_dim: 2,
        hidden: 12,
        vocab: 11,
        eps: 1e-6,
        rope_theta: 10_000.0,
        tie_embeddings: false,
        attention_bias: true,
        attention,
    })
}

/// A tiny GPT-2: fused `c_attn`, Conv1D `[in, out]` weights, tied head.
pub fn gpt2(attention: AttentionForm) -> ModelSpec {
    ModelSpec::Gpt2(layerdrift_backends::Gpt2Spec {
        layers: 2,
        dim: 8,
        heads: 2,
        hidden: 16,
        vocab: 11,
        positions: 16,
        eps: 1e-5,
        activation: Activation::GeluNew,
        attention,
    })
}

/// Runs `model` on a `[2, 6, dim]` input, observing positions 3..6 of batch 1.
pub fn run(b: &dyn Backend, model: &ModelSpec, schedule: &Schedule) -> Result<Checkpoints, String> {
    run_shaped(b, model, schedule, 2, 6)
}

/// Runs `model` on a `[batch, seq, dim]` input, observing the last three
/// positions of the last batch element.
pub fn run_shaped(
    b: &dyn Backend,
    model: &ModelSpec,
    schedule: &Schedule,
    batch: usize,
    seq: usize,
) -> Result<Checkpoints, String> {
    run_exec(b, model, schedule, batch, seq, Execution::Standard)
}

/// [`run_shaped`] in the given execution mode.
pub fn run_exec(
    b: &dyn Backend,
    model: &ModelSpec,
    schedule: &Schedule,
    batch: usize,
    seq: usize,
    execution: Execution,
) -> Result<Checkpoints, String> {
    run_diag(
        b,
        model,
        schedule,
        (batch, seq),
        execution,
        Diagnose::default(),
    )
}

/// [`run_exec`] with diagnostics: op-level checkpoints, teacher forcing.
pub fn run_diag(
    b: &dyn Backend,
    model: &ModelSpec,
    schedule: &Schedule,
    (batch, seq): (usize, usize),
    execution: Execution,
    diagnose: Diagnose<'_>,
) -> Result<Checkpoints, String> {
    let weights = Weights::init(model, 11, 0.2);
    let input = generate_input(batch, seq, model.dim(), 5);
    let observed: Vec<Row> = (seq - 3..seq)
        .map(|pos| Row {
            batch: batch - 1,
            pos,
        })
        .collect();
    let req = RunRequest {
        model,
        weights: &weights,
        input: &input,
        dtype: DType::F32,
        schedule,
        observed: &observed,
        threads: None,
        execution,
        diagnose,
    };
    b.check(&req).map_err(|e| e.to_string())?;
    b.run(&req).map_err(|e| e.to_string())
}

pub fn max_abs(a: &Checkpoints, b: &Checkpoints) -> f64 {
    a.layers
        .iter()
        .flatten()
        .zip(b.layers.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// FNV-1a over the bits of every checkpoint value.
pub fn fingerprint(c: &Checkpoints) -> u64 {
    c.fnv1a(Checkpoints::FNV_OFFSET)
}
