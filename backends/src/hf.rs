//! Hugging Face checkpoint folders: `config.json` beside `model.safetensors`
//! (or a sharded `model.safetensors.index.json`), read into a model spec and
//! its weights.
//!
//! The architecture comes from `architectures` (or `model_type`); each model
//! kind parses its own fields (`LlamaSpec::from_hf_config`,
//! `Gpt2Spec::from_hf_config`). Weights are read with their Hugging Face
//! names and widened to f32 on the host (F16 and BF16 exactly); loading is
//! strict like `load_state_dict(strict=True)`: a missing, misshaped or
//! unexpected tensor is an error naming it. Buffers that are not parameters
//! (GPT-2's `attn.bias` masks, `rotary_emb.inv_freq`) and a tied
//! `lm_head.weight` equal to the embedding are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::host::HostTensor;
use crate::model::{Gpt2Spec, LlamaSpec, ModelSpec};
use crate::weights::{Weights, WeightsError, read_safetensors};

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

/// Architectures that read as each kind.
pub const ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "llama"),
    ("GPT2LMHeadModel", "gpt2"),
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
        let n: usize = self.stored.values().sum();
        let parts: Vec<String> = self
            .stored
            .iter()
            .map(|(d, c)| format!("{d} {c}"))
            .collect();
        let widened = self.stored.keys().any(|d| d != "F32");
        format!(
            "{n} tensors ({}){}",
            parts.join(", "),
            if widened {
                ", widened exactly to f32 on the host"
            } else {
                ""
            }
        )
    }
}

/// Reads `dir/config.json` into a model spec; with `layers`, only the
/// first `layers` blocks (an error if the model has fewer).
pub fn read_config(dir: &Path, layers: Option<usize>) -> Result<ModelSpec, HfError> {
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
    let arch = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .map(str::to_string)
        .or_else(|| {
            c.get("model_type")
                .and_then(|m| m.as_str())
                .map(|m| match m {
                    "llama" => "LlamaForCausalLM".to_string(),
                    "mistral" => "MistralForCausalLM".to_string(),
                    "qwen2" => "Qwen2ForCausalLM".to_string(),
                    "gpt2" => "GPT2LMHeadModel".to_string(),
                    other => other.to_string(),
                })
        })
        .ok_or_else(|| config("no `architectures` (or `model_type`)".into()))?;
    let kind = ARCHITECTURES
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
            config(format!(
                "architecture `{arch}` is not supported; layerdrift reads {}",
                known.join(", ")
            ))
        })?;
    let mut model = match kind {
        "llama" => ModelSpec::Llama(LlamaSpec::from_hf_config(&c, &arch).map_err(config)?),
        _ => ModelSpec::Gpt2(Gpt2Spec::from_hf_config(&c).map_err(config)?),
    };
    if let Some(n) = layers {
        let have = model.layers();
        if n == 0 || n > have {
            return Err(config(format!(
                "`layers: {n}` beside the checkpoint: the model has {have} blocks (choose 1..={have})"
            )));
        }
        model = model.with_layers(n);
    }
    Ok(model)
}

/// The safetensors files of `dir`: `model.safetensors`, or the shards the
/// index names (each once, in order).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
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

