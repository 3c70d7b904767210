//! Phase one of validation: each field of a scenario on its own.

use layerdrift_backends::{BackendId, DType, DeviceKind, Execution, Tokens};

use super::error::hint;
use super::expand::Grid;
use super::kind::GridKind;
use super::raw::{
    FIXED_SHAPE_TILE, PINNED_ANCHOR, RawExecution, RawObserve, RawScenario, RawSlow, RawStrategy,
    STRATEGIES,
};
use super::validate::{Fields, Validator, dtype_of};
use super::{Cost, InputSource, Strategy, StrategyKind, WeightSource};

/// Most intra-op threads a scenario may pin.
const MAX_THREADS: usize = 1024;

/// Phase one: each field on its own.
pub(super) fn fields(
    v: &mut Validator<'_>,
    raw: RawScenario,
    known: &[BackendId],
) -> Option<Fields> {
    let name = v
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());

    // Model.
    let before = v.errors.len();
    let model = super::kind::model_fields(v, raw.model);
    // Whether the model section passed: the input's fit to it (token ids
    // or hidden states) is only checked against a model that did.
    let model_ok = v.errors.len() == before;
    let decoder = model.kind.has_attention();
    let dtypes: Vec<DType> = v
        .axis("dtype", raw.dtype)
        .into_iter()
        .map(dtype_of)
        .collect();
    v.unique(
        "dtype",
        &dtypes.iter().map(|d| d.name()).collect::<Vec<_>>(),
    );
    let listed = v.axis("execution", raw.execution);
    let executions: Vec<Execution> = listed
        .iter()
        .enumerate()
        .map(|(i, e)| match *e {
            RawExecution::Standard => Execution::Standard,
            RawExecution::BatchInvariant => Execution::BatchInvariant,
            RawExecution::FixedShape { tile } => {
                let tile = tile.unwrap_or(FIXED_SHAPE_TILE);
                if tile == 0 {
                    let at = tile_path(v, i);
                    v.err(
                        &at,
                        "a tile of 0 rows: give the rows per tile, at least 1 (default 64)",
                    );
                }
                Execution::FixedShape { tile }
            }
            RawExecution::Pinned { anchor } => {
                let anchor = anchor.unwrap_or(PINNED_ANCHOR);
                if anchor == 0 {
                    let at = anchor_path(v, i);
                    v.err(
                        &at,
                        "an anchor of 0 rows: give the row count whose kernel class every call must share, at least 1 (default 64)",
                    );
                }
                Execution::Pinned { anchor }
            }
        })
        .collect();
    v.unique(
        "execution",
        &executions.iter().map(|e| e.name()).collect::<Vec<_>>(),
    );

    // Input.
    let inp = raw.input;
    let vocab = model.kind.vocab();
    let (batch_given, seq_given) = (inp.batch.is_some(), inp.seq.is_some());
    let encoder = model.kind.encoder();
    let mut lengths = None;
    let (batches, seqs, input) = match (inp.tokens, vocab) {
        // An unusable model section: the token ids are checked on their own.
        (Some(t), None) if !model_ok => token_fields(v, t, usize::MAX, true, &mut lengths),
        (None, Some(_)) if !model_ok => (vec![1], vec![1], InputSource::Seed(0)),
        (Some(_), None) => {
            v.err(
                "input.tokens",
                "token ids feed a language model (`kind: llama`, `gpt2` or a `checkpoint:`); this model reads hidden states — use `batch`, `seq` and `seed`",
            );
            (vec![1], vec![1], InputSource::Seed(0))
        }
        (None, Some(_)) => {
            v.err(
                "input",
                "a language model reads token ids: write `input: { tokens: { seed: 0, batch: 2, seq: 32 } }` or `tokens: { file: ids.json }`",
            );
            (vec![1], vec![1], InputSource::Seed(0))
        }
        (Some(t), Some(vocab)) => {
            for (key, set) in [
                ("batch", inp.batch.is_some()),
                ("seq", inp.seq.is_some()),
                ("file", inp.file.is_some()),
                ("tensor", inp.tensor.is_some()),
            ] {
                if set {
                    v.err(
                        &format!("input.{key}"),
                        "with `tokens:`, give `batch` and `seq` inside it (`tokens: { batch: 2, seq: 32 }`); remove this",
                    );
                }
            }
            token_fields(v, t, vocab, encoder, &mut lengths)
        }
        (None, None) => {
            let batches = v.positive_axis("input.batch", inp.batch);
            let seqs = v.positive_axis("input.seq", inp.seq);
            let input = match (&inp.file, &inp.tensor) {
                (Some(f), t) => InputSource::File {
                    path: v.relative(f),
                    tensor: t.clone().unwrap_or_else(|| "input".into()),
                },
                (None, Some(_)) => {
                    v.err(
                        "input.tensor",
                        "`tensor:` names a tensor in `file:`; add `file:` or remove it",
                    );
                    InputSource::Seed(inp.seed)
                }
                (None, None) => InputSource::Seed(inp.seed),
            };
            (batches, seqs, input)
        }
    };

    // Weights.
    let weights = match (raw.weights.init, raw.weights.file) {
        (init, file) if matches!(model.kind, GridKind::Checkpoint { .. }) => {
            for (key, set) in [("init", init.is_some()), ("file", file.is_some())] {
                if set {
                    v.err(
                        &format!("weights.{key}"),
                        "the checkpoint folder holds the weights; remove `weights:`",
                    );
                }
            }
            match &model.kind {
                GridKind::Checkpoint { dir, model } => WeightSource::Checkpoint {
                    dir: dir.clone(),
                    layers: model.layers(),
                },
                _ => WeightSource::Init { seed: 0, std: 0.2 },
            }
        }
        (Some(_), Some(_)) => {
            v.err("weights.file", "give either `init:` or `file:`, not both");
            WeightSource::Init { seed: 0, std: 0.2 }
        }
        (Some(i), None) => {
            v.finite_positive("weights.init.std", i.std);
            WeightSource::Init {
                seed: i.seed,
                std: i.std,
            }
        }
        (None, Some(f)) => WeightSource::File(v.relative(&f)),
        (None, None) => WeightSource::Init { seed: 0, std: 0.2 },
    };

    // Strategies.
    if raw.strategies.is_empty() {
        v.err(
            "strategies",
            format!("empty list: name at least one of {}", STRATEGIES.join(", ")),
        );
    }
    let mut strategies: Vec<Strategy> = Vec::new();
    for (i, s) in raw.strategies.into_iter().enumerate() {
        let at = format!("strategies[{i}]");
        let (name, kind) = match s {
            RawStrategy::Full => ("full", StrategyKind::Full),
            RawStrategy::Rows => ("rows", StrategyKind::Rows),
            RawStrategy::KvCache { prefill } => {
                if prefill == 0 {
                    v.err(&format!("{at}.kv_cache.prefill"), "must be at least 1");
                }
                ("kv_cache", StrategyKind::KvCache { prefill })
            }
            RawStrategy::Chunked { chunk } => {
                if chunk == 0 {
                    v.err(
                        &format!("{at}.chunked.chunk"),
                        "chunk size must be at least 1",
                    );
                }
                ("chunked", StrategyKind::Chunked { chunk })
            }
            RawStrategy::Alone => ("alone", StrategyKind::Alone),
            RawStrategy::Padded { to } => {
                if to == 0 {
                    v.err(&format!("{at}.padded.to"), "must be at least 1");
                }
                ("padded", StrategyKind::Padded { to })
            }
        };
        if strategies.iter().any(|x| x.name == name) {
            v.err(&at, format!("`{name}` is listed twice"));
        }
        strategies.push(Strategy { name, kind });
    }
    let strategy_names: Vec<&str> = strategies.iter().map(|s| s.name).collect();

    let checks = super::checks::checks(v, raw.checks, &strategy_names, known);

    // Backends and devices.
    let mut library_names: Vec<&'static str> = Vec::new();
    for id in known {
        if !id.is_oracle() && !library_names.contains(&id.name) {
            library_names.push(id.name);
        }
    }
    let backends = match raw.backends {
        None => library_names.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            if list.is_empty() {
                v.err(
                    "backends",
                    format!(
                        "empty list: name at least one of {} (or leave `backends:` out for all)",
                        library_names.join(", ")
                    ),
                );
            }
            for (i, b) in list.iter().enumerate() {
                if b == BackendId::ORACLE.name {
                    v.err(
                        &format!("backends[{i}]"),
                        "`reference` always runs as the oracle; do not list it",
                    );
                } else if !library_names.contains(&b.as_str()) {
                    v.err(
                        &format!("backends[{i}]"),
                        format!(
                            "unknown backend `{b}` (known: {}){}",
                            library_names.join(", "),
                            hint(b, &library_names)
                        ),
                    );
                }
            }
            v.unique("backends", &list);
            list
        }
    };
    let devices = match raw.devices {
        None => DeviceKind::ALL.to_vec(),
        Some(list) => {
            if list.is_empty() {
                v.err(
                    "devices",
                    format!(
                        "empty list: name at least one of {} (or leave `devices:` out for all)",
                        DeviceKind::known()
                    ),
                );
            }
            let mut out = Vec::new();
            for (i, d) in list.iter().enumerate() {
                match d.parse::<DeviceKind>() {
                    Ok(d) => out.push(d),
                    Err(e) => v.err(&format!("devices[{i}]"), e),
                }
            }
            v.unique("devices", &list);
            out
        }
    };
    if let Some(t) = raw.threads
        && !(1..=MAX_THREADS).contains(&t)
    {
        v.err(
            "threads",
            format!(
                "must be between 1 and {MAX_THREADS} (or leave it out for the library's default)"
            ),
        );
    }

    // An encoder has nothing decoded: its default is the last token of the
    // last sequence, as a residual MLP's is the last row.
    let observe = raw.observe.unwrap_or(if decoder && !encoder {
        RawObserve::Decoded
    } else {
        RawObserve::Last
    });
    let diagnose = super::Diagnosis {
        ops: raw.diagnose.ops.map(|a| {
            let names = v.axis("diagnose.ops", a);
            if names.iter().any(|n| n == "all") {
                if names.len() > 1 {
                    v.err(
                        "diagnose.ops",
                        "`all` stands alone: write `ops: all`, or list the ops you want",
                    );
                }
                Vec::new()
            } else {
                v.unique("diagnose.ops", &names);
                names
            }
        }),
        local: raw.diagnose.local,
    };
    let slow = match raw.slow {
        None | Some(RawSlow::Flag(false)) => Cost::Everyday,
        Some(RawSlow::Flag(true)) => Cost::Slow,
        Some(RawSlow::Word(w)) if w == "manual" => Cost::Manual,
        Some(RawSlow::Word(w)) => {
            v.err(
                "slow",
                format!("`{w}`: give `true` (minutes), `false` (seconds) or `manual` (full-size)"),
            );
            Cost::Everyday
        }
    };
    Some(Fields {
        diagnose,
        name,
        description: raw.description.unwrap_or_default(),
        grid: Grid {
            m: model,
            dtypes,
            batches,
            seqs,
            lengths,
            executions,
        },
        input,
        batch_given,
        seq_given,
        weights,
        strategies,
        observe,
        checks,
        backends,
        devices,
        threads: raw.threads,
        slow,
    })
}

