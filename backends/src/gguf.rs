//! GGUF files (llama.cpp's format, versions 2 and 3): the header, the
//! metadata (the architecture's hyper-parameters come from it), the tensor
//! table, and the tensors dequantised to f32 once on the host, so every
//! backend gets the same f32 arrays.
//!
//! Read: F32, F16, BF16 (exact), Q8_0, Q4_0 and Q4_1 (each block's scale
//! and minimum are f16; an element is `q·d` or `q·d + m`, computed in f32
//! unfused, as gguf-py's `dequantize` does). Any other tensor type is refused
//! with the tensor's name and the type's name.
//!
//! Only the `llama` architecture is mapped to a model (SmolLM, Llama 2,
//! Mistral-style files): tensors get their Hugging Face names
//! (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`), and
//! llama.cpp's per-head row permutation of Q and K (its converter interleaves
//! the two rotary halves) is undone, so the rotate-half RoPE of
//! [`crate::model::LlamaSpec`] applies unchanged.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::host::HostTensor;
use crate::model::{AttentionForm, LlamaSpec, ModelSpec};

/// What can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a GGUF file, a version we do not read, or a header that ends early.
    #[error("{path}: not a readable GGUF file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The metadata does not describe a model layerdrift runs.
    #[error("{path}: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the metadata key.
        message: String,
    },
    /// A tensor cannot be read: an unknown type, a bad shape, data past the
    /// end of the file.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's GGUF name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// FLOAT32 or FLOAT64.
    Float(f64),
    /// BOOL.
    Bool(bool),
    /// STRING.
    Str(String),
    /// ARRAY (of any one type).
    Array(Vec<Value>),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(u) => Some(u),
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Uint(u) => Some(u as f64),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A GGML tensor type layerdrift reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32: an f16 scale and 32 four-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 32 four-bit values.
    Q4_1,
}

impl TensorType {
    /// The type of GGML type id `id`, or its name when layerdrift cannot
    /// read it.
    pub fn from_id(id: u32) -> Result<TensorType, String> {
        Ok(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            30 => TensorType::Bf16,
            other => return Err(ggml_type_name(other)),
        })
    }

    /// The GGML id.
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q4_1 => 3,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
        }
    }

    /// The name llama.cpp gives it (`Q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
        }
    }

    /// Elements per block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::Bf16 => (1, 2),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
        }
    }

    /// Whether reading it loses nothing (a float type) or undoes a
    /// quantisation.
    pub fn is_quantised(self) -> bool {
        self.block().0 > 1
    }

    /// Bytes that `elements` elements take, or why they cannot be stored.
    fn bytes(self, elements: u64) -> Result<u64, String> {
        let (per, bytes) = self.block();
        if !elements.is_multiple_of(per as u64) {
            return Err(format!(
                "{elements} elements is not a whole number of {} blocks of {per}",
                self.name()
            ));
        }
        (elements / per as u64)
            .checked_mul(bytes as u64)
            .ok_or_else(|| "its size overflows".into())
    }

    /// Dequantises `raw` (exactly `bytes(n)` long) into f32.
    fn dequantise(self, raw: &[u8]) -> Vec<f32> {
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        match self {
            TensorType::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            TensorType::F16 => raw.chunks_exact(2).map(f16).collect(),
            TensorType::Bf16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            TensorType::Q8_0 => raw
                .chunks_exact(34)
                .flat_map(|b| {
                    let d = f16(&b[..2]);
                    b[2..].iter().map(move |&q| f32::from(q as i8) * d)
                })
                .collect(),
            TensorType::Q4_0 | TensorType::Q4_1 => {
                let with_min = self == TensorType::Q4_1;
                let mut out = Vec::with_capacity(raw.len() / self.block().1 * 32);
                for b in raw.chunks_exact(self.block().1) {
                    let d = f16(&b[..2]);
                    let (m, qs) = if with_min {
                        (f16(&b[2..4]), &b[4..])
                    } else {
                        (0.0, &b[2..])
                    };
                    // Low nibbles are elements 0..16, high nibbles 16..32.
                    let value = |q: u8| {
                        if with_min {
                            f32::from(q) * d + m
                        } else {
                            (f32::from(q) - 8.0) * d
                        }
                    };
                    out.extend(qs.iter().map(|&q| value(q & 0x0F)));
                    out.extend(qs.iter().map(|&q| value(q >> 4)));
                }
                out
            }
        }
    }
}

