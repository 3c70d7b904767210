//! burn adapter: `burn-flex-cpu` and `burn-ndarray-cpu`, burn 0.22.1's two
//! pure-Rust CPU backends, and with the GPU features `burn-wgpu` and
//! `burn-cuda`: burn's cubecl backend on a wgpu device (Vulkan, Metal, DX12)
//! or a CUDA GPU. All of them run the same generic ops below.
//!
//! # Why `burn-backend` and not `burn`
//!
//! The `burn` crate (and `burn-tensor`, `burn-core`, `burn-nn`) depends on
//! `burn-dispatch`, whose *optional* dependency `burn-tch` brings its own
//! `tch`/`torch-sys`, and `torch-sys` declares `links = "tch"`. Cargo checks
//! `links` conflicts across optional dependencies too, so that graph cannot
//! resolve next to our `tch` 0.24. The
//! adapter therefore drives the backends through the layer burn's `Tensor`
//! API delegates to: the [`burn_backend::Backend`] trait and its op traits
//! (`FloatTensorOps`, `ActivationOps`, `ModuleOps`, …), e.g.
//! `<Flex as Backend>::float_matmul(a, b)`. The kernels are burn's own.
//!
//! # Mirroring burn's compositions
//!
//! Where `burn-tensor` / `burn-nn` 0.22.1 compose several backend ops, the
//! adapter issues the same ops in the same order, so the numbers equal what a
//! burn user gets:
//! - `nn::Linear::forward` → `burn_tensor::module::linear` → `ModuleOps::linear`
//!   (burn-dispatch forwards to the default, which may fold the batch dims into
//!   rows before one `[rows, in] @ [in, out]` matmul, then adds the bias).
//!   burn's weight is `[in, out]`: PyTorch's `[out, in]` is transposed on the host.
//! - `nn::LayerNorm::forward` → `ModuleOps::layer_norm` (flex has a fused
//!   kernel), widened to f32 for f16 inputs as burn-nn does.
//! - `nn::RmsNorm::forward`: `x / sqrt(mean(x.cast(f32)²) + eps).cast(dtype) * γ`
//!   — burn computes the RMS in f32 whatever the model's dtype.
//! - `activation::gelu` → `ActivationOps::gelu` (exact, erf);
//!   `activation::gelu_approximate` is composed of scalar/elementwise ops
//!   (tanh form); `activation::silu` is `x * ActivationOps::sigmoid(x)`;
//!   `activation::softmax` → `ActivationOps::softmax`.
//! - `Tensor::matmul` → `float_matmul`, with its `[…, B, 1, K] @ […, 1, K, N]`
//!   reinterpretation.
//!
//! Fused attention is `ModuleOps::attention` (`burn_tensor::module::attention`):
//! a real kernel on flex (naive or flash-tiled by size), burn's composed
//! fallback on ndarray.
//!
//! burn's ops panic on misuse rather than return errors; a panic during a run
//! is caught and reported as a library error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use burn_backend::ops::AttentionModuleOptions;
use burn_backend::tensor::FloatTensor;
use burn_backend::{
    Backend as BurnBackend, BackendTypes, DType as BDType, FloatDType, Scalar, Shape, Slice,
    TensorData, TensorMetadata, get_or_init_device_settings,
};
use burn_flex::Flex;
// burn 0.22 marks burn-ndarray deprecated in favour of flex; it still ships
// and is one of the two CPU backends we compare.
#[allow(deprecated)]
use burn_ndarray::NdArray;

use crate::backend::{Backend, BackendError, BackendInfo, Capability};
use crate::device::{BackendId, DeviceKind};
use crate::dtype::DType;
use crate::exec;
use crate::host::HostTensor;
use crate::model::{Activation, Norm};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, RunRequest};

