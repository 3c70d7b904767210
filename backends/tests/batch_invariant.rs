//! Batch-invariant execution (`RunRequest::batch_invariant`) on every backend
//! of this build: a row's result must not depend on the rows beside it or on
//! how the sequence was scheduled — bitwise — and must stay as close to the
//! f64 oracle as the standard execution.

mod common;

use common::{available, fingerprint, max_abs, mlp_sized, run_exec};
use layerdrift_backends::reference::Reference;
use layerdrift_backends::{Activation, AttentionForm, DecoderSpec, ModelSpec, Norm, Schedule};

const TOL: f64 = 1e-5;

fn decoder(attention: AttentionForm) -> ModelSpec {
    ModelSpec::Decoder(DecoderSpec {
        layers: 2,
        dim: 32,
        heads: 4,
        hidden: 64,
        activation: Activation::GeluErf,
        norm: Norm::LayerNorm,
        eps: 1e-5,
        rope_theta: Some(10_000.0),
        attention,
    })
}

#[test]
fn residual_mlp_full_equals_rows_bitwise() {
    let m = mlp_sized(true, 64, 96);
    let (batch, seq) = (4, 16);
    let truth = run_exec(&Reference, &m, &Schedule::Rows, batch, seq, false).unwrap();
    for b in available() {
        let id = b.id().to_string();
        let full = run_exec(b.as_ref(), &m, &Schedule::Full, batch, seq, true).unwrap();
        let rows = run_exec(b.as_ref(), &m, &Schedule::Rows, batch, seq, true).unwrap();
        assert_eq!(
            fingerprint(&full),
            fingerprint(&rows),
            "{id}: batch-invariant full vs rows differ by max |Δ| {:e}",
            max_abs(&full, &rows)
        );
        let d = max_abs(&full, &truth);
        assert!(d < TOL, "{id}: max |Δ| {d:e} vs the oracle");
    }
}

#[test]
fn decoder_full_equals_cache_and_chunks_bitwise() {
    let (batch, seq) = (2, 12);
    for att in [AttentionForm::Manual, AttentionForm::Fused] {
        let m = decoder(att);
        let truth = run_exec(&Reference, &m, &Schedule::Full, batch, seq, false).unwrap();
        for b in available() {
            let id = b.id().to_string();
            let full = match run_exec(b.as_ref(), &m, &Schedule::Full, batch, seq, true) {
                Ok(c) => c,
                // Only fused attention may be declined, and it says so.
                Err(e) => {
                    assert!(
                        att == AttentionForm::Fused && e.contains("fused"),
                        "{id}: {e}"
                    );
                    continue;
                }
            };
            for s in [Schedule::kv_cache(8, seq), Schedule::chunked(5, seq)] {
                let other = run_exec(b.as_ref(), &m, &s, batch, seq, true).unwrap();
                assert_eq!(
                    fingerprint(&full),
                    fingerprint(&other),
                    "{id} {att:?}: batch-invariant full vs {s:?} differ by max |Δ| {:e}",
                    max_abs(&full, &other)
                );
            }
            let d = max_abs(&full, &truth);
            assert!(d < TOL, "{id} {att:?}: max |Δ| {d:e} vs the oracle");
        }
    }
}
