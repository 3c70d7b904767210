//! The serde shapes of a scenario file: what YAML can say, before any
//! value is checked. `deny_unknown_fields` everywhere, so a typo is an error
//! with a position (and a suggestion) rather than an ignored key.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};

use crate::bounds::Bounds;

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
            // One value written as a mapping (`execution: { fixed_shape: { tile: 8 } }`).
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Axis::one)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "Kind")]
#[serde(rename_all = "snake_case")]
pub(super) enum RawKind {
    ResidualMlp,
    Decoder,
    Llama,
    Gpt2,
    Bert,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "Activation")]
#[serde(rename_all = "snake_case")]
pub(super) enum RawActivation {
    Gelu,
    GeluTanh,
    Silu,
    GeluNew,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "Norm")]
#[serde(rename_all = "snake_case")]
pub(super) enum RawNorm {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "Attention")]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAttention {
    Manual,
    Fused,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "DType")]
#[serde(rename_all = "snake_case")]
pub(super) enum RawDType {
    F32,
    F64,
    F16,
    Bf16,
}

/// How a backend executes the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum RawExecution {
    /// The library's kernels on whole tensors, as a user would call them.
    Standard,
    /// Every row alone through every op that mixes values within a row, and
    /// attention over exactly the keys a query sees: the cure for drift, at
    /// the cost of batching.
    BatchInvariant,
    /// Fixed tiles of rows and a fixed key capacity; `tile: None` = the
    /// default ([`FIXED_SHAPE_TILE`]).
    FixedShape { tile: Option<usize> },
    /// One call per op on every row, padded to a certified row count;
    /// `anchor: None` = the default ([`PINNED_ANCHOR`]).
    Pinned { anchor: Option<usize> },
}

/// Execution names, as scenario files write them.
pub const EXECUTIONS: &[&str] = &["standard", "batch_invariant", "fixed_shape", "pinned"];

/// The default anchor of `execution: pinned`, in rows: the row count whose
/// kernel class every call must share. 64 is inside the one class every
/// CPU backend's linears, norms and attention keep from a handful of rows to
/// 4,096 at the shipped widths (the dispatch map), so a run pads only what
/// has fewer rows than that class starts at.
pub const PINNED_ANCHOR: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PinnedArgs {
    pub(super) anchor: Option<usize>,
}

/// The default tile of `execution: fixed_shape`, in rows: inside the one
/// kernel-equivalence class every CPU backend's linear, norm and attention
/// keep from 4 rows up at the shipped scenarios' widths (the kernel-dispatch
/// probe, `backends/tests/probe.rs`), and large enough that a tile's GEMM
/// runs near a whole batch's speed.
pub const FIXED_SHAPE_TILE: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FixedShapeArgs {
    pub(super) tile: Option<usize>,
}

