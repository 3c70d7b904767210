//! From raw serde shapes to a [`Scenario`], in phases: every field is checked
//! on its own first, and the checks that combine fields (heads divide dim,
//! strategies fit the model, input files fit the axes, the memory estimate)
//! run only when every field passed — never on a value whose own check failed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use layerdrift_backends::weights::read_safetensors;
use layerdrift_backends::{
    Activation, AttentionForm, BackendId, DType, DeviceKind, Norm, Row, Weights,
};

use super::budget::{MAX_VARIANTS, estimate_bytes, human};
use super::error::{ScenarioError, ScenarioErrors, hint};
use super::expand::Grid;
use super::observe;
use super::raw::{
    Axis, RawActivation, RawAttention, RawDType, RawExecution, RawKind, RawNorm, RawObserve,
    RawScenario, RawStrategy, STRATEGIES,
};
use super::syntax::PathIndex;
use super::{Check, InputSource, Pairing, Scenario, Strategy, StrategyKind, WeightSource};

/// Check names that would collide with the harness's own trials.
const RESERVED_CHECK_NAMES: [&str; 2] = ["snapshot", "scenario"];

/// Most intra-op threads a scenario may pin.
const MAX_THREADS: usize = 1024;

struct Validator<'a> {
    file: PathBuf,
    index: &'a PathIndex,
    errors: Vec<ScenarioError>,
}

impl Validator<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ScenarioError {
            file: self.file.clone(),
            // Every value of a parsed file has a position; the file's start
            // is the fallback for a key the file left out.
            pos: self
                .index
                .find(path)
                .or(Some(super::Pos { line: 1, col: 1 })),
            message: format!("{path}: {}", message.into()),
        });
    }

    fn axis<T: Clone>(&mut self, path: &str, a: Axis<T>) -> Vec<T> {
        if a.0.is_empty() {
            self.err(
                path,
                "empty list: give at least one value (or a single value instead of a list)",
            );
        }
        a.0
    }

    /// Each value of a list axis must be at least 1.
    fn positive_axis(&mut self, path: &str, a: Option<Axis<usize>>) -> Vec<usize> {
        let list = self.axis(path, a.unwrap_or(Axis(vec![1])));
        for (i, v) in list.iter().enumerate() {
            if *v == 0 {
                let at = if self.index.has(&format!("{path}[{i}]")) {
                    format!("{path}[{i}]")
                } else {
                    path.to_string()
                };
                self.err(&at, "must be at least 1");
            }
        }
        let mut seen = BTreeSet::new();
        for (i, v) in list.iter().enumerate() {
            if !seen.insert(*v) {
                self.err(&format!("{path}[{i}]"), format!("{v} is listed twice"));
            }
        }
        list
    }

    fn positive(&mut self, path: &str, v: usize) {
        if v == 0 {
            self.err(path, "must be at least 1");
        }
    }

    fn finite_positive(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.err(path, format!("must be a finite number > 0, got {v}"));
        }
    }

    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn unique<T: Ord + Clone + std::fmt::Display>(&mut self, path: &str, items: &[T]) {
        let mut seen = BTreeSet::new();
        for (i, x) in items.iter().enumerate() {
            if !seen.insert(x.clone()) {
                self.err(&format!("{path}[{i}]"), format!("`{x}` is listed twice"));
            }
        }
    }
}

fn dtype_of(d: RawDType) -> DType {
    match d {
        RawDType::F32 => DType::F32,
        RawDType::F64 => DType::F64,
        RawDType::F16 => DType::F16,
        RawDType::Bf16 => DType::BF16,
    }
}
fn act_of(a: RawActivation) -> Activation {
    match a {
        RawActivation::Gelu => Activation::GeluErf,
        RawActivation::GeluTanh => Activation::GeluTanh,
        RawActivation::Silu => Activation::Silu,
    }
}
fn norm_of(n: RawNorm) -> Norm {
    match n {
        RawNorm::LayerNorm => Norm::LayerNorm,
        RawNorm::RmsNorm => Norm::RmsNorm,
    }
}
fn att_of(a: RawAttention) -> AttentionForm {
    match a {
        RawAttention::Manual => AttentionForm::Manual,
        RawAttention::Fused => AttentionForm::Fused,
    }
}

