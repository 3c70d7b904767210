//! A behavioural fingerprint of a backend on this machine.

use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::model::{Activation, AttentionForm, DecoderSpec, ModelSpec, Norm, ResidualMlpSpec};
use crate::request::{Checkpoints, Execution, Row, RunRequest, Schedule};
use crate::weights::{Weights, generate_input};

/// A behavioural fingerprint of a backend on this machine: a few fixed
/// one-layer runs at the shipped scenarios' widths (768 wide, hidden 768 and
/// 3072, 12 heads; 1, 64 and 1024 rows; full, rows and KV-cache schedules),
/// every output bit hashed ([`Checkpoints::fnv1a`], chained over the runs).
/// Two machines with other bits here compute other numbers: the harness
/// records the hash of the machine that recorded a snapshot class, so a
/// machine whose class *name* matches but whose bits do not is banded
/// instead of compared exactly. About 0.1–0.5 s per backend.
pub fn fingerprint(b: &dyn Backend) -> Result<String, BackendError> {
    let mlp = ModelSpec::ResidualMlp(ResidualMlpSpec {
        layers: 1,
        dim: 768,
        hidden: 768,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        residual: true,
    });
    let decoder = ModelSpec::Decoder(DecoderSpec {
        layers: 1,
        dim: 768,
        heads: 12,
        hidden: 3072,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        rope_theta: Some(10_000.0),
        attention: AttentionForm::Manual,
    });
    let mut hash = Checkpoints::FNV_OFFSET;
    let runs: [(&ModelSpec, usize, Schedule); 5] = [
        (&mlp, 1024, Schedule::Full),
        (&mlp, 64, Schedule::Full),
        (&mlp, 1, Schedule::Rows),
        (&decoder, 64, Schedule::Full),
        (&decoder, 64, Schedule::kv_cache(56, 64)),
    ];
    for (model, seq, schedule) in runs {
        let weights = Weights::init(model, 7, 0.05);
        let input = generate_input(1, seq, model.dim(), 3);
        let observed: Vec<Row> = (seq.saturating_sub(8)..seq)
            .map(|pos| Row { batch: 0, pos })
            .collect();
        let req = RunRequest {
            model,
            weights: &weights,
            input: &input,
            dtype: DType::F32,
            schedule: &schedule,
            observed: &observed,
            threads: Some(2),
            execution: Execution::Standard,
            diagnose: Default::default(),
        };
        b.check(&req)?;
        hash = b.run(&req)?.fnv1a(hash);
    }
    Ok(format!("{hash:016x}"))
}