/// `standard` / `batch_invariant` / `fixed_shape` / `pinned` as plain
/// names, and `fixed_shape: { tile: N }` / `pinned: { anchor: N }` as
/// one-key mappings.
impl<'de> Deserialize<'de> for RawExecution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawExecution;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`standard`, `batch_invariant`, `fixed_shape`, `fixed_shape: { tile: N }`, `pinned` or `pinned: { anchor: N }`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawExecution, E> {
                match v {
                    "standard" => Ok(RawExecution::Standard),
                    "batch_invariant" => Ok(RawExecution::BatchInvariant),
                    "fixed_shape" => Ok(RawExecution::FixedShape { tile: None }),
                    "pinned" => Ok(RawExecution::Pinned { anchor: None }),
                    other => Err(E::unknown_variant(other, EXECUTIONS)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawExecution, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty mapping: expected an execution"));
                };
                let e = match key.as_str() {
                    "fixed_shape" => RawExecution::FixedShape {
                        tile: map.next_value::<FixedShapeArgs>()?.tile,
                    },
                    "pinned" => RawExecution::Pinned {
                        anchor: map.next_value::<PinnedArgs>()?.anchor,
                    },
                    "standard" | "batch_invariant" => {
                        return Err(de::Error::custom(format!(
                            "`{key}` takes no arguments: write it as a plain name"
                        )));
                    }
                    other => return Err(de::Error::unknown_variant(other, EXECUTIONS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("one execution per list item"));
                }
                Ok(e)
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn execution_default() -> Axis<RawExecution> {
    Axis::one(RawExecution::Standard)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Model")]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    /// The model family: `residual_mlp` (the seed's), `decoder`, `llama`, `gpt2` or `bert`.
    pub(super) kind: Option<RawKind>,
    /// A Hugging Face checkpoint folder (its `config.json` sets the model)
    /// or a GGUF file (its metadata does).
    pub(super) checkpoint: Option<PathBuf>,
    /// The command that downloads the checkpoint (`scripts/fetch-models`):
    /// until it has run, the scenario's trials are ignored, naming it.
    pub(super) fetched_by: Option<String>,
    /// Blocks (a checkpoint: its first N blocks).
    pub(super) layers: Option<usize>,
    /// Model width.
    pub(super) dim: Option<usize>,
    /// Feed-forward width.
    pub(super) hidden: Option<usize>,
    /// Attention heads.
    pub(super) heads: Option<usize>,
    /// `gelu` (exact, erf), `gelu_tanh`, `gelu_new` or `silu`; a list makes variants.
    pub(super) activation: Option<Axis<RawActivation>>,
    /// `layer_norm` or `rms_norm`; a list makes variants.
    pub(super) norm: Option<Axis<RawNorm>>,
    /// Norm epsilon.
    pub(super) eps: Option<f64>,
    /// Whether each residual_mlp block adds its input back.
    pub(super) residual: Option<Axis<bool>>,
    /// Rotary position embeddings (decoder).
    pub(super) rope: Option<Axis<bool>>,
    /// RoPE base.
    pub(super) rope_theta: Option<f64>,
    /// `manual` (written out: scores, softmax) or `fused` (the library's SDPA kernel).
    pub(super) attention: Option<Axis<RawAttention>>,
    /// Key/value heads (grouped-query attention, llama).
    pub(super) kv_heads: Option<usize>,
    /// Vocabulary size.
    pub(super) vocab: Option<usize>,
    /// Whether the LM head reuses the token embedding (llama).
    pub(super) tie_embeddings: Option<bool>,
    /// Biases on the q/k/v projections (llama: Qwen2-style).
    pub(super) attention_bias: Option<bool>,
    /// Learned position embeddings (gpt2, bert).
    pub(super) positions: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Init")]
#[serde(deny_unknown_fields)]
pub(super) struct RawInit {
    /// RNG seed of the generated weights.
    pub(super) seed: u64,
    /// Std of the linear weights (default 0.2).
    #[serde(default = "default_std")]
    pub(super) std: f64,
}

pub(super) fn default_std() -> f64 {
    0.2
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(rename = "Weights")]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeights {
    /// Generate the weights: `{ seed, std }`.
    pub(super) init: Option<RawInit>,
    /// A safetensors file of the weights, by PyTorch `state_dict` name.
    pub(super) file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Input")]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    /// Batch size; a list makes variants.
    pub(super) batch: Option<Axis<usize>>,
    /// Sequence length; a list makes variants.
    pub(super) seq: Option<Axis<usize>>,
    /// RNG seed of the N(0, 1) input.
    #[serde(default)]
    pub(super) seed: u64,
    /// A safetensors file holding the `[batch, seq, dim]` input.
    pub(super) file: Option<PathBuf>,
    /// The input's tensor name in `file`.
    pub(super) tensor: Option<String>,
    /// Token ids for a language model.
    pub(super) tokens: Option<RawTokens>,
}

/// `tokens: { seed, batch, seq }` (random ids below the vocabulary) or
/// `tokens: { file: ids.json }` (a JSON list of equally long id lists).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Tokens")]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    /// RNG seed of the random ids.
    #[serde(default)]
    pub(super) seed: u64,
    /// Sequences; a list makes variants.
    pub(super) batch: Option<Axis<usize>>,
    /// Ids per sequence; a list makes variants.
    pub(super) seq: Option<Axis<usize>>,
    /// A JSON list of id lists (relative to the scenario).
    pub(super) file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum RawStrategy {
    Full,
    Rows,
    KvCache { prefill: usize },
    Chunked { chunk: usize },
    Alone,
    Padded { to: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KvCacheArgs {
    pub(super) prefill: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChunkedArgs {
    pub(super) chunk: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PaddedArgs {
    pub(super) to: usize,
}

/// Strategy names, as scenario files write them.
pub const STRATEGIES: &[&str] = &["full", "rows", "kv_cache", "chunked", "alone", "padded"];

/// `full` / `rows` / `alone` as plain names, `kv_cache: { prefill: N }`,
/// `chunked: { chunk: N }` and `padded: { to: N }` as one-key mappings (serde_yaml 0.9 would want
/// `!kv_cache` tags for an enum; scenarios read better without).
impl<'de> Deserialize<'de> for RawStrategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStrategy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`full`, `rows`, `alone`, `kv_cache: { prefill: N }`, `chunked: { chunk: N }` or `padded: { to: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStrategy, E> {
                match v {
                    "full" => Ok(RawStrategy::Full),
                    "rows" => Ok(RawStrategy::Rows),
                    "alone" => Ok(RawStrategy::Alone),
                    "padded" => Err(E::custom(
                        "`padded` needs the length to pad to: `padded: { to: N }`",
                    )),
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
                    "padded" => RawStrategy::Padded {
                        to: map.next_value::<PaddedArgs>()?.to,
                    },
                    "full" | "rows" | "alone" => {
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

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Check")]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    /// The name in trial names (default: derived from the pairing).
    pub(super) name: Option<String>,
    /// Two strategies on the same backend: `[full, rows]`.
    pub(super) strategies: Option<Vec<String>>,
    /// A strategy on each backend against the f64 oracle.
    pub(super) oracle: Option<String>,
    /// A strategy on every pair of backends.
    pub(super) cross: Option<String>,
    /// A strategy against the same backend's run in a baseline file.
    pub(super) baseline: Option<String>,
    /// The baseline file (relative to the scenario).
    pub(super) file: Option<std::path::PathBuf>,
    /// What drift the check accepts.
    #[serde(default)]
    pub(super) bounds: Bounds,
    /// Bounds for one backend, by name (`candle`) or id (`candle-cpu`).
    #[serde(default)]
    pub(super) backend_bounds: BTreeMap<String, Bounds>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Scenario")]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    /// Free text, shown by `layerdrift run` and `list`.
    pub(super) description: Option<String>,
    /// The model.
    pub(super) model: RawModel,
    /// Where the weights come from (default: generated from seed 0).
    #[serde(default)]
    pub(super) weights: RawWeights,
    /// The input.
    pub(super) input: RawInput,
    /// Computation dtype: `f32` (default), `f64`, `f16`, `bf16`; a list makes variants.
    #[serde(default = "dtype_default")]
    pub(super) dtype: Axis<RawDType>,
    /// How the backends execute the model (default `standard`); a list makes variants.
    #[serde(default = "execution_default")]
    pub(super) execution: Axis<RawExecution>,
    /// The rows that leave a backend and are compared.
    pub(super) observe: Option<RawObserve>,
    /// The ways of computing the observed rows that the checks compare.
    pub(super) strategies: Vec<RawStrategy>,
    /// What is compared, and the drift it may show.
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
    /// Backend names to run (default: every one compiled in).
    pub(super) backends: Option<Vec<String>>,
    /// Devices to run on: `cpu`, `cuda`, `wgpu`.
    pub(super) devices: Option<Vec<String>>,
    /// Intra-op threads for libraries that let a caller fix them.
    pub(super) threads: Option<usize>,
    /// How heavy the scenario is.
    pub(super) slow: Option<RawSlow>,
    /// Where drift is born: op-level profiles, teacher-forced local error.
    #[serde(default)]
    pub(super) diagnose: RawDiagnose,
}

/// `slow: true | false | manual`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSlow {
    Flag(bool),
    Word(String),
}

/// `diagnose: { ops: all | [names], local: true }`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(rename = "Diagnose")]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiagnose {
    /// `all`, or op names: an op-level profile of each.
    pub(super) ops: Option<Axis<String>>,
    /// Local vs inherited error per layer (teacher forcing; residual_mlp).
    #[serde(default)]
    pub(super) local: bool,
}

pub(super) fn dtype_default() -> Axis<RawDType> {
    Axis::one(RawDType::F32)
}

/// `observe:` as written: `last`, `decoded`, `[[batch, pos], …]` (negative
/// counts from the end), or `{ batch: <index or all>, last: <count> }`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum RawObserve {
    Last,
    Decoded,
    Rows(Vec<[i64; 2]>),
    Window(RawWindow),
}

#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[schemars(rename = "Window")]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    /// A batch index, or `all`.
    pub(super) batch: Option<BatchSel>,
    /// The last N positions of each chosen sequence.
    pub(super) last: Option<usize>,
}

/// `batch: all` or `batch: <index>`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum BatchSel {
    All,
    Index(i64),
}

impl<'de> Deserialize<'de> for BatchSel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchSel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a batch index (negative counts from the end) or `all`")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSel, E> {
                Ok(BatchSel::Index(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BatchSel, E> {
                i64::try_from(v)
                    .map(BatchSel::Index)
                    .map_err(|_| E::custom(format!("batch index {v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSel, E> {
                match v {
                    "all" => Ok(BatchSel::All),
                    other => Err(E::unknown_variant(other, &["all"])),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawObserve {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObserve;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`last`, `decoded`, a list of `[batch, position]` pairs, or `{ batch: <index or all>, last: <count> }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawObserve, E> {
                match v {
                    "last" => Ok(RawObserve::Last),
                    "decoded" => Ok(RawObserve::Decoded),
                    other => Err(E::unknown_variant(other, &["last", "decoded"])),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawObserve, A::Error> {
                let mut rows = Vec::new();
                while let Some(pair) = seq.next_element::<[i64; 2]>()? {
                    rows.push(pair);
                }
                Ok(RawObserve::Rows(rows))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawObserve, A::Error> {
                RawWindow::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawObserve::Window)
            }
        }
        d.deserialize_any(V)
    }
}

// JSON Schema (`scenarios/scenario.schema.json`, `layerdrift schema`) of the
// shapes whose serde impls are written by hand above: each says in schema
// terms what its visitor accepts, so an editor completes and checks them.

/// A one-key mapping `{ key: { arg: <integer ≥ min> } }` with nothing else.
fn one_key(key: &str, arg: &str, min: u64, description: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": description,
        "properties": { key: {
            "type": "object",
            "properties": { arg: { "type": "integer", "minimum": min } },
            "required": [arg],
            "additionalProperties": false,
        } },
        "required": [key],
        "additionalProperties": false,
    })
}

/// A one-key mapping whose argument may be left out
/// (`{ fixed_shape: { tile: N } }`, `{ fixed_shape: {} }`).
fn one_key_optional(key: &str, arg: &str, description: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": description,
        "properties": { key: {
            "type": ["object", "null"],
            "properties": { arg: { "type": ["integer", "null"], "minimum": 0 } },
            "additionalProperties": false,
        } },
        "required": [key],
        "additionalProperties": false,
    })
}

impl<T: JsonSchema> JsonSchema for Axis<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Axis_of_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let one = g.subschema_for::<T>();
        json_schema!({
            "description": "One value, or a list of values (each a variant of the scenario's grid).",
            "anyOf": [one, { "type": "array", "items": one }],
        })
    }
}

impl JsonSchema for RawExecution {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Execution".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How a backend executes the model: `standard` (its kernels on whole tensors), `batch_invariant` (every row alone through row-mixing ops), `fixed_shape` (fixed tiles of rows), `pinned` (every call padded to one certified row count).",
            "anyOf": [
                { "type": "string", "enum": EXECUTIONS },
                one_key_optional("fixed_shape", "tile", "`fixed_shape: { tile: N }`: tiles of N rows (default 64)."),
                one_key_optional("pinned", "anchor", "`pinned: { anchor: N }`: every call padded to N rows' kernel class (default 64)."),
            ],
        })
    }
}