/// The name of any GGML type id (for messages about the ones not read).
fn ggml_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    match NAMES.get(id as usize) {
        Some(n) => format!("type {n} (GGML id {id})"),
        None => format!("GGML type id {id}"),
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The shape, outermost first (GGUF stores the innermost first).
    pub shape: Vec<usize>,
    /// How it is stored.
    pub ty: TensorType,
    /// Its offset from the start of the data section.
    pub offset: u64,
}

/// A GGUF file's header: metadata and tensor table (no tensor data).
#[derive(Clone, Debug)]
pub struct Gguf {
    /// The file.
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Every metadata key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

/// Reads little-endian fields from a header, refusing lengths the file
/// cannot hold (a corrupt length would otherwise allocate gigabytes).
struct Reader<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(format!(
                "{what} needs {n} bytes at byte {} but the file has {} (truncated?)",
                self.pos, self.len
            ));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what} at byte {}: {e}", self.pos))?;
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let b = self.bytes(N as u64, what)?;
        Ok(b.try_into().expect("read exactly N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::Uint(u64::from(self.array::<1>(what)?[0])),
            1 => Value::Int(i64::from(self.array::<1>(what)?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array(what)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(what)?))),
            4 => Value::Uint(u64::from(self.u32(what)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(what)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(what)?))),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 if depth == 0 => {
                let item = self.u32(what)?;
                let n = self.u64(what)?;
                // Every item takes at least one byte.
                if n > self.len.saturating_sub(self.pos) {
                    return Err(format!(
                        "{what}: an array of {n} items cannot fit in the file"
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64(what)?),
            11 => Value::Int(i64::from_le_bytes(self.array(what)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what}: unknown metadata value type {other}")),
        })
    }
}

