//! Op-level checkpoints and teacher forcing, on tiny models, on every
//! backend this build has and on the oracle: the op checkpoints reproduce
//! the layer checkpoints at each layer's last op, asking for them changes
//! no bit of a run, and a layer forced with its own run's inputs adds no
//! error at all (local error zero when A and B are the same computation).

mod common;

use common::{available, decoder, gpt2, llama, mlp, run_diag};
use layerdrift_backends::reference::Reference;
use layerdrift_backends::{
    AttentionForm, Backend, Checkpoints, Diagnose, Execution, ModelSpec, Schedule,
};

const EXECUTIONS: [Execution; 3] = [
    Execution::Standard,
    Execution::BatchInvariant,
    Execution::FixedShape { tile: 4 },
];

/// Every backend that can run here, the oracle last.
fn every() -> Vec<Box<dyn Backend>> {
    let mut v = available();
    v.push(Box::new(Reference));
    v
}

fn ops_on() -> Diagnose<'static> {
    Diagnose {
        ops: true,
        forced: None,
    }
}

fn bits(c: &Checkpoints) -> Vec<u64> {
    c.layers.iter().flatten().map(|x| x.to_bits()).collect()
}

/// Checks `c`'s op checkpoints against its layer checkpoints: every layer
/// has exactly `model.op_names()` in order, each with one non-empty row per
/// observed row, and the last op of a layer is the layer's output, bit for bit.
fn check_ops(what: &str, model: &ModelSpec, oracle: bool, c: &Checkpoints) {
    // The oracle computes fused attention written out.
    let names = if oracle {
        model.with_attention(AttentionForm::Manual).op_names()
    } else {
        model.op_names()
    };
    assert_eq!(
        c.ops.len(),
        names.len() * model.layers(),
        "{what}: op count"
    );
    for (l, layer) in c.ops.chunks(names.len()).enumerate() {
        let got: Vec<_> = layer.iter().map(|o| o.op).collect();
        assert_eq!(got, names, "{what}: layer {} ops", l + 1);
        for o in layer {
            assert_eq!(o.layer, l, "{what}: {} layer index", o.op);
            assert_eq!(o.rows.len(), c.rows, "{what}: {} rows", o.op);
            assert!(
                o.rows.iter().all(|r| !r.is_empty()),
                "{what}: {} empty",
                o.op
            );
        }
        let last = layer.last().expect("a layer has ops");
        for r in 0..c.rows {
            let want: Vec<u64> = c.row(l, r).iter().map(|x| x.to_bits()).collect();
            let have: Vec<u64> = last.rows[r].iter().map(|x| x.to_bits()).collect();
            assert_eq!(
                have,
                want,
                "{what}: layer {}'s last op `{}` differs from the layer's checkpoint at row {r}",
                l + 1,
                last.op
            );
        }
    }
}