/// The burn backends this build has: `burn-flex-cpu`, `burn-ndarray-cpu`, and
/// with the GPU features `burn-cubecl-wgpu` and `burn-cubecl-cuda` (burn's
/// cubecl backend on a wgpu or a CUDA device; features `burn-wgpu`, `burn-cuda`).
pub(crate) fn backends() -> Vec<Box<dyn Backend>> {
    #[allow(unused_mut)]
    let mut out = cpu_backends();
    #[cfg(feature = "burn-wgpu")]
    out.push(Box::new(gpu::wgpu()));
    #[cfg(feature = "burn-cuda")]
    out.push(Box::new(gpu::cuda()));
    out
}

/// burn's two CPU backends.
#[allow(deprecated)]
fn cpu_backends() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(
            Burn::<Flex>::new(
                "burn-flex",
                DeviceKind::Cpu,
                format!("burn-flex {}", env!("LD_VERSION_BURN_FLEX")),
                // flex parallelises elementwise ops, reductions and its `gemm`
                // matmuls (`Parallelism::Rayon(0)`) on rayon's global pool.
                rayon_global_threads,
                cpu_device::<Flex>,
            )
            // flex's numbers moved between two AMD AVX-512 machines (the small
            // scenarios matched the Intel AVX2 snapshots on one, not on the
            // other): its `gemm` blocking follows more than the SIMD level, so
            // its class names the CPU's vendor and model too.
            .with_class(crate::cpu::vendor_class),
        ),
        Box::new(Burn::<NdArray>::new(
            "burn-ndarray",
            DeviceKind::Cpu,
            format!("burn-ndarray {}", env!("LD_VERSION_BURN_NDARRAY")),
            // ndarray's matmuls (most of the work) run on `matrixmultiply`'s
            // own thread pool, sized by `MATMUL_NUM_THREADS`; its elementwise
            // ops and the loop over matmul batches use rayon's global pool.
            matrixmultiply_threads,
            cpu_device::<NdArray>,
        )),
    ]
}

/// A CPU backend's only device, described with the host's SIMD level.
fn cpu_device<B: BurnBackend>() -> Result<(B::Device, String), String> {
    Ok((B::Device::default(), crate::cpu::describe()))
}

/// The size of rayon's global pool, by rayon-core 1.13's rule (rayon is not
/// reachable from here to ask): `RAYON_NUM_THREADS`, then the deprecated
/// `RAYON_RS_NUM_CPUS`, then the available parallelism.
fn rayon_global_threads() -> usize {
    let default = || std::thread::available_parallelism().map_or(1, |n| n.get());
    let var = |name| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
    };
    match var("RAYON_NUM_THREADS") {
        Some(0) => return default(),
        Some(n) => return n,
        None => {}
    }
    match var("RAYON_RS_NUM_CPUS") {
        Some(n) if n > 0 => n,
        _ => default(),
    }
}

/// `matrixmultiply` 0.3's thread count with its `threading` feature:
/// `MATMUL_NUM_THREADS` (unparsable: 1), else the physical core count,
/// clamped to `1..=4`.
fn matrixmultiply_threads() -> usize {
    let n = match std::env::var("MATMUL_NUM_THREADS") {
        Ok(s) if !s.is_empty() => s.parse().unwrap_or(1),
        _ => physical_cores(),
    };
    n.clamp(1, 4)
}

