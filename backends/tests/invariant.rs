//! The invariant executions (`Execution::BatchInvariant`,
//! `Execution::FixedShape` at several tiles and `Execution::Pinned` at
//! several anchors) on every backend of this build:
//! a row's result must not depend on the rows beside it or on how the
//! sequence was scheduled — bitwise — and must stay as close to the f64
//! oracle as the standard execution.

mod common;

use common::{available, fingerprint, max_abs, mlp_sized, run_exec};
use layerdrift_backends::reference::Reference;
use layerdrift_backends::{
    Activation, AttentionForm, DecoderSpec, Execution, Gpt2Spec, LlamaSpec, ModelSpec, Norm,
    Schedule,
};

const TOL: f64 = 1e-5;

/// A tile may be refused (the probe found a kernel that is position-dependent
/// at that row count: libtorch's linear at 5 rows, here), and a pinned anchor
/// inside the inputs' row counts (a class boundary between them), but the
/// tiles that keep a library's kernels on one path — 1 row, and 16 or more —
/// and the anchor above every count never are, so the refusal cannot be what
/// makes the test pass.
fn only_odd_tiles_refused(refused: &[String]) {
    let odd: Vec<&String> = refused
        .iter()
        .filter(|id| !id.contains("fixed_shape(tile=5)") && !id.contains("pinned(anchor=16)"))
        .collect();
    assert!(odd.is_empty(), "refused: {odd:?}");
}

/// The modes under test: tiles that divide the row counts, that do not, of
/// one row, and larger than the whole input.
const MODES: &[Execution] = &[
    Execution::BatchInvariant,
    Execution::FixedShape { tile: 1 },
    Execution::FixedShape { tile: 5 },
    Execution::FixedShape { tile: 16 },
    Execution::FixedShape { tile: 100 },
    // Pinned: an anchor inside the inputs' row counts (4 × 16 rows for the
    // MLP, 2 × 12 for the decoders), which a backend may refuse (candle's
    // linear 32→16 computes 16 and 24 rows in different classes), and one
    // above them all, which pads below it and is never refused.
    Execution::Pinned { anchor: 16 },
    Execution::Pinned { anchor: 64 },
];

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

/// A Llama at the decoder's widths (head dim 8): grouped-query attention
/// (4 heads over 2 KV heads), SwiGLU, an untied head. At the common tiny
/// test width (dim 8, head dim 2) libtorch's Llama is not invariant in
/// either mode (measured: up to 2.4e-7 between full and KV cache) — an op
/// at that size picks another path by row count; at head dim 8 and up it is.
fn llama(attention: AttentionForm) -> ModelSpec {
    ModelSpec::Llama(LlamaSpec {
        layers: 2,
        dim: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        hidden: 64,
        vocab: 50,
        eps: 1e-6,
        rope_theta: 10_000.0,
        tie_embeddings: false,
        attention_bias: false,
        attention,
    })
}

/// A GPT-2 at the decoder's widths: fused QKV, Conv1D weights, learned
/// positions, `gelu_new`, a tied head.
fn gpt2(attention: AttentionForm) -> ModelSpec {
    ModelSpec::Gpt2(Gpt2Spec {
        layers: 2,
        dim: 32,
        heads: 4,
        hidden: 64,
        vocab: 50,
        positions: 16,
        eps: 1e-5,
        activation: Activation::GeluNew,
        attention,
    })
}

#[test]
fn residual_mlp_full_equals_rows_bitwise() {
    let m = mlp_sized(true, 64, 96);
    let (batch, seq) = (4, 16);
    let std = Execution::Standard;
    let truth = run_exec(&Reference, &m, &Schedule::Rows, batch, seq, std).unwrap();
    let mut failed = Vec::new();
    let mut refused = Vec::new();
    for b in available() {
        for &mode in MODES {
            let id = format!("{} {}", b.id(), mode.name());
            let full = match run_exec(b.as_ref(), &m, &Schedule::Full, batch, seq, mode) {
                Ok(c) => c,
                Err(e)
                    if e.contains("cannot be batch-invariant with a tile")
                        || e.contains("pinned execution refused") =>
                {
                    refused.push(id);
                    continue;
                }
                Err(e) => panic!("{id}: {e}"),
            };
            let rows = run_exec(b.as_ref(), &m, &Schedule::Rows, batch, seq, mode).unwrap();
            if fingerprint(&full) != fingerprint(&rows) {
                failed.push(format!(
                    "{id}: full vs rows differ by max |Δ| {:e}",
                    max_abs(&full, &rows)
                ));
            }
            let d = max_abs(&full, &truth);
            assert!(d < TOL, "{id}: max |Δ| {d:e} vs the oracle");
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    only_odd_tiles_refused(&refused);
}

/// Every attention model kind: layerdrift's decoder, a Llama (grouped-query
/// attention, SwiGLU, untied head) and a GPT-2 (fused QKV, Conv1D, learned
/// positions, tied head).
#[test]
fn decoders_full_equal_cache_and_chunks_bitwise() {
    let (batch, seq) = (2, 12);
    let std = Execution::Standard;
    let mut failed = Vec::new();
    let mut refused = Vec::new();
    let kinds: [fn(AttentionForm) -> ModelSpec; 3] = [decoder, llama, gpt2];
    for (kind, att) in kinds.iter().flat_map(|k| {
        [AttentionForm::Manual, AttentionForm::Fused]
            .into_iter()
            .map(move |a| (k, a))
    }) {
        let m = kind(att);
        let truth = run_exec(&Reference, &m, &Schedule::Full, batch, seq, std).unwrap();
        for b in available() {
            for &mode in MODES {
                let id = format!("{} {} {} {att:?}", b.id(), m.kind(), mode.name());
                let full = match run_exec(b.as_ref(), &m, &Schedule::Full, batch, seq, mode) {
                    Ok(c) => c,
                    // Fused attention may be declined, and a tile the
                    // library computes position-dependently is refused;
                    // each says so.
                    Err(e) if att == AttentionForm::Fused && e.contains("no fused") => continue,
                    Err(e)
                        if e.contains("cannot be batch-invariant with a tile")
                            || e.contains("pinned execution refused") =>
                    {
                        refused.push(id);
                        continue;
                    }
                    Err(e) => panic!("{id}: {e}"),
                };
                for s in [Schedule::kv_cache(8, seq), Schedule::chunked(5, seq)] {
                    let other = run_exec(b.as_ref(), &m, &s, batch, seq, mode).unwrap();
                    if fingerprint(&full) != fingerprint(&other) {
                        failed.push(format!(
                            "{id}: full vs {s:?} differ by max |Δ| {:e}",
                            max_abs(&full, &other)
                        ));
                    }
                }
                let d = max_abs(&full, &truth);
                assert!(d < TOL, "{id}: max |Δ| {d:e} vs the oracle");
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    only_odd_tiles_refused(&refused);
}

#[test]
fn a_tile_of_zero_rows_is_refused_not_run() {
    let m = mlp_sized(true, 8, 8);
    for b in available() {
        let e = run_exec(
            b.as_ref(),
            &m,
            &Schedule::Full,
            1,
            4,
            Execution::FixedShape { tile: 0 },
        )
        .unwrap_err();
        assert!(e.contains("tile of at least one row"), "{}: {e}", b.id());
    }
}