/// Whether `name` is a buffer, not a parameter: skipped when present.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// The block index of a per-layer tensor name (`model.layers.3.…`,
/// `transformer.h.3.…`).
fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "h" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// Reads the checkpoint folder `dir` (with `layers`, only the first blocks).
pub fn load(dir: &Path, layers: Option<usize>) -> Result<Checkpoint, HfError> {
    let model = read_config(dir, layers)?;
    let files = weight_files(dir)?;
    let mut all: BTreeMap<String, HostTensor> = BTreeMap::new();
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        for (name, (t, dtype)) in read_safetensors_typed(f)? {
            stored.insert(name.clone(), dtype);
            all.insert(name, t);
        }
    }
    // GPT2Model checkpoints name tensors without the `transformer.` prefix.
    if matches!(model, ModelSpec::Gpt2(_)) && !all.keys().any(|k| k.starts_with("transformer.")) {
        all = all
            .into_iter()
            .map(|(k, v)| {
                let k = if k == "lm_head.weight" {
                    k
                } else {
                    format!("transformer.{k}")
                };
                (k, v)
            })
            .collect();
        stored = stored
            .into_iter()
            .map(|(k, v)| {
                (
                    if k == "lm_head.weight" {
                        k
                    } else {
                        format!("transformer.{k}")
                    },
                    v,
                )
            })
            .collect();
    }
    let params: std::collections::BTreeSet<String> =
        model.parameters().into_iter().map(|p| p.name).collect();
    let keep = model.layers();
    let mut unexpected = Vec::new();
    all.retain(|name, t| {
        if params.contains(name) {
            return true;
        }
        let skipped_layer = layer_of(name).is_some_and(|l| l >= keep);
        let tied_head = name == "lm_head.weight"
            && ["model.embed_tokens.weight", "transformer.wte.weight"]
                .iter()
                .any(|e| !params.contains("lm_head.weight") && params.contains(*e))
            && t.shape.len() == 2;
        if !(is_buffer(name) || skipped_layer || tied_head) {
            unexpected.push(name.clone());
        }
        false
    });
    if let Some(first) = unexpected.first() {
        return Err(HfError::Unexpected {
            dir: dir.into(),
            kind: model.kind(),
            first: first.clone(),
            count: unexpected.len(),
        });
    }
    let mut counts = BTreeMap::new();
    for name in all.keys() {
        if let Some(d) = stored.get(name) {
            *counts.entry(d.clone()).or_insert(0) += 1;
        }
    }
    let weights = Weights::from_tensors(&model, all, dir)?;
    Ok(Checkpoint {
        model,
        weights,
        stored: counts,
    })
}

/// [`read_safetensors`] keeping each tensor's stored dtype.
fn read_safetensors_typed(
    path: &Path,
) -> Result<BTreeMap<String, (HostTensor, String)>, WeightsError> {
    let dtypes = safetensors_dtypes(path)?;
    Ok(read_safetensors(path)?
        .into_iter()
        .map(|(n, t)| {
            let d = dtypes.get(&n).cloned().unwrap_or_else(|| "F32".into());
            (n, (t, d))
        })
        .collect())
}

/// Each tensor's stored dtype, from the file's header only.
pub fn safetensors_dtypes(path: &Path) -> Result<BTreeMap<String, String>, WeightsError> {
    let header = safetensors_header(path)?;
    Ok(header.into_iter().map(|(n, (d, _))| (n, d)).collect())
}

/// Each tensor's dtype and shape, read from the header of a safetensors
/// file alone (cheap: what `validate` checks before anything is loaded).
pub fn safetensors_header(
    path: &Path,
) -> Result<BTreeMap<String, (String, Vec<usize>)>, WeightsError> {
    use std::io::Read;
    let io = |source| WeightsError::Io {
        path: path.into(),
        source,
    };
    let format = |message: String| WeightsError::Format {
        path: path.into(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| format(format!("{len} bytes: too short for a safetensors header")))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > len {
        return Err(format(format!(
            "the header claims {n} bytes but the file has {len} (truncated, or not safetensors)"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(io)?;
    let v: serde_json::Value = serde_json::from_slice(&buf)
        .map_err(|e| format(format!("the header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format("the header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    let mut end = 0u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format(format!("tensor `{name}` has no dtype")))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|s| {
                s.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| format(format!("tensor `{name}` has no shape")))?;
        if let Some(o) = t.get("data_offsets").and_then(|o| o.as_array())
            && let Some(e) = o.get(1).and_then(|e| e.as_u64())
        {
            end = end.max(e);
        }
        out.insert(name.clone(), (dtype.to_string(), shape));
    }
    if 8 + n + end > len {
        return Err(format(format!(
            "the tensors end at byte {} but the file has {len} (truncated)",
            8 + n + end
        )));
    }
    Ok(out)
}
