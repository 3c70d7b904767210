//! Weights and inputs read from safetensors files give bitwise the same
//! checkpoints as the same arrays handed over in memory, on every backend.

mod common;

use std::collections::BTreeMap;

use common::{available, decoder, fingerprint, mlp};
use layerdrift_backends::weights::{read_safetensors, write_safetensors};
use layerdrift_backends::{
    AttentionForm, DType, Execution, ModelSpec, Row, RunRequest, Schedule, Weights, generate_input,
};

fn run_with(
    b: &dyn layerdrift_backends::Backend,
    model: &ModelSpec,
    w: &Weights,
    input: &layerdrift_backends::HostTensor,
) -> u64 {
    let observed: Vec<Row> = (3..6).map(|pos| Row { batch: 1, pos }).collect();
    let schedule = if model.kv_cache() {
        Schedule::kv_cache(3, 6)
    } else {
        Schedule::Full
    };
    let req = RunRequest {
        model,
        weights: w,
        input,
        dtype: DType::F32,
        schedule: &schedule,
        observed: &observed,
        threads: None,
        execution: Execution::Standard,
        diagnose: Default::default(),
    };
    fingerprint(&b.run(&req).unwrap())
}

#[test]
fn file_weights_and_inputs_equal_in_memory_bitwise() {
    let dir = std::env::temp_dir().join(format!("layerdrift-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in [mlp(true), decoder(true, AttentionForm::Manual)] {
        let w = Weights::init(&model, 3, 0.2);
        let input = generate_input(2, 6, model.dim(), 9);
        // Write both with the safetensors crate, as a PyTorch user would
        // with `safetensors.torch.save_file(model.state_dict(), …)`.
        let tensors: BTreeMap<_, _> = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let wp = dir.join(format!("{}.safetensors", model.kind()));
        write_safetensors(&wp, &tensors).unwrap();
        let ip = dir.join(format!("{}-input.safetensors", model.kind()));
        write_safetensors(&ip, &BTreeMap::from([("input".to_string(), input.clone())])).unwrap();

        let from_file = Weights::load(&model, &wp).unwrap();
        let input_file = read_safetensors(&ip).unwrap().remove("input").unwrap();
        assert_eq!(from_file, w);
        assert_eq!(input_file, input);
        for b in available() {
            assert_eq!(
                run_with(b.as_ref(), &model, &from_file, &input_file),
                run_with(b.as_ref(), &model, &w, &input),
                "{} {}: file and memory differ",
                b.id(),
                model.kind()
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
