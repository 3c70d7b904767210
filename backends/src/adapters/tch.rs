//! libtorch adapter (`tch-cpu`, `tch-cuda`) through tch 0.26 (libtorch 2.13.0).
//!
//! Every op is libtorch's own ATen op, called through tch's fallible `f_*`
//! bindings: `linear` (`x Wᵀ + b`, weight in PyTorch's `[out, in]` layout),
//! `layer_norm` (`at::layer_norm`), `rms_norm` (`at::rms_norm`, which libtorch
//! 2.13 has and tch 0.26 binds), `gelu("none")` / `gelu("tanh")`, `silu`,
//! `softmax(-1)`, `matmul`, and for `attention: fused`
//! `scaled_dot_product_attention` with the additive float mask — the same
//! kernels `torch.nn.functional` dispatches to.
//!
//! Runs are serialised by a process-wide lock: libtorch's intra-op thread
//! count is global state, set per run from [`RunRequest::threads`]. Everything
//! runs under `tch::no_grad`.
//!
//! The binaries find libtorch's shared libraries through an rpath the build
//! scripts add (see `harness/build.rs`), or `LD_LIBRARY_PATH`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tch::{Device, Kind, TchError, Tensor};

use crate::backend::{Backend, BackendError, BackendInfo, Capability};
use crate::device::{BackendId, DeviceKind};
use crate::dtype::DType;
use crate::exec;
use crate::host::HostTensor;
use crate::model::{Activation, Norm};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, RunRequest};

/// The tch backends: `tch-cpu`, and `tch-cuda` (unavailable when libtorch
/// sees no CUDA device).
pub(crate) fn backends() -> Vec<Box<dyn Backend>> {
    vec![Box::new(Tch { cuda: false }), Box::new(Tch { cuda: true })]
}

/// The version of the libtorch found at build time (`torch/version.py` of the
/// wheel, e.g. `2.13.0+cu130`), else the one tch 0.26 pins (2.13.0); tch
/// exposes no run-time query for it. See `backends/build.rs`.
const LIBTORCH_VERSION: &str = env!("LD_VERSION_LIBTORCH");

/// Serialises runs: libtorch's thread count is process-wide.
static RUN_LOCK: Mutex<()> = Mutex::new(());
/// libtorch's own thread count, read before any run changed it.
static DEFAULT_THREADS: OnceLock<usize> = OnceLock::new();
/// The thread count the last run set (0: none yet).
static LAST_THREADS: AtomicUsize = AtomicUsize::new(0);

struct Tch {
    cuda: bool,
}

