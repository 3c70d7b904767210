//! Weights and inputs: generated once on the host from a seed, or read from a
//! safetensors file, then handed identically to every backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::host::HostTensor;
use crate::model::{ModelSpec, ParamInit};
use crate::rng::{NormalRng, fnv1a};

/// What can go wrong reading weights or inputs.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error(
        "{path}: missing tensor `{name}` (expected shape {expected:?}); the file has {available} tensors{hint}"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
        /// How many tensors the file holds.
        available: usize,
        /// A note on near names, if any.
        hint: String,
    },
    /// A tensor has another shape than the model needs.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model needs {expected:?}{hint}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// What to change in the scenario, if we can tell.
        hint: String,
    },
    /// A tensor has a dtype we cannot read exactly into f32.
    #[error(
        "{path}: tensor `{name}` is {found}; layerdrift reads F32 (or F16/BF16, widened exactly) — save it with `.float()`"
    )]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype in the file.
        found: String,
    },
}

/// The parameters of one model, by `state_dict` name.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, HostTensor>,
}

impl Weights {
    /// The seed's initialisation: linear weights ~ N(0, std²), norm weights 1,
    /// biases 0. Each parameter has its own random stream derived from `seed`
    /// and its name, so adding layers leaves the existing ones unchanged.
    ///
    /// The streams are independent, so parameters are generated on every
    /// core at once (the same bits as one after another: each value depends
    /// only on its parameter's name and position).
    pub fn init(model: &ModelSpec, seed: u64, std: f64) -> Weights {
        let params = model.parameters();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let make = |p: &crate::model::ParamSpec| {
            let n = p.shape.iter().product();
            let data = match p.init {
                ParamInit::Ones => vec![1.0; n],
                ParamInit::Zeros => vec![0.0; n],
                ParamInit::Normal => NormalRng::new(seed, fnv1a(&p.name)).fill(n, std),
            };
            (p.name.clone(), HostTensor::new(p.shape.clone(), data))
        };
        // Each worker takes the next parameter not yet taken, so the large
        // matrices spread over the workers whatever the parameter order.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let tensors = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (params, make, next) = (&params, &make, &next);
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(p) = params.get(i) else { break };
                            done.push(make(p));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("weight generation does not panic"))
                .collect()
        });
        Weights { tensors }
    }

    /// Builds weights from named arrays, checking every parameter the model
    /// needs is present with its shape (`path` names the source in errors).
    pub fn from_tensors(
        model: &ModelSpec,
        mut found: BTreeMap<String, HostTensor>,
        path: &Path,
    ) -> Result<Weights, WeightsError> {
        let available = found.len();
        let mut tensors = BTreeMap::new();
        for p in model.parameters() {
            let Some(t) = found.remove(&p.name) else {
                let near: Vec<_> = found
                    .keys()
                    .filter(|k| k.ends_with(p.name.rsplit('.').next().unwrap_or("")))
                    .take(3)
                    .cloned()
                    .collect();
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!(" (names like {near:?} — see the README's weight names)")
                };
                return Err(WeightsError::Missing {
                    path: path.into(),
                    name: p.name,
                    expected: p.shape,
                    available,
                    hint,
                });
            };
            if t.shape != p.shape {
                let hint = shape_hint(model, &p.name, &t.shape);
                return Err(WeightsError::Shape {
                    path: path.into(),
                    name: p.name,
                    found: t.shape,
                    expected: p.shape,
                    hint,
                });
            }
            tensors.insert(p.name, t);
        }
        Ok(Weights { tensors })
    }

    /// Reads a model's parameters from a safetensors file (e.g. one written by
    /// `safetensors.torch.save_file(model.state_dict(), path)`). Extra tensors
    /// are ignored.
    pub fn load(model: &ModelSpec, path: &Path) -> Result<Weights, WeightsError> {
        let all = read_safetensors(path)?;
        Weights::from_tensors(model, all, path)
    }

    /// The parameter `name`.
    ///
    /// # Panics
    /// If absent: [`Weights`] always holds every parameter of its model.
    pub fn get(&self, name: &str) -> &HostTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("weights have no parameter `{name}`"))
    }

    /// Every parameter, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &HostTensor)> {
        self.tensors.iter()
    }
}

