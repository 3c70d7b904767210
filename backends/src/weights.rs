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
    /// Tensors the model does not have: a strict loader refuses them, as
    /// `load_state_dict(strict=True)` does.
    #[error(
        "{path}: {count} tensor(s) the model does not have, e.g. `{first}`{hint}; a weights file must hold exactly the model's parameters"
    )]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// The first unexpected name.
        first: String,
        /// How many.
        count: usize,
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
    /// Arrays the model does not use are dropped: callers that must refuse
    /// them ([`Weights::load`], the checkpoint loader) check first.
    pub fn from_tensors(
        model: &ModelSpec,
        mut found: BTreeMap<String, HostTensor>,
        path: &Path,
    ) -> Result<Weights, WeightsError> {
        let shapes: BTreeMap<String, Vec<usize>> = found
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        check_shapes(model, &shapes, path)?;
        let tensors = model
            .parameters()
            .into_iter()
            .filter_map(|p| found.remove(&p.name).map(|t| (p.name, t)))
            .collect();
        Ok(Weights { tensors })
    }

    /// Reads a model's parameters from a safetensors file (e.g. one written by
    /// `safetensors.torch.save_file(model.state_dict(), path)`). Strict: a
    /// missing, misshaped or unexpected tensor is an error naming it.
    pub fn load(model: &ModelSpec, path: &Path) -> Result<Weights, WeightsError> {
        let all = read_safetensors(path)?;
        refuse_unexpected(model, all.keys(), path)?;
        Weights::from_tensors(model, all, path)
    }

    /// What [`Weights::load`] would refuse, from the file's header alone (no
    /// tensor data is read): names, dtypes and shapes. `validate` runs it.
    pub fn check_file(model: &ModelSpec, path: &Path) -> Result<(), WeightsError> {
        let header = readable_header(path, &|_| false)?;
        refuse_unexpected(model, header.keys(), path)?;
        let shapes = header.into_iter().map(|(k, (_, s))| (k, s)).collect();
        check_shapes(model, &shapes, path)
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

/// The stored dtypes read into f32 exactly.
const READABLE: &[&str] = &["F32", "F16", "BF16"];

/// [`safetensors_header`], refusing (as reading the data would) a tensor
/// stored in a dtype that is not read into f32 exactly — unless
/// `skip(name)`: such a tensor (an integer buffer the model does not use,
/// BERT's `position_ids`) is left out.
pub(crate) fn readable_header(
    path: &Path,
    skip: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, (String, Vec<usize>)>, WeightsError> {
    let mut header = safetensors_header(path)?;
    header.retain(|name, (dtype, _)| READABLE.contains(&dtype.as_str()) || !skip(name));
    match header
        .iter()
        .find(|(_, (dtype, _))| !READABLE.contains(&dtype.as_str()))
    {
        Some((name, (dtype, _))) => Err(WeightsError::DType {
            path: path.into(),
            name: name.clone(),
            found: dtype.clone(),
        }),
        None => Ok(header),
    }
}

/// Every parameter of `model` is in `found` with its shape.
pub(crate) fn check_shapes(
    model: &ModelSpec,
    found: &BTreeMap<String, Vec<usize>>,
    path: &Path,
) -> Result<(), WeightsError> {
    for p in model.parameters() {
        let Some(shape) = found.get(&p.name) else {
            let near: Vec<_> = found
                .keys()
                .filter(|k| k.ends_with(p.name.rsplit('.').next().unwrap_or("")))
                .take(3)
                .cloned()
                .collect();
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (names like {near:?} — see docs/scenario-reference.md, \"Weight names\")")
            };
            return Err(WeightsError::Missing {
                path: path.into(),
                name: p.name,
                expected: p.shape,
                available: found.len(),
                hint,
            });
        };
        if *shape != p.shape {
            let hint = shape_hint(model, &p.name, shape);
            return Err(WeightsError::Shape {
                path: path.into(),
                name: p.name,
                found: shape.clone(),
                expected: p.shape,
                hint,
            });
        }
    }
    Ok(())
}

/// No name in `names` is outside `model`'s parameters.
fn refuse_unexpected<'a>(
    model: &ModelSpec,
    names: impl Iterator<Item = &'a String>,
    path: &Path,
) -> Result<(), WeightsError> {
    let params: std::collections::BTreeSet<String> =
        model.parameters().into_iter().map(|p| p.name).collect();
    let extra: Vec<&String> = names.filter(|n| !params.contains(*n)).collect();
    let Some(first) = extra.first() else {
        return Ok(());
    };
    let layer = first
        .strip_prefix("layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<usize>().ok());
    let hint = match layer {
        Some(l) if l >= model.layers() => format!(
            " (the file has more layers than `model.layers: {}`: set it to the file's count)",
            model.layers()
        ),
        _ => String::new(),
    };
    Err(WeightsError::Unexpected {
        path: path.into(),
        first: (*first).clone(),
        count: extra.len(),
        hint,
    })
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
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(not_a_file(&meta)));
    }
    let len = meta.len();
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

