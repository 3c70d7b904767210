//! Every backend of this build against the f64 oracle on tiny models, to a
//! tight tolerance: a wrong mask, cache bug or transposed weight cannot hide
//! behind "drift" (which is ~1e-7 here).

mod common;

use common::{available, decoder, gpt2, llama, max_abs, mlp, run};
use layerdrift_backends::reference::Reference;
use layerdrift_backends::{
    Activation, AttentionForm, Backend, Checkpoints, DType, DecoderSpec, Execution, HostTensor,
    ModelSpec, Norm, ResidualMlpSpec, Row, RunRequest, Schedule, Weights, generate_input,
};

const TOL: f64 = 1e-5;

#[test]
fn residual_mlp_matches_the_oracle() {
    let backends = available();
    assert!(
        !backends.is_empty(),
        "no backend besides the oracle is built"
    );
    for residual in [true, false] {
        let m = mlp(residual);
        let truth = run(&Reference, &m, &Schedule::Rows).unwrap();
        for b in &backends {
            for s in [Schedule::Full, Schedule::Rows] {
                let got = run(b.as_ref(), &m, &s).unwrap();
                let d = max_abs(&got, &truth);
                assert!(
                    d < TOL,
                    "{} {s:?} residual={residual}: max |Δ| {d:e} vs oracle",
                    b.id()
                );
            }
        }
    }
}

/// Every activation and norm each adapter writes out (erf and tanh GELU,
/// SiLU, `gelu_new`; LayerNorm, RMSNorm), in the MLP and in a cached
/// RMSNorm decoder.
#[test]
fn every_activation_and_norm_matches_the_oracle() {
    let mut models = Vec::new();
    for activation in [
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::GeluNew,
        Activation::Silu,
    ] {
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            models.push((
                ModelSpec::ResidualMlp(ResidualMlpSpec {
                    layers: 2,
                    dim: 8,
                    hidden: 12,
                    activation,
                    norm,
                    eps: 1e-5,
                    residual: true,
                }),
                Schedule::Full,
            ));
        }
    }
    models.push((
        ModelSpec::Decoder(DecoderSpec {
            layers: 2,
            dim: 8,
            heads: 2,
            hidden: 16,
            activation: Activation::Silu,
            norm: Norm::RmsNorm,
            eps: 1e-6,
            rope_theta: Some(10_000.0),
            attention: AttentionForm::Manual,
        }),
        Schedule::kv_cache(3, 6),
    ));
    for (m, s) in &models {
        let truth = run(&Reference, m, &Schedule::Full).unwrap();
        for b in available() {
            let got = run(b.as_ref(), m, s).unwrap();
            let d = max_abs(&got, &truth);
            assert!(d < TOL, "{} {m:?} {s:?}: max |Δ| {d:e} vs oracle", b.id());
        }
    }
}

#[test]
fn decoder_matches_the_oracle_with_and_without_cache() {
    let backends = available();
    for rope in [false, true] {
        for att in [AttentionForm::Manual, AttentionForm::Fused] {
            let m = decoder(rope, att);
            let truth = run(&Reference, &m, &Schedule::Full).unwrap();
            // The oracle's own cache path agrees with its full pass to f64 precision.
            let cached = run(&Reference, &m, &Schedule::kv_cache(3, 6)).unwrap();
            assert!(max_abs(&cached, &truth) < 1e-12);
            for b in &backends {
                for s in [
                    Schedule::Full,
                    Schedule::kv_cache(3, 6),
                    Schedule::chunked(4, 6),
                ] {
                    match run(b.as_ref(), &m, &s) {
                        Ok(got) => {
                            let d = max_abs(&got, &truth);
                            assert!(
                                d < TOL,
                                "{} {s:?} rope={rope} {att:?}: max |Δ| {d:e} vs oracle",
                                b.id()
                            );
                        }
                        // Only fused attention may be declined, and it says so.
                        Err(e) => assert!(
                            att == AttentionForm::Fused && e.contains("fused"),
                            "{}: {e}",
                            b.id()
                        ),
                    }
                }
            }
        }
    }
}

