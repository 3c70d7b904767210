//! candle adapter (`candle-cpu`, and `candle-cuda` with the `candle-cuda` feature).
//!
//! Ops map onto candle-core and candle-nn's own kernels: `broadcast_matmul`
//! against the transposed weight (as `candle_nn::Linear` does),
//! `candle_nn::ops::layer_norm` / `rms_norm`, `gelu_erf` (candle's `gelu` is
//! the tanh form), `softmax_last_dim`. candle has no fused attention on CPU
//! or CUDA without flash-attn, so `attention: fused` is declined.

use candle_core::{DType as CDType, Device, Tensor};

use crate::backend::{Backend, BackendError, BackendInfo, Capability};
use crate::device::{BackendId, DeviceKind};
use crate::dtype::DType;
use crate::exec;
use crate::host::HostTensor;
use crate::model::{Activation, Norm};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, RunRequest};

/// The candle backends this build has.
pub(crate) fn backends() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(Candle { cuda: false }),
        #[cfg(feature = "candle-cuda")]
        Box::new(Candle { cuda: true }),
    ]
}

struct Candle {
    cuda: bool,
}

impl Candle {
    fn device(&self) -> Result<Device, String> {
        if self.cuda {
            Device::new_cuda(0).map_err(|e| format!("candle-cuda: no CUDA device: {e}"))
        } else {
            Ok(Device::Cpu)
        }
    }
}

fn dtype(d: DType) -> CDType {
    match d {
        DType::F32 => CDType::F32,
        DType::F64 => CDType::F64,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
    }
}

impl Backend for Candle {
    /// candle's CPU matmul (`gemm`) gave other bits on two AMD AVX-512
    /// machines (seed scenario, layer 1: 3.75e-7 on one, as on an Intel AVX2
    /// machine; 5.06e-7 on a Zen 5 EPYC): its class names the CPU's vendor
    /// and model as well as the SIMD level.
    fn class(&self) -> String {
        if self.cuda {
            crate::backend::default_class(self)
        } else {
            crate::cpu::vendor_class()
        }
    }

    fn id(&self) -> BackendId {
        BackendId {
            name: "candle",
            device: if self.cuda {
                DeviceKind::Cuda
            } else {
                DeviceKind::Cpu
            },
        }
    }

    fn info(&self) -> BackendInfo {
        let (device, device_name) = if self.cuda {
            (DeviceKind::Cuda, crate::cpu::nvidia_gpu_name())
        } else {
            (DeviceKind::Cpu, crate::cpu::describe())
        };
        BackendInfo {
            name: "candle",
            device,
            version: format!("candle-core {}", env!("LD_VERSION_CANDLE")),
            device_name,
            threads: if self.cuda {
                1
            } else {
                candle_core::utils::get_num_threads()
            },
        }
    }

    fn available(&self) -> Result<(), String> {
        self.device().map(|_| ())
    }

    fn supports(&self, what: Capability) -> Result<(), String> {
        match what {
            Capability::DType(_) => Ok(()),
            Capability::FusedAttention => Err(
                "candle has no fused attention kernel outside Metal and flash-attn (CUDA); use `attention: manual`"
                    .into(),
            ),
        }
    }

    fn run(&self, req: &RunRequest<'_>) -> Result<Checkpoints, BackendError> {
        self.check(req)?;
        let ops = CandleOps {
            device: self.device().map_err(BackendError::Unavailable)?,
        };
        exec::run(&ops, &self.id().to_string(), req)
    }

    fn probe(&self, req: &ProbeRequest) -> Result<Vec<ProbePoint>, BackendError> {
        self.available().map_err(BackendError::Unavailable)?;
        self.supports(Capability::DType(req.dtype))
            .map_err(BackendError::Unsupported)?;
        let ops = CandleOps {
            device: self.device().map_err(BackendError::Unavailable)?,
        };
        probe::run(&ops, req).map_err(|message| BackendError::Library {
            backend: self.id().to_string(),
            message,
        })
    }
}

struct CandleOps {
    device: Device,
}

fn e(err: candle_core::Error) -> String {
    err.to_string()
}

