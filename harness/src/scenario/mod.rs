//! Scenario files: from YAML text to a validated [`Scenario`] with its
//! variants, or to every problem in the file with its `path:line:column`.
//!
//! The path through this module, one file per step:
//! 1. [`syntax`]: size, encoding, byte-order mark, and one walk over the YAML
//!    events (value positions by key path; duplicate keys, extra documents,
//!    deep nesting and alias bombs refused before serde sees them);
//! 2. `raw`: serde shapes (`deny_unknown_fields`, typed `observe`);
//! 3. `validate`: field checks first (`fields`, `checks`), then — only when
//!    every field passed — the checks derived from several fields
//!    (`derived`: heads divide dim, strategies fit the model, input files fit
//!    the axes, the memory estimate in `budget`);
//! 4. `observe` and `expand`: observed rows per input shape, and the
//!    cartesian product of list-valued axes into [`Variant`]s.
//!
//! Every YAML key is documented in docs/scenario-reference.md; keep the
//! two in step.

mod budget;
mod checks;
mod derived;
mod error;
mod expand;
mod fields;
#[cfg(test)]
mod fuzz;
mod kind;
mod observe;
mod raw;
pub mod syntax;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layerdrift_backends::{BackendId, DType, DeviceKind, Execution, ModelSpec, Row, Schedule};

use crate::bounds::Bounds;

pub use budget::{MAX_OBSERVED_ROWS, MAX_VARIANTS, estimate_bytes};
pub use error::{Pos, ScenarioError, ScenarioErrors};
pub use fields::read_token_file;
pub use raw::{
    Axis, EXECUTIONS, FIXED_SHAPE_TILE, PINNED_ANCHOR, STRATEGIES, schema, syntax_check,
};

/// One strategy: how the observed rows are computed.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    /// Name used in checks: `full`, `rows`, `kv_cache`, `chunked`, `alone`,
    /// `padded`.
    pub name: &'static str,
    kind: StrategyKind,
}

/// A strategy and its parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
enum StrategyKind {
    Full,
    Rows,
    KvCache { prefill: usize },
    Chunked { chunk: usize },
    Alone,
    Padded { to: usize },
}

impl Strategy {
    /// The schedule for `var`'s input.
    pub fn schedule_for(&self, var: &Variant) -> Schedule {
        self.schedule(var.seq, &var.lengths, var.model.encoder())
    }

    /// The schedule for an input of `seq` positions whose sequences hold
    /// `lengths` real tokens; on an `encoder`, `full` pads them to `seq`
    /// and masks the padding.
    pub fn schedule(&self, seq: usize, lengths: &[usize], encoder: bool) -> Schedule {
        match self.kind {
            StrategyKind::Full if encoder => Schedule::Padded {
                lengths: lengths.to_vec(),
                to: seq,
            },
            StrategyKind::Full => Schedule::Full,
            StrategyKind::Rows => Schedule::Rows,
            StrategyKind::KvCache { prefill } => Schedule::kv_cache(prefill, seq),
            StrategyKind::Chunked { chunk } => Schedule::chunked(chunk, seq),
            StrategyKind::Alone => Schedule::Alone {
                lengths: lengths.to_vec(),
            },
            StrategyKind::Padded { to } => Schedule::Padded {
                lengths: lengths.to_vec(),
                to,
            },
        }
    }

    /// The length a `padded` strategy pads to.
    pub fn padded_to(&self) -> Option<usize> {
        match self.kind {
            StrategyKind::Padded { to } => Some(to),
            _ => None,
        }
    }

    /// The first decoded position of a `kv_cache` strategy.
    pub fn prefill(&self) -> Option<usize> {
        match self.kind {
            StrategyKind::KvCache { prefill } => Some(prefill),
            _ => None,
        }
    }

    /// A one-line description, e.g. `kv_cache (prefill 248, then decode one at a time)`.
    pub fn describe(&self) -> String {
        match self.kind {
            StrategyKind::Full => "full (whole input, then slice the observed rows)".into(),
            StrategyKind::Rows => "rows (only the observed rows as input)".into(),
            StrategyKind::KvCache { prefill } => {
                format!("kv_cache (prefill {prefill} positions, then decode one at a time)")
            }
            StrategyKind::Chunked { chunk } => {
                format!("chunked (chunks of {chunk} through the KV cache)")
            }
            StrategyKind::Alone => "alone (each sequence by itself, unpadded)".into(),
            StrategyKind::Padded { to } => {
                format!("padded (the batch padded to {to} positions, padding masked)")
            }
        }
    }
}

