//! Hugging Face checkpoint folders: `config.json` beside `model.safetensors`
//! (or a sharded `model.safetensors.index.json`), read into a model spec and
//! its weights — or a GGUF file (`checkpoint: model.gguf`, read by
//! [`crate::gguf`]: the metadata gives the spec, the tensors are dequantised
//! to f32 on the host).
//!
//! The architecture comes from `architectures` (or `model_type`); each model
//! kind parses its own fields (`LlamaSpec::from_hf_config`,
//! `Gpt2Spec::from_hf_config`). Weights are read with their Hugging Face
//! names and widened to f32 on the host (F16 and BF16 exactly); loading is
//! strict like `load_state_dict(strict=True)`: a missing, misshaped or
//! unexpected tensor is an error naming it. Buffers that are not parameters
//! (GPT-2's `attn.bias` masks, `rotary_emb.inv_freq`, BERT's I64
//! `position_ids`), a tied model's `lm_head.weight` equal to its embedding
//! and `BertModel`'s unused `pooler` are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::gguf::{Gguf, GgufError, is_gguf};
use crate::host::HostTensor;
use crate::model::{BertSpec, Gpt2Spec, LlamaSpec, ModelSpec};
use crate::weights::{
    Weights, WeightsError, check_shapes, read_safetensors_stored, readable_header,
};

/// What can go wrong reading a checkpoint folder.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` is not valid, or describes what layerdrift cannot run.
    #[error("{path}: {message}")]
    Config {
        /// The `config.json`.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The folder holds no weights layerdrift can read.
    #[error(
        "{dir}: no model.safetensors or model.safetensors.index.json (save with `save_pretrained(dir, safe_serialization=True)`)"
    )]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// The shard index is not valid.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weights file is unreadable, or a tensor is missing or misshaped.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A GGUF file is unreadable, or describes what layerdrift cannot run.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Tensors the model does not use.
    #[error(
        "{dir}: {count} unexpected tensor(s), e.g. `{first}`: the checkpoint holds parameters a {kind} model with this config.json does not have (another architecture, or a config.json that does not match the weights)"
    )]
    Unexpected {
        /// The folder.
        dir: PathBuf,
        /// The model kind.
        kind: &'static str,
        /// The first unexpected name.
        first: String,
        /// How many.
        count: usize,
    },
}

/// One architecture layerdrift reads: its `architectures` name, its
/// `model_type`, and how its `config.json` becomes a spec.
pub struct Architecture {
    /// The `architectures` entry (`LlamaForCausalLM`).
    pub name: &'static str,
    /// The `model_type` (`llama`), read when `architectures` is absent.
    pub model_type: &'static str,
    /// The spec the config describes; the error names the field.
    pub spec: fn(&serde_json::Value) -> Result<ModelSpec, String>,
}

/// Every architecture layerdrift reads.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "LlamaForCausalLM",
        model_type: "llama",
        spec: |c| LlamaSpec::from_hf_config(c, false).map(ModelSpec::Llama),
    },
    Architecture {
        name: "MistralForCausalLM",
        model_type: "mistral",
        spec: |c| LlamaSpec::from_hf_config(c, false).map(ModelSpec::Llama),
    },
    Architecture {
        name: "Qwen2ForCausalLM",
        model_type: "qwen2",
        // Qwen2 always has biases on its Q/K/V projections.
        spec: |c| LlamaSpec::from_hf_config(c, true).map(ModelSpec::Llama),
    },
    Architecture {
        name: "GPT2LMHeadModel",
        model_type: "gpt2",
        spec: |c| Gpt2Spec::from_hf_config(c).map(ModelSpec::Gpt2),
    },
    Architecture {
        name: "BertModel",
        model_type: "bert",
        spec: |c| BertSpec::from_hf_config(c).map(ModelSpec::Bert),
    },
];

/// A checkpoint folder read into memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model `config.json` describes (with `layers` applied).
    pub model: ModelSpec,
    /// Its weights, as f32 on the host.
    pub weights: Weights,
    /// How many of the used tensors were stored in each dtype
    /// (`F32`, `BF16`, `F16`): what was widened to f32.
    pub stored: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// One line saying how the weights were read, e.g. `24 tensors (F32 18,
    /// BF16 6), widened to f32 on the host`.
    pub fn describe(&self) -> String {
        describe_stored(&self.stored)
    }
}

/// [`Checkpoint::describe`] of stored dtype counts (what [`inspect`] returns).
pub fn describe_stored(stored: &BTreeMap<String, usize>) -> String {
    let n: usize = stored.values().sum();
    let parts: Vec<String> = stored.iter().map(|(d, c)| format!("{d} {c}")).collect();
    let quantised = stored.keys().any(|d| d.starts_with('Q'));
    let widened = stored.keys().any(|d| d != "F32");
    format!(
        "{n} tensors ({}){}",
        parts.join(", "),
        if quantised {
            ", dequantised to f32 on the host"
        } else if widened {
            ", widened exactly to f32 on the host"
        } else {
            ""
        }
    )
}

