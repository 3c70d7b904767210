//! GGUF files written by the test itself (llama.cpp's layout: GGUF names,
//! innermost dimension first, Q and K rows permuted as its converter does),
//! read back through the real checkpoint loader: the spec from the metadata,
//! Hugging Face's names and row order back, Q8_0 dequantised, `layers: N`,
//! and every refusal naming what is wrong.

use std::path::PathBuf;

use layerdrift_backends::gguf::{self, RawTensor, TensorType, Value};
use layerdrift_backends::hf::{self, HfError};
use layerdrift_backends::{HostTensor, ModelSpec, Weights};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerdrift-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(format!("{name}.gguf"))
}

const LAYERS: usize = 2;
// Q8_0 blocks of 32 run along a row: the width is a multiple of 32.
const DIM: usize = 32;
const HEADS: usize = 4;
const KV: usize = 2;
const HIDDEN: usize = 48;
const VOCAB: usize = 11;

fn metadata(arch: &str) -> Vec<(&'static str, Value)> {
    let u = |n: usize| Value::Uint(n as u64);
    vec![
        ("general.architecture", Value::Str(arch.into())),
        ("llama.block_count", u(LAYERS)),
        ("llama.embedding_length", u(DIM)),
        ("llama.feed_forward_length", u(HIDDEN)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV)),
        ("llama.rope.freq_base", Value::Float(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::Float(1e-5)),
        ("llama.vocab_size", u(VOCAB)),
    ]
}

/// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`):
/// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`, written
/// independently of the reader's inverse.
fn permute(t: &HostTensor, heads: usize) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(t.len());
    for h in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                let src = h * 2 * half + i * half + j;
                out.extend_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    HostTensor::new(t.shape.clone(), out)
}

/// Hugging Face name → GGUF name, for the names a llama file holds.
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, part) = rest.split_once('.').unwrap();
    let part = part.strip_suffix(".weight").unwrap();
    let g = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{g}.weight")
}

