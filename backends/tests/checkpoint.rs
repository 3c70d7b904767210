//! Hugging Face checkpoint folders, written by the test itself (config.json
//! and safetensors with Hugging Face's names), read back through the real
//! loader: single and sharded files, BF16 widened exactly, `layers: N`, and
//! every refusal naming what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layerdrift_backends::hf::{self, HfError};
use layerdrift_backends::{HostTensor, ModelSpec, Weights};
use safetensors::{Dtype, tensor::TensorView};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerdrift-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LLAMA: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 11,
  "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
  "rope_parameters": { "rope_theta": 500000.0, "rope_type": "default" }
}"#;

const GPT2: &str = r#"{
  "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
  "n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 11, "n_positions": 16,
  "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5
}"#;

/// Writes `tensors` (as `dtype`: F32 or BF16) to `path`.
fn write(path: &Path, tensors: &BTreeMap<String, HostTensor>, dtype: Dtype) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = match dtype {
                Dtype::BF16 => t
                    .data
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (n.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A folder holding `config` and the seed-initialised weights of the model
/// it describes (every tensor, with Hugging Face's names).
fn folder(name: &str, config: &str, dtype: Dtype) -> (PathBuf, BTreeMap<String, HostTensor>) {
    let d = tmp(name);
    std::fs::write(d.join("config.json"), config).unwrap();
    let model = hf::read_config(&d, None).unwrap();
    let w = Weights::init(&model, 5, 0.1);
    let all: BTreeMap<String, HostTensor> = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write(&d.join("model.safetensors"), &all, dtype);
    (d, all)
}

#[test]
fn a_llama_folder_loads_with_its_config_and_names() {
    let (d, all) = folder("llama", LLAMA, Dtype::F32);
    let c = hf::load(&d, None).unwrap();
    let ModelSpec::Llama(m) = &c.model else {
        panic!("{:?}", c.model)
    };
    assert_eq!(
        (m.layers, m.dim, m.heads, m.kv_heads, m.head_dim),
        (2, 8, 4, 2, 2)
    );
    assert_eq!((m.hidden, m.vocab, m.rope_theta), (12, 11, 500000.0));
    assert!(!m.tie_embeddings && !m.attention_bias);
    assert_eq!(
        c.weights.get("model.layers.1.self_attn.k_proj.weight"),
        &all["model.layers.1.self_attn.k_proj.weight"]
    );
    assert_eq!(c.stored.get("F32"), Some(&all.len()));
    let (model, stored) = hf::inspect(&d, None).unwrap();
    assert_eq!((model, stored), (c.model.clone(), c.stored.clone()));
    // `layers: 1` keeps the first block and skips the second's tensors.
    let one = hf::load(&d, Some(1)).unwrap();
    assert_eq!(one.model.layers(), 1);
    assert!(
        hf::read_config(&d, Some(3))
            .unwrap_err()
            .to_string()
            .contains("the model has 2 blocks")
    );
}

#[test]
fn bf16_weights_widen_exactly_and_say_so() {
    let (d, all) = folder("bf16", GPT2, Dtype::BF16);
    let c = hf::load(&d, None).unwrap();
    let name = "transformer.h.0.attn.c_attn.weight";
    assert_eq!(
        c.weights.get(name).shape,
        vec![8, 24],
        "Conv1D is [in, out]"
    );
    let want: Vec<f32> = all[name]
        .data
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    assert_eq!(c.weights.get(name).data, want);
    assert!(
        c.describe().contains("BF16") && c.describe().contains("widened"),
        "{}",
        c.describe()
    );
}

#[test]
fn a_sharded_folder_loads_like_a_single_file() {
    let (d, all) = folder("sharded", LLAMA, Dtype::F32);
    let single = hf::load(&d, None).unwrap();
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = all
        .into_iter()
        .partition(|(k, _)| k.contains("layers.0") || k.starts_with("model.embed"));
    write(&d.join("model-00001-of-00002.safetensors"), &a, Dtype::F32);
    write(&d.join("model-00002-of-00002.safetensors"), &b, Dtype::F32);
    let mut map = serde_json::Map::new();
    for k in a.keys() {
        map.insert(k.clone(), "model-00001-of-00002.safetensors".into());
    }
    for k in b.keys() {
        map.insert(k.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = hf::load(&d, None).unwrap();
    assert_eq!(sharded.model, single.model);
    assert_eq!(sharded.weights, single.weights);
    // A truncated index is refused by name.
    std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": {").unwrap();
    let e = hf::load(&d, None).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("JSON"),
        "{e}"
    );
}

#[test]
fn bad_folders_are_refused_by_name() {
    // What the loader refuses, `validate`'s header check (`hf::inspect`)
    // refuses with the same words, before reading any tensor.
    let err = |d: &Path| {
        let e = hf::load(d, None).unwrap_err().to_string();
        let i = hf::inspect(d, None).unwrap_err().to_string();
        assert_eq!(i, e, "the header check and the loader disagree");
        e
    };
    // An architecture layerdrift does not know.
    let d = tmp("arch");
    std::fs::write(
        d.join("config.json"),
        LLAMA.replace("LlamaForCausalLM", "T5ForConditionalGeneration"),
    )
    .unwrap();
    let e = err(&d);
    assert!(
        e.contains("`T5ForConditionalGeneration` is not supported")
            && e.contains("LlamaForCausalLM")
            && e.contains("BertModel"),
        "{e}"
    );
    // kv_heads that do not divide heads.
    std::fs::write(
        d.join("config.json"),
        LLAMA.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
    )
    .unwrap();
    assert!(err(&d).contains("must divide"), "{}", err(&d));
    // No weights at all.
    std::fs::write(d.join("config.json"), LLAMA).unwrap();
    assert!(matches!(hf::load(&d, None), Err(HfError::NoWeights { .. })));

    // A missing tensor, named with its expected shape.
    let (d, mut all) = folder("missing", LLAMA, Dtype::F32);
    all.remove("model.layers.1.mlp.up_proj.weight");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let e = err(&d);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("[12, 8]"),
        "{e}"
    );
    // A misshaped tensor: both shapes named.
    all.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        HostTensor::full(vec![8, 12], 0.0),
    );
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let e = err(&d);
    assert!(e.contains("[8, 12]") && e.contains("[12, 8]"), "{e}");
    // An extra tensor the model does not have (a strict loader refuses it).
    all.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        HostTensor::full(vec![12, 8], 0.0),
    );
    all.insert(
        "model.layers.0.self_attn.q_norm.weight".into(),
        HostTensor::full(vec![2], 1.0),
    );
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let e = err(&d);
    assert!(e.contains("unexpected") && e.contains("q_norm"), "{e}");
    // A truncated file.
    all.remove("model.layers.0.self_attn.q_norm.weight");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = hf::load(&d, None).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    let e = hf::inspect(&d, None).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let (d, _) = folder("tokens", GPT2, Dtype::F32);
    let c = hf::load(&d, None).unwrap();
    let bad = layerdrift_backends::Tokens {
        batch: 1,
        seq: 2,
        ids: vec![3, 11],
        lengths: vec![2],
    };
    let e = c.model.embed(&c.weights, &bad).unwrap_err();
    assert!(
        e.contains("token id 11") && e.contains("vocabulary of 11"),
        "{e}"
    );
    let ok = layerdrift_backends::Tokens::random(2, 5, 11, 1);
    let x = c.model.embed(&c.weights, &ok).unwrap();
    assert_eq!(x.shape, vec![2, 5, 8]);
}

