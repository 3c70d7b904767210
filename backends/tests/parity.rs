//! Every backend of this build against the f64 oracle on tiny models, to a
//! tight tolerance: a wrong mask, cache bug or transposed weight cannot hide
//! behind "drift" (which is ~1e-7 here).

mod common;

use common::{available, decoder, max_abs, mlp, run};
use layerdrift_backends::reference::Reference;
use layerdrift_backends::{AttentionForm, Schedule};

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
                    b.info().id()
                );
            }
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
                                b.info().id()
                            );
                        }
                        // Only fused attention may be declined, and it says so.
                        Err(e) => assert!(
                            att == AttentionForm::Fused && e.contains("fused"),
                            "{}: {e}",
                            b.info().id()
                        ),
                    }
                }
            }
        }
    }
}

#[test]
fn a_wrong_mask_is_caught() {
    // Negative control: observing position 3 from a sequence cut after it
    // (what a model that ignores the causal mask would effectively differ
    // by) is far outside the tolerance.
    let m = decoder(false, AttentionForm::Manual);
    let truth = run(&Reference, &m, &Schedule::Full).unwrap();
    let shifted = run(&Reference, &m, &Schedule::kv_cache(4, 6)).unwrap();
    assert!(
        max_abs(&truth, &shifted) < 1e-12,
        "schedules agree when the mask is right"
    );
    let other = {
        let weights = layerdrift_backends::Weights::init(&m, 12, 0.2);
        let input = layerdrift_backends::generate_input(2, 6, 8, 5);
        let observed: Vec<_> = (3..6)
            .map(|pos| layerdrift_backends::Row { batch: 1, pos })
            .collect();
        use layerdrift_backends::Backend;
        Reference
            .run(&layerdrift_backends::RunRequest {
                model: &m,
                weights: &weights,
                input: &input,
                dtype: layerdrift_backends::DType::F32,
                schedule: &Schedule::Full,
                observed: &observed,
                threads: None,
                batch_invariant: false,
            })
            .unwrap()
    };
    assert!(
        max_abs(&truth, &other) > TOL,
        "different weights must exceed the tolerance"
    );
}
