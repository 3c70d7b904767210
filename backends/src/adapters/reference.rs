//! The f64 oracle: the same model in f64 on the host, computing only what the
//! observed rows need.
//!
//! For `residual_mlp` that is the observed rows alone (rows are independent);
//! for `decoder` it is the observed batch elements up to the last observed
//! position (every earlier position's K and V), nothing after. Its matmuls use
//! ndarray's f64 GEMM (matrixmultiply, which splits work over output blocks
//! only, so results do not depend on its thread count); norms, activations
//! and softmax are plain f64 loops. It is deterministic and cheap next to the
//! backends it judges.

use ndarray::{ArrayD, Axis, Ix2, IxDyn, concatenate};

use crate::backend::{Backend, BackendError, BackendInfo, Capability};
use crate::device::{BackendId, DeviceKind};
use crate::dtype::DType;
use crate::exec;
use crate::host::HostTensor;
use crate::model::{Activation, AttentionForm, Norm, transformer};
use crate::ops::{OpResult, Ops};
use crate::probe::{self, ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, Execution, Row, RunRequest, Schedule};

/// The f64 reference backend (`reference-cpu`).
pub struct Reference;

impl Backend for Reference {
    fn id(&self) -> BackendId {
        BackendId::ORACLE
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "reference",
            device: DeviceKind::Cpu,
            version: format!(
                "layerdrift-backends {} (f64, ndarray)",
                env!("CARGO_PKG_VERSION")
            ),
            device_name: "host".into(),
            threads: 1,
        }
    }

    fn supports(&self, what: Capability) -> Result<(), String> {
        match what {
            // Whatever dtype the scenario asks for, the oracle computes in f64.
            Capability::DType(_) => Ok(()),
            Capability::FusedAttention => Ok(()),
        }
    }

    fn run(&self, req: &RunRequest<'_>) -> Result<Checkpoints, BackendError> {
        // Fused attention is the same mathematics; the oracle computes it by hand.
        let model = req.model.with_attention(AttentionForm::Manual);
        // The truth does not depend on how it is scheduled: the oracle always
        // computes batched (batch-invariant execution would only cost time).
        let req = &RunRequest {
            model: &model,
            execution: Execution::Standard,
            ..*req
        };
        req.schedule
            .fits(req.model)
            .map_err(BackendError::Unsupported)?;
        if req.model.rows_independent() {
            // Rows are independent: compute only the observed ones.
            return exec::run(
                &F64,
                "reference-cpu",
                &RunRequest {
                    schedule: &Schedule::Rows,
                    dtype: DType::F64,
                    ..*req
                },
            );
        }
        if req.model.encoder() {
            // The truth of an encoder: each observed sequence alone, at its
            // own length (padding and batching change no value in exact
            // arithmetic; this computes the least).
            let lengths = match req.schedule {
                Schedule::Padded { lengths, .. } | Schedule::Alone { lengths } => lengths.clone(),
                Schedule::Full | Schedule::Rows | Schedule::Segments(_) => {
                    vec![req.input.shape[1]; req.input.shape[0]]
                }
            };
            return exec::run(
                &F64,
                "reference-cpu",
                &RunRequest {
                    schedule: &Schedule::Alone { lengths },
                    dtype: DType::F64,
                    ..*req
                },
            );
        }
        // Attention needs every earlier position of the observed batch
        // elements; cut the input down to exactly that.
        let (batches, len) = transformer::support(req.observed);
        let input = req.input.select(&batches, len);
        let observed: Vec<Row> = req
            .observed
            .iter()
            .map(|r| Row {
                batch: batches
                    .binary_search(&r.batch)
                    .expect("observed batch is in support"),
                pos: r.pos,
            })
            .collect();
        let schedule = match req.schedule {
            Schedule::Segments(segs) => Schedule::Segments(
                segs.iter()
                    .filter(|(s, _)| *s < len)
                    .map(|&(s, e)| (s, e.min(len)))
                    .collect(),
            ),
            Schedule::Full | Schedule::Rows | Schedule::Padded { .. } | Schedule::Alone { .. } => {
                Schedule::Full
            }
        };
        exec::run(
            &F64,
            "reference-cpu",
            &RunRequest {
                input: &input,
                observed: &observed,
                schedule: &schedule,
                dtype: DType::F64,
                ..*req
            },
        )
    }

    /// The probe in f64 (whatever dtype is asked, as in a run): ndarray's
    /// GEMM and plain loops, so one class everywhere is expected.
    fn probe(&self, req: &ProbeRequest) -> Result<Vec<ProbePoint>, BackendError> {
        probe::run(
            &F64,
            &ProbeRequest {
                dtype: DType::F64,
                ..req.clone()
            },
        )
        .map_err(|message| BackendError::Library {
            backend: self.id().to_string(),
            message,
        })
    }
}

/// f64 ops on ndarray.
pub(crate) struct F64;

type T = ArrayD<f64>;

fn erf_gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn tanh_gelu(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + libm::tanh(c * (x + 0.044715 * x * x * x)))
}

fn broadcast_op(a: &T, b: &T, f: impl Fn(f64, f64) -> f64) -> OpResult<T> {
    let b = b
        .broadcast(a.raw_dim())
        .ok_or_else(|| format!("cannot broadcast {:?} to {:?}", b.shape(), a.shape()))?;
    let mut out = a.clone();
    out.zip_mut_with(&b, |x, &y| *x = f(*x, y));
    Ok(out)
}

impl Ops for F64 {
    type T = T;
    type Linear = (ndarray::Array2<f64>, Option<ndarray::Array1<f64>>);

