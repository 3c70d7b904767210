//! Phase one of validation: each field of a scenario on its own.

use layerdrift_backends::{
    Activation, AttentionForm, BackendId, DType, DeviceKind, Execution, Norm,
};

use super::error::hint;
use super::expand::Grid;
use super::raw::{
    Axis, FIXED_SHAPE_TILE, RawAttention, RawExecution, RawKind, RawObserve, RawScenario,
    RawStrategy, STRATEGIES,
};
use super::validate::{Fields, Validator, act_of, att_of, dtype_of, norm_of};
use super::{InputSource, Strategy, StrategyKind, WeightSource};

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
    let m = raw.model;
    let decoder = m.kind == RawKind::Decoder;
    v.positive("model.layers", m.layers);
    v.positive("model.dim", m.dim);
    if let Some(h) = m.hidden {
        v.positive("model.hidden", h);
    }
    v.finite_positive("model.eps", m.eps);
    v.finite_positive("model.rope_theta", m.rope_theta);
    if decoder {
        match m.heads {
            None => v.err("model.kind", "a decoder needs `heads:` (a divisor of dim)"),
            Some(h) => v.positive("model.heads", h),
        }
        if m.residual.is_some() {
            v.err(
                "model.residual",
                "a decoder's blocks are always residual; remove `residual:`",
            );
        }
    } else {
        for (key, set) in [
            ("heads", m.heads.is_some()),
            ("rope", m.rope.is_some()),
            ("attention", m.attention.is_some()),
        ] {
            if set {
                v.err(
                    &format!("model.{key}"),
                    "only a `decoder` has this; remove it or set `kind: decoder`",
                );
            }
        }
    }
    let activations: Vec<Activation> = v
        .axis("model.activation", m.activation)
        .into_iter()
        .map(act_of)
        .collect();
    let norms: Vec<Norm> = v
        .axis("model.norm", m.norm)
        .into_iter()
        .map(norm_of)
        .collect();
    let residuals = v.axis("model.residual", m.residual.unwrap_or(Axis(vec![true])));
    let ropes = v.axis("model.rope", m.rope.unwrap_or(Axis(vec![false])));
    let attentions: Vec<AttentionForm> = v
        .axis(
            "model.attention",
            m.attention.unwrap_or(Axis(vec![RawAttention::Manual])),
        )
        .into_iter()
        .map(att_of)
        .collect();
    for (path, names) in [
        (
            "model.activation",
            activations.iter().map(|a| a.name()).collect::<Vec<_>>(),
        ),
        ("model.norm", norms.iter().map(|n| n.name()).collect()),
        (
            "model.attention",
            attentions.iter().map(|a| a.name()).collect(),
        ),
    ] {
        v.unique(path, &names);
    }
    v.unique("model.residual", &residuals);
    v.unique("model.rope", &ropes);
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
        })
        .collect();
    v.unique(
        "execution",
        &executions.iter().map(|e| e.name()).collect::<Vec<_>>(),
    );

    // Input.
    let inp = raw.input;
    let (batch_given, seq_given) = (inp.batch.is_some(), inp.seq.is_some());
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

    // Weights.
    let weights = match (raw.weights.init, raw.weights.file) {
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

    let observe = raw.observe.unwrap_or(if decoder {
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
    Some(Fields {
        diagnose,
        name,
        description: raw.description.unwrap_or_default(),
        grid: Grid {
            decoder,
            layers: m.layers,
            dim: m.dim,
            hidden: m.hidden.unwrap_or(0),
            heads: m.heads.unwrap_or(1),
            eps: m.eps,
            rope_theta: m.rope_theta,
            dtypes,
            activations,
            norms,
            residuals,
            ropes,
            attentions,
            batches,
            seqs,
            executions,
        },
        hidden_default: m.hidden.is_none(),
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
        slow: raw.slow,
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