/// Validates `raw` in phases and builds the scenario.
pub(super) fn resolve(
    file: &Path,
    index: &PathIndex,
    raw: RawScenario,
    known: &[BackendId],
    memory_limit: u64,
) -> Result<Scenario, ScenarioErrors> {
    let mut v = Validator {
        file: file.to_path_buf(),
        index,
        errors: Vec::new(),
    };
    let fields = fields(&mut v, raw, known);
    let scenario = match fields {
        Some(f) if v.errors.is_empty() => derived(&mut v, f, memory_limit),
        _ => None,
    };
    match scenario {
        Some(s) if v.errors.is_empty() => Ok(s),
        _ => {
            let mut errors = v.errors;
            errors.sort_by_key(|e| e.pos);
            errors.dedup();
            Err(ScenarioErrors(errors))
        }
    }
}

/// Everything phase one checked, for phase two.
struct Fields {
    name: String,
    description: String,
    grid: Grid,
    hidden_default: bool,
    input: InputSource,
    batch_given: bool,
    seq_given: bool,
    weights: WeightSource,
    strategies: Vec<Strategy>,
    observe: RawObserve,
    checks: Vec<Check>,
    backends: Vec<String>,
    devices: Vec<DeviceKind>,
    threads: Option<usize>,
    slow: bool,
}