/// The Hugging Face kinds: every backend's blocks, final norm and logits
/// agree with the oracle in every schedule; the head is there and `vocab`
/// wide; `rows` is refused by the model's capability, with the reason.
#[test]
fn llama_and_gpt2_match_the_oracle_with_their_heads() {
    let backends = available();
    for m in [llama(AttentionForm::Manual), gpt2(AttentionForm::Manual)] {
        let truth = run(&Reference, &m, &Schedule::Full).unwrap();
        let th = truth.head.as_ref().expect("a language model has a head");
        assert_eq!(th.vocab, 11);
        assert_eq!(th.logits.len(), truth.rows * 11);
        assert!(
            run(&Reference, &m, &Schedule::Rows)
                .unwrap_err()
                .contains("row-independent")
        );
        for b in &backends {
            assert!(run(b.as_ref(), &m, &Schedule::Rows).is_err(), "{}", b.id());
            for s in [
                Schedule::Full,
                Schedule::kv_cache(3, 6),
                Schedule::chunked(4, 6),
            ] {
                let got = run(b.as_ref(), &m, &s).unwrap();
                let d = max_abs(&got, &truth);
                let h = got.head.as_ref().expect("head");
                let dh = h
                    .logits
                    .iter()
                    .zip(&th.logits)
                    .chain(h.final_norm.iter().zip(&th.final_norm))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f64, f64::max);
                assert!(
                    d < TOL && dh < TOL,
                    "{} {} {s:?}: max |Δ| {d:e} (blocks), {dh:e} (head) vs oracle",
                    b.id(),
                    m.kind()
                );
            }
        }
    }
}

/// Runs `m` on `input`, observing position 3 of batch element 1.
fn position_3(b: &dyn Backend, m: &ModelSpec, input: &HostTensor) -> Result<Checkpoints, String> {
    let weights = Weights::init(m, 12, 0.2);
    let observed = [Row { batch: 1, pos: 3 }];
    let req = RunRequest {
        model: m,
        weights: &weights,
        input,
        dtype: DType::F32,
        schedule: &Schedule::Full,
        observed: &observed,
        threads: None,
        execution: Execution::Standard,
        diagnose: Default::default(),
    };
    b.check(&req).map_err(|e| e.to_string())?;
    b.run(&req).map_err(|e| e.to_string())
}

/// `input` with position `pos` of batch element 1 replaced by other values.
fn perturbed(input: &HostTensor, pos: usize) -> HostTensor {
    let mut out = input.clone();
    let (seq, dim) = (input.shape[1], input.shape[2]);
    let start = (seq + pos) * dim;
    for (k, x) in out.data[start..start + dim].iter_mut().enumerate() {
        *x = -*x + 0.5 * (k as f32 % 3.0);
    }
    out
}

/// The causal mask, tested for what it is for: a position must not see
/// later ones. Changing positions 4 and 5 must leave position 3's outputs
/// bitwise unchanged on every backend (a missing, shifted or non-causal mask
/// changes them by ~1e-1); changing position 2, which it may see, must change
/// them — so the check can fail.
#[test]
fn the_causal_mask_hides_later_positions() {
    let mut backends = available();
    backends.push(Box::new(Reference));
    for att in [AttentionForm::Manual, AttentionForm::Fused] {
        let m = decoder(true, att);
        let input = generate_input(2, 6, 8, 5);
        for b in &backends {
            let base = match position_3(b.as_ref(), &m, &input) {
                Ok(c) => c,
                Err(e) if att == AttentionForm::Fused && e.contains("fused") => continue,
                Err(e) => panic!("{}: {e}", b.id()),
            };
            let later = perturbed(&perturbed(&input, 4), 5);
            let got = position_3(b.as_ref(), &m, &later).unwrap();
            assert_eq!(
                max_abs(&got, &base),
                0.0,
                "{} {att:?}: position 3 saw positions 4 and 5",
                b.id()
            );
            let earlier = perturbed(&input, 2);
            let got = position_3(b.as_ref(), &m, &earlier).unwrap();
            assert!(
                max_abs(&got, &base) > 1e-3,
                "{} {att:?}: position 3 did not see position 2",
                b.id()
            );
        }
    }
}