/// Whether `path` names a GGUF file (by its extension, as `checkpoint:`
/// tells a file from a Hugging Face folder).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl Gguf {
    /// Reads the header of the GGUF file at `path`: metadata and tensor
    /// table, checking every tensor's type, size and place in the file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |source| GgufError::Io {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other(
                "not a regular file: give the path of a .gguf file",
            )));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let mut r = Reader {
            r: std::io::BufReader::new(file),
            pos: 0,
            len: meta.len(),
        };
        let format = |message: String| GgufError::Format {
            path: path.into(),
            message,
        };
        let magic = r.array::<4>("the magic").map_err(format)?;
        if &magic != b"GGUF" {
            return Err(format(format!(
                "it starts with {magic:02x?}, not `GGUF` (a GGML or GGJT file from before GGUF? convert it with llama.cpp's convert scripts)"
            )));
        }
        let version = r.u32("the version").map_err(format)?;
        if !(2..=3).contains(&version) {
            return Err(format(format!(
                "GGUF version {version}; layerdrift reads versions 2 and 3"
            )));
        }
        let n_tensors = r.u64("the tensor count").map_err(format)?;
        let n_kv = r.u64("the metadata count").map_err(format)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}")).map_err(format)?;
            let ty = r.u32(&format!("the type of `{key}`")).map_err(format)?;
            let v = r.value(ty, &format!("`{key}`"), 0).map_err(format)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name {i}")).map_err(format)?;
            let at = format!("tensor `{name}`");
            let n_dims = r.u32(&at).map_err(format)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(format(format!("{at} has {n_dims} dimensions (1 to 4)")));
            }
            let mut shape = Vec::new();
            for _ in 0..n_dims {
                shape.push(r.u64(&at).map_err(format)? as usize);
            }
            shape.reverse();
            let id = r.u32(&at).map_err(format)?;
            let offset = r.u64(&at).map_err(format)?;
            let bad = |message: String| GgufError::Tensor {
                path: path.into(),
                name: name.clone(),
                message,
            };
            let ty = TensorType::from_id(id).map_err(|t| {
                bad(format!(
                    "stored as {t}, which layerdrift cannot read (it reads F32, F16, BF16, Q8_0, Q4_0 and Q4_1): requantise the file, e.g. `llama-quantize --allow-requantize IN OUT Q8_0`"
                ))
            })?;
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(format(format!(
                        "`general.alignment` is {v:?}, not a power of two"
                    )));
                }
            },
        };
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let g = Gguf {
            path: path.into(),
            version,
            metadata,
            tensors,
            data_start,
        };
        for t in &g.tensors {
            g.extent(t)?;
        }
        Ok(g)
    }

    /// The byte range of tensor `t` in the file, checked against its length.
    fn extent(&self, t: &TensorInfo) -> Result<(u64, u64), GgufError> {
        let bad = |message: String| GgufError::Tensor {
            path: self.path.clone(),
            name: t.name.clone(),
            message,
        };
        let elements = t
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("shape {:?} overflows", t.shape)))?;
        let bytes = t.ty.bytes(elements).map_err(bad)?;
        let start = self.data_start.saturating_add(t.offset);
        let len = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })?;
        if start.saturating_add(bytes) > len {
            return Err(bad(format!(
                "its {bytes} bytes of {} at byte {start} run past the end of the file ({len} bytes): the file is truncated",
                t.ty.name()
            )));
        }
        Ok((start, bytes))
    }

    /// Tensor `t`, dequantised to f32 (shape outermost first).
    pub fn read(&self, t: &TensorInfo) -> Result<HostTensor, GgufError> {
        let (start, bytes) = self.extent(t)?;
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut raw = vec![0u8; bytes as usize];
        f.read_exact(&mut raw).map_err(io)?;
        Ok(HostTensor::new(t.shape.clone(), t.ty.dequantise(&raw)))
    }

    /// The metadata value `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn model_err(&self, message: String) -> GgufError {
        GgufError::Model {
            path: self.path.clone(),
            message,
        }
    }

    /// A required whole-number metadata key.
    fn count(&self, key: &str) -> Result<usize, GgufError> {
        match self.get(key) {
            None => Err(self.model_err(format!("no `{key}` in the metadata"))),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.model_err(format!("`{key}` is {v:?}, not a whole number"))),
        }
    }

    /// An optional numeric metadata key.
    fn number(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.model_err(format!("`{key}` is {v:?}, not a number")))
            })
            .transpose()
    }

    /// The model the metadata describes (`general.architecture: llama`).
    pub fn model(&self) -> Result<LlamaSpec, GgufError> {
        let arch = self
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| self.model_err("no `general.architecture` in the metadata".into()))?;
        if arch != "llama" {
            return Err(self.model_err(format!(
                "`general.architecture: {arch}` is not supported; layerdrift maps GGUF files of the `llama` architecture (for other architectures, give a Hugging Face folder)"
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        if let Some(kind) = self.get(&k("rope.scaling.type")).and_then(Value::as_str)
            && kind != "none"
        {
            return Err(self.model_err(format!(
                "`{}: {kind}`: only the default, unscaled RoPE is supported",
                k("rope.scaling.type")
            )));
        }
        let dim = self.count(&k("embedding_length"))?;
        let heads = self.count(&k("attention.head_count"))?;
        let kv_heads = match self.get(&k("attention.head_count_kv")) {
            Some(_) => self.count(&k("attention.head_count_kv"))?,
            None => heads,
        };
        let head_dim = dim / heads.max(1);
        if let Some(rot) = self.number(&k("rope.dimension_count"))?
            && rot as usize != head_dim
        {
            return Err(self.model_err(format!(
                "`{}: {rot}` rotates part of each head ({head_dim} wide): partial RoPE is not supported",
                k("rope.dimension_count")
            )));
        }
        let vocab = match self.get(&k("vocab_size")) {
            Some(_) => self.count(&k("vocab_size"))?,
            None => self
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| {
                    self.model_err(format!(
                        "no `{}` nor `tokenizer.ggml.tokens` to tell the vocabulary",
                        k("vocab_size")
                    ))
                })?,
        };
        let spec = LlamaSpec {
            layers: self.count(&k("block_count"))?,
            dim,
            heads,
            kv_heads,
            head_dim,
            hidden: self.count(&k("feed_forward_length"))?,
            vocab,
            eps: self
                .number(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: self.number(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            tie_embeddings: !self.tensors.iter().any(|t| t.name == "output.weight"),
            attention_bias: self.tensors.iter().any(|t| t.name.ends_with("attn_q.bias")),
            attention: AttentionForm::Manual,
        };
        spec.validate().map_err(|e| self.model_err(e))?;
        Ok(spec)
    }
}

/// The Hugging Face name of a llama GGUF tensor, or `None` for a name the
/// llama architecture does not have.
pub fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = part.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The block a GGUF tensor belongs to (`blk.N.…`).
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Undoes llama.cpp's Q/K row permutation: its converter stores, per head,
/// row `2j + i` for Hugging Face's row `i·half + j` (i ∈ {0, 1}, j < half),
/// interleaving the two rotary halves; this puts each row back.
pub fn unpermute_rows(t: &HostTensor, heads: usize) -> Result<HostTensor, String> {
    let rows = t.shape.first().copied().unwrap_or(0);
    let width = t.len().checked_div(rows).unwrap_or(0);
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows cannot be split into {heads} heads of an even width"
        ));
    }
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; t.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * hd + i * half + j;
                let gg = h * hd + 2 * j + i;
                out[hf * width..(hf + 1) * width]
                    .copy_from_slice(&t.data[gg * width..(gg + 1) * width]);
            }
        }
    }
    Ok(HostTensor::new(t.shape.clone(), out))
}