/// Why a path that is not a regular file is not read (a directory, or a
/// device like `/dev/zero` or a pipe that would fail late or never end).
fn not_a_file(meta: &std::fs::Metadata) -> std::io::Error {
    let what = if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file (a device, pipe or socket)"
    };
    std::io::Error::other(format!("{what}: give the path of a .safetensors file"))
}

/// Reads every tensor of a safetensors file as f32 (F16 and BF16 widen exactly).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    Ok(read_safetensors_stored(path, &|_| false)?
        .into_iter()
        .map(|(n, (t, _))| (n, t))
        .collect())
}

/// [`read_safetensors`], keeping each tensor's stored dtype (`F32`, `F16`,
/// `BF16`); a tensor of another dtype is refused unless `skip(name)`, when
/// it is left out ([`readable_header`]).
pub(crate) fn read_safetensors_stored(
    path: &Path,
    skip: &dyn Fn(&str) -> bool,
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
        return Err(io(not_a_file(&meta)));
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
            _ if skip(&name) => continue,
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

        Weights::check_file(&mlp(2), &p).unwrap();

        // Missing tensor: a 3-layer model from a 2-layer file; the header
        // check says the same as the loader.
        let e = Weights::load(&mlp(3), &p).unwrap_err().to_string();
        assert!(e.contains("missing tensor `layers.2.norm1.weight`"), "{e}");
        assert!(e.contains("[8]"), "{e}");
        assert_eq!(Weights::check_file(&mlp(3), &p).unwrap_err().to_string(), e);

        // Unexpected tensors: a 1-layer model from a 2-layer file is refused
        // (strict), with the fix.
        let e = Weights::load(&mlp(1), &p).unwrap_err().to_string();
        assert!(
            e.contains("tensor(s) the model does not have, e.g. `layers.1.")
                && e.contains("set it to the file's count"),
            "{e}"
        );
        assert_eq!(Weights::check_file(&mlp(1), &p).unwrap_err().to_string(), e);
        let mut extra = all.clone();
        extra.insert("step".into(), HostTensor::full(vec![1], 0.0));
        write_safetensors(&p, &extra).unwrap();
        let e = Weights::load(&mlp(2), &p).unwrap_err().to_string();
        assert!(
            e.contains("1 tensor(s) the model does not have, e.g. `step`"),
            "{e}"
        );

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
        assert_eq!(Weights::check_file(&mlp(2), &p).unwrap_err().to_string(), e);

        // Truncated: the header promises more bytes than the file has.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = Weights::check_file(&mlp(2), &p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(Weights::load(&mlp(2), &p).is_err());

        // Not a safetensors file.
        std::fs::write(&p, b"hello").unwrap();
        let e = Weights::load(&mlp(2), &p).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