fn shape_hint(model: &ModelSpec, name: &str, found: &[usize]) -> String {
    let dim = model.dim();
    if (name.ends_with("linear1.weight") || name.ends_with("fc1.weight"))
        && let [h, d] = found
    {
        return format!(
            " — the file looks like dim: {d}, hidden: {h}; set those in the scenario's model"
        );
    }
    if let [d] = found
        && *d != dim
        && name.contains("norm")
    {
        return format!(" — the file looks like dim: {d}; set it in the scenario's model");
    }
    String::new()
}

/// Reads every tensor of a safetensors file as f32 (F16 and BF16 widen exactly).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    Ok(read_safetensors_stored(path)?
        .into_iter()
        .map(|(n, (t, _))| (n, t))
        .collect())
}

/// [`read_safetensors`], keeping each tensor's stored dtype (`F32`, `F16`,
/// `BF16`).
pub(crate) fn read_safetensors_stored(
    path: &Path,
) -> Result<BTreeMap<String, (HostTensor, String)>, WeightsError> {
    use safetensors::{Dtype, SafeTensors};
    let io = |source| WeightsError::Io {
        path: path.into(),
        source,
    };
    // A directory, a device (`/dev/zero`) or a pipe would fail late or never
    // end: only regular files are read.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(io(std::io::Error::other(format!(
            "{what}: give the path of a .safetensors file"
        ))));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(WeightsError::DType {
                    path: path.into(),
                    name,
                    found: format!("{other:?}"),
                });
            }
        };
        let stored = format!("{:?}", view.dtype());
        out.insert(name, (HostTensor::new(view.shape().to_vec(), data), stored));
    }
    Ok(out)
}

/// Writes named f32 arrays as a safetensors file (used by tests and by
/// `layerdrift export`).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<(), WeightsError> {
    use safetensors::tensor::TensorView;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let v = TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("shape and byte length agree by construction");
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).map_err(|e| WeightsError::Format {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The input array `[batch, seq, dim]` ~ N(0, 1) from `seed`. One stream in
/// row-major order, so a smaller batch is a prefix of a larger one.
pub fn generate_input(batch: usize, seq: usize, dim: usize, seed: u64) -> HostTensor {
    let data = NormalRng::new(seed, fnv1a("input")).fill(batch * seq * dim, 1.0);
    HostTensor::new(vec![batch, seq, dim], data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Norm, ResidualMlpSpec};

    fn mlp(layers: usize) -> ModelSpec {
        ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers,
            dim: 8,
            hidden: 12,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            residual: true,
        })
    }

    #[test]
    fn init_is_deterministic_and_layer_stable() {
        let a = Weights::init(&mlp(2), 3, 0.2);
        let b = Weights::init(&mlp(3), 3, 0.2);
        assert_eq!(
            a.get("layers.1.linear2.weight"),
            b.get("layers.1.linear2.weight")
        );
        assert_eq!(a.get("layers.0.norm1.weight").data, vec![1.0; 8]);
        assert_eq!(a.get("layers.0.linear1.bias").data, vec![0.0; 12]);
        let c = Weights::init(&mlp(2), 4, 0.2);
        assert_ne!(
            a.get("layers.0.linear1.weight"),
            c.get("layers.0.linear1.weight")
        );
    }

    #[test]
    fn safetensors_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("ld-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = Weights::init(&mlp(2), 1, 0.2);
        let all: BTreeMap<_, _> = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let p = dir.join("w.safetensors");
        write_safetensors(&p, &all).unwrap();
        assert_eq!(Weights::load(&mlp(2), &p).unwrap(), w);

        // Missing tensor: a 3-layer model from a 2-layer file.
        let e = Weights::load(&mlp(3), &p).unwrap_err().to_string();
        assert!(e.contains("missing tensor `layers.2.norm1.weight`"), "{e}");
        assert!(e.contains("[8]"), "{e}");

        // Wrong shape, with the scenario fix.
        let mut bad = all.clone();
        bad.insert(
            "layers.0.linear1.weight".into(),
            HostTensor::full(vec![16, 8], 0.0),
        );
        write_safetensors(&p, &bad).unwrap();
        let e = Weights::load(&mlp(2), &p).unwrap_err().to_string();
        assert!(
            e.contains("shape [16, 8]") && e.contains("hidden: 16"),
            "{e}"
        );

        // Not a safetensors file.
        std::fs::write(&p, b"hello").unwrap();
        let e = Weights::load(&mlp(2), &p).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