/// Physical cores as `num_cpus::get_physical` counts them on Linux (distinct
/// `physical id`/`core id` pairs in `/proc/cpuinfo`), else the available
/// parallelism.
fn physical_cores() -> usize {
    let logical = || std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical();
    };
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = None;
    for line in info.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => physical = Some(v.to_string()),
            (Some("core id"), Some(v)) => {
                cores.insert((physical.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    if cores.is_empty() {
        logical()
    } else {
        cores.len()
    }
}

/// How a burn backend finds its device: the device and its name, or why this
/// machine has none.
type OpenDevice<B> = fn() -> Result<(<B as BackendTypes>::Device, String), String>;

/// One burn backend on one device.
struct Burn<B: BurnBackend> {
    name: &'static str,
    device: DeviceKind,
    version: String,
    threads: fn() -> usize,
    open: OpenDevice<B>,
    /// The device, looked up once: initialising a GPU runtime is not free.
    opened: OnceLock<Result<(B::Device, String), String>>,
    /// The machine class, where it is finer than the default (SIMD level).
    class: Option<fn() -> String>,
}

impl<B: BurnBackend> Burn<B> {
    fn new(
        name: &'static str,
        device: DeviceKind,
        version: String,
        threads: fn() -> usize,
        open: OpenDevice<B>,
    ) -> Self {
        Burn {
            name,
            device,
            version,
            threads,
            open,
            opened: OnceLock::new(),
            class: None,
        }
    }

    /// With a machine class finer than the default.
    fn with_class(mut self, class: fn() -> String) -> Self {
        self.class = Some(class);
        self
    }

    /// The device, or why there is none. A runtime that panics while looking
    /// for its device (a missing driver library) counts as no device.
    fn opened(&self) -> Result<&(B::Device, String), &String> {
        self.opened
            .get_or_init(|| catch_unwind(self.open).unwrap_or_else(|p| Err(panic_message(p))))
            .as_ref()
    }
}

/// The message of a caught panic.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the library panicked".into())
}

fn burn_dtype(d: DType) -> BDType {
    match d {
        DType::F32 => BDType::F32,
        DType::F64 => BDType::F64,
        DType::F16 => BDType::F16,
        DType::BF16 => BDType::BF16,
    }
}

impl<B: BurnBackend> Backend for Burn<B> {
    fn id(&self) -> BackendId {
        BackendId {
            name: self.name,
            device: self.device,
        }
    }

    fn class(&self) -> String {
        match self.class {
            Some(class) => class(),
            None => crate::backend::default_class(self),
        }
    }

    fn info(&self) -> BackendInfo {
        let device_name = match self.opened() {
            Ok((_, name)) => name.clone(),
            Err(_) => "none".into(),
        };
        BackendInfo {
            name: self.name,
            device: self.device,
            version: self.version.clone(),
            device_name,
            threads: (self.threads)(),
        }
    }

    fn available(&self) -> Result<(), String> {
        self.opened().map(|_| ()).map_err(Clone::clone)
    }

    /// A dtype is supported when the backend itself reports general
    /// (storage + arithmetic) support for it on this device: f32 and f64 on
    /// both CPU backends, f16 and bf16 on flex only; no f64 on the GPU ones.
    fn supports(&self, what: Capability) -> Result<(), String> {
        match what {
            Capability::DType(d) => {
                let (device, _) = self.opened().map_err(Clone::clone)?;
                if B::supports_dtype(device, burn_dtype(d)) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} does not compute in {d} (burn reports no arithmetic support for it)",
                        self.id()
                    ))
                }
            }
            Capability::FusedAttention => Ok(()),
        }
    }

    fn run(&self, req: &RunRequest<'_>) -> Result<Checkpoints, BackendError> {
        self.check(req)?;
        let id = self.id().to_string();
        let (device, _) = self
            .opened()
            .map_err(|why| BackendError::Unavailable(why.clone()))?;
        let ops = BurnOps::<B> {
            device: device.clone(),
        };
        catch_unwind(AssertUnwindSafe(|| exec::run(&ops, &id, req))).unwrap_or_else(|panic| {
            Err(BackendError::Library {
                backend: id,
                message: panic_message(panic),
            })
        })
    }

    fn probe(&self, req: &ProbeRequest) -> Result<Vec<ProbePoint>, BackendError> {
        self.available().map_err(BackendError::Unavailable)?;
        self.supports(Capability::DType(req.dtype))
            .map_err(BackendError::Unsupported)?;
        let id = self.id().to_string();
        let (device, _) = self
            .opened()
            .map_err(|why| BackendError::Unavailable(why.clone()))?;
        let ops = BurnOps::<B> {
            device: device.clone(),
        };
        catch_unwind(AssertUnwindSafe(|| probe::run(&ops, req)))
            .unwrap_or_else(|panic| Err(panic_message(panic)))
            .map_err(|message| BackendError::Library {
                backend: id,
                message,
            })
    }
}