const BERT: &str = r#"{
  "architectures": ["BertModel"], "model_type": "bert",
  "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
  "num_attention_heads": 2, "vocab_size": 11, "max_position_embeddings": 16,
  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
  "position_embedding_type": "absolute"
}"#;

/// A BertModel folder as `save_pretrained` writes it: the model's F32
/// tensors, the I64 `embeddings.position_ids` buffer and the `pooler`, with
/// `word_embeddings` stored as `word_dtype`.
fn bert_folder(name: &str, word_dtype: Dtype) -> PathBuf {
    let d = tmp(name);
    std::fs::write(d.join("config.json"), BERT).unwrap();
    let model = hf::read_config(&d, None).unwrap();
    let mut bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = Weights::init(&model, 5, 0.1)
        .iter()
        .map(|(n, t)| {
            let dtype = if n == "embeddings.word_embeddings.weight" {
                word_dtype
            } else {
                Dtype::F32
            };
            let b: Vec<u8> = match dtype {
                Dtype::I64 => t
                    .data
                    .iter()
                    .flat_map(|x| (*x as i64).to_le_bytes())
                    .collect(),
                _ => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (n.clone(), dtype, b, t.shape.clone())
        })
        .collect();
    let ids: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
    bytes.push((
        "embeddings.position_ids".into(),
        Dtype::I64,
        ids,
        vec![1, 16],
    ));
    let pool: Vec<u8> = vec![0u8; 8 * 8 * 4];
    bytes.push(("pooler.dense.weight".into(), Dtype::F32, pool, vec![8, 8]));
    bytes.push((
        "pooler.dense.bias".into(),
        Dtype::F32,
        vec![0u8; 32],
        vec![8],
    ));
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, dt, b, s)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    d
}

#[test]
fn a_bert_folder_loads_skipping_its_integer_buffer_and_unused_pooler() {
    let d = bert_folder("bert", Dtype::F32);
    let (model, stored) = hf::inspect(&d, None).unwrap();
    let ModelSpec::Bert(m) = &model else {
        panic!("{model:?}")
    };
    assert_eq!((m.layers, m.dim, m.heads, m.hidden), (2, 8, 2, 16));
    assert_eq!((m.vocab, m.positions, m.type_vocab), (11, 16, 2));
    // Neither the I64 buffer nor the pooler is among the used tensors.
    assert_eq!(stored.get("I64"), None, "{stored:?}");
    let c = hf::load(&d, None).unwrap();
    assert!(
        c.weights
            .iter()
            .all(|(n, _)| !n.starts_with("pooler.") && !n.ends_with("position_ids"))
    );
    assert_eq!(c.weights.iter().count(), model.parameters().len());
    // Its sentence-embedding checkpoint follows the blocks.
    assert_eq!(model.checkpoints(), 3);
}

#[test]
fn a_bert_parameter_in_an_integer_dtype_is_refused_by_name() {
    let d = bert_folder("bert-i64", Dtype::I64);
    for e in [
        hf::inspect(&d, None).unwrap_err().to_string(),
        hf::load(&d, None).unwrap_err().to_string(),
    ] {
        assert!(
            e.contains("embeddings.word_embeddings.weight") && e.contains("I64"),
            "{e}"
        );
    }
}