/// What a check compares.
#[derive(Clone, Debug, PartialEq)]
pub enum Pairing {
    /// Two different strategies on the same backend (the seed's question).
    Strategies(String, String),
    /// A strategy on each backend against the f64 oracle.
    Oracle(String),
    /// A strategy on every pair of backends.
    Cross(String),
    /// A strategy on each backend against the same backend and strategy in a
    /// baseline file (`layerdrift run --save-baseline`): did an upgrade move
    /// the outputs?
    Baseline(String),
}

/// One check of a scenario: a pairing and its bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The name in trial names: `name:` if given, else derived from the
    /// pairing (`full-vs-rows`, `full-vs-oracle`, `full-vs`); unique within
    /// the scenario. A cross check's trials append the other backend's id.
    pub name: String,
    /// What is compared.
    pub pairing: Pairing,
    /// Bounds for every backend without an entry in `backend_bounds`.
    pub bounds: Bounds,
    /// Per-backend bounds, by backend name (`candle`) or id (`candle-cpu`).
    pub backend_bounds: BTreeMap<String, Bounds>,
    /// A baseline check's file (`file:`, relative to the scenario), if given;
    /// `layerdrift run --baseline FILE` overrides it.
    pub baseline_file: Option<PathBuf>,
    /// Where `file:` stands in the scenario file (for errors about the
    /// baseline it names).
    pub file_at: Option<Pos>,
}

impl Check {
    /// The bounds that apply to `id`: an entry for its id, else for its
    /// library name, else the check's own.
    pub fn bounds_for(&self, id: BackendId) -> &Bounds {
        self.backend_bounds
            .get(&id.to_string())
            .or_else(|| self.backend_bounds.get(id.name))
            .unwrap_or(&self.bounds)
    }
}

/// One point of the scenario's variant grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// `batch=8,residual=true` — only axes with several values appear; `base`
    /// when none do.
    pub label: String,
    /// The value of every multi-valued axis, in label order.
    pub axes: Vec<(String, String)>,
    /// The model.
    pub model: ModelSpec,
    /// Input batch size.
    pub batch: usize,
    /// Input sequence length (an encoder's: its longest sequence).
    pub seq: usize,
    /// Real tokens per sequence (`batch` entries, each at most `seq`): an
    /// encoder's sequences of their own lengths; every entry is `seq`
    /// otherwise.
    pub lengths: Vec<usize>,
    /// Computation dtype.
    pub dtype: DType,
    /// Observed rows, resolved against `batch` and `seq`.
    pub observed: Vec<Row>,
    /// How the backends call the row-mixing ops (`execution:`).
    pub execution: Execution,
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightSource {
    /// The seed's init from a seed.
    Init {
        /// RNG seed.
        seed: u64,
        /// Std of the linear weights.
        std: f64,
    },
    /// A safetensors file (absolute path).
    File(PathBuf),
    /// A Hugging Face checkpoint folder (absolute path), its first `layers`
    /// blocks.
    Checkpoint {
        /// The folder.
        dir: PathBuf,
        /// Blocks to load.
        layers: usize,
    },
}

/// How heavy a scenario is (`slow:`), and so when `cargo test` runs it;
/// `layerdrift run` runs every scenario it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Seconds: every `cargo test` (`slow: false`, the default).
    Everyday,
    /// Minutes: release builds, or debug builds with `LAYERDRIFT_SLOW=1`
    /// (`slow: true`; CI runs them).
    Slow,
    /// Full-size models that take many minutes on a small machine: only
    /// with `LAYERDRIFT_SLOW=manual` (`slow: manual`; CI does not).
    Manual,
}

impl WeightSource {
    /// One line for a run's header: where the weights come from and, for a
    /// checkpoint, the dtypes it stored and how they were read (from the
    /// safetensors headers, cheap).
    pub fn describe(&self) -> String {
        match self {
            WeightSource::Init { seed, std } => {
                format!("generated on the host (seed {seed}, linears ~ N(0, {std}²))")
            }
            WeightSource::File(path) => format!("{}", path.display()),
            WeightSource::Checkpoint { dir, layers } => {
                let read = match layerdrift_backends::hf::inspect(dir, Some(*layers)) {
                    Ok((_, stored)) => layerdrift_backends::hf::describe_stored(&stored),
                    Err(e) => format!("unreadable: {e}"),
                };
                format!("checkpoint {}, {layers} block(s): {read}", dir.display())
            }
        }
    }
}

