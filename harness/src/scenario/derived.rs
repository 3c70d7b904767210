//! Phase two of validation: checks that combine fields, each of which
//! passed phase one — the model's shape, strategies against the model, an
//! input file against the axes, observed rows, the variant count and the
//! memory estimate — and then the expansion into variants.

use std::collections::HashMap;

use layerdrift_backends::weights::read_safetensors;
use layerdrift_backends::{DType, Execution, Row, Weights};

use super::budget::{MAX_VARIANTS, estimate_bytes, human};
use super::fields::tile_path;
use super::kind::GridKind;
use super::observe;
use super::raw::FIXED_SHAPE_TILE;
use super::validate::{Fields, Validator};
use super::{InputSource, Scenario, Strategy, WeightSource};

/// Phase two: checks that combine fields, each of which passed phase one.
pub(super) fn derived(v: &mut Validator<'_>, mut f: Fields, memory_limit: u64) -> Option<Scenario> {
    let g = &mut f.grid;
    // Model shape.
    let m = &mut g.m;
    if m.hidden.is_none() {
        m.hidden = Some(if m.kind.has_attention() {
            match m.dim.checked_mul(4) {
                Some(h) => h,
                None => {
                    v.err(
                        "model.dim",
                        format!(
                            "{} is too large (its default hidden width 4 × dim overflows)",
                            m.dim
                        ),
                    );
                    return None;
                }
            }
        } else {
            m.dim
        });
    }
    if m.kind.has_attention() && !matches!(m.kind, GridKind::Checkpoint { .. }) {
        if !m.dim.is_multiple_of(m.heads) {
            v.err(
                "model.heads",
                format!(
                    "{} heads do not divide dim {}; pick a divisor of {}",
                    m.heads, m.dim, m.dim
                ),
            );
        } else if (m.ropes.contains(&true) || matches!(m.kind, GridKind::Llama { .. }))
            && (m.dim / m.heads) % 2 == 1
        {
            v.err(
                if v.index.has("model.rope") {
                    "model.rope"
                } else {
                    "model.heads"
                },
                format!(
                    "rotary embeddings need an even head dim; dim {} / heads {} = {} is odd",
                    m.dim,
                    m.heads,
                    m.dim / m.heads
                ),
            );
        }
    }

    // Strategies against the model: the backends' own rule.
    let probe = g.m.model(
        g.m.activations[0],
        g.m.norms[0],
        g.m.residuals[0],
        false,
        g.m.attentions[0],
    );
    for (i, s) in f.strategies.iter().enumerate() {
        if let Err(why) = s.schedule(1, &[1], probe.encoder()).fits(&probe) {
            v.err(&format!("strategies[{i}]"), why);
        }
    }
    // An encoder runs in standard execution only.
    if probe.encoder()
        && let Some(i) = g.executions.iter().position(|e| *e != Execution::Standard)
    {
        v.err(
            &super::fields::execution_path(v, i),
            format!(
                "a {} encoder runs in standard execution only: batch-invariant, fixed-shape and pinned execution are built for decoders — remove `execution:`",
                probe.kind()
            ),
        );
    }

    // An input file sets batch and seq: it must agree with any given axes.
    if let InputSource::File { path, tensor } = &f.input {
        match read_safetensors(path) {
            Err(e) => v.err("input.file", e.to_string()),
            Ok(all) => match all.get(tensor) {
                None => v.err(
                    if v.index.has("input.tensor") { "input.tensor" } else { "input.file" },
                    format!(
                        "{} has no tensor `{tensor}` (it has: {})",
                        path.display(),
                        all.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(t) if t.shape.len() != 3 || t.shape[2] != g.m.dim || t.shape[0] == 0 || t.shape[1] == 0 => v.err(
                    "input.file",
                    format!(
                        "`{tensor}` has shape {:?}; an input must be [batch ≥ 1, seq ≥ 1, dim = {}]",
                        t.shape, g.m.dim
                    ),
                ),
                Some(t) => {
                    for (key, given, from_file, axis) in [
                        ("input.batch", f.batch_given, t.shape[0], &mut g.batches),
                        ("input.seq", f.seq_given, t.shape[1], &mut g.seqs),
                    ] {
                        if given && *axis != [from_file] {
                            v.err(
                                key,
                                format!(
                                    "the input file's `{tensor}` has {} {from_file}, but this says {:?}: remove `{}` (the file sets it) or make them agree",
                                    &key[6..],
                                    axis,
                                    &key[6..]
                                ),
                            );
                        }
                        *axis = vec![from_file];
                    }
                }
            },
        }
    }
    if !v.errors.is_empty() {
        return None;
    }

    // Learned positions against every sequence length.
    for model in g.models() {
        if let Some(max) = model.max_positions()
            && let Some(&seq) = g.seqs.iter().find(|s| **s > max)
        {
            let at = if v.index.has("input.tokens.seq") {
                "input.tokens.seq"
            } else {
                "input"
            };
            v.err(
                at,
                format!(
                    "seq {seq} is longer than the model's {max} learned positions: shorten the sequence, or give the model more `positions:`"
                ),
            );
            break;
        }
    }

    // Prefill, chunks and padding against every sequence length.
    for (i, s) in f.strategies.iter().enumerate() {
        if let Some(to) = s.padded_to() {
            for &seq in &g.seqs {
                if to < seq {
                    v.err(
                        &format!("strategies[{i}].padded.to"),
                        format!(
                            "{to} is shorter than the longest sequence ({seq} positions): pad to at least {seq}"
                        ),
                    );
                }
            }
            for model in g.models() {
                if let Some(max) = model.max_positions()
                    && to > max
                {
                    v.err(
                        &format!("strategies[{i}].padded.to"),
                        format!(
                            "{to} is beyond the model's {max} learned positions: pad to at most {max}"
                        ),
                    );
                    break;
                }
            }
        }
        if let super::StrategyKind::Chunked { chunk } = s.kind {
            for &seq in &g.seqs {
                if chunk >= seq {
                    v.err(
                        &format!("strategies[{i}].chunked.chunk"),
                        format!(
                            "chunk {chunk} must be smaller than seq {seq}: one chunk of the whole sequence is the full pass, and compares nothing"
                        ),
                    );
                }
            }
        }
        if let Some(prefill) = s.prefill() {
            for &seq in &g.seqs {
                if prefill >= seq {
                    v.err(
                        &format!("strategies[{i}].kv_cache.prefill"),
                        format!(
                            "prefill {prefill} must be less than seq {seq}, so that at least one position is decoded"
                        ),
                    );
                }
            }
        }
    }

    // The grid's size, before anything is expanded.
    let count = g.count();
    if count > MAX_VARIANTS {
        v.err(
            "model",
            format!(
                "the list axes multiply to {count} variants; at most {MAX_VARIANTS} are allowed — shorten the lists"
            ),
        );
        return None;
    }

    // Observed rows per input shape.
    let decoded_from = f.strategies.iter().find_map(Strategy::prefill);
    let mut observed: HashMap<(usize, usize), Vec<Row>> = HashMap::new();
    for &batch in &g.batches {
        for &seq in &g.seqs {
            let lengths = g.lengths.as_deref();
            match observe::resolve(&f.observe, batch, seq, decoded_from, lengths) {
                Ok(rows) => {
                    observed.insert((batch, seq), rows);
                }
                // The default `observe` (absent from the file) follows the
                // input's shape: point there.
                Err((path, message)) if !v.index.has("observe") => {
                    v.err("input.seq", format!("observe (default): {message}"));
                    let _ = path;
                }
                Err((path, message)) => v.err(&path, message),
            }
        }
    }
    if !v.errors.is_empty() {
        return None;
    }

    // Memory: the largest variant must fit.
    let mut worst = (0.0f64, String::new());
    let mut worst_tile = None;
    for model in g.models() {
        for &dtype in &g.dtypes {
            for (&(batch, seq), rows) in &observed {
                let bytes = |execution| {
                    estimate_bytes(
                        &model,
                        batch,
                        seq,
                        dtype,
                        rows.len(),
                        f.strategies.len(),
                        execution,
                    )
                };
                for (i, &execution) in g.executions.iter().enumerate() {
                    let b = bytes(execution);
                    if b > worst.0 {
                        worst = (b, format!("batch {batch}, seq {seq}, {dtype}"));
                        // A tile is to blame when the same run would fit
                        // without it.
                        let standard = bytes(Execution::Standard);
                        worst_tile = match execution {
                            Execution::FixedShape { tile } if standard <= memory_limit as f64 => {
                                Some((i, tile))
                            }
                            _ => None,
                        };
                    }
                }
            }
        }
    }
    if let (true, Some((i, tile))) = (worst.0 > memory_limit as f64, worst_tile) {
        v.err(
            &tile_path(v, i),
            format!(
                "a tile of {tile} rows would need about {} ({}), more than the {} this machine allows (LAYERDRIFT_MEMORY_LIMIT): pick a smaller tile (default {FIXED_SHAPE_TILE})",
                human(worst.0),
                worst.1,
                human(memory_limit as f64)
            ),
        );
        return None;
    }
    if worst.0 > memory_limit as f64 {
        // Point at what dominates: the model's size or the input's.
        let model_only = g
            .models()
            .iter()
            .map(|m| estimate_bytes(m, 1, 1, DType::F64, 1, 1, Execution::Standard))
            .fold(0.0, f64::max);
        let (max_b, max_s) = (
            g.batches.iter().max().copied().unwrap_or(1),
            g.seqs.iter().max().copied().unwrap_or(1),
        );
        let at = if 2.0 * model_only >= worst.0 {
            "model.dim"
        } else if max_s > max_b {
            "input.seq"
        } else {
            "input.batch"
        };
        v.err(
            at,
            format!(
                "a run would need about {} ({}), more than the {} this machine allows (LAYERDRIFT_MEMORY_LIMIT): make the model or the input smaller",
                human(worst.0),
                worst.1,
                human(memory_limit as f64)
            ),
        );
        return None;
    }

    // A weights file must fit every model of the grid, exactly (checked
    // from its header: names, dtypes, shapes).
    if let WeightSource::File(path) = &f.weights {
        for model in g.models() {
            if let Err(e) = Weights::check_file(&model, path) {
                v.err("weights.file", e.to_string());
                break;
            }
        }
    }
    if !v.errors.is_empty() {
        return None;
    }

    let variants = g.expand(&observed);
    for (path, message) in f.diagnose.problems(&variants) {
        // `ops: rope` (one name, no list) has no `[0]` to point at.
        let at = if v.index.has(&path) {
            path
        } else {
            "diagnose.ops".to_string()
        };
        v.err(&at, message);
    }
    Some(Scenario {
        diagnose: f.diagnose,
        name: f.name,
        path: v.file.clone(),
        description: f.description,
        variants,
        strategies: f.strategies,
        checks: f.checks,
        backends: f.backends,
        devices: f.devices,
        threads: f.threads,
        slow: f.slow,
        weights: f.weights,
        input: f.input,
        estimated_bytes: worst.0,
    })
}