/// burn's cubecl backend on a GPU: one backend type for every runtime, the
/// device says which (burn 0.22).
#[cfg(any(feature = "burn-wgpu", feature = "burn-cuda"))]
mod gpu {
    use super::{BackendTypes, Burn};
    use crate::device::DeviceKind;
    use cubecl::Device;

    /// The device and its name as the runtime reports it (`NVIDIA H200`,
    /// `llvmpipe (LLVM 15.0.6, 256 bits)`).
    fn named(
        device: Result<Device, cubecl::device::DeviceUnavailable>,
        how: &str,
    ) -> Result<(Device, String), String> {
        let device = device.map_err(|e| format!("no {how} device: {e}"))?;
        let name = device.client().properties().identity.name.clone();
        Ok((device, name))
    }

    /// GPU runs are not threaded on the host.
    fn one() -> usize {
        1
    }

    /// `burn-wgpu`: the best adapter wgpu finds (Vulkan on Linux).
    #[cfg(feature = "burn-wgpu")]
    pub(super) fn wgpu() -> Burn<burn_wgpu::Wgpu> {
        fn open() -> Result<(<burn_wgpu::Wgpu as BackendTypes>::Device, String), String> {
            named(
                Device::wgpu(cubecl::device::WgpuDeviceKind::default()),
                "wgpu (Vulkan, Metal or DX12)",
            )
        }
        Burn::new(
            "burn-cubecl",
            DeviceKind::Wgpu,
            format!(
                "burn-wgpu {} (cubecl {}, wgpu {})",
                env!("LD_VERSION_BURN_WGPU"),
                env!("LD_VERSION_CUBECL"),
                env!("LD_VERSION_WGPU")
            ),
            one,
            open,
        )
    }

    /// `burn-cuda`: the first CUDA GPU.
    #[cfg(feature = "burn-cuda")]
    pub(super) fn cuda() -> Burn<burn_cuda::Cuda> {
        fn open() -> Result<(<burn_cuda::Cuda as BackendTypes>::Device, String), String> {
            named(Device::cuda(0), "CUDA")
        }
        Burn::new(
            "burn-cubecl",
            DeviceKind::Cuda,
            format!(
                "burn-cuda {} (cubecl {})",
                env!("LD_VERSION_BURN_CUDA"),
                env!("LD_VERSION_CUBECL")
            ),
            one,
            open,
        )
    }
}

/// burn's ops on one device.
struct BurnOps<B: BurnBackend> {
    device: B::Device,
}

/// A linear layer in burn's layout.
struct BurnLinear<B: BurnBackend> {
    /// `[in, out]`.
    weight: FloatTensor<B>,
    /// `[out]`; `None` for a linear without bias.
    bias: Option<FloatTensor<B>>,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// `Tensor::cast`: a no-op when the dtype already matches.
fn cast<B: BurnBackend>(x: FloatTensor<B>, to: FloatDType) -> FloatTensor<B> {
    if x.dtype() == BDType::from(to) {
        x
    } else {
        B::float_cast(x, to)
    }
}

/// `Tensor::unsqueeze`: leading size-1 dimensions up to `rank`.
fn unsqueeze<B: BurnBackend>(x: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let shape = x.shape();
    if shape.num_dims() >= rank {
        return x;
    }
    let dims: Vec<usize> = std::iter::repeat_n(1, rank - shape.num_dims())
        .chain(shape.iter().copied())
        .collect();
    B::float_reshape(x, Shape::from(dims))
}

fn float(v: f64) -> Scalar {
    Scalar::Float(v)
}

impl<B: BurnBackend> Ops for BurnOps<B> {
    type T = FloatTensor<B>;
    type Linear = BurnLinear<B>;