/// What a GGUF file gives a model: the spec (first `layers` blocks), and
/// the tensors it uses with their Hugging Face names and stored types.
pub struct Mapped<'a> {
    /// The header.
    pub file: &'a Gguf,
    /// The model.
    pub model: ModelSpec,
    /// Hugging Face name → the tensor's table entry.
    pub tensors: BTreeMap<String, &'a TensorInfo>,
}

impl Gguf {
    /// Maps the tensor table to `model`'s Hugging Face names (the model
    /// [`Gguf::model`] describes, perhaps cut to its first blocks), keeping
    /// its blocks' tensors; a tensor the llama architecture does not have is
    /// refused by name.
    pub fn map(&self, model: &ModelSpec) -> Result<Mapped<'_>, GgufError> {
        let ModelSpec::Llama(spec) = model else {
            return Err(self.model_err(format!(
                "a GGUF file maps to a llama model, not `{}`",
                model.kind()
            )));
        };
        let mut tensors = BTreeMap::new();
        for t in &self.tensors {
            if t.name == "rope_freqs.weight" {
                return Err(self.model_err(
                    "`rope_freqs.weight`: the file scales RoPE frequencies (Llama 3.1-style); only the default, unscaled RoPE is supported".into(),
                ));
            }
            let Some(hf) = hf_name(&t.name) else {
                return Err(GgufError::Tensor {
                    path: self.path.clone(),
                    name: t.name.clone(),
                    message: "not a tensor of the llama architecture (another architecture's file, or one layerdrift does not map)".into(),
                });
            };
            if block_of(&t.name).is_some_and(|b| b >= spec.layers) {
                continue;
            }
            tensors.insert(hf, t);
        }
        Ok(Mapped {
            file: self,
            model: model.clone(),
            tensors,
        })
    }
}