impl Tch {
    fn device(&self) -> Device {
        if self.cuda {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

fn kind(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
    }
}

/// libtorch's intra-op thread count as a run would see it.
fn current_threads() -> usize {
    match LAST_THREADS.load(Ordering::Relaxed) {
        // `at::get_num_threads` reads the calling thread's OpenMP setting; a
        // thread that has not run libtorch yet takes the global one, which is
        // what the last `set_num_threads` stored.
        0 => usize::try_from(tch::get_num_threads()).unwrap_or(0),
        n => n,
    }
}

impl Backend for Tch {
    fn id(&self) -> BackendId {
        BackendId {
            name: "tch",
            device: if self.cuda {
                DeviceKind::Cuda
            } else {
                DeviceKind::Cpu
            },
        }
    }

    /// MKL and oneDNN pick kernels by CPU vendor and model, not only by SIMD
    /// level: measured, the same PyTorch 2.11 case gives 3.825e-7 at layer 1
    /// on an Intel AVX-512 Xeon and 3.497e-7 on an AMD AVX-512 EPYC.
    fn class(&self) -> String {
        if self.cuda {
            format!(
                "cuda-{}",
                crate::cpu::nvidia_gpu_name()
                    .to_lowercase()
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("-")
            )
        } else {
            crate::cpu::vendor_class()
        }
    }

    fn info(&self) -> BackendInfo {
        let (device, device_name, threads) = if self.cuda {
            (DeviceKind::Cuda, crate::cpu::nvidia_gpu_name(), 1)
        } else {
            (DeviceKind::Cpu, crate::cpu::describe(), current_threads())
        };
        BackendInfo {
            name: "tch",
            device,
            version: format!(
                "tch {} / libtorch {LIBTORCH_VERSION}",
                env!("LD_VERSION_TCH")
            ),
            device_name,
            threads,
        }
    }

    fn available(&self) -> Result<(), String> {
        if self.cuda && !tch::Cuda::is_available() {
            return Err(
                "no CUDA device visible to libtorch (tch::Cuda::is_available() is false)".into(),
            );
        }
        Ok(())
    }

    fn supports(&self, what: Capability) -> Result<(), String> {
        match what {
            // Every op here has CPU kernels for f16 too in libtorch 2.11
            // (checked: linear, matmul, both norms, gelu, silu, softmax, sdpa).
            Capability::DType(_) => Ok(()),
            Capability::FusedAttention => Ok(()),
        }
    }

    fn run(&self, req: &RunRequest<'_>) -> Result<Checkpoints, BackendError> {
        self.check(req)?;
        let id = self.id().to_string();
        let _guard = RUN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        // Set on every run, also to the default: the setting is per OS thread
        // (OpenMP) as well as global, and a previous run may have changed it.
        let default =
            *DEFAULT_THREADS.get_or_init(|| usize::try_from(tch::get_num_threads()).unwrap_or(1));
        let threads = req.threads.unwrap_or(default).max(1);
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        LAST_THREADS.store(threads, Ordering::Relaxed);
        let ops = TchOps {
            device: self.device(),
        };
        tch::no_grad(|| exec::run(&ops, &id, req))
    }

    fn probe(&self, req: &ProbeRequest) -> Result<Vec<ProbePoint>, BackendError> {
        self.available().map_err(BackendError::Unavailable)?;
        self.supports(Capability::DType(req.dtype))
            .map_err(BackendError::Unsupported)?;
        let _guard = RUN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let default =
            *DEFAULT_THREADS.get_or_init(|| usize::try_from(tch::get_num_threads()).unwrap_or(1));
        let threads = req.threads.unwrap_or(default).max(1);
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        LAST_THREADS.store(threads, Ordering::Relaxed);
        let ops = TchOps {
            device: self.device(),
        };
        tch::no_grad(|| probe::run(&ops, req)).map_err(|message| BackendError::Library {
            backend: self.id().to_string(),
            message,
        })
    }
}

struct TchOps {
    device: Device,
}

/// A libtorch tensor. `tch::Tensor` is not `Clone`; a clone here shares the
/// storage (`shallow_clone`, like assigning a tensor in Python), which is
/// sound because the model never writes into a tensor.
struct Shared(Tensor);

impl Clone for Shared {
    fn clone(&self) -> Self {
        Shared(self.0.shallow_clone())
    }
}

fn e(err: TchError) -> String {
    err.to_string()
}

fn ok(r: Result<Tensor, TchError>) -> OpResult<Shared> {
    r.map(Shared).map_err(e)
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

impl Ops for TchOps {
    type T = Shared;
    /// `(weight [out, in], bias [out])`, as `torch.nn.Linear` holds them
    /// (for a `Conv1D`, the transposed view of its `[in, out]` weight).
    type Linear = (Tensor, Option<Tensor>);

    fn upload(&self, t: &HostTensor, d: DType) -> OpResult<Shared> {
        // Cast on the host, so every device starts from the same rounded values.
        ok(Tensor::f_from_slice(&t.data)
            .and_then(|x| x.f_reshape(dims(&t.shape)))
            .and_then(|x| x.f_to_kind(kind(d)))
            .and_then(|x| x.f_to_device(self.device)))
    }

    fn prepare_linear(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        d: DType,
    ) -> OpResult<Self::Linear> {
        let b = b.map(|b| self.upload(b, d).map(|t| t.0)).transpose()?;
        Ok((self.upload(w, d)?.0, b))
    }

    /// Keeps the `[in, out]` tensor as stored and hands `linear` its
    /// transposed view, which `at::linear` transposes back: the product is
    /// `addmm(bias, x, W)` on the stored layout, as `Conv1D.forward` computes.
    fn prepare_linear_in_out(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        d: DType,
    ) -> OpResult<Self::Linear> {
        let (w, b) = self.prepare_linear(w, b, d)?;
        Ok((w.f_transpose(0, 1).map_err(e)?, b))
    }

    fn linear(&self, x: &Shared, (w, b): &Self::Linear) -> OpResult<Shared> {
        ok(x.0.f_linear(w, b.as_ref()))
    }

    /// As transformers' `LlamaRotaryEmbedding` in f32 (5.x): `inv_freq =
    /// 1.0 / (theta ** (arange(0, hd, 2).float() / hd))` (`1.0 / t` is
    /// `reciprocal(t) * 1.0` in PyTorch), `freqs = pos[:, None].float() *
    /// inv_freq`, `emb = cat(freqs, freqs)`, then libtorch's `cos`, `sin`.
    fn rope_tables_f32(
        &self,
        theta: f64,
        head_dim: usize,
        (start, end): (usize, usize),
        dtype: DType,
    ) -> OpResult<(Shared, Shared)> {
        let cpu = (Kind::Float, Device::Cpu);
        let tables = || -> Result<(Tensor, Tensor), TchError> {
            let exps = Tensor::f_arange_start_step(0i64, head_dim as i64, 2i64, cpu)?
                .f_div_scalar(head_dim as i64)?;
            let inv = Tensor::f_pow_scalar(theta, &exps)?
                .f_reciprocal()?
                .f_mul_scalar(1.0)?;
            let len = (end - start) as i64;
            let pos = Tensor::f_arange_start(start as i64, end as i64, (Kind::Int64, Device::Cpu))?
                .f_to_kind(Kind::Float)?
                .f_reshape([len, 1])?;
            let freqs = pos.f_mul(&inv)?;
            let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
            let (c, s) = (emb.f_cos()?, emb.f_sin()?);
            Ok((
                c.f_to_kind(kind(dtype))?.f_to_device(self.device)?,
                s.f_to_kind(kind(dtype))?.f_to_device(self.device)?,
            ))
        };
        let (c, s) = tables().map_err(e)?;
        Ok((Shared(c), Shared(s)))
    }

    fn norm(
        &self,
        kind: Norm,
        x: &Shared,
        w: &Shared,
        b: Option<&Shared>,
        eps: f64,
    ) -> OpResult<Shared> {
        let last =
            *x.0.size()
                .last()
                .ok_or_else(|| "norm of a 0-d tensor".to_string())?;
        ok(match kind {
            // `cudnn_enable` as `torch.nn.functional.layer_norm` passes it
            // (`torch.backends.cudnn.enabled`, true by default).
            Norm::LayerNorm => {
                x.0.f_layer_norm([last], Some(&w.0), b.map(|b| &b.0), eps, true)
            }
            // transformers' LlamaRMSNorm, op by op: in f32,
            // `x * rsqrt(x.pow(2).mean(-1, keepdim) + eps)`, cast back, then `w * x`.
            Norm::RmsNorm => (|| {
                let _ = last;
                let xf = x.0.f_to_kind(Kind::Float)?;
                let var = xf
                    .f_pow_tensor_scalar(2i64)?
                    .f_mean_dim(-1, true, None::<Kind>)?;
                let h = xf.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?;
                w.0.f_mul(&h.f_to_kind(x.0.kind())?)
            })(),
        })
    }

    fn activation(&self, x: &Shared, act: Activation) -> OpResult<Shared> {
        ok(match act {
            Activation::GeluErf => x.0.f_gelu("none"),
            Activation::GeluTanh => x.0.f_gelu("tanh"),
            Activation::Silu => x.0.f_silu(),
            // transformers' NewGELUActivation, op by op:
            // 0.5 * x * (1.0 + tanh(sqrt(2/π) * (x + 0.044715 * pow(x, 3.0))))
            Activation::GeluNew => (|| {
                let inner =
                    x.0.f_add(&x.0.f_pow_tensor_scalar(3.0)?.f_mul_scalar(0.044715)?)?;
                let t = inner
                    .f_mul_scalar((2.0 / std::f64::consts::PI).sqrt())?
                    .f_tanh()?
                    .f_add_scalar(1.0)?;
                x.0.f_mul_scalar(0.5)?.f_mul(&t)
            })(),
        })
    }

    fn add(&self, a: &Shared, b: &Shared) -> OpResult<Shared> {
        ok(a.0.f_add(&b.0))
    }

    fn mul(&self, a: &Shared, b: &Shared) -> OpResult<Shared> {
        ok(a.0.f_mul(&b.0))
    }

    fn scale(&self, x: &Shared, s: f64) -> OpResult<Shared> {
        ok(x.0.f_mul_scalar(s))
    }

    fn matmul(&self, a: &Shared, b: &Shared) -> OpResult<Shared> {
        ok(a.0.f_matmul(&b.0))
    }

    fn softmax_last(&self, x: &Shared) -> OpResult<Shared> {
        // No `dtype` argument, as `torch.softmax(x, -1)`: computed in x's kind.
        ok(x.0.f_softmax(-1, None::<Kind>))
    }

    fn reshape(&self, x: &Shared, shape: &[usize]) -> OpResult<Shared> {
        ok(x.0.f_reshape(dims(shape)))
    }

    fn transpose(&self, x: &Shared, a: usize, b: usize) -> OpResult<Shared> {
        ok(x.0.f_transpose(a as i64, b as i64))
    }

    fn narrow(&self, x: &Shared, dim: usize, start: usize, len: usize) -> OpResult<Shared> {
        ok(x.0.f_narrow(dim as i64, start as i64, len as i64))
    }

    fn cat(&self, xs: &[Shared], dim: usize) -> OpResult<Shared> {
        let xs: Vec<&Tensor> = xs.iter().map(|x| &x.0).collect();
        ok(Tensor::f_cat(&xs, dim as i64))
    }

    fn fresh(&self, x: &Shared) -> OpResult<Shared> {
        // `copy` is `zeros_like` + `copy_`, which keeps a view's strides:
        // made contiguous first.
        ok(x.0.f_contiguous().map(|c| c.copy()))
    }

    fn shape(&self, x: &Shared) -> Vec<usize> {
        x.0.size().into_iter().map(|d| d as usize).collect()
    }

    fn download(&self, x: &Shared) -> OpResult<Vec<f64>> {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let flat =
            x.0.f_to_device(Device::Cpu)
                .and_then(|x| x.f_to_kind(Kind::Double))
                .and_then(|x| x.f_reshape([-1]))
                .map_err(e)?;
        Vec::<f64>::try_from(&flat).map_err(e)
    }

    fn fused_attention(
        &self,
        q: &Shared,
        k: &Shared,
        v: &Shared,
        mask: Option<&Shared>,
        scale: f64,
    ) -> Option<OpResult<Shared>> {
        Some(ok(Tensor::f_scaled_dot_product_attention(
            &q.0,
            &k.0,
            &v.0,
            mask.map(|m| &m.0),
            0.0,
            false,
            Some(scale),
            false,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttentionForm, DecoderSpec, ModelSpec, ResidualMlpSpec};
    use crate::reference::Reference;
    use crate::request::{Execution, Row, Schedule};
    use crate::weights::{Weights, generate_input};

    fn mlp(layers: usize, dim: usize, hidden: usize) -> ModelSpec {
        ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers,
            dim,
            hidden,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            residual: true,
        })
    }

    fn decoder(rope_theta: Option<f64>, attention: AttentionForm) -> ModelSpec {
        ModelSpec::Decoder(DecoderSpec {
            layers: 2,
            dim: 8,
            heads: 2,
            hidden: 16,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            rope_theta,
            attention,
        })
    }

    /// Positions 3, 4, 5 of batch element 1.
    fn observed() -> Vec<Row> {
        (3..6).map(|pos| Row { batch: 1, pos }).collect()
    }

    fn cpu() -> Tch {
        Tch { cuda: false }
    }

    fn run(
        backend: &dyn Backend,
        model: &ModelSpec,
        input: &HostTensor,
        dtype: DType,
        schedule: &Schedule,
        observed: &[Row],
    ) -> Checkpoints {
        let weights = Weights::init(model, 7, 0.2);
        let req = RunRequest {
            model,
            weights: &weights,
            input,
            dtype,
            schedule,
            observed,
            threads: None,
            execution: Execution::Standard,
            diagnose: Default::default(),
        };
        backend
            .run(&req)
            .unwrap_or_else(|err| panic!("{}: {err}", backend.info().id()))
    }

    /// Max |tch-cpu − oracle| per layer.
    fn drift(model: &ModelSpec, dtype: DType, schedule: &Schedule) -> Vec<f64> {
        let input = generate_input(2, 6, 8, 11);
        let rows = observed();
        let got = run(&cpu(), model, &input, dtype, schedule, &rows);
        let want = run(&Reference, model, &input, dtype, schedule, &rows);
        assert_eq!(got.layers.len(), want.layers.len());
        got.layers
            .iter()
            .zip(&want.layers)
            .map(|(g, w)| {
                assert_eq!(g.len(), w.len());
                g.iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max)
            })
            .collect()
    }

    fn assert_close(what: &str, d: &[f64], tol: f64) {
        println!("{what}: max |tch-cpu - reference| per layer = {d:?}");
        assert!(d.iter().all(|&x| x < tol), "{what}: {d:?} exceeds {tol}");
    }

    #[test]
    fn f64_matches_oracle_closely() {
        let m = decoder(Some(10000.0), AttentionForm::Fused);
        assert_close(
            "decoder f64 fused",
            &drift(&m, DType::F64, &Schedule::kv_cache(3, 6)),
            1e-12,
        );
    }

    #[test]
    fn half_precisions_run_on_cpu() {
        for dtype in [DType::F16, DType::BF16] {
            for attention in [AttentionForm::Manual, AttentionForm::Fused] {
                let m = decoder(Some(10000.0), attention);
                let d = drift(&m, dtype, &Schedule::Full);
                assert_close(&format!("decoder {dtype} {}", attention.name()), &d, 0.1);
            }
        }
    }

    #[test]
    fn threads_are_set_per_run() {
        let m = mlp(2, 8, 12);
        let input = generate_input(2, 6, 8, 11);
        let rows = observed();
        let weights = Weights::init(&m, 7, 0.2);
        let req = RunRequest {
            model: &m,
            weights: &weights,
            input: &input,
            dtype: DType::F32,
            schedule: &Schedule::Full,
            observed: &rows,
            threads: Some(1),
            execution: Execution::Standard,
            diagnose: Default::default(),
        };
        cpu().run(&req).unwrap();
        // The OpenMP setting is per OS thread: this one ran with 1.
        assert_eq!(tch::get_num_threads(), 1);
    }

    #[test]
    fn info_and_availability() {
        let b = backends();
        let ids: Vec<String> = b.iter().map(|b| b.id().to_string()).collect();
        assert_eq!(ids, ["tch-cpu", "tch-cuda"]);
        let info = b[0].info();
        println!("{info:?}");
        assert!(info.version.starts_with(&format!(
            "tch {} / libtorch {LIBTORCH_VERSION}",
            env!("LD_VERSION_TCH")
        )));
        assert!(b[0].available().is_ok());
        println!("tch-cuda available: {:?}", b[1].available());
    }

    /// libtorch's CPU GEMM is not batch-invariant, so the observed rows
    /// computed within the whole batch (`full`) and alone (`rows`) may
    /// differ — but only by rounding: finite and within 1e-5 at two layers
    /// (measured on Intel AVX-512: ≤ 3.8e-6 at dim 768). The per-layer
    /// figures are printed.
    #[test]
    fn full_vs_rows_differ_by_rounding_only() {
        // [4, 32, 64] as asked; [4, 32, 768] for comparison with the seed's
        // width. `rows` feeds the observed rows as one [n, 1, dim] batch, so
        // n is the GEMM's M (PyTorch 2.11 on this CPU: M = 1 and 2 differ
        // from the full batch, M = 12 does not).
        let all: Vec<Row> = (0..4)
            .flat_map(|b| [0, 17, 31].map(|pos| Row { batch: b, pos }))
            .collect();
        for (dim, hidden) in [(64, 256), (768, 3072)] {
            let m = mlp(2, dim, hidden);
            let input = generate_input(4, 32, dim, 5);
            for rows in [&all[11..], &all[10..], &all[..]] {
                let full = run(&cpu(), &m, &input, DType::F32, &Schedule::Full, rows);
                let alone = run(&cpu(), &m, &input, DType::F32, &Schedule::Rows, rows);
                let per_layer: Vec<f64> = full
                    .layers
                    .iter()
                    .zip(&alone.layers)
                    .map(|(f, r)| {
                        // NaN counts as infinitely far, never as close.
                        f.iter()
                            .zip(r)
                            .map(|(a, b)| (a - b).abs())
                            .map(|d| if d.is_nan() { f64::INFINITY } else { d })
                            .fold(0.0, f64::max)
                    })
                    .collect();
                assert_eq!(per_layer.len(), 2);
                let worst = per_layer.iter().copied().fold(0.0, f64::max);
                let d: Vec<String> = per_layer.iter().map(|d| format!("{d:e}")).collect();
                println!(
                    "tch-cpu residual_mlp [4, 32, {dim}], {} observed row(s): max |full - rows| per layer = [{}]",
                    rows.len(),
                    d.join(", ")
                );
                assert!(
                    worst.is_finite() && worst <= 1e-5,
                    "[4, 32, {dim}], {} rows: max |full - rows| {worst:e}",
                    rows.len()
                );
            }
        }
    }
}