/// Where the tile of the `i`-th execution is written (`execution[1].fixed_shape.tile`,
/// `execution.fixed_shape.tile`), or the execution itself when the tile is
/// the default.
pub(super) fn tile_path(v: &Validator<'_>, i: usize) -> String {
    [
        format!("execution[{i}].fixed_shape.tile"),
        "execution.fixed_shape.tile".to_string(),
        format!("execution[{i}]"),
    ]
    .into_iter()
    .find(|p| v.index.has(p))
    .unwrap_or_else(|| "execution".into())
}

/// Where the `i`-th execution is written: `execution[i]`, or `execution`
/// for a single value.
pub(super) fn execution_path(v: &Validator<'_>, i: usize) -> String {
    let item = format!("execution[{i}]");
    if v.index.has(&item) {
        item
    } else {
        "execution".into()
    }
}

/// Where the anchor of the `i`-th execution is written, like [`tile_path`].
pub(super) fn anchor_path(v: &Validator<'_>, i: usize) -> String {
    [
        format!("execution[{i}].pinned.anchor"),
        "execution.pinned.anchor".to_string(),
        format!("execution[{i}]"),
    ]
    .into_iter()
    .find(|p| v.index.has(p))
    .unwrap_or_else(|| "execution".into())
}

/// `input.tokens`: ids from a file (checked below `vocab`; of different
/// lengths only for an `encoder`, whose `lengths` it sets) or drawn from a
/// seed.
fn token_fields(
    v: &mut Validator<'_>,
    t: super::raw::RawTokens,
    vocab: usize,
    encoder: bool,
    lengths: &mut Option<Vec<usize>>,
) -> (Vec<usize>, Vec<usize>, InputSource) {
    match t.file {
        Some(f) => {
            if t.batch.is_some() || t.seq.is_some() {
                v.err(
                    "input.tokens.file",
                    "a token file sets batch and seq; remove `batch`/`seq`",
                );
            }
            let path = v.relative(&f);
            match read_token_file(&path, vocab, encoder) {
                Ok(t) => {
                    *lengths = Some(t.lengths);
                    (vec![t.batch], vec![t.seq], InputSource::TokenFile(path))
                }
                Err(e) => {
                    v.err("input.tokens.file", e);
                    (vec![1], vec![1], InputSource::TokenFile(path))
                }
            }
        }
        None => (
            v.positive_axis("input.tokens.batch", t.batch),
            v.positive_axis("input.tokens.seq", t.seq),
            InputSource::Tokens(t.seed),
        ),
    }
}

