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
        LLAMA.replace("LlamaForCausalLM", "BertModel"),
    )
    .unwrap();
    let e = err(&d);
    assert!(
        e.contains("`BertModel` is not supported") && e.contains("LlamaForCausalLM"),
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