    /// `Tensor::from_data`: the host data converted to `dtype`, then
    /// `float_from_data`.
    fn upload(&self, t: &HostTensor, dtype: DType) -> OpResult<Self::T> {
        let data = TensorData::new(t.data.clone(), t.shape.clone())
            .try_cast(burn_dtype(dtype))
            .map_err(e)?;
        Ok(B::float_from_data(data, &self.device))
    }

    fn prepare_linear(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        dtype: DType,
    ) -> OpResult<Self::Linear> {
        self.prepare_linear_in_out(&w.transposed()?, b, dtype)
    }

    /// burn keeps linear weights `[in, out]`: a `Conv1D` weight is
    /// uploaded as stored.
    fn prepare_linear_in_out(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        dtype: DType,
    ) -> OpResult<Self::Linear> {
        Ok(BurnLinear {
            weight: self.upload(w, dtype)?,
            bias: b.map(|b| self.upload(b, dtype)).transpose()?,
        })
    }

    fn linear(&self, x: &Self::T, l: &Self::Linear) -> OpResult<Self::T> {
        Ok(B::linear(x.clone(), l.weight.clone(), l.bias.clone()))
    }

    fn norm(
        &self,
        kind: Norm,
        x: &Self::T,
        w: &Self::T,
        b: Option<&Self::T>,
        eps: f64,
    ) -> OpResult<Self::T> {
        match kind {
            Norm::LayerNorm => {
                // burn-nn widens f16 (only) to f32 around the backend op.
                if x.dtype() == BDType::F16 {
                    let y = B::layer_norm(
                        cast::<B>(x.clone(), FloatDType::F32),
                        cast::<B>(w.clone(), FloatDType::F32),
                        b.map(|b| cast::<B>(b.clone(), FloatDType::F32)),
                        eps,
                    );
                    Ok(cast::<B>(y, FloatDType::F16))
                } else {
                    Ok(B::layer_norm(x.clone(), w.clone(), b.cloned(), eps))
                }
            }
            Norm::RmsNorm => {
                if b.is_some() {
                    return Err("burn's RmsNorm has no bias".into());
                }
                let dtype = x.dtype();
                let rank = x.shape().num_dims();
                // (x.cast(F32).square().mean_dim(D - 1) + eps).sqrt(); `square`
                // reaches the backend as `x * x` through burn-dispatch.
                let xf = cast::<B>(x.clone(), FloatDType::F32);
                let ms = B::float_mean_dim(B::float_mul(xf.clone(), xf), rank - 1);
                let rms = B::float_sqrt(B::float_add_scalar(ms, float(eps)));
                // (x / rms.cast(dtype)) * gamma.unsqueeze()
                let y = B::float_div(x.clone(), cast::<B>(rms, dtype.into()));
                Ok(B::float_mul(y, unsqueeze::<B>(w.clone(), rank)))
            }
        }
    }

    fn activation(&self, x: &Self::T, act: Activation) -> OpResult<Self::T> {
        Ok(match act {
            Activation::GeluErf => B::gelu(x.clone()),
            Activation::GeluTanh => {
                // burn_tensor::activation::gelu_approximate:
                // inner = (x + x^3 * 0.044715) * sqrt(2/π); (x * (tanh(inner) + 1)) * 0.5
                const SQRT_2_OVER_PI: f64 =
                    core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
                let cube = B::float_powf_scalar(x.clone(), float(3.0));
                let inner = B::float_add(x.clone(), B::float_mul_scalar(cube, float(0.044715)));
                let inner = B::float_mul_scalar(inner, float(SQRT_2_OVER_PI));
                let t = B::float_add_scalar(B::float_tanh(inner), float(1.0));
                B::float_mul_scalar(B::float_mul(x.clone(), t), float(0.5))
            }
            // burn_tensor::activation::silu: x * sigmoid(x)
            Activation::Silu => B::float_mul(x.clone(), B::sigmoid(x.clone())),
            // transformers' NewGELUActivation, op by op:
            // (0.5 * x) * (1.0 + tanh(sqrt(2/π) * (x + 0.044715 * x³)))
            Activation::GeluNew => {
                let cube = B::float_powf_scalar(x.clone(), float(3.0));
                let inner = B::float_add(x.clone(), B::float_mul_scalar(cube, float(0.044715)));
                let inner = B::float_mul_scalar(inner, float((2.0 / core::f64::consts::PI).sqrt()));
                let t = B::float_add_scalar(B::float_tanh(inner), float(1.0));
                B::float_mul(B::float_mul_scalar(x.clone(), float(0.5)), t)
            }
        })
    }