#[test]
fn op_checkpoints_reproduce_the_layer_checkpoints_and_change_nothing() {
    let models = [
        ("mlp", mlp(true)),
        ("mlp without residual", mlp(false)),
        ("decoder", decoder(true, AttentionForm::Manual)),
        (
            "decoder without rope",
            decoder(false, AttentionForm::Manual),
        ),
        ("fused decoder", decoder(true, AttentionForm::Fused)),
        ("llama", llama(AttentionForm::Manual)),
        ("gpt2", gpt2(AttentionForm::Manual)),
    ];
    let mut checked = 0;
    for b in every() {
        for (name, model) in &models {
            let schedules = if model.rows_independent() {
                vec![Schedule::Full, Schedule::Rows]
            } else {
                vec![
                    Schedule::Full,
                    Schedule::kv_cache(3, 6),
                    Schedule::chunked(2, 6),
                ]
            };
            for schedule in &schedules {
                for execution in EXECUTIONS {
                    let what = format!("{} {name} {schedule:?} {}", b.id(), execution.name());
                    let plain = match run_diag(
                        b.as_ref(),
                        model,
                        schedule,
                        (2, 6),
                        execution,
                        Diagnose::default(),
                    ) {
                        Ok(c) => c,
                        // A backend without a fused kernel declines it.
                        Err(e) if e.contains("fused") => continue,
                        Err(e) => panic!("{what}: {e}"),
                    };
                    assert!(plain.ops.is_empty(), "{what}: ops recorded unasked");
                    let with = run_diag(b.as_ref(), model, schedule, (2, 6), execution, ops_on())
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        bits(&with),
                        bits(&plain),
                        "{what}: recording ops moved a bit"
                    );
                    check_ops(&what, model, b.id().is_oracle(), &with);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 2 * 26, "only {checked} runs were checked");
}

#[test]
fn op_checkpoints_hold_each_ops_own_row() {
    // The decoder's `scores` row of a query at position p has heads × (p+1)
    // values (the keys it may see); `softmax` sums to 1 per head; `rope`
    // holds the rotated query and key rows; `fc1` is `hidden` wide.
    let model = decoder(true, AttentionForm::Manual);
    let ModelSpec::Decoder(d) = &model else {
        unreachable!()
    };
    for b in every() {
        let c = run_diag(
            b.as_ref(),
            &model,
            &Schedule::kv_cache(3, 6),
            (2, 6),
            Execution::Standard,
            ops_on(),
        )
        .unwrap();
        let op = |name: &str| c.ops.iter().find(|o| o.op == name && o.layer == 1).unwrap();
        // The observed rows are positions 3, 4, 5.
        for (r, pos) in (3..6).enumerate() {
            assert_eq!(
                op("scores").rows[r].len(),
                d.heads * (pos + 1),
                "{}",
                b.id()
            );
            for head in op("softmax").rows[r].chunks(pos + 1) {
                let sum: f64 = head.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "{}: softmax sums to {sum}",
                    b.id()
                );
            }
            assert_eq!(op("rope").rows[r].len(), 2 * d.dim, "{}", b.id());
            assert_eq!(op("fc1").rows[r].len(), d.hidden, "{}", b.id());
            assert_eq!(op("q").rows[r].len(), d.dim, "{}", b.id());
        }
    }
}

#[test]
fn a_layer_forced_with_its_own_inputs_adds_no_error() {
    let mut checked = 0;
    for b in every() {
        for model in [mlp(true), mlp(false)] {
            for schedule in [Schedule::Full, Schedule::Rows] {
                for execution in EXECUTIONS {
                    let what = format!("{} {schedule:?} {}", b.id(), execution.name());
                    let run = |forced: Option<&Checkpoints>| {
                        run_diag(
                            b.as_ref(),
                            &model,
                            &schedule,
                            (2, 6),
                            execution,
                            Diagnose { ops: true, forced },
                        )
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                    };
                    let own = run(None);
                    let forced = run(Some(&own));
                    assert_eq!(bits(&forced), bits(&own), "{what}: local error is not zero");
                    assert_eq!(forced.ops, own.ops, "{what}: forced ops differ");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 2 * 12, "only {checked} runs were checked");
}

#[test]
fn forcing_replaces_exactly_the_layer_inputs() {
    // Forced with rows that differ from its own from layer 1 on, a run's
    // layer 1 is unchanged (its input is the real one), and its layer 2 is
    // the layer applied to the forced rows — not to its own.
    for b in every() {
        let model = mlp(true);
        let run = |forced: Option<&Checkpoints>| {
            run_diag(
                b.as_ref(),
                &model,
                &Schedule::Full,
                (2, 6),
                Execution::Standard,
                Diagnose { ops: false, forced },
            )
            .unwrap()
        };
        let own = run(None);
        let mut other = own.clone();
        for x in &mut other.layers[0] {
            *x += 0.25;
        }
        let forced = run(Some(&other));
        assert_eq!(forced.layers[0], own.layers[0], "{}: layer 1 moved", b.id());
        assert_ne!(
            forced.layers[1],
            own.layers[1],
            "{}: forcing did nothing",
            b.id()
        );
        // With the residual, layer 2's output is its input plus the block:
        // the forced input shows through.
        let moved = forced.layers[1]
            .iter()
            .zip(&own.layers[1])
            .all(|(f, o)| (f - o).abs() > 0.01);
        assert!(moved, "{}: the forced input did not reach layer 2", b.id());
        // Wrong shapes are an error, not a panic.
        let mut short = own.clone();
        short.layers.pop();
        let e = run_diag(
            b.as_ref(),
            &model,
            &Schedule::Full,
            (2, 6),
            Execution::Standard,
            Diagnose {
                ops: false,
                forced: Some(&short),
            },
        )
        .unwrap_err();
        assert!(e.contains("teacher forcing"), "{}: {e}", b.id());
    }
}

#[test]
fn a_decoder_refuses_teacher_forcing() {
    let model = decoder(true, AttentionForm::Manual);
    for b in every() {
        let own = run_diag(
            b.as_ref(),
            &model,
            &Schedule::Full,
            (2, 6),
            Execution::Standard,
            Diagnose::default(),
        )
        .unwrap();
        let e = run_diag(
            b.as_ref(),
            &model,
            &Schedule::Full,
            (2, 6),
            Execution::Standard,
            Diagnose {
                ops: false,
                forced: Some(&own),
            },
        )
        .unwrap_err();
        assert!(e.contains("row-independent"), "{}: {e}", b.id());
    }
}