    fn upload(&self, t: &HostTensor, _: DType) -> OpResult<T> {
        ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.iter().map(|&x| x as f64).collect())
            .map_err(|e| e.to_string())
    }

    fn upload_f64(&self, shape: &[usize], data: &[f64], _: DType) -> OpResult<T> {
        ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).map_err(|e| e.to_string())
    }

    fn prepare_linear(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        d: DType,
    ) -> OpResult<Self::Linear> {
        let w = self
            .upload(w, d)?
            .into_dimensionality::<Ix2>()
            .map_err(|e| e.to_string())?;
        let b = b
            .map(|b| {
                self.upload(b, d)?
                    .into_dimensionality()
                    .map_err(|e| e.to_string())
            })
            .transpose()?;
        // Kept as `[out, in]`: `linear` multiplies by its transposed view,
        // which matrixmultiply reads with strides — no transposed copy.
        Ok((w, b))
    }

    fn linear(&self, x: &T, (w, b): &Self::Linear) -> OpResult<T> {
        let shape = x.shape().to_vec();
        let inner = *shape.last().expect("non-scalar");
        let x2 = x
            .as_standard_layout()
            .into_shape_with_order((x.len() / inner, inner))
            .map_err(|e| e.to_string())?
            .to_owned();
        let mut y = x2.dot(&w.t());
        if let Some(b) = b {
            y += b;
        }
        let mut out_shape = shape;
        *out_shape.last_mut().expect("non-scalar") = w.nrows();
        y.into_shape_with_order(IxDyn(&out_shape))
            .map_err(|e| e.to_string())
    }

    fn norm(&self, kind: Norm, x: &T, w: &T, b: Option<&T>, eps: f64) -> OpResult<T> {
        let last = Axis(x.ndim() - 1);
        let n = x.shape()[x.ndim() - 1] as f64;
        let mut out = x.clone();
        for mut lane in out.lanes_mut(last) {
            let mean = if kind == Norm::LayerNorm {
                lane.sum() / n
            } else {
                0.0
            };
            let var = lane.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps).sqrt();
            for (i, v) in lane.iter_mut().enumerate() {
                *v = (*v - mean) * inv * w[i] + b.map_or(0.0, |b| b[i]);
            }
        }
        Ok(out)
    }

    fn activation(&self, x: &T, act: Activation) -> OpResult<T> {
        Ok(x.mapv(|v| match act {
            Activation::GeluErf => erf_gelu(v),
            Activation::GeluTanh | Activation::GeluNew => tanh_gelu(v),
            Activation::Silu => v / (1.0 + (-v).exp()),
        }))
    }

    fn add(&self, a: &T, b: &T) -> OpResult<T> {
        broadcast_op(a, b, |x, y| x + y)
    }

    fn mul(&self, a: &T, b: &T) -> OpResult<T> {
        broadcast_op(a, b, |x, y| x * y)
    }

    fn scale(&self, x: &T, s: f64) -> OpResult<T> {
        Ok(x * s)
    }

    fn matmul(&self, a: &T, b: &T) -> OpResult<T> {
        let (sa, sb) = (a.shape(), b.shape());
        let nd = sa.len();
        if nd < 2 || sb.len() != nd || sa[..nd - 2] != sb[..nd - 2] {
            return Err(format!("matmul: shapes {sa:?} and {sb:?}"));
        }
        let (m, k, n) = (sa[nd - 2], sa[nd - 1], sb[nd - 1]);
        let batch: usize = sa[..nd - 2].iter().product();
        let a3 = a
            .as_standard_layout()
            .into_shape_with_order((batch, m, k))
            .map_err(|e| e.to_string())?
            .to_owned();
        let b3 = b
            .as_standard_layout()
            .into_shape_with_order((batch, k, n))
            .map_err(|e| e.to_string())?
            .to_owned();
        let mut out = ndarray::Array3::<f64>::zeros((batch, m, n));
        for i in 0..batch {
            out.index_axis_mut(Axis(0), i)
                .assign(&a3.index_axis(Axis(0), i).dot(&b3.index_axis(Axis(0), i)));
        }
        let mut shape = sa[..nd - 2].to_vec();
        shape.extend([m, n]);
        out.into_shape_with_order(IxDyn(&shape))
            .map_err(|e| e.to_string())
    }

    fn softmax_last(&self, x: &T) -> OpResult<T> {
        let mut out = x.clone();
        for mut lane in out.lanes_mut(Axis(x.ndim() - 1)) {
            let max = lane.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            lane.mapv_inplace(|v| (v - max).exp());
            let sum = lane.sum();
            lane.mapv_inplace(|v| v / sum);
        }
        Ok(out)
    }

    fn reshape(&self, x: &T, shape: &[usize]) -> OpResult<T> {
        x.as_standard_layout()
            .into_shape_with_order(IxDyn(shape))
            .map(|v| v.to_owned())
            .map_err(|e| e.to_string())
    }

    fn transpose(&self, x: &T, a: usize, b: usize) -> OpResult<T> {
        let mut v = x.clone();
        v.swap_axes(a, b);
        Ok(v)
    }

    fn narrow(&self, x: &T, dim: usize, start: usize, len: usize) -> OpResult<T> {
        Ok(x.slice_axis(Axis(dim), (start..start + len).into())
            .to_owned())
    }

    fn cat(&self, xs: &[T], dim: usize) -> OpResult<T> {
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        concatenate(Axis(dim), &views).map_err(|e| e.to_string())
    }

    fn fresh(&self, x: &T) -> OpResult<T> {
        Ok(x.as_standard_layout().into_owned())
    }

    fn shape(&self, x: &T) -> Vec<usize> {
        x.shape().to_vec()
    }

    fn download(&self, x: &T) -> OpResult<Vec<f64>> {
        Ok(x.iter().copied().collect())
    }
}