    fn add(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
        let rank = a.shape().num_dims();
        Ok(B::float_add(a.clone(), unsqueeze::<B>(b.clone(), rank)))
    }

    fn mul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
        let rank = a.shape().num_dims();
        Ok(B::float_mul(a.clone(), unsqueeze::<B>(b.clone(), rank)))
    }

    fn scale(&self, x: &Self::T, s: f64) -> OpResult<Self::T> {
        Ok(B::float_mul_scalar(x.clone(), float(s)))
    }

    /// `Tensor::matmul`, including its rewrite of a batched vector-matrix
    /// product `[…, B, 1, K] @ […, 1, K, N]` into `[…, 1, B, K] @ […]`.
    fn matmul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
        let (sa, sb) = (a.shape(), b.shape());
        let d = sa.num_dims();
        if d != sb.num_dims() || d < 2 || sa[d - 1] != sb[d - 2] {
            return Err(format!("matmul: shapes {sa:?} and {sb:?}"));
        }
        if d >= 3 && sa[d - 2] == 1 && sb[d - 3] == 1 {
            let lhs = B::float_swap_dims(a.clone(), d - 3, d - 2);
            let out = B::float_matmul(lhs, b.clone());
            return Ok(B::float_swap_dims(out, d - 3, d - 2));
        }
        Ok(B::float_matmul(a.clone(), b.clone()))
    }

    fn softmax_last(&self, x: &Self::T) -> OpResult<Self::T> {
        let rank = x.shape().num_dims();
        Ok(B::softmax(x.clone(), rank - 1))
    }

    fn reshape(&self, x: &Self::T, shape: &[usize]) -> OpResult<Self::T> {
        let n: usize = shape.iter().product();
        if n != x.shape().num_elements() {
            return Err(format!("reshape: {:?} to {shape:?}", x.shape()));
        }
        Ok(B::float_reshape(x.clone(), Shape::from(shape.to_vec())))
    }

    fn transpose(&self, x: &Self::T, a: usize, b: usize) -> OpResult<Self::T> {
        Ok(if a == b {
            x.clone()
        } else {
            B::float_swap_dims(x.clone(), a, b)
        })
    }

    /// `Tensor::narrow`: a slice with full ranges on the other dimensions.
    fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize) -> OpResult<Self::T> {
        let shape = x.shape();
        if dim >= shape.num_dims() || start + len > shape[dim] || len == 0 {
            return Err(format!(
                "narrow: {start}..{} of dim {dim} of {shape:?}",
                start + len
            ));
        }
        let slices: Vec<Slice> = shape
            .iter()
            .enumerate()
            .map(|(i, &n)| Slice::from(if i == dim { start..start + len } else { 0..n }))
            .collect();
        Ok(B::float_slice(x.clone(), &slices))
    }

    /// `Tensor::cat`: empty tensors are left out.
    fn cat(&self, xs: &[Self::T], dim: usize) -> OpResult<Self::T> {
        let parts: Vec<Self::T> = xs.iter().filter(|t| t.shape()[dim] > 0).cloned().collect();
        if parts.is_empty() {
            return Err("cat: nothing to concatenate".into());
        }
        Ok(B::float_cat(parts, dim))
    }

    /// Through `TensorData` and back: the tile is then exactly what an
    /// upload makes. Measured on burn-ndarray 0.22: a tile that came out of
    /// `float_mul_scalar(x, 1)` (the same values, a new buffer) gives other
    /// LayerNorm and linear results in the last bits than the same tile
    /// uploaded — its reductions depend on how the array was made, not only
    /// on its values and shape.
    fn fresh(&self, x: &Self::T) -> OpResult<Self::T> {
        let data = burn_backend::try_read_sync(B::float_into_data(x.clone()))
            .ok_or("the tensor could not be read synchronously")?
            .map_err(e)?;
        Ok(B::float_from_data(data, &self.device))
    }

    fn shape(&self, x: &Self::T) -> Vec<usize> {
        x.shape().to_vec()
    }

    fn download(&self, x: &Self::T) -> OpResult<Vec<f64>> {
        B::sync(&self.device).map_err(e)?;
        let data = burn_backend::try_read_sync(B::float_into_data(x.clone()))
            .ok_or("the tensor could not be read synchronously")?
            .map_err(e)?;
        data.try_into_vec_as::<f64>().map_err(e)
    }

    /// `ModuleOps::attention` with the additive mask turned into burn's
    /// boolean one (`true` where the mask is -inf), expanded to
    /// `[batch, heads, q_len, k_len]`.
    fn fused_attention(
        &self,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        mask: Option<&Self::T>,
        scale: f64,
    ) -> Option<OpResult<Self::T>> {
        let (sq, sk) = (q.shape(), k.shape());
        if sq.num_dims() != 4 || sk.num_dims() != 4 {
            return Some(Err(format!(
                "attention needs 4-d tensors, got {sq:?} and {sk:?}"
            )));
        }
        let mask = mask.map(|m| {
            let bool_dtype = get_or_init_device_settings::<B>(&self.device).bool_dtype;
            let hidden = B::float_equal_elem(m.clone(), float(f64::NEG_INFINITY), bool_dtype);
            let hidden = B::bool_reshape(hidden, Shape::new([1, 1, sq[2], sk[2]]));
            B::bool_expand(hidden, Shape::new([sq[0], sq[1], sq[2], sk[2]]))
        });
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        };
        Some(Ok(B::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            mask,
            None,
            options,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::model::{AttentionForm, DecoderSpec, ModelSpec, ResidualMlpSpec};
    use crate::reference::Reference;
    use crate::request::{Execution, Row, Schedule};
    use crate::weights::{Weights, generate_input};

    /// Seed weights, with norm weights and biases moved off 1 and 0 so that a
    /// dropped or misplaced bias or scale shows.
    fn weights(model: &ModelSpec, seed: u64) -> Weights {
        let w = Weights::init(model, seed, 0.2);
        let tensors: BTreeMap<String, HostTensor> = w
            .iter()
            .map(|(name, t)| {
                let mut t = t.clone();
                let is_norm = name.contains("norm");
                if name.ends_with(".bias") || is_norm {
                    for (i, v) in t.data.iter_mut().enumerate() {
                        *v += 0.1 * ((i as f32) * 0.7 + name.len() as f32).sin();
                    }
                }
                (name.clone(), t)
            })
            .collect();
        Weights::from_tensors(model, tensors, Path::new("test")).expect("weights")
    }

    fn mlp(activation: Activation, norm: Norm) -> ModelSpec {
        ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers: 2,
            dim: 8,
            hidden: 12,
            activation,
            norm,
            eps: 1e-5,
            residual: true,
        })
    }

    fn decoder(rope_theta: Option<f64>, attention: AttentionForm, norm: Norm) -> ModelSpec {
        ModelSpec::Decoder(DecoderSpec {
            layers: 2,
            dim: 8,
            heads: 2,
            hidden: 16,
            activation: Activation::GeluErf,
            norm,
            eps: 1e-5,
            rope_theta,
            attention,
        })
    }

    const OBSERVED: [Row; 3] = [
        Row { batch: 1, pos: 3 },
        Row { batch: 1, pos: 4 },
        Row { batch: 1, pos: 5 },
    ];

    fn run(
        backend: &dyn Backend,
        model: &ModelSpec,
        schedule: &Schedule,
        dtype: DType,
    ) -> Result<Checkpoints, BackendError> {
        let w = weights(model, 7);
        let input = generate_input(2, 6, model.dim(), 11);
        backend.run(&RunRequest {
            model,
            weights: &w,
            input: &input,
            dtype,
            schedule,
            observed: &OBSERVED,
            threads: None,
            execution: Execution::Standard,
            diagnose: Default::default(),
        })
    }

    /// Max |Δ| against the f64 oracle after each layer.
    fn drift(
        backend: &dyn Backend,
        model: &ModelSpec,
        schedule: &Schedule,
        dtype: DType,
    ) -> Vec<f64> {
        let got = run(backend, model, schedule, dtype).expect("backend run");
        let want = run(&Reference, model, schedule, DType::F64).expect("oracle run");
        assert_eq!(
            (got.dim, got.rows, got.layers.len()),
            (want.dim, want.rows, want.layers.len())
        );
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

    fn check(model: &ModelSpec, schedule: &Schedule, dtype: DType, tol: f64, what: &str) {
        for b in cpu_backends() {
            let d = drift(b.as_ref(), model, schedule, dtype);
            println!("{} {what} {dtype}: max |Δ| per layer {d:?}", b.id());
            assert!(
                d.iter().all(|&x| x < tol),
                "{} {what}: {d:?} ≥ {tol}",
                b.id()
            );
        }
    }

    #[test]
    fn identities() {
        let ids: Vec<_> = cpu_backends().iter().map(|b| b.id().to_string()).collect();
        assert_eq!(ids, ["burn-flex-cpu", "burn-ndarray-cpu"]);
        for b in cpu_backends() {
            let info = b.info();
            println!("{info:?}");
            assert!(info.version.starts_with(info.name) && !info.version.ends_with("unknown"));
            assert!(info.threads >= 1);
            assert!(b.available().is_ok());
        }
    }

    #[test]
    fn f64_matches_oracle_closely() {
        // LayerNorm: burn's RmsNorm computes the RMS in f32 whatever the dtype.
        check(
            &mlp(Activation::GeluErf, Norm::LayerNorm),
            &Schedule::Full,
            DType::F64,
            1e-12,
            "mlp",
        );
        let model = decoder(Some(10000.0), AttentionForm::Fused, Norm::LayerNorm);
        check(
            &model,
            &Schedule::kv_cache(3, 6),
            DType::F64,
            1e-12,
            "decoder fused",
        );
    }

    #[test]
    fn half_dtypes_run_where_supported_and_decline_elsewhere() {
        let model = decoder(Some(10000.0), AttentionForm::Manual, Norm::LayerNorm);
        for b in cpu_backends() {
            for dtype in [DType::F16, DType::BF16] {
                let supported = b.supports(Capability::DType(dtype));
                match run(b.as_ref(), &model, &Schedule::kv_cache(3, 6), dtype) {
                    Ok(_) => {
                        assert!(supported.is_ok());
                        let d = drift(b.as_ref(), &model, &Schedule::kv_cache(3, 6), dtype);
                        println!("{} decoder {dtype}: max |Δ| per layer {d:?}", b.id());
                        assert!(d.iter().all(|&x| x < 0.25), "{dtype}: {d:?}");
                    }
                    Err(err) => {
                        println!("{} {dtype}: {err}", b.id());
                        assert!(err.is_skip() && supported.is_err(), "{err}");
                    }
                }
            }
        }
    }
}