/// Reads a token file: a JSON list of lists of ids below `vocab`
/// (`[[1, 2, 3], [4, 5, 6]]`), equally long unless `ragged` (an encoder's
/// sequences of their own lengths: each shorter one is padded with id 0 to
/// the longest, and [`Tokens::lengths`] says how many ids are real).
pub fn read_token_file(
    path: &std::path::Path,
    vocab: usize,
    ragged: bool,
) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let rows: Vec<Vec<u64>> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a JSON list of token-id lists ({e}); write e.g. [[1, 2, 3], [4, 5, 6]]",
            path.display()
        )
    })?;
    let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
    if rows.is_empty() || seq == 0 {
        return Err(format!("{}: no token ids", path.display()));
    }
    if let Some(b) = rows.iter().position(Vec::is_empty) {
        return Err(format!("{}: sequence {b} has no ids", path.display()));
    }
    let mut ids = Vec::with_capacity(rows.len() * seq);
    for (b, r) in rows.iter().enumerate() {
        if r.len() != rows[0].len() && !ragged {
            return Err(format!(
                "{}: sequence {b} has {} ids, sequence 0 has {}: every sequence must have the same length (only an encoder, `kind: bert`, reads sequences of their own lengths)",
                path.display(),
                r.len(),
                rows[0].len()
            ));
        }
        for (p, &id) in r.iter().enumerate() {
            if id >= vocab as u64 {
                return Err(format!(
                    "{}: token id {id} (sequence {b}, position {p}) is not below the vocabulary size {vocab}",
                    path.display()
                ));
            }
            ids.push(id as u32);
        }
        // Padding: id 0 (BERT's `[PAD]`), masked out of every real row.
        ids.extend(std::iter::repeat_n(0, seq - r.len()));
    }
    Ok(Tokens {
        batch: rows.len(),
        seq,
        ids,
        lengths: rows.iter().map(Vec::len).collect(),
    })
}