impl Ops for CandleOps {
    type T = Tensor;
    /// `candle_nn::Linear` itself, so the matmul path (2-d GEMM for a
    /// contiguous input, broadcast batched matmul otherwise) is candle's own.
    type Linear = candle_nn::Linear;

    fn upload(&self, t: &HostTensor, d: DType) -> OpResult<Tensor> {
        Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device)
            .and_then(|x| x.to_dtype(dtype(d)))
            .map_err(e)
    }

    fn prepare_linear(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        d: DType,
    ) -> OpResult<Self::Linear> {
        Ok(candle_nn::Linear::new(
            self.upload(w, d)?,
            b.map(|b| self.upload(b, d)).transpose()?,
        ))
    }

    fn linear(&self, x: &Tensor, l: &Self::Linear) -> OpResult<Tensor> {
        use candle_core::Module;
        l.forward(x).map_err(e)
    }

    fn norm(
        &self,
        kind: Norm,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f64,
    ) -> OpResult<Tensor> {
        let x = x.contiguous().map_err(e)?;
        match (kind, b) {
            (Norm::LayerNorm, Some(b)) => candle_nn::ops::layer_norm(&x, w, b, eps as f32),
            (Norm::LayerNorm, None) => {
                let zeros = w.zeros_like().map_err(e)?;
                candle_nn::ops::layer_norm(&x, w, &zeros, eps as f32)
            }
            (Norm::RmsNorm, _) => candle_nn::ops::rms_norm(&x, w, eps as f32),
        }
        .map_err(e)
    }

    fn activation(&self, x: &Tensor, act: Activation) -> OpResult<Tensor> {
        match act {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
            // transformers' NewGELUActivation, op by op:
            // 0.5 * x * (1.0 + tanh(sqrt(2/π) * (x + 0.044715 * x³)))
            Activation::GeluNew => (|| {
                let inner = (x + (x.powf(3.0)? * 0.044715)?)?;
                let t = ((inner * (2.0 / std::f64::consts::PI).sqrt())?.tanh()? + 1.0)?;
                (x * 0.5)? * t
            })(),
        }
        .map_err(e)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
        a.broadcast_add(b).map_err(e)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
        a.broadcast_mul(b).map_err(e)
    }

    fn scale(&self, x: &Tensor, s: f64) -> OpResult<Tensor> {
        x.affine(s, 0.0).map_err(e)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
        a.contiguous()
            .and_then(|a| a.matmul(&b.contiguous()?))
            .map_err(e)
    }

    fn softmax_last(&self, x: &Tensor) -> OpResult<Tensor> {
        candle_nn::ops::softmax_last_dim(&x.contiguous().map_err(e)?).map_err(e)
    }

    fn reshape(&self, x: &Tensor, shape: &[usize]) -> OpResult<Tensor> {
        x.contiguous().and_then(|x| x.reshape(shape)).map_err(e)
    }

    fn transpose(&self, x: &Tensor, a: usize, b: usize) -> OpResult<Tensor> {
        x.transpose(a, b).map_err(e)
    }

    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> OpResult<Tensor> {
        x.narrow(dim, start, len).map_err(e)
    }

    fn cat(&self, xs: &[Tensor], dim: usize) -> OpResult<Tensor> {
        Tensor::cat(xs, dim).map_err(e)
    }

    fn fresh(&self, x: &Tensor) -> OpResult<Tensor> {
        // `contiguous` returns a contiguous view as it is and `copy` keeps
        // the layout; `x · 1` is exact and writes a new contiguous buffer.
        let one = Tensor::ones(1, x.dtype(), x.device()).map_err(e)?;
        x.broadcast_mul(&one).map_err(e)
    }

    fn shape(&self, x: &Tensor) -> Vec<usize> {
        x.dims().to_vec()
    }

    fn download(&self, x: &Tensor) -> OpResult<Vec<f64>> {
        self.device.synchronize().map_err(e)?;
        x.to_dtype(CDType::F64)
            .and_then(|x| x.flatten_all()?.to_vec1::<f64>())
            .map_err(e)
    }
}