/// Reads `dir/config.json` (or a GGUF file's metadata) into a model spec;
/// with `layers`, only the first `layers` blocks (an error if the model has
/// fewer).
pub fn read_config(dir: &Path, layers: Option<usize>) -> Result<ModelSpec, HfError> {
    if is_gguf(dir) {
        return open_gguf(dir, layers).map(|(_, model)| model);
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| HfError::Io {
        path: path.clone(),
        source,
    })?;
    let config = |message: String| HfError::Config {
        path: path.clone(),
        message,
    };
    let c: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| config(format!("not valid JSON: {e}")))?;
    let field = |k: &str| c.get(k).and_then(|a| a.as_str());
    let named = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    let arch = match (named, field("model_type")) {
        (Some(n), _) => ARCHITECTURES.iter().find(|a| a.name == n).ok_or(n),
        (None, Some(t)) => ARCHITECTURES.iter().find(|a| a.model_type == t).ok_or(t),
        (None, None) => return Err(config("no `architectures` (or `model_type`)".into())),
    }
    .map_err(|found| {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
        config(format!(
            "architecture `{found}` is not supported; layerdrift reads {}",
            known.join(", ")
        ))
    })?;
    let model = (arch.spec)(&c).map_err(config)?;
    cut(model, layers, &path)
}

/// `model`'s first `layers` blocks (an error naming `path` if it has fewer).
fn cut(model: ModelSpec, layers: Option<usize>, path: &Path) -> Result<ModelSpec, HfError> {
    let Some(n) = layers else {
        return Ok(model);
    };
    let have = model.layers();
    if n == 0 || n > have {
        return Err(HfError::Config {
            path: path.into(),
            message: format!(
                "`layers: {n}` beside the checkpoint: the model has {have} blocks (choose 1..={have})"
            ),
        });
    }
    Ok(model.with_layers(n))
}

