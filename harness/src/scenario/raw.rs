//! The serde shapes of a scenario file: what YAML can say, before any
//! value is checked. `deny_unknown_fields` everywhere, so a typo is an error
//! with a position (and a suggestion) rather than an ignored key.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

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

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawKind {
    ResidualMlp,
    Decoder,
    Llama,
    Gpt2,
    Bert,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawActivation {
    Gelu,
    GeluTanh,
    Silu,
    GeluNew,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawNorm {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAttention {
    Manual,
    Fused,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) kind: Option<RawKind>,
    /// A Hugging Face checkpoint folder (its `config.json` sets the model)
    /// or a GGUF file (its metadata does).
    pub(super) checkpoint: Option<PathBuf>,
    /// The command that downloads the checkpoint (`scripts/fetch-models`):
    /// until it has run, the scenario's trials are ignored, naming it.
    pub(super) fetched_by: Option<String>,
    pub(super) layers: Option<usize>,
    pub(super) dim: Option<usize>,
    pub(super) hidden: Option<usize>,
    pub(super) heads: Option<usize>,
    pub(super) activation: Option<Axis<RawActivation>>,
    pub(super) norm: Option<Axis<RawNorm>>,
    pub(super) eps: Option<f64>,
    pub(super) residual: Option<Axis<bool>>,
    pub(super) rope: Option<Axis<bool>>,
    pub(super) rope_theta: Option<f64>,
    pub(super) attention: Option<Axis<RawAttention>>,
    pub(super) kv_heads: Option<usize>,
    pub(super) vocab: Option<usize>,
    pub(super) tie_embeddings: Option<bool>,
    pub(super) attention_bias: Option<bool>,
    pub(super) positions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInit {
    pub(super) seed: u64,
    #[serde(default = "default_std")]
    pub(super) std: f64,
}

pub(super) fn default_std() -> f64 {
    0.2
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeights {
    pub(super) init: Option<RawInit>,
    pub(super) file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) batch: Option<Axis<usize>>,
    pub(super) seq: Option<Axis<usize>>,
    #[serde(default)]
    pub(super) seed: u64,
    pub(super) file: Option<PathBuf>,
    pub(super) tensor: Option<String>,
    /// Token ids for a language model.
    pub(super) tokens: Option<RawTokens>,
}

/// `tokens: { seed, batch, seq }` (random ids below the vocabulary) or
/// `tokens: { file: ids.json }` (a JSON list of equally long id lists).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    #[serde(default)]
    pub(super) seed: u64,
    pub(super) batch: Option<Axis<usize>>,
    pub(super) seq: Option<Axis<usize>>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) name: Option<String>,
    pub(super) strategies: Option<Vec<String>>,
    pub(super) oracle: Option<String>,
    pub(super) cross: Option<String>,
    pub(super) baseline: Option<String>,
    pub(super) file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(super) bounds: Bounds,
    #[serde(default)]
    pub(super) backend_bounds: BTreeMap<String, Bounds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) description: Option<String>,
    pub(super) model: RawModel,
    #[serde(default)]
    pub(super) weights: RawWeights,
    pub(super) input: RawInput,
    #[serde(default = "dtype_default")]
    pub(super) dtype: Axis<RawDType>,
    #[serde(default = "execution_default")]
    pub(super) execution: Axis<RawExecution>,
    pub(super) observe: Option<RawObserve>,
    pub(super) strategies: Vec<RawStrategy>,
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
    pub(super) backends: Option<Vec<String>>,
    pub(super) devices: Option<Vec<String>>,
    pub(super) threads: Option<usize>,
    pub(super) slow: Option<RawSlow>,
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiagnose {
    pub(super) ops: Option<Axis<String>>,
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

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) batch: Option<BatchSel>,
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
