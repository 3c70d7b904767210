//! Baselines: the observed rows of earlier runs, kept in a safetensors file,
//! so that "this run vs that one" — libtorch 2.13 against the 2.11 it
//! replaces, on the same weights — is a comparison like any other.
//!
//! `layerdrift run --save-baseline FILE` writes one tensor per backend run,
//! `{backend}/{strategy}/{variant}`, of shape `[layers, rows, dim]`: the
//! checkpoints exactly (as F32 where every value is an f32, else F64). The
//! header's metadata holds the format, the scenario, each variant's identity
//! ([`VariantKey`]: model, input shape, dtype, observed rows, execution, and a
//! hash of the weights and input) and each entry's backend, version, device,
//! dtype, threads and machine class ([`EntryInfo`]).
//!
//! Reading refuses what is not a baseline of *this* computation: another
//! format, another scenario, another variant set, or a variant whose model,
//! shape, dtype, observed rows or data differ — naming the file and the
//! mismatch, so unrelated numbers are never compared.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layerdrift_backends::{Checkpoints, HostTensor, Weights};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::scenario::Variant;

/// The format tag in every baseline's metadata.
pub const FORMAT: &str = "layerdrift-baseline/1";

/// What makes two runs of a variant the same computation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantKey {
    /// Variant label, e.g. `residual=true,batch=8`.
    pub label: String,
    /// The model description (kind, layers, widths, norm, activation, …).
    pub model: String,
    /// Input batch size.
    pub batch: usize,
    /// Input sequence length.
    pub seq: usize,
    /// Computation dtype.
    pub dtype: String,
    /// Observed rows as `[batch, pos]`.
    pub observed: Vec<[usize; 2]>,
    /// `standard`, `batch_invariant` or `fixed_shape(tile=N)`.
    pub execution: String,
    /// FNV-1a of the weights' and the input's f32 bits ([`data_hash`]).
    pub data: String,
}

impl VariantKey {
    /// The key of `var`, whose weights and input hash to `data`.
    pub fn new(var: &Variant, data: String) -> VariantKey {
        VariantKey {
            label: var.label.clone(),
            model: format!("{:?}", var.model),
            batch: var.batch,
            seq: var.seq,
            dtype: var.dtype.to_string(),
            observed: var.observed.iter().map(|r| [r.batch, r.pos]).collect(),
            execution: var.execution.name(),
            data,
        }
    }

    /// The first field that differs from `other`, as `field: a vs b`.
    fn mismatch(&self, other: &VariantKey) -> Option<String> {
        let fields: [(&str, String, String); 7] = [
            ("model", self.model.clone(), other.model.clone()),
            (
                "input shape",
                format!("[{}, {}]", self.batch, self.seq),
                format!("[{}, {}]", other.batch, other.seq),
            ),
            ("dtype", self.dtype.clone(), other.dtype.clone()),
            (
                "observed rows",
                format!("{:?}", self.observed),
                format!("{:?}", other.observed),
            ),
            ("execution", self.execution.clone(), other.execution.clone()),
            (
                "weights and input (hash)",
                self.data.clone(),
                other.data.clone(),
            ),
            ("label", self.label.clone(), other.label.clone()),
        ];
        fields
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(f, a, b)| format!("{f}: baseline {a}, this run {b}"))
    }
}

/// Who computed one baseline entry, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Backend id, e.g. `tch-cpu`.
    pub backend: String,
    /// Strategy.
    pub strategy: String,
    /// Variant label.
    pub variant: String,
    /// Library version, e.g. `libtorch 2.11.0 (tch 0.24.0)`.
    pub version: String,
    /// Device in words.
    pub device: String,
    /// Threads.
    pub threads: usize,
    /// Machine class of the backend's numbers.
    pub class: String,
    /// dtype of the run.
    pub dtype: String,
}

impl EntryInfo {
    /// The tensor name: `{backend}/{strategy}/{variant}`.
    pub fn tensor_name(&self) -> String {
        format!("{}/{}/{}", self.backend, self.strategy, self.variant)
    }
}

/// One run in a baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Who computed it.
    pub info: EntryInfo,
    /// Its observed rows after every layer, exactly as the run returned them.
    pub checkpoints: Checkpoints,
}

/// A baseline file, read and checked for shape.
#[derive(Clone, Debug)]
pub struct Baseline {
    /// Where it was read from.
    pub path: PathBuf,
    /// The scenario it was recorded from.
    pub scenario: String,
    /// The layerdrift version that wrote it.
    pub layerdrift: String,
    /// Every variant of the scenario, as recorded.
    pub variants: Vec<VariantKey>,
    /// Every run, in file order.
    pub entries: Vec<Arc<Entry>>,
}