/// Phase one: each field on its own.
fn fields(v: &mut Validator<'_>, raw: RawScenario, known: &[BackendId]) -> Option<Fields> {
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
    let executions: Vec<bool> = v
        .axis("execution", raw.execution)
        .into_iter()
        .map(|e| e == RawExecution::BatchInvariant)
        .collect();
    v.unique("execution", &executions);

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

    // Checks.
    let mut checks = Vec::new();
    if raw.checks.is_empty() {
        v.err(
            "checks",
            "no checks: add at least one, e.g. `- strategies: [full, rows]` or `- oracle: full`",
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, c) in raw.checks.into_iter().enumerate() {
        let at = format!("checks[{i}]");
        let known_strategy = |v: &mut Validator<'_>, key: &str, s: &str| {
            if !strategy_names.contains(&s) {
                v.err(
                    &format!("{at}.{key}"),
                    format!(
                        "no strategy `{s}` in this scenario (it has: {}){}",
                        strategy_names.join(", "),
                        hint(s, &strategy_names)
                    ),
                );
            }
        };
        let pairing = match (c.strategies, c.oracle, c.cross) {
            (Some(pair), None, None) => {
                if pair.len() != 2 {
                    v.err(
                        &format!("{at}.strategies"),
                        format!("name exactly two strategies to compare, got {}", pair.len()),
                    );
                    continue;
                }
                known_strategy(v, "strategies[0]", &pair[0]);
                known_strategy(v, "strategies[1]", &pair[1]);
                if pair[0] == pair[1] {
                    v.err(
                        &format!("{at}.strategies[1]"),
                        format!(
                            "`{}` against itself always agrees: compare two different strategies",
                            pair[1]
                        ),
                    );
                }
                Pairing::Strategies(pair[0].clone(), pair[1].clone())
            }
            (None, Some(s), None) => {
                known_strategy(v, "oracle", &s);
                Pairing::Oracle(s)
            }
            (None, None, Some(s)) => {
                known_strategy(v, "cross", &s);
                Pairing::Cross(s)
            }
            _ => {
                v.err(
                    &at,
                    "give exactly one of `strategies: [a, b]`, `oracle: <strategy>`, `cross: <strategy>`",
                );
                continue;
            }
        };
        for (key, problem) in c.bounds.problems() {
            v.err(&format!("{at}.bounds.{key}"), problem);
        }
        for (k, b) in &c.backend_bounds {
            for (key, problem) in b.problems() {
                v.err(&format!("{at}.backend_bounds.{k}.{key}"), problem);
            }
            let (base, device) = BackendId::split_key(k);
            let ok = known
                .iter()
                .any(|id| id.name == base && device.is_none_or(|d| d == id.device));
            if !ok {
                let ids: Vec<String> = known.iter().map(|id| id.to_string()).collect();
                let mut cands: Vec<&str> = ids.iter().map(String::as_str).collect();
                cands.extend(known.iter().map(|id| id.name));
                v.err(
                    &format!("{at}.backend_bounds.{k}"),
                    format!(
                        "unknown backend `{k}` (a backend name such as `candle`, or an id such as `candle-cpu`){}",
                        hint(k, &cands)
                    ),
                );
            }
        }
        let name = match (&c.name, &pairing) {
            (Some(n), _) => {
                let bad = n.is_empty()
                    || !n
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
                if bad {
                    v.err(
                        &format!("{at}.name"),
                        format!("`{n}`: a check name is letters, digits, `-`, `_` and `.` (it becomes part of trial names)"),
                    );
                } else if RESERVED_CHECK_NAMES.contains(&n.as_str()) {
                    v.err(
                        &format!("{at}.name"),
                        format!("`{n}` is the name of the harness's own trial; pick another"),
                    );
                }
                n.clone()
            }
            (None, Pairing::Strategies(a, b)) => format!("{a}-vs-{b}"),
            (None, Pairing::Oracle(s)) => format!("{s}-vs-oracle"),
            (None, Pairing::Cross(s)) => format!("{s}-vs"),
        };
        let name_at = if c.name.is_some() {
            format!("{at}.name")
        } else {
            at.clone()
        };
        if let Some(first) = names.insert(name.clone(), i) {
            v.err(
                &name_at,
                format!("two checks are named `{name}` (checks[{first}] and this one): trial names must be unique — give one a `name:`"),
            );
        }
        checks.push(Check {
            name,
            pairing,
            bounds: c.bounds,
            backend_bounds: c.backend_bounds,
        });
    }

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
    Some(Fields {
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

/// Phase two: checks that combine fields, each of which passed phase one.
fn derived(v: &mut Validator<'_>, mut f: Fields, memory_limit: u64) -> Option<Scenario> {
    let g = &mut f.grid;
    // Model shape.
    if f.hidden_default {
        g.hidden = if g.decoder {
            match g.dim.checked_mul(4) {
                Some(h) => h,
                None => {
                    v.err(
                        "model.dim",
                        format!(
                            "{} is too large (its default hidden width 4 × dim overflows)",
                            g.dim
                        ),
                    );
                    return None;
                }
            }
        } else {
            g.dim
        };
    }
    if g.decoder {
        if !g.dim.is_multiple_of(g.heads) {
            v.err(
                "model.heads",
                format!(
                    "{} heads do not divide dim {}; pick a divisor of {}",
                    g.heads, g.dim, g.dim
                ),
            );
        } else if g.ropes.contains(&true) && (g.dim / g.heads) % 2 == 1 {
            v.err(
                "model.rope",
                format!(
                    "rotary embeddings need an even head dim; dim {} / heads {} = {} is odd",
                    g.dim,
                    g.heads,
                    g.dim / g.heads
                ),
            );
        }
    }

    // Strategies against the model: the backends' own rule.
    let probe = g.model(
        g.activations[0],
        g.norms[0],
        g.residuals[0],
        false,
        g.attentions[0],
    );
    for (i, s) in f.strategies.iter().enumerate() {
        if let Err(why) = s.schedule(0).fits(&probe) {
            v.err(&format!("strategies[{i}]"), why);
        }
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
                Some(t) if t.shape.len() != 3 || t.shape[2] != g.dim || t.shape[0] == 0 || t.shape[1] == 0 => v.err(
                    "input.file",
                    format!(
                        "`{tensor}` has shape {:?}; an input must be [batch ≥ 1, seq ≥ 1, dim = {}]",
                        t.shape, g.dim
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

    // Prefill against every sequence length.
    for (i, s) in f.strategies.iter().enumerate() {
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
            match observe::resolve(&f.observe, batch, seq, decoded_from) {
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
    for model in g.models() {
        for &dtype in &g.dtypes {
            for (&(batch, seq), rows) in &observed {
                let b = estimate_bytes(&model, batch, seq, dtype, rows.len(), f.strategies.len());
                if b > worst.0 {
                    worst = (b, format!("batch {batch}, seq {seq}, {dtype}"));
                }
            }
        }
    }
    if worst.0 > memory_limit as f64 {
        // Point at what dominates: the model's size or the input's.
        let model_only = g
            .models()
            .iter()
            .map(|m| estimate_bytes(m, 1, 1, DType::F64, 1, 1))
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

    // A weights file must fit every model of the grid.
    if let WeightSource::File(path) = &f.weights {
        for model in g.models() {
            if let Err(e) = Weights::load(&model, path) {
                v.err("weights.file", e.to_string());
                break;
            }
        }
    }
    if !v.errors.is_empty() {
        return None;
    }

    Some(Scenario {
        name: f.name,
        path: v.file.clone(),
        description: f.description,
        variants: g.expand(&observed),
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