impl Mapped<'_> {
    /// Each used tensor's shape (what `validate` checks).
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect()
    }

    /// How many used tensors were stored in each type.
    pub fn stored(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.tensors.values() {
            *out.entry(t.ty.name().to_string()).or_insert(0) += 1;
        }
        out
    }

    /// Every used tensor, dequantised, with Q and K rows put back in
    /// Hugging Face's order.
    pub fn read(&self) -> Result<BTreeMap<String, HostTensor>, GgufError> {
        let ModelSpec::Llama(spec) = &self.model else {
            unreachable!("GGUF files map to llama models")
        };
        let mut out = BTreeMap::new();
        for (name, t) in &self.tensors {
            let mut x = self.file.read(t)?;
            let heads = if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
                Some(spec.heads)
            } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
                Some(spec.kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                x = unpermute_rows(&x, h).map_err(|message| GgufError::Tensor {
                    path: self.file.path.clone(),
                    name: t.name.clone(),
                    message,
                })?;
            }
            out.insert(name.clone(), x);
        }
        Ok(out)
    }
}

/// A tensor to write with [`write`]: its GGUF name, shape (outermost
/// first), type and raw bytes.
pub struct RawTensor<'a> {
    /// GGUF name.
    pub name: &'a str,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Stored type.
    pub ty: TensorType,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

/// Writes a GGUF v3 file (alignment 32) with string, whole-number and float
/// metadata: what tests build small files with.
pub fn write(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[RawTensor],
) -> std::io::Result<()> {
    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::Uint(u) => out.extend(u.to_le_bytes()),
            Value::Int(i) => out.extend(i.to_le_bytes()),
            Value::Float(f) => out.extend((*f as f32).to_le_bytes()),
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::Str(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Value::Array(items) => {
                out.extend(items.first().map_or(8, type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    value(out, i);
                }
            }
        }
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::Uint(_) => 10,
            Value::Int(_) => 11,
            Value::Float(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        value(&mut out, &Value::Str((*k).into()));
        out.extend(type_id(v).to_le_bytes());
        value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        value(&mut out, &Value::Str(t.name.into()));
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (t.bytes.len() as u64).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for t in tensors {
        out.extend(&t.bytes);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn dequantises_q4_1_q4_0_and_q8_0_blocks() {
        // One Q4_1 block: d = 0.5, m = -1; byte j holds j & 15 low, 15 - j high.
        let mut b = [f16(0.5), f16(-1.0)].concat();
        b.extend((0..16u8).map(|j| (j & 15) | ((15 - j) << 4)));
        let x = TensorType::Q4_1.dequantise(&b);
        assert_eq!(x.len(), 32);
        assert_eq!(x[3], 3.0 * 0.5 - 1.0);
        assert_eq!(x[16 + 3], 12.0 * 0.5 - 1.0);
        // Q4_0: (q - 8) · d.
        let mut b = f16(0.25).to_vec();
        b.extend([0x8F_u8; 16]);
        let x = TensorType::Q4_0.dequantise(&b);
        assert_eq!((x[0], x[16]), (7.0 * 0.25, 0.0));
        // Q8_0: q · d with q signed.
        let mut b = f16(2.0).to_vec();
        b.extend((0..32).map(|i: i8| (i - 16) as u8));
        let x = TensorType::Q8_0.dequantise(&b);
        assert_eq!((x[0], x[31]), (-32.0, 30.0));
    }

    #[test]
    fn unpermutes_rows_back_to_rotate_half_order() {
        // One head of width 4 (half 2), one column: gguf rows [a0 b0 a1 b1]
        // are HF rows [a0 a1 b0 b1].
        let t = HostTensor::new(vec![4, 1], vec![10.0, 20.0, 11.0, 21.0]);
        let u = unpermute_rows(&t, 1).unwrap();
        assert_eq!(u.data, vec![10.0, 11.0, 20.0, 21.0]);
        assert!(unpermute_rows(&t, 3).is_err());
    }

    #[test]
    fn maps_llama_names() {
        assert_eq!(
            hf_name("blk.7.attn_k.weight").as_deref(),
            Some("model.layers.7.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.0.ssm_conv1d.weight"), None);
    }
}