fn f32_bytes(t: &HostTensor) -> Vec<u8> {
    t.data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A reference model's weights, with Hugging Face names.
fn reference(tied: bool) -> (ModelSpec, Weights) {
    let model = ModelSpec::Llama(layerdrift_backends::LlamaSpec {
        layers: LAYERS,
        dim: DIM,
        heads: HEADS,
        kv_heads: KV,
        head_dim: DIM / HEADS,
        hidden: HIDDEN,
        vocab: VOCAB,
        eps: 1e-5,
        rope_theta: 100000.0,
        tie_embeddings: tied,
        attention_bias: false,
        attention: layerdrift_backends::AttentionForm::Manual,
    });
    let w = Weights::init(&model, 7, 0.3);
    (model, w)
}

/// Writes the reference weights as llama.cpp would: GGUF names, Q/K rows
/// permuted, the embedding as Q8_0 (exact here: its values are chosen on
/// the Q8_0 grid), everything else F32; `edit` changes the table first.
fn write_llama(
    name: &str,
    tied: bool,
    meta: Vec<(&'static str, Value)>,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, TensorType, Vec<u8>)>),
) -> (PathBuf, Weights) {
    let (_, w) = reference(tied);
    let mut table = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for (hf_name, t) in w.iter() {
        let mut t = t.clone();
        if hf_name == "model.embed_tokens.weight" {
            // Q8_0: per block of 32, d = 1/64 (an f16 exactly), q = i8.
            let q: Vec<i8> = (0..t.len()).map(|i| ((i * 37) % 255) as i8).collect();
            t = HostTensor::new(
                t.shape.clone(),
                q.iter().map(|&q| f32::from(q) / 64.0).collect(),
            );
            let mut bytes = Vec::new();
            for block in q.chunks(32) {
                bytes.extend(half::f16::from_f32(1.0 / 64.0).to_le_bytes());
                bytes.extend(block.iter().map(|&q| q as u8));
            }
            table.push((gguf_name(hf_name), t.shape.clone(), TensorType::Q8_0, bytes));
            expected.insert(hf_name.clone(), t);
            continue;
        }
        let stored = if hf_name.ends_with("q_proj.weight") {
            permute(&t, HEADS)
        } else if hf_name.ends_with("k_proj.weight") {
            permute(&t, KV)
        } else {
            t.clone()
        };
        table.push((
            gguf_name(hf_name),
            t.shape.clone(),
            TensorType::F32,
            f32_bytes(&stored),
        ));
        expected.insert(hf_name.clone(), t);
    }
    edit(&mut table);
    let raw: Vec<RawTensor> = table
        .iter()
        .map(|(n, s, ty, b)| RawTensor {
            name: n,
            shape: s.clone(),
            ty: *ty,
            bytes: b.clone(),
        })
        .collect();
    let path = tmp(name);
    gguf::write(&path, &meta, &raw).unwrap();
    let (model, _) = reference(tied);
    let w = Weights::from_tensors(&model, expected, &path).unwrap();
    (path, w)
}

#[test]
fn a_llama_gguf_loads_with_hugging_face_names_and_row_order() {
    let (path, want) = write_llama("llama", false, metadata("llama"), |_| {});
    let c = hf::load(&path, None).unwrap();
    let ModelSpec::Llama(m) = &c.model else {
        panic!("{:?}", c.model)
    };
    assert_eq!(
        (
            m.layers, m.dim, m.heads, m.kv_heads, m.head_dim, m.hidden, m.vocab
        ),
        (LAYERS, DIM, HEADS, KV, DIM / HEADS, HIDDEN, VOCAB)
    );
    assert_eq!((m.rope_theta, m.tie_embeddings), (100000.0, false));
    assert!((m.eps - 1e-5).abs() < 1e-12);
    // Every tensor, Q and K included, equals the Hugging Face original.
    assert_eq!(c.weights, want);
    assert!(c.describe().contains("Q8_0 1"), "{}", c.describe());
    assert!(c.describe().contains("dequantised"), "{}", c.describe());
    // `inspect` (what validate runs) agrees without reading tensor data.
    let (model, stored) = hf::inspect(&path, None).unwrap();
    assert_eq!(model, c.model);
    assert_eq!(stored, c.stored);
}

#[test]
fn a_tied_gguf_has_no_output_tensor_and_layers_cut_blocks() {
    let (path, _) = write_llama("tied", true, metadata("llama"), |_| {});
    let c = hf::load(&path, Some(1)).unwrap();
    let ModelSpec::Llama(m) = &c.model else {
        panic!()
    };
    assert!(m.tie_embeddings);
    assert_eq!(m.layers, 1);
    assert!(c.weights.iter().all(|(n, _)| !n.contains("layers.1.")));
    let e = hf::load(&path, Some(3)).unwrap_err();
    assert!(matches!(e, HfError::Config { .. }), "{e}");
    assert!(e.to_string().contains("choose 1..=2"), "{e}");
}

fn refused(path: &std::path::Path) -> String {
    let load = hf::load(path, None).unwrap_err().to_string();
    let inspect = hf::inspect(path, None).unwrap_err().to_string();
    assert_eq!(load, inspect, "load and inspect refuse alike");
    load
}

#[test]
fn a_truncated_gguf_is_refused_naming_the_tensor() {
    let (path, _) = write_llama("truncated", false, metadata("llama"), |_| {});
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp("truncated-cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = refused(&cut);
    assert!(e.contains("truncated") && e.contains("tensor `"), "{e}");
    // Cut inside the header: named as such, no panic.
    std::fs::write(&cut, &bytes[..40]).unwrap();
    let e = refused(&cut);
    assert!(e.contains("not a readable GGUF file"), "{e}");
}

#[test]
fn an_unknown_quantisation_is_refused_by_tensor_and_type() {
    let (path, _) = write_llama("q5k", false, metadata("llama"), |_| {});
    // Q5_K is GGML id 13: rewritten in place (the writer only writes types
    // the reader knows); the reader must refuse it by name.
    let mut bytes = std::fs::read(&path).unwrap();
    let key = b"blk.1.ffn_up.weight";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the tensor's name");
    // name, then n_dims (u32) and 2 dims (u64 each), then the type (u32).
    let ty_at = at + key.len() + 4 + 16;
    bytes[ty_at..ty_at + 4].copy_from_slice(&13u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = refused(&path);
    assert!(
        e.contains("`blk.1.ffn_up.weight`") && e.contains("Q5_K"),
        "{e}"
    );
}

#[test]
fn another_architecture_or_tensor_is_refused_by_name() {
    let mut meta = metadata("llama");
    meta[0] = ("general.architecture", Value::Str("gpt2".into()));
    let (path, _) = write_llama("gpt2", false, meta, |_| {});
    let e = refused(&path);
    assert!(e.contains("`general.architecture: gpt2`"), "{e}");
    let (path, _) = write_llama("stray", false, metadata("llama"), |t| {
        t.push((
            "blk.0.ssm_conv1d.weight".into(),
            vec![4],
            TensorType::F32,
            vec![0; 16],
        ))
    });
    let e = refused(&path);
    assert!(e.contains("`blk.0.ssm_conv1d.weight`"), "{e}");
    let mut meta = metadata("llama");
    meta.retain(|(k, _)| *k != "llama.embedding_length");
    let (path, _) = write_llama("no-dim", false, meta, |_| {});
    let e = refused(&path);
    assert!(e.contains("`llama.embedding_length`"), "{e}");
    let not = tmp("not-gguf");
    std::fs::write(&not, b"GGML\0\0\0\0 this is not a GGUF file").unwrap();
    let e = refused(&not);
    assert!(e.contains("not `GGUF`"), "{e}");
}

#[test]
fn a_misshaped_tensor_is_refused_with_both_shapes() {
    let (path, _) = write_llama("shape", false, metadata("llama"), |t| {
        let (_, shape, _, bytes) = t
            .iter_mut()
            .find(|(n, ..)| n == "blk.0.ffn_down.weight")
            .unwrap();
        *shape = vec![DIM, HIDDEN - 4];
        bytes.truncate(DIM * (HIDDEN - 4) * 4);
    });
    let e = refused(&path);
    assert!(e.contains("model.layers.0.mlp.down_proj.weight"), "{e}");
    assert!(e.contains("[32, 44]") && e.contains("[32, 48]"), "{e}");
}