fn fnv_f32(mut h: u64, xs: &[f32], shape: &[usize]) -> u64 {
    for d in shape {
        h = (h ^ *d as u64).wrapping_mul(0x100_0000_01B3);
    }
    for x in xs {
        h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// The FNV-1a state after the shapes and f32 bits of every weight, in name
/// order; [`data_hash`] continues it over the input. Variants of one model
/// share it, so it is computed once per model.
pub fn weights_state(weights: &Weights) -> u64 {
    weights.iter().fold(Checkpoints::FNV_OFFSET, |h, (_, t)| {
        fnv_f32(h, &t.data, &t.shape)
    })
}

/// FNV-1a over the weights (from their [`weights_state`]) and the input's
/// shape and f32 bits: what makes a baseline of other weights or another
/// input refused.
pub fn data_hash(weights_state: u64, input: &HostTensor) -> String {
    format!("{:016x}", fnv_f32(weights_state, &input.data, &input.shape))
}

fn exact_in_f32(xs: &[f64]) -> bool {
    xs.iter()
        .all(|x| f64::from(*x as f32).to_bits() == x.to_bits())
}

/// Writes `entries` (runs of `scenario`, whose variants are `variants`) to
/// `path`.
pub fn write(
    path: &Path,
    scenario: &str,
    variants: &[VariantKey],
    entries: &[Entry],
) -> Result<(), String> {
    let fail = |e: String| format!("{}: cannot write the baseline: {e}", path.display());
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("scenario".into(), scenario.into());
    meta.insert("layerdrift".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert(
        "variants".into(),
        serde_json::to_string(variants).map_err(|e| fail(e.to_string()))?,
    );
    let mut buffers: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for e in entries {
        let name = e.info.tensor_name();
        let c = &e.checkpoints;
        let flat: Vec<f64> = c.layers.iter().flatten().copied().collect();
        let (dtype, bytes) = encode(&flat);
        let shape = vec![c.layers.len(), c.rows, c.dim];
        // A language model's head: `{name}/final_norm` `[rows, dim]` and
        // `{name}/logits` `[rows, vocab]`, read back with the entry.
        if let Some(h) = &c.head {
            for (suffix, values, width) in [
                (HEAD_NORM, &h.final_norm, c.dim),
                (HEAD_LOGITS, &h.logits, h.vocab),
            ] {
                let (d, b) = encode(values);
                buffers.insert(format!("{name}/{suffix}"), (d, vec![c.rows, width], b));
            }
        }
        if buffers
            .insert(name.clone(), (dtype, shape, bytes))
            .is_some()
        {
            return Err(fail(format!("two runs named `{name}`")));
        }
        meta.insert(
            format!("entry:{name}"),
            serde_json::to_string(&e.info).map_err(|x| fail(x.to_string()))?,
        );
    }
    let views = buffers
        .iter()
        .map(|(n, (d, s, b))| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| fail(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| fail(e.to_string()))
}

/// The tensor-name suffixes of a language model's head in a baseline.
const HEAD_NORM: &str = "final_norm";
const HEAD_LOGITS: &str = "logits";

/// Values as F32 where every one is an f32 (exactly), else F64.
fn encode(flat: &[f64]) -> (Dtype, Vec<u8>) {
    if exact_in_f32(flat) {
        let b = flat
            .iter()
            .flat_map(|x| (*x as f32).to_le_bytes())
            .collect();
        (Dtype::F32, b)
    } else {
        (
            Dtype::F64,
            flat.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
}

/// A tensor's values as f64 (F32 or F64 only).
fn decode(name: &str, view: &TensorView<'_>) -> Result<Vec<f64>, String> {
    let raw = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        Dtype::F64 => Ok(raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        d => Err(format!("tensor `{name}` is {d:?}, expected F32 or F64")),
    }
}

/// Reads a baseline. Errors name the file and what is wrong with it.
pub fn read(path: &Path) -> Result<Baseline, String> {
    let bad = |m: String| format!("{}: {m}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(bad(
            "not a regular file: give the path of a baseline written by `layerdrift run --save-baseline`".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(format!(
            "not a safetensors file, or a truncated one ({e}): write it again with `layerdrift run --save-baseline`"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let info = header.metadata().clone().unwrap_or_default();
    match info.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(bad(format!(
                "a baseline of format `{f}`; this layerdrift reads `{FORMAT}`"
            )));
        }
        None => {
            return Err(bad(
                "a safetensors file, but not a layerdrift baseline (no `format` in its metadata): weights are given with `weights: { file: … }`, baselines are written by `layerdrift run --save-baseline`".into(),
            ));
        }
    }
    let field = |k: &str| {
        info.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no `{k}` in the baseline's metadata")))
    };
    let scenario = field("scenario")?;
    let layerdrift = field("layerdrift")?;
    let variants: Vec<VariantKey> = serde_json::from_str(&field("variants")?)
        .map_err(|e| bad(format!("metadata `variants`: {e}")))?;
    let mut entries = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        if name.ends_with(&format!("/{HEAD_NORM}")) || name.ends_with(&format!("/{HEAD_LOGITS}")) {
            continue;
        }
        let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
        let einfo: EntryInfo = serde_json::from_str(&field(&format!("entry:{name}"))?)
            .map_err(|e| bad(format!("metadata of `{name}`: {e}")))?;
        if einfo.tensor_name() != name {
            return Err(bad(format!(
                "tensor `{name}` is described as `{}`",
                einfo.tensor_name()
            )));
        }
        let [layers, rows, dim] = view.shape()[..] else {
            return Err(bad(format!(
                "tensor `{name}` has shape {:?}, expected [layers, rows, dim]",
                view.shape()
            )));
        };
        let values = decode(&name, &view).map_err(bad)?;
        let per = rows * dim;
        if values.len() != layers * per {
            return Err(bad(format!(
                "tensor `{name}` holds the wrong number of values"
            )));
        }
        let checkpoints = Checkpoints {
            dim,
            rows,
            layers: if per == 0 {
                vec![Vec::new(); layers]
            } else {
                values.chunks(per).map(<[f64]>::to_vec).collect()
            },
            ops: Vec::new(),
            head: read_head(&st, &name, rows, dim).map_err(bad)?,
        };
        entries.push(Arc::new(Entry {
            info: einfo,
            checkpoints,
        }));
    }
    Ok(Baseline {
        path: path.to_path_buf(),
        scenario,
        layerdrift,
        variants,
        entries,
    })
}

/// The head tensors of entry `name`, if the baseline has them.
fn read_head(
    st: &SafeTensors<'_>,
    name: &str,
    rows: usize,
    dim: usize,
) -> Result<Option<layerdrift_backends::HeadCheckpoints>, String> {
    let (Ok(n), Ok(l)) = (
        st.tensor(&format!("{name}/{HEAD_NORM}")),
        st.tensor(&format!("{name}/{HEAD_LOGITS}")),
    ) else {
        return Ok(None);
    };
    let vocab = match l.shape() {
        [r, v] if *r == rows && n.shape() == [rows, dim] => *v,
        s => {
            return Err(format!(
                "tensor `{name}/{HEAD_LOGITS}` has shape {s:?}, expected [{rows}, vocab]"
            ));
        }
    };
    Ok(Some(layerdrift_backends::HeadCheckpoints {
        vocab,
        final_norm: decode(name, &n)?,
        logits: decode(name, &l)?,
    }))
}

impl Baseline {
    /// Refuses a baseline of another scenario, or one that lacks a variant
    /// of this run (recorded from another variant set). A run of some of
    /// the recorded variants is fine: each is checked by its key.
    pub fn check_scenario(&self, scenario: &str, labels: &[&str]) -> Result<(), String> {
        let at = self.path.display();
        if self.scenario != scenario {
            return Err(format!(
                "{at}: recorded from scenario `{}`, not `{scenario}`: a baseline only compares runs of the scenario it was saved from",
                self.scenario
            ));
        }
        let mut have: Vec<&str> = self.variants.iter().map(|v| v.label.as_str()).collect();
        have.sort_unstable();
        let missing: Vec<&str> = labels
            .iter()
            .copied()
            .filter(|l| have.binary_search(l).is_err())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{at}: recorded for variants [{}], which lack [{}] of this scenario: save a new baseline for this variant set",
                have.join("; "),
                missing.join("; ")
            ));
        }
        Ok(())
    }

    /// The entry of `backend`/`strategy` for the variant `key`: `Err` when
    /// the baseline's variant is another computation, `Ok(None)` when the
    /// baseline has no such run.
    pub fn entry(
        &self,
        key: &VariantKey,
        backend: &str,
        strategy: &str,
    ) -> Result<Option<&Arc<Entry>>, String> {
        let at = self.path.display();
        let Some(recorded) = self.variants.iter().find(|v| v.label == key.label) else {
            return Err(format!(
                "{at}: has no variant `{}`: save a new baseline for this variant set",
                key.label
            ));
        };
        if let Some(m) = recorded.mismatch(key) {
            return Err(format!(
                "{at}: variant `{}` was another computation — {m}",
                key.label
            ));
        }
        Ok(self.run_of(backend, strategy, &key.label))
    }

    /// The run of `backend`/`strategy` on the variant labelled `label`, if
    /// the baseline holds one (no check that it is the same computation:
    /// see [`Baseline::entry`]).
    pub fn run_of(&self, backend: &str, strategy: &str, label: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| {
            e.info.backend == backend && e.info.strategy == strategy && e.info.variant == label
        })
    }

    /// `backend/strategy` of every entry, deduplicated, for messages.
    pub fn runs(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}/{}", e.info.backend, e.info.strategy))
            .collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(label: &str, batch: usize) -> VariantKey {
        VariantKey {
            label: label.into(),
            model: "ResidualMlp(..)".into(),
            batch,
            seq: 4,
            dtype: "f32".into(),
            observed: vec![[batch - 1, 3]],
            execution: "standard".into(),
            data: "0123456789abcdef".into(),
        }
    }

    fn entry(backend: &str, values: Vec<Vec<f64>>) -> Entry {
        Entry {
            info: EntryInfo {
                backend: backend.into(),
                strategy: "full".into(),
                variant: "batch=1".into(),
                version: "lib 1.0".into(),
                device: "cpu".into(),
                threads: 2,
                class: "x86_64-test".into(),
                dtype: "f32".into(),
            },
            checkpoints: Checkpoints {
                dim: 3,
                rows: 1,
                layers: values,
                ops: Vec::new(),
                head: None,
            },
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("layerdrift-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join(name)
    }

    #[test]
    fn round_trip_is_bitwise_in_f32_and_f64() {
        let f32s = vec![
            vec![0.1f32 as f64, -2.5, 1e-30f32 as f64],
            vec![3.0, -0.0, 7.25],
        ];
        // 0.1 in f64 is not an f32: that entry is stored as F64.
        let f64s = vec![vec![0.1, 1.0 / 3.0, -1e-300], vec![f64::MAX, 2.0, 5e-324]];
        let entries = vec![entry("candle-cpu", f32s), entry("reference-cpu", f64s)];
        let keys = vec![key("batch=1", 1)];
        let path = tmp("round-trip.safetensors");
        write(&path, "tiny", &keys, &entries).expect("write");
        let b = read(&path).expect("read");
        assert_eq!(b.scenario, "tiny");
        assert_eq!(b.variants, keys);
        assert_eq!(b.entries.len(), 2);
        for (want, got) in entries.iter().zip(&b.entries) {
            assert_eq!(want.info, got.info);
            let bits = |c: &Checkpoints| -> Vec<u64> {
                c.layers.iter().flatten().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&want.checkpoints), bits(&got.checkpoints));
            assert_eq!(
                (want.checkpoints.rows, want.checkpoints.dim),
                (got.checkpoints.rows, got.checkpoints.dim)
            );
        }
        let e = b.entry(&keys[0], "candle-cpu", "full").expect("same key");
        assert!(e.is_some());
        assert!(
            b.entry(&keys[0], "tch-cpu", "full")
                .expect("same key")
                .is_none()
        );
    }

    #[test]
    fn another_shape_scenario_or_variant_set_is_refused() {
        let path = tmp("refuse.safetensors");
        let keys = vec![key("batch=1", 1)];
        write(
            &path,
            "tiny",
            &keys,
            &[entry("candle-cpu", vec![vec![1.0, 2.0, 3.0]])],
        )
        .expect("write");
        let b = read(&path).expect("read");
        let mut other = key("batch=1", 1);
        other.seq = 8;
        let e = b.entry(&other, "candle-cpu", "full").unwrap_err();
        assert!(
            e.contains("input shape: baseline [1, 4], this run [1, 8]"),
            "{e}"
        );
        assert!(e.contains("refuse.safetensors"), "{e}");
        let mut other = key("batch=1", 1);
        other.model = "Decoder(..)".into();
        assert!(
            b.entry(&other, "candle-cpu", "full")
                .unwrap_err()
                .contains("model")
        );
        let e = b.check_scenario("other", &["batch=1"]).unwrap_err();
        assert!(e.contains("scenario `tiny`, not `other`"), "{e}");
        let e = b
            .check_scenario("tiny", &["batch=1", "batch=8"])
            .unwrap_err();
        assert!(e.contains("variant set"), "{e}");
        assert!(b.check_scenario("tiny", &["batch=1"]).is_ok());
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_by_name() {
        let path = tmp("trunc.safetensors");
        write(
            &path,
            "tiny",
            &[key("batch=1", 1)],
            &[entry("candle-cpu", vec![vec![1.0, 2.0, 3.0]])],
        )
        .expect("write");
        let bytes = std::fs::read(&path).expect("bytes");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("truncate");
        let e = read(&path).unwrap_err();
        assert!(
            e.contains("trunc.safetensors") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, b"not a baseline at all").expect("garbage");
        assert!(read(&path).unwrap_err().contains("not a safetensors file"));
        // A weights file is safetensors, but not a baseline.
        let mut t = BTreeMap::new();
        t.insert("w".to_string(), HostTensor::new(vec![2], vec![1.0, 2.0]));
        layerdrift_backends::weights::write_safetensors(&path, &t).expect("weights");
        assert!(
            read(&path)
                .unwrap_err()
                .contains("not a layerdrift baseline")
        );
        assert!(
            read(&tmp("missing.safetensors"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