impl JsonSchema for RawStrategy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Strategy".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How the observed rows are computed: `full` (the whole input, then slice), `rows` (only the observed rows), `alone` (an encoder's sequences one at a time), `kv_cache`, `chunked`, `padded`.",
            "anyOf": [
                { "type": "string", "enum": ["full", "rows", "alone"] },
                one_key("kv_cache", "prefill", 1, "`kv_cache: { prefill: N }`: prefill N positions, then decode one at a time."),
                one_key("chunked", "chunk", 1, "`chunked: { chunk: N }`: the sequence in chunks of N through the KV cache."),
                one_key("padded", "to", 1, "`padded: { to: N }`: an encoder's batch padded to N positions, padding masked."),
            ],
        })
    }
}

impl JsonSchema for BatchSel {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BatchSelection".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A batch index (negative counts from the end) or `all`.",
            "anyOf": [{ "type": "integer" }, { "const": "all" }],
        })
    }
}

impl JsonSchema for RawObserve {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Observe".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let window = g.subschema_for::<RawWindow>();
        json_schema!({
            "description": "The rows that leave a backend: `last` (each sequence's last position), `decoded` (a decoder's decoded positions), `[[batch, position], …]` (negative counts from the end), or `{ batch: <index or all>, last: <count> }`.",
            "anyOf": [
                { "type": "string", "enum": ["last", "decoded"] },
                { "type": "array", "items": {
                    "type": "array", "items": { "type": "integer" }, "minItems": 2, "maxItems": 2,
                } },
                window,
            ],
        })
    }
}

impl JsonSchema for RawSlow {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Slow".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "When `cargo test` runs the scenario: `false` (every run, the default), `true` (with LAYERDRIFT_SLOW=1; CI runs them), `manual` (only with LAYERDRIFT_SLOW=manual).",
            "anyOf": [{ "type": "boolean" }, { "const": "manual" }],
        })
    }
}

/// The JSON Schema (draft 7) of a scenario file, generated from the types
/// serde reads it into: what `scenarios/scenario.schema.json` holds.
pub fn schema() -> serde_json::Value {
    let g = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut s = g.into_root_schema_for::<RawScenario>();
    s.insert("title".into(), "layerdrift scenario".into());
    s.insert(
        "description".into(),
        "A layerdrift scenario: a model, its weights and input, the strategies that compute the observed rows, and the checks that bound their drift. Reference: docs/scenario-reference.md. Generated by `layerdrift schema`.".into(),
    );
    s.to_value()
}

/// Whether `text` has the shapes serde reads (every key known, every value
/// of the right type), before any value is checked: the part of parsing a
/// schema can express, for the test that holds the schema to the parser.
pub fn syntax_check(text: &str) -> Result<(), String> {
    serde_yaml::from_str::<RawScenario>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