/// Where the input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSource {
    /// N(0, 1) from a seed.
    Seed(u64),
    /// A `[batch, seq, dim]` tensor in a safetensors file.
    File {
        /// Absolute path.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
    },
    /// Token ids drawn below the vocabulary from a seed.
    Tokens(u64),
    /// Token ids from a JSON file (absolute path).
    TokenFile(PathBuf),
}

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name (the file stem), the first part of every trial name.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Free text from `description:`.
    pub description: String,
    /// Every variant, in axis order.
    pub variants: Vec<Variant>,
    /// The strategies, in file order.
    pub strategies: Vec<Strategy>,
    /// The checks, in file order.
    pub checks: Vec<Check>,
    /// Backend names to run (never `reference`, which always runs as the oracle).
    pub backends: Vec<String>,
    /// Devices to run on.
    pub devices: Vec<DeviceKind>,
    /// Intra-op threads for libraries that let a caller fix them.
    pub threads: Option<usize>,
    /// How heavy its trials are, and so when `cargo test` runs them.
    pub slow: Cost,
    /// Weights.
    pub weights: WeightSource,
    /// Input.
    pub input: InputSource,
    /// The estimated peak memory of its largest run, in bytes.
    pub estimated_bytes: f64,
    /// Where drift is born: op-level profiles and teacher-forced local
    /// error (`diagnose:`, or `layerdrift run --ops/--local`).
    pub diagnose: Diagnosis,
}

/// What a scenario run reports beyond the per-layer profiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Op-level profiles: `None` = off, an empty list = every op of the
    /// model ([`ModelSpec::op_names`]), else only the ops named.
    pub ops: Option<Vec<String>>,
    /// Local vs inherited error per layer: side B's layers run again on
    /// side A's inputs (teacher forcing). Row-independent models only.
    pub local: bool,
}

impl Diagnosis {
    /// Whether the op named `op` is asked for.
    pub fn wants_op(&self, op: &str) -> bool {
        self.ops
            .as_ref()
            .is_some_and(|o| o.is_empty() || o.iter().any(|n| n == op))
    }

    /// What is wrong with asking this of `variants`, as `(path, message)`
    /// (`diagnose.ops[1]`, `diagnose.local`): an op no variant's model has,
    /// teacher forcing on a decoder. Scenario validation and the CLI's
    /// flags both use it.
    pub fn problems(&self, variants: &[Variant]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(names) = &self.ops {
            for (i, name) in names.iter().enumerate() {
                if variants
                    .iter()
                    .any(|v| v.model.op_names().contains(&name.as_str()))
                {
                    continue;
                }
                let mut known: Vec<&str> = Vec::new();
                for v in variants {
                    for op in v.model.op_names() {
                        if !known.contains(&op) {
                            known.push(op);
                        }
                    }
                }
                let kind = variants.first().map_or("model", |v| v.model.kind());
                let hint = match name.as_str() {
                    "scores" | "softmax" => {
                        " (a fused attention kernel has no separate scores or softmax: use `attention: manual`)"
                    }
                    "rope" => " (this model has no rotary embeddings: `rope: true` adds them)",
                    "residual" => " (`residual: false` has none)",
                    _ => "",
                };
                out.push((
                    format!("diagnose.ops[{i}]"),
                    format!(
                        "this {kind} has no op `{name}`{hint}; its ops are {} (or `all`)",
                        known.join(", ")
                    ),
                ));
            }
        }
        if self.local
            && let Some(v) = variants.iter().find(|v| !v.model.rows_independent())
        {
            out.push((
                "diagnose.local".to_string(),
                format!(
                    "teacher forcing has no meaning for a {} (variant {}): a row's layer input includes every earlier position's, and only the observed rows ever leave a backend; use `local` on a residual_mlp, and `ops` to find an attention model's first divergent op",
                    v.model.kind(),
                    v.label
                ),
            ));
        }
        out
    }
}