/// The safetensors files of `dir`: `model.safetensors`, or the shards the
/// index names (each once, in order).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    if is_gguf(dir) {
        return Ok(vec![dir.into()]);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(HfError::NoWeights { dir: dir.into() });
    }
    let bad = |message: String| HfError::Index {
        path: index.clone(),
        message,
    };
    let text = std::fs::read_to_string(&index).map_err(|source| HfError::Io {
        path: index.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{name}` maps to {file}, not a file name")))?;
        if file.contains('/') || file.contains("..") {
            return Err(bad(format!("shard `{file}` is not a file in the folder")));
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(files)
}

/// Whether `name` is a buffer, not a parameter: skipped when present, even
/// in a dtype layerdrift does not read (BERT's I64 `position_ids`; a
/// parameter in such a dtype is refused, by name).
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || name.ends_with("embeddings.position_ids")
        || name.ends_with("embeddings.token_type_ids")
}

/// Whether `name` belongs to a head the model does not run: `BertModel`'s
/// `pooler` (a tanh dense over `[CLS]`), which sentence-transformers' mean
/// pooling does not use.
fn unused_head(model: &ModelSpec, name: &str) -> bool {
    model.encoder() && name.starts_with("pooler.")
}

/// The block index of a per-layer tensor name (`model.layers.3.…`,
/// `transformer.h.3.…`).
fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "h" || p == "layer" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// Reads the checkpoint folder `dir` (with `layers`, only the first blocks).
pub fn load(dir: &Path, layers: Option<usize>) -> Result<Checkpoint, HfError> {
    if is_gguf(dir) {
        let (g, model) = open_gguf(dir, layers)?;
        let mapped = map_gguf(&g, &model)?;
        let weights = Weights::from_tensors(&model, mapped.read()?, dir)?;
        return Ok(Checkpoint {
            model,
            weights,
            stored: mapped.stored(),
        });
    }
    let model = read_config(dir, layers)?;
    // Name → (tensor, stored dtype), over every shard.
    let mut all: BTreeMap<String, (HostTensor, String)> = BTreeMap::new();
    for f in weight_files(dir)? {
        all.extend(read_safetensors_stored(&f, &|n| is_buffer(n))?);
    }
    // A tied head saved anyway must equal the embedding, value for value.
    let (tensors, stored) = by_dtype(select(dir, &model, all, |lm, emb| lm.0 == emb.0)?);
    let weights = Weights::from_tensors(&model, tensors, dir)?;
    Ok(Checkpoint {
        model,
        weights,
        stored,
    })
}

/// What [`load`] would refuse, from `config.json` and the safetensors
/// headers alone (no tensor data is read): the architecture, every name,
/// dtype and shape. `validate` runs it; it returns the model and the stored
/// dtypes' counts.
pub fn inspect(
    dir: &Path,
    layers: Option<usize>,
) -> Result<(ModelSpec, BTreeMap<String, usize>), HfError> {
    if is_gguf(dir) {
        let (g, model) = open_gguf(dir, layers)?;
        let stored = map_gguf(&g, &model)?.stored();
        return Ok((model, stored));
    }
    let model = read_config(dir, layers)?;
    // Name → (shape, stored dtype), as `load` keeps (tensor, stored dtype).
    let mut all: BTreeMap<String, (Vec<usize>, String)> = BTreeMap::new();
    for f in weight_files(dir)? {
        all.extend(
            readable_header(&f, &|n| is_buffer(n))?
                .into_iter()
                .map(|(name, (dtype, shape))| (name, (shape, dtype))),
        );
    }
    // The header cannot tell a tied head's values: its shape must match
    // (`load` compares the values).
    let (shapes, stored) = by_dtype(select(dir, &model, all, |lm, emb| lm.0 == emb.0)?);
    check_shapes(&model, &shapes, dir)?;
    Ok((model, stored))
}

/// Splits `name → (value, stored dtype)` into the values and the count of
/// tensors per stored dtype.
fn by_dtype<T>(
    all: BTreeMap<String, (T, String)>,
) -> (BTreeMap<String, T>, BTreeMap<String, usize>) {
    let (mut values, mut stored) = (BTreeMap::new(), BTreeMap::new());
    for (name, (v, dtype)) in all {
        *stored.entry(dtype).or_insert(0) += 1;
        values.insert(name, v);
    }
    (values, stored)
}

/// The tensors of `all` that `model` uses, under its names (GPT2Model's
/// unprefixed names get `transformer.`); buffers, blocks beyond `layers:`
/// and a tied `lm_head.weight` (`same_as_embedding`) are dropped, anything
/// else unused is an [`HfError::Unexpected`].
fn select<T>(
    dir: &Path,
    model: &ModelSpec,
    mut all: BTreeMap<String, T>,
    same_as_embedding: impl Fn(&T, &T) -> bool,
) -> Result<BTreeMap<String, T>, HfError> {
    if matches!(model, ModelSpec::Gpt2(_)) && !all.keys().any(|k| k.starts_with("transformer.")) {
        all = all
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                LM_HEAD => (k, v),
                _ => (format!("transformer.{k}"), v),
            })
            .collect();
    }
    let params: std::collections::BTreeSet<String> =
        model.parameters().into_iter().map(|p| p.name).collect();
    let tied_to = model.plan().and_then(|p| p.head).map(|h| h.lm_head);
    let tied_head = match (all.get(LM_HEAD), tied_to) {
        (Some(lm), Some(emb)) if !params.contains(LM_HEAD) => {
            all.get(emb).is_some_and(|e| same_as_embedding(lm, e))
        }
        _ => false,
    };
    let keep = model.layers();
    let mut unexpected = Vec::new();
    all.retain(|name, _| {
        if params.contains(name) {
            return true;
        }
        let skipped_layer = layer_of(name).is_some_and(|l| l >= keep);
        if !(is_buffer(name)
            || skipped_layer
            || unused_head(model, name)
            || (tied_head && name == LM_HEAD))
        {
            unexpected.push(name.clone());
        }
        false
    });
    match unexpected.first() {
        Some(first) => Err(HfError::Unexpected {
            dir: dir.into(),
            kind: model.kind(),
            first: first.clone(),
            count: unexpected.len(),
        }),
        None => Ok(all),
    }
}

/// The GGUF file at `file`, read once, and the model its metadata gives
/// (with `layers`, only the first blocks).
fn open_gguf(file: &Path, layers: Option<usize>) -> Result<(Gguf, ModelSpec), HfError> {
    let g = Gguf::open(file)?;
    let model = cut(ModelSpec::Llama(g.model()?), layers, file)?;
    Ok((g, model))
}

/// `g`'s tensors under `model`'s names, each one the model uses and every
/// shape checked — what `load` reads and `inspect` describes.
fn map_gguf<'a>(g: &'a Gguf, model: &ModelSpec) -> Result<crate::gguf::Mapped<'a>, HfError> {
    let mapped = g.map(model)?;
    refuse_unused(&g.path, model, mapped.tensors.keys().cloned().collect())?;
    check_shapes(model, &mapped.shapes(), &g.path)?;
    Ok(mapped)
}

/// A GGUF file's mapped tensors that `model` does not use (a K bias
/// without a Q bias, say) are refused, as [`select`] refuses them.
fn refuse_unused(
    file: &Path,
    model: &ModelSpec,
    names: std::collections::BTreeSet<String>,
) -> Result<(), HfError> {
    let params: std::collections::BTreeSet<String> =
        model.parameters().into_iter().map(|p| p.name).collect();
    let unused: Vec<&String> = names.difference(&params).collect();
    match unused.first() {
        Some(first) => Err(HfError::Unexpected {
            dir: file.into(),
            kind: model.kind(),
            first: (*first).clone(),
            count: unused.len(),
        }),
        None => Ok(()),
    }
}

/// The output projection's name where the head is not tied.
const LM_HEAD: &str = "lm_head.weight";
