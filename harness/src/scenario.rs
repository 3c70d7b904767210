//! Scenario files: parsing, validation with `path:line:column` errors, and
//! expansion of list-valued axes into variants.
//!
//! Every YAML key is documented in the README's scenario reference; keep the
//! two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use layerdrift_backends::model::{
    Activation, AttentionForm, DecoderSpec, ModelSpec, Norm, ResidualMlpSpec,
};
use layerdrift_backends::{DType, Row, Schedule, Weights};
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};

use crate::bounds::Bounds;
use crate::locate::{PathIndex, Pos};

/// A problem in a scenario file, with where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioError {
    /// The scenario file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub pos: Option<Pos>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All the problems found in one scenario file.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

// ---------------------------------------------------------------- raw YAML

/// A value that may be given once or as a list of variants (`batch: 8` or
/// `batch: [1, 8, 16]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Axis<T>(pub Vec<T>);

impl<T> Axis<T> {
    fn one(v: T) -> Self {
        Axis(vec![v])
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Axis<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        macro_rules! scalar {
            ($name:ident, $ty:ty) => {
                fn $name<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                    T::deserialize(v.into_deserializer()).map(Axis::one)
                }
            };
        }
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Axis<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            scalar!(visit_bool, bool);
            scalar!(visit_i64, i64);
            scalar!(visit_u64, u64);
            scalar!(visit_f64, f64);
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Axis::one)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Axis(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    ResidualMlp,
    Decoder,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawActivation {
    Gelu,
    GeluTanh,
    Silu,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawNorm {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawAttention {
    Manual,
    Fused,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawDType {
    F32,
    F64,
    F16,
    Bf16,
}

/// `batch=8,residual=true`, or `base` when no axis has several values.
fn variant_label(axes: &[(String, String)]) -> String {
    if axes.is_empty() {
        return "base".to_string();
    }
    axes.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How a backend executes the model.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawExecution {
    /// The library's kernels on whole tensors, as a user would call them.
    Standard,
    /// Every row alone through every op that mixes values within a row, and
    /// attention over exactly the keys a query sees: the cure for drift, at
    /// the cost of batching.
    BatchInvariant,
}

fn execution_default() -> Axis<RawExecution> {
    Axis::one(RawExecution::Standard)
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_one() -> Axis<usize> {
    Axis::one(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: RawKind,
    layers: usize,
    dim: usize,
    hidden: Option<usize>,
    heads: Option<usize>,
    #[serde(default = "act_default")]
    activation: Axis<RawActivation>,
    #[serde(default = "norm_default")]
    norm: Axis<RawNorm>,
    #[serde(default = "default_eps")]
    eps: f64,
    residual: Option<Axis<bool>>,
    rope: Option<Axis<bool>>,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    attention: Option<Axis<RawAttention>>,
}

fn act_default() -> Axis<RawActivation> {
    Axis::one(RawActivation::Gelu)
}
fn norm_default() -> Axis<RawNorm> {
    Axis::one(RawNorm::LayerNorm)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInit {
    seed: u64,
    #[serde(default = "default_std")]
    std: f64,
}

fn default_std() -> f64 {
    0.2
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    init: Option<RawInit>,
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(default = "default_one")]
    batch: Axis<usize>,
    #[serde(default = "default_one")]
    seq: Axis<usize>,
    #[serde(default)]
    seed: u64,
    file: Option<PathBuf>,
    tensor: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum RawStrategy {
    Full,
    Rows,
    KvCache { prefill: usize },
    Chunked { chunk: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvCacheArgs {
    prefill: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkedArgs {
    chunk: usize,
}

const STRATEGIES: &[&str] = &["full", "rows", "kv_cache", "chunked"];

/// `full` / `rows` as plain names, `kv_cache: { prefill: N }` and
/// `chunked: { chunk: N }` as one-key mappings (serde_yaml 0.9 would want
/// `!kv_cache` tags for an enum; scenarios read better without).
impl<'de> Deserialize<'de> for RawStrategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStrategy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`full`, `rows`, `kv_cache: { prefill: N }` or `chunked: { chunk: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStrategy, E> {
                match v {
                    "full" => Ok(RawStrategy::Full),
                    "rows" => Ok(RawStrategy::Rows),
                    "kv_cache" => Err(E::custom(
                        "`kv_cache` needs its prefill length: `kv_cache: { prefill: N }`",
                    )),
                    "chunked" => Err(E::custom(
                        "`chunked` needs its chunk size: `chunked: { chunk: N }`",
                    )),
                    other => Err(E::unknown_variant(other, STRATEGIES)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawStrategy, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty mapping: expected a strategy"));
                };
                let s = match key.as_str() {
                    "kv_cache" => RawStrategy::KvCache {
                        prefill: map.next_value::<KvCacheArgs>()?.prefill,
                    },
                    "chunked" => RawStrategy::Chunked {
                        chunk: map.next_value::<ChunkedArgs>()?.chunk,
                    },
                    "full" | "rows" => {
                        return Err(de::Error::custom(format!(
                            "`{key}` takes no arguments: write it as a plain name"
                        )));
                    }
                    other => return Err(de::Error::unknown_variant(other, STRATEGIES)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("one strategy per list item"));
                }
                Ok(s)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    strategies: Option<Vec<String>>,
    oracle: Option<String>,
    cross: Option<String>,
    #[serde(default)]
    bounds: Bounds,
    #[serde(default)]
    backend_bounds: BTreeMap<String, Bounds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Option<String>,
    model: RawModel,
    #[serde(default)]
    weights: RawWeights,
    input: RawInput,
    #[serde(default = "dtype_default")]
    dtype: Axis<RawDType>,
    #[serde(default = "execution_default")]
    execution: Axis<RawExecution>,
    observe: Option<serde_yaml::Value>,
    strategies: Vec<RawStrategy>,
    #[serde(default)]
    checks: Vec<RawCheck>,
    backends: Option<Vec<String>>,
    devices: Option<Vec<String>>,
    threads: Option<usize>,
    #[serde(default)]
    slow: bool,
}

fn dtype_default() -> Axis<RawDType> {
    Axis::one(RawDType::F32)
}

// ---------------------------------------------------------------- resolved

/// One strategy: how the observed rows are computed.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    /// Name used in checks: `full`, `rows`, `kv_cache`, `chunked`.
    pub name: &'static str,
    kind: RawStrategy,
}

impl Strategy {
    /// The schedule for a sequence of `seq` positions.
    pub fn schedule(&self, seq: usize) -> Schedule {
        match self.kind {
            RawStrategy::Full => Schedule::Full,
            RawStrategy::Rows => Schedule::Rows,
            RawStrategy::KvCache { prefill } => Schedule::kv_cache(prefill, seq),
            RawStrategy::Chunked { chunk } => Schedule::chunked(chunk, seq),
        }
    }

    /// A one-line description, e.g. `kv_cache (prefill 248, then decode one at a time)`.
    pub fn describe(&self) -> String {
        match self.kind {
            RawStrategy::Full => "full (whole input, then slice the observed rows)".into(),
            RawStrategy::Rows => "rows (only the observed rows as input)".into(),
            RawStrategy::KvCache { prefill } => {
                format!("kv_cache (prefill {prefill} positions, then decode one at a time)")
            }
            RawStrategy::Chunked { chunk } => {
                format!("chunked (chunks of {chunk} through the KV cache)")
            }
        }
    }
}

/// What a check compares.
#[derive(Clone, Debug, PartialEq)]
pub enum Pairing {
    /// Two strategies on the same backend (the seed's question).
    Strategies(String, String),
    /// A strategy on each backend against the f64 oracle.
    Oracle(String),
    /// A strategy on every pair of backends.
    Cross(String),
}

/// One check of a scenario: a pairing and its bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Explicit name, if given (`name:`); otherwise derived per trial.
    pub name: Option<String>,
    /// What is compared.
    pub pairing: Pairing,
    /// Bounds for every backend without an entry in `backend_bounds`.
    pub bounds: Bounds,
    /// Per-backend bounds, by backend name (`candle`) or id (`candle-cpu`).
    pub backend_bounds: BTreeMap<String, Bounds>,
}

impl Check {
    /// The bounds that apply to `backend` (`name`-`device`): an entry for its
    /// id, else for its name, else the check's own.
    pub fn bounds_for(&self, id: &str, name: &str) -> &Bounds {
        self.backend_bounds
            .get(id)
            .or_else(|| self.backend_bounds.get(name))
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
    /// Input sequence length.
    pub seq: usize,
    /// Computation dtype.
    pub dtype: DType,
    /// Observed rows, resolved against `batch` and `seq`.
    pub observed: Vec<Row>,
    /// Batch-invariant execution (`execution: batch_invariant`).
    pub batch_invariant: bool,
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
    pub devices: Vec<String>,
    /// Intra-op threads for libraries that let a caller fix them.
    pub threads: Option<usize>,
    /// Slow: in debug builds its trials are ignored unless `LAYERDRIFT_SLOW=1`.
    pub slow: bool,
    /// Weights.
    pub weights: WeightSource,
    /// Input.
    pub input: InputSource,
}

impl Scenario {
    /// The strategy called `name`.
    pub fn strategy(&self, name: &str) -> Option<&Strategy> {
        self.strategies.iter().find(|s| s.name == name)
    }

    /// Loads and validates a scenario file. `known_backends` are the backend
    /// names this build knows (compiled in or not), for spelling errors.
    pub fn load(path: &Path, known_backends: &[&str]) -> Result<Scenario, ScenarioErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ScenarioErrors(vec![ScenarioError {
                file: path.into(),
                pos: None,
                message: format!("cannot read the scenario: {e}"),
            }])
        })?;
        Scenario::parse(path, &text, known_backends)
    }

    /// Parses and validates scenario `text` (from `path`, for messages and
    /// relative file paths).
    pub fn parse(
        path: &Path,
        text: &str,
        known_backends: &[&str],
    ) -> Result<Scenario, ScenarioErrors> {
        let raw: RawScenario = serde_yaml::from_str(text).map_err(|e| {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                col: l.column(),
            });
            let mut message = e.to_string();
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            ScenarioErrors(vec![ScenarioError {
                file: path.into(),
                pos,
                message: with_suggestion(&message),
            }])
        })?;
        let index = PathIndex::new(text);
        let mut v = Validator {
            file: path.to_path_buf(),
            index,
            errors: Vec::new(),
        };
        let scenario = v.resolve(raw, known_backends);
        if v.errors.is_empty() {
            Ok(scenario.expect("no errors means resolved"))
        } else {
            Err(ScenarioErrors(v.errors))
        }
    }
}

/// Adds "did you mean `x`?" to serde's unknown-field/variant messages.
fn with_suggestion(message: &str) -> String {
    let Some(start) = message.find("unknown ") else {
        return message.to_string();
    };
    let rest = &message[start..];
    let mut ticks = rest.split('`');
    let Some(got) = ticks.nth(1) else {
        return message.to_string();
    };
    let expected: Vec<&str> = rest.split('`').skip(3).step_by(2).collect();
    let best = expected
        .iter()
        .map(|c| (edit_distance(got, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3));
    match best {
        Some((_, c)) => format!("{message} — did you mean `{c}`?"),
        None => message.to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Validator {
    file: PathBuf,
    index: PathIndex,
    errors: Vec<ScenarioError>,
}

/// The known devices.
pub const DEVICES: [&str; 3] = ["cpu", "cuda", "wgpu"];

impl Validator {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ScenarioError {
            file: self.file.clone(),
            pos: self.index.find(path),
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

    fn positive(&mut self, path: &str, v: usize) {
        if v == 0 {
            self.err(path, "must be at least 1");
        }
    }

    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn resolve(&mut self, raw: RawScenario, known_backends: &[&str]) -> Option<Scenario> {
        let name = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        let m = &raw.model;
        let decoder = m.kind == RawKind::Decoder;
        self.positive("model.layers", m.layers);
        self.positive("model.dim", m.dim);
        let hidden = m.hidden.unwrap_or(if decoder { 4 * m.dim } else { m.dim });
        self.positive("model.hidden", hidden);
        if !(m.eps > 0.0 && m.eps.is_finite()) {
            self.err(
                "model.eps",
                format!("must be a positive number, got {}", m.eps),
            );
        }
        let heads = if decoder {
            match m.heads {
                None => {
                    self.err(
                        "model",
                        "a decoder needs `heads:` (dim must be divisible by it)",
                    );
                    1
                }
                Some(0) => {
                    self.err("model.heads", "must be at least 1");
                    1
                }
                Some(h) => {
                    if !m.dim.is_multiple_of(h) {
                        self.err(
                            "model.heads",
                            format!(
                                "{h} heads do not divide dim {}; pick a divisor of {}",
                                m.dim, m.dim
                            ),
                        );
                    }
                    h
                }
            }
        } else {
            if m.heads.is_some() {
                self.err(
                    "model.heads",
                    "only a `decoder` has heads; remove it or set `kind: decoder`",
                );
            }
            1
        };
        let wants_rope = m.rope.as_ref().is_some_and(|r| r.0.contains(&true));
        if wants_rope
            && decoder
            && m.heads
                .is_some_and(|h| h > 0 && m.dim.is_multiple_of(h) && (m.dim / h) % 2 == 1)
        {
            self.err(
                "model.rope",
                format!(
                    "rotary embeddings need an even head dim; dim {} / heads {heads} is odd",
                    m.dim
                ),
            );
        }
        if !decoder {
            for (key, set) in [
                ("rope", m.rope.is_some()),
                ("attention", m.attention.is_some()),
            ] {
                if set {
                    self.err(
                        &format!("model.{key}"),
                        "only a `decoder` has this; remove it or set `kind: decoder`",
                    );
                }
            }
        } else if m.residual.is_some() {
            self.err(
                "model.residual",
                "a decoder's blocks are always residual; remove `residual:`",
            );
        }
        if !(m.rope_theta > 0.0) {
            self.err("model.rope_theta", "must be positive");
        }

        let raw_model = raw.model;
        let activations = self.axis("model.activation", raw_model.activation);
        let norms = self.axis("model.norm", raw_model.norm);
        let residuals = self.axis(
            "model.residual",
            raw_model.residual.unwrap_or(Axis::one(true)),
        );
        let ropes = self.axis("model.rope", raw_model.rope.unwrap_or(Axis::one(false)));
        let attentions = self.axis(
            "model.attention",
            raw_model
                .attention
                .unwrap_or(Axis::one(RawAttention::Manual)),
        );
        let dtypes = self.axis("dtype", raw.dtype);
        let executions = self.axis("execution", raw.execution);

        // Input.
        let inp = raw.input;
        let input = match (&inp.file, &inp.tensor) {
            (Some(f), t) => InputSource::File {
                path: self.relative(f),
                tensor: t.clone().unwrap_or_else(|| "input".into()),
            },
            (None, Some(_)) => {
                self.err(
                    "input.tensor",
                    "`tensor:` names a tensor in `file:`; add `file:` or remove it",
                );
                InputSource::Seed(inp.seed)
            }
            (None, None) => InputSource::Seed(inp.seed),
        };
        let mut batches = self.axis("input.batch", inp.batch);
        let mut seqs = self.axis("input.seq", inp.seq);
        for (i, b) in batches.clone().into_iter().enumerate() {
            self.positive(&format!("input.batch[{i}]"), b);
        }
        for (i, s) in seqs.clone().into_iter().enumerate() {
            self.positive(&format!("input.seq[{i}]"), s);
        }
        if let InputSource::File { path, tensor } = &input {
            match layerdrift_backends::weights::read_safetensors(path) {
                Err(e) => self.err("input.file", e.to_string()),
                Ok(all) => match all.get(tensor) {
                    None => self.err("input.tensor", format!(
                        "{} has no tensor `{tensor}` (it has: {})",
                        path.display(),
                        all.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    Some(t) if t.shape.len() != 3 || t.shape[2] != raw_model.dim => self.err(
                        "input.tensor",
                        format!("`{tensor}` has shape {:?}; an input must be [batch, seq, dim] with dim {}", t.shape, raw_model.dim),
                    ),
                    Some(t) => {
                        batches = vec![t.shape[0]];
                        seqs = vec![t.shape[1]];
                    }
                },
            }
        }

        // Weights.
        let weights = match (raw.weights.init, raw.weights.file) {
            (Some(_), Some(_)) => {
                self.err("weights", "give either `init:` or `file:`, not both");
                WeightSource::Init { seed: 0, std: 0.2 }
            }
            (Some(i), None) => {
                if !(i.std > 0.0 && i.std.is_finite()) {
                    self.err("weights.init.std", "must be a positive number");
                }
                WeightSource::Init {
                    seed: i.seed,
                    std: i.std,
                }
            }
            (None, Some(f)) => WeightSource::File(self.relative(&f)),
            (None, None) => WeightSource::Init { seed: 0, std: 0.2 },
        };

        // Strategies.
        let mut strategies = Vec::new();
        if raw.strategies.is_empty() {
            self.err(
                "strategies",
                "empty list: name at least one of full, rows, kv_cache, chunked",
            );
        }
        for (i, s) in raw.strategies.into_iter().enumerate() {
            let at = format!("strategies[{i}]");
            let name = match &s {
                RawStrategy::Full => "full",
                RawStrategy::Rows => "rows",
                RawStrategy::KvCache { .. } => "kv_cache",
                RawStrategy::Chunked { .. } => "chunked",
            };
            match &s {
                RawStrategy::Rows if decoder => self.err(&at, "`rows` needs row-independent layers; a decoder's rows attend to earlier positions — use `kv_cache`"),
                RawStrategy::KvCache { .. } | RawStrategy::Chunked { .. } if !decoder => {
                    self.err(&at, format!("`{name}` needs a decoder (attention with a KV cache); a residual_mlp has none — use `full`/`rows`"))
                }
                RawStrategy::KvCache { prefill } => {
                    for &seq in &seqs {
                        if *prefill == 0 || *prefill >= seq {
                            self.err(&format!("{at}.kv_cache.prefill"), format!("prefill {prefill} must be between 1 and seq - 1 = {}", seq.saturating_sub(1)));
                        }
                    }
                }
                RawStrategy::Chunked { chunk } if *chunk == 0 => self.err(&format!("{at}.chunked.chunk"), "chunk size must be at least 1"),
                _ => {}
            }
            if strategies.iter().any(|x: &Strategy| x.name == name) {
                self.err(&at, format!("`{name}` is listed twice"));
            }
            strategies.push(Strategy { name, kind: s });
        }

        // Observed rows (resolved per variant below).
        let observe = raw.observe.unwrap_or_else(|| {
            if decoder {
                serde_yaml::Value::String("decoded".into())
            } else {
                serde_yaml::Value::String("last".into())
            }
        });
        let decoded_from = strategies.iter().find_map(|s| match s.kind {
            RawStrategy::KvCache { prefill } => Some(prefill),
            _ => None,
        });

        // Checks.
        let strategy_names: Vec<&str> = strategies.iter().map(|s| s.name).collect();
        let mut checks = Vec::new();
        for (i, c) in raw.checks.into_iter().enumerate() {
            let at = format!("checks[{i}]");
            let known = |key: &str, s: &str, this: &mut Self| {
                if !strategy_names.contains(&s) {
                    this.err(
                        &format!("{at}.{key}"),
                        format!(
                            "no strategy `{s}` in this scenario (it has: {})",
                            strategy_names.join(", ")
                        ),
                    );
                }
            };
            let pairing = match (c.strategies, c.oracle, c.cross) {
                (Some(pair), None, None) => {
                    if pair.len() != 2 {
                        self.err(
                            &format!("{at}.strategies"),
                            format!("name exactly two strategies to compare, got {}", pair.len()),
                        );
                        continue;
                    }
                    known("strategies", &pair[0], self);
                    known("strategies", &pair[1], self);
                    Pairing::Strategies(pair[0].clone(), pair[1].clone())
                }
                (None, Some(s), None) => {
                    known("oracle", &s, self);
                    Pairing::Oracle(s)
                }
                (None, None, Some(s)) => {
                    known("cross", &s, self);
                    Pairing::Cross(s)
                }
                _ => {
                    self.err(&at, "a check has exactly one of `strategies: [a, b]`, `oracle: <strategy>`, `cross: <strategy>`");
                    continue;
                }
            };
            for (key, b) in std::iter::once(("bounds".to_string(), &c.bounds)).chain(
                c.backend_bounds
                    .iter()
                    .map(|(k, b)| (format!("backend_bounds.{k}"), b)),
            ) {
                for problem in b.problems() {
                    self.err(&format!("{at}.{key}"), problem);
                }
            }
            for k in c.backend_bounds.keys() {
                let base = k
                    .rsplit_once('-')
                    .filter(|(_, d)| DEVICES.contains(d))
                    .map_or(k.as_str(), |(b, _)| b);
                if !known_backends.contains(&base) && !known_backends.contains(&k.as_str()) {
                    self.err(
                        &format!("{at}.backend_bounds.{k}"),
                        format!(
                            "unknown backend `{k}` (known: {})",
                            known_backends.join(", ")
                        ),
                    );
                }
            }
            checks.push(Check {
                name: c.name,
                pairing,
                bounds: c.bounds,
                backend_bounds: c.backend_bounds,
            });
        }
        if checks.is_empty() {
            self.err("checks", "no checks: add at least one, e.g. `- strategies: [full, rows]` or `- oracle: full`");
        }

        // Backends and devices.
        let backends = raw.backends.unwrap_or_else(|| {
            known_backends
                .iter()
                .filter(|b| **b != "reference")
                .map(|s| s.to_string())
                .collect()
        });
        for (i, b) in backends.iter().enumerate() {
            if !known_backends.contains(&b.as_str()) || b == "reference" {
                let hint = known_backends
                    .iter()
                    .map(|k| (edit_distance(b, k), *k))
                    .min()
                    .filter(|(d, _)| *d <= 3);
                let hint = hint
                    .map(|(_, k)| format!(" — did you mean `{k}`?"))
                    .unwrap_or_default();
                let why = if b == "reference" {
                    "`reference` always runs as the oracle; do not list it"
                } else {
                    "unknown backend"
                };
                self.err(
                    &format!("backends[{i}]"),
                    format!(
                        "{why} `{b}` (known: {}){hint}",
                        known_backends
                            .iter()
                            .filter(|k| **k != "reference")
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        let devices = raw
            .devices
            .unwrap_or_else(|| DEVICES.iter().map(|d| d.to_string()).collect());
        for (i, d) in devices.iter().enumerate() {
            if !DEVICES.contains(&d.as_str()) {
                self.err(
                    &format!("devices[{i}]"),
                    format!("unknown device `{d}` (known: {})", DEVICES.join(", ")),
                );
            }
        }
        if raw.threads == Some(0) {
            self.err(
                "threads",
                "must be at least 1 (or leave it out for the library's default)",
            );
        }

        // Variants: the cartesian product of every axis.
        let mut variants = Vec::new();
        let multi = |n: usize| n > 1;
        for &dtype in &dtypes {
            for &act in &activations {
                for &norm in &norms {
                    for &residual in &residuals {
                        for &rope in &ropes {
                            for &att in &attentions {
                                for &batch in &batches {
                                    for &seq in &seqs {
                                        let mut axes = Vec::new();
                                        let mut ax = |k: &str, n: usize, v: String| {
                                            if multi(n) {
                                                axes.push((k.to_string(), v));
                                            }
                                        };
                                        ax("dtype", dtypes.len(), dtype_of(dtype).to_string());
                                        ax(
                                            "activation",
                                            activations.len(),
                                            act_of(act).name().into(),
                                        );
                                        ax("norm", norms.len(), norm_of(norm).name().into());
                                        ax("residual", residuals.len(), residual.to_string());
                                        ax("rope", ropes.len(), rope.to_string());
                                        ax(
                                            "attention",
                                            attentions.len(),
                                            att_of(att).name().into(),
                                        );
                                        ax("batch", batches.len(), batch.to_string());
                                        ax("seq", seqs.len(), seq.to_string());
                                        let label = variant_label(&axes);
                                        let model = if decoder {
                                            ModelSpec::Decoder(DecoderSpec {
                                                layers: raw_model.layers,
                                                dim: raw_model.dim,
                                                heads,
                                                hidden,
                                                activation: act_of(act),
                                                norm: norm_of(norm),
                                                eps: raw_model.eps,
                                                rope_theta: rope.then_some(raw_model.rope_theta),
                                                attention: att_of(att),
                                            })
                                        } else {
                                            ModelSpec::ResidualMlp(ResidualMlpSpec {
                                                layers: raw_model.layers,
                                                dim: raw_model.dim,
                                                hidden,
                                                activation: act_of(act),
                                                norm: norm_of(norm),
                                                eps: raw_model.eps,
                                                residual,
                                            })
                                        };
                                        let observed = self
                                            .observed(&observe, batch, seq, decoded_from)
                                            .unwrap_or_default();
                                        variants.push(Variant {
                                            label,
                                            axes,
                                            model,
                                            batch,
                                            seq,
                                            dtype: dtype_of(dtype),
                                            observed,
                                            batch_invariant: false,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // The execution axis, last in labels.
        let several = executions.len() > 1;
        let variants: Vec<Variant> = variants
            .into_iter()
            .flat_map(|v| {
                executions.iter().map(move |&e| {
                    let mut v = v.clone();
                    v.batch_invariant = e == RawExecution::BatchInvariant;
                    if several {
                        let name = if v.batch_invariant {
                            "batch_invariant"
                        } else {
                            "standard"
                        };
                        v.axes.push(("execution".into(), name.into()));
                        v.label = variant_label(&v.axes);
                    }
                    v
                })
            })
            .collect();

        // Dedup errors from repeated per-variant observation problems.
        self.errors.dedup();

        // Weights files must fit the model (checked once per distinct model).
        if let WeightSource::File(f) = &weights
            && let Some(v) = variants.first()
            && let Err(e) = Weights::load(&v.model, f)
        {
            self.err("weights.file", e.to_string());
        }
        if !self.errors.is_empty() {
            return None;
        }
        Some(Scenario {
            name,
            path: self.file.clone(),
            description: raw.description.unwrap_or_default(),
            variants,
            strategies,
            checks,
            backends,
            devices,
            threads: raw.threads,
            slow: raw.slow,
            weights,
            input,
        })
    }

    /// Resolves `observe:` for one variant.
    fn observed(
        &mut self,
        v: &serde_yaml::Value,
        batch: usize,
        seq: usize,
        decoded_from: Option<usize>,
    ) -> Option<Vec<Row>> {
        use serde_yaml::Value;
        let resolve = |this: &mut Self,
                       path: &str,
                       i: i64,
                       n: usize,
                       what: &str|
         -> Option<usize> {
            let r = if i < 0 { n as i64 + i } else { i };
            if r < 0 || r >= n as i64 {
                this.err(path, format!("{what} index {i} is out of range for {what} size {n} (use 0..{} or -{n}..-1)", n - 1));
                None
            } else {
                Some(r as usize)
            }
        };
        match v {
            Value::String(s) if s == "last" => Some(vec![Row {
                batch: batch - 1,
                pos: seq - 1,
            }]),
            Value::String(s) if s == "decoded" => {
                let Some(p) = decoded_from else {
                    self.err("observe", "`decoded` means the positions a `kv_cache` strategy decodes; this scenario has none");
                    return None;
                };
                Some(
                    (p..seq)
                        .map(|pos| Row {
                            batch: batch - 1,
                            pos,
                        })
                        .collect(),
                )
            }
            Value::Mapping(m) => {
                let mut rows = Vec::new();
                let mut batches = vec![];
                let mut last = 1usize;
                for (k, val) in m {
                    match (k.as_str(), val) {
                        (Some("batch"), Value::String(s)) if s == "all" => {
                            batches = (0..batch).collect()
                        }
                        (Some("batch"), Value::Number(n)) if n.as_i64().is_some() => {
                            batches =
                                vec![resolve(self, "observe.batch", n.as_i64()?, batch, "batch")?]
                        }
                        (Some("last"), Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
                            last = n.as_u64()? as usize
                        }
                        _ => {
                            self.err(
                                "observe",
                                "expected `{ batch: <index or all>, last: <count> }`",
                            );
                            return None;
                        }
                    }
                }
                if batches.is_empty() {
                    batches = vec![batch - 1];
                }
                if last > seq {
                    self.err(
                        "observe.last",
                        format!("{last} positions asked but seq is {seq}"),
                    );
                    return None;
                }
                for b in batches {
                    rows.extend((seq - last..seq).map(|pos| Row { batch: b, pos }));
                }
                Some(rows)
            }
            Value::Sequence(items) if !items.is_empty() => {
                let mut rows = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let pair: Option<Vec<i64>> = item
                        .as_sequence()
                        .map(|s| s.iter().filter_map(|x| x.as_i64()).collect());
                    match pair.as_deref() {
                        Some(&[b, p]) => {
                            let at = format!("observe[{i}]");
                            let b = resolve(self, &at, b, batch, "batch");
                            let p = resolve(self, &at, p, seq, "position");
                            rows.push(Row { batch: b?, pos: p? });
                        }
                        _ => {
                            self.err(&format!("observe[{i}]"), "each observed row is `[batch, position]` (negative counts from the end)");
                            return None;
                        }
                    }
                }
                Some(rows)
            }
            _ => {
                self.err("observe", "expected `last`, `decoded`, a list of `[batch, position]` pairs, or `{ batch: <index or all>, last: <count> }`");
                None
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