/// "`file` is not fetched yet: run `by`" — one wording for the suite's
/// ignored trials, `validate`, `list` and the scenario error.
pub(crate) fn not_fetched(file: &Path, by: &str) -> String {
    format!("{} is not fetched yet: run `{by}`", file.display())
}

impl Scenario {
    /// The command that downloads the scenario at `path`'s checkpoint
    /// (`model.fetched_by`) and the checkpoint's path, if it names one.
    /// `None` for every other scenario, and for a file that does not parse
    /// (loading it reports why).
    pub fn fetched_by(path: &Path) -> Option<(String, PathBuf)> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        let model = v.get("model")?;
        let by = model.get("fetched_by")?.as_str()?;
        let file = Path::new(model.get("checkpoint")?.as_str()?);
        let full = match file.is_absolute() {
            true => file.to_path_buf(),
            false => path.parent().unwrap_or(Path::new(".")).join(file),
        };
        Some((by.to_string(), full))
    }

    /// Why the scenario at `path` cannot run until something is downloaded
    /// (`"… is not fetched yet: run `scripts/fetch-models`"`), or `None`.
    /// The suite ignores such a scenario's trials with this reason; loading
    /// it is an error saying the same.
    pub fn unfetched(path: &Path) -> Option<String> {
        let (by, file) = Scenario::fetched_by(path)?;
        (!file.exists()).then(|| not_fetched(&file, &by))
    }

    /// The strategy called `name`.
    pub fn strategy(&self, name: &str) -> Option<&Strategy> {
        self.strategies.iter().find(|s| s.name == name)
    }

    /// Whether any variant's rows depend on each other (attention: its
    /// oracle computes each strategy for real; a residual MLP's oracle
    /// computes the observed rows alone).
    pub fn is_decoder(&self) -> bool {
        self.variants.iter().any(|v| !v.model.rows_independent())
    }

    /// Loads and validates a scenario file. `known` are the backends this
    /// build knows (compiled in or not), for names and spelling hints;
    /// `memory_limit` is the most bytes a run may need (see
    /// [`estimate_bytes`]).
    pub fn load(
        path: &Path,
        known: &[BackendId],
        memory_limit: u64,
    ) -> Result<Scenario, ScenarioErrors> {
        let meta = std::fs::metadata(path).map_err(|e| {
            ScenarioErrors::one(path, None, format!("cannot read the scenario: {e}"))
        })?;
        if !meta.is_file() {
            return Err(ScenarioErrors::one(
                path,
                None,
                "not a regular file: give the path of a scenario's .yaml file",
            ));
        }
        if meta.len() > syntax::MAX_BYTES as u64 {
            return Err(ScenarioErrors::one(
                path,
                None,
                format!(
                    "the file is {} bytes; a scenario may be at most {} (is this the right file?)",
                    meta.len(),
                    syntax::MAX_BYTES
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            ScenarioErrors::one(path, None, format!("cannot read the scenario: {e}"))
        })?;
        Scenario::parse_bytes(path, &bytes, known, memory_limit)
    }

    /// Parses and validates scenario bytes (from `path`, for messages and
    /// relative file paths). Never panics, whatever the bytes.
    pub fn parse_bytes(
        path: &Path,
        bytes: &[u8],
        known: &[BackendId],
        memory_limit: u64,
    ) -> Result<Scenario, ScenarioErrors> {
        let text = syntax::decode(bytes)
            .map_err(|(pos, message)| ScenarioErrors::one(path, pos, message))?;
        Scenario::parse(path, text, known, memory_limit)
    }

    /// Parses and validates scenario `text`.
    pub fn parse(
        path: &Path,
        text: &str,
        known: &[BackendId],
        memory_limit: u64,
    ) -> Result<Scenario, ScenarioErrors> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let index = syntax::scan(text).map_err(|errs| {
            ScenarioErrors(
                errs.into_iter()
                    .map(|(pos, message)| ScenarioError {
                        file: path.into(),
                        pos,
                        message,
                    })
                    .collect(),
            )
        })?;
        let raw: raw::RawScenario = serde_yaml::from_str(text).map_err(|e| {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                col: l.column(),
            });
            let mut message = e.to_string();
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            // An empty file or a bare scalar has no position from serde.
            let pos = pos.or(Some(Pos { line: 1, col: 1 }));
            ScenarioErrors::one(path, pos, error::with_suggestion(&message))
        })?;
        validate::resolve(path, &index, raw, known, memory_limit)
    }
}
