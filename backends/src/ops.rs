//! The tensor operations every adapter implements with its own library.
//!
//! The model (`exec`) is written once over this trait. Each method maps onto
//! the library's own op — `linear` onto `Tensor::linear` in libtorch and
//! `broadcast_matmul` in candle, `layer_norm` onto libtorch's
//! `at::layer_norm` and candle-nn's fused kernel — so the numbers are the
//! library's, not ours.

use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{Activation, Norm};

/// How a linear layer's weight is stored on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `nn.Linear`: `[out, in]`, computing `x @ Wᵀ`.
    OutIn,
    /// GPT-2's `Conv1D`: `[in, out]`, computing `x @ W`.
    InOut,
}

/// Result of an op; the message is the library's own.
pub(crate) type OpResult<T> = Result<T, String>;

/// A library's tensor ops on one device, in one dtype.
pub(crate) trait Ops {
    /// The library's tensor type.
    type T: Clone;
    /// A linear layer's parameters, prepared in the library's preferred layout.
    type Linear;

    /// Uploads a host array, cast to `dtype`.
    fn upload(&self, t: &HostTensor, dtype: DType) -> OpResult<Self::T>;
    /// Uploads f64 values (teacher forcing's rows) as an array of `shape`
    /// in `dtype`. Default: rounded to f32 first — exact for every value a
    /// run in f32 or a narrower type produced; the f64 oracle keeps them.
    fn upload_f64(&self, shape: &[usize], data: &[f64], dtype: DType) -> OpResult<Self::T> {
        let data = data.iter().map(|&x| x as f32).collect();
        self.upload(&HostTensor::new(shape.to_vec(), data), dtype)
    }
    /// Prepares a linear layer from PyTorch-layout `weight [out, in]` and
    /// `bias [out]` (`None`: `nn.Linear(bias=False)`).
    fn prepare_linear(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        dtype: DType,
    ) -> OpResult<Self::Linear>;
    /// Prepares a linear layer stored `[in, out]` (GPT-2's `Conv1D`).
    /// Default: transposed on the host, then [`Ops::prepare_linear`];
    /// libtorch keeps the stored layout and multiplies as `Conv1D` does.
    fn prepare_linear_in_out(
        &self,
        w: &HostTensor,
        b: Option<&HostTensor>,
        dtype: DType,
    ) -> OpResult<Self::Linear> {
        self.prepare_linear(&w.transposed()?, b, dtype)
    }
    /// The rotary tables of positions `start..end` as Hugging Face's
    /// `LlamaRotaryEmbedding` computes them in f32: `inv_freq[i] = 1 /
    /// theta^(2i / head_dim)`, `freq = pos · inv_freq`, `cos`/`sin` of
    /// `[freq, freq]`, each `[len, head_dim]` in `dtype`. Default: on the host
    /// with `libm`'s f32 functions; libtorch computes them with its own ops,
    /// as transformers does.
    fn rope_tables_f32(
        &self,
        theta: f64,
        head_dim: usize,
        (start, end): (usize, usize),
        dtype: DType,
    ) -> OpResult<(Self::T, Self::T)> {
        let (c, s) = crate::model::transformer::rope_tables_f32(theta, head_dim, start, end);
        Ok((self.upload(&c, dtype)?, self.upload(&s, dtype)?))
    }
    /// `x @ Wᵀ + b` over the last dimension.
    fn linear(&self, x: &Self::T, l: &Self::Linear) -> OpResult<Self::T>;
    /// Normalisation over the last dimension (`b` is `None` for RMSNorm).
    fn norm(
        &self,
        kind: Norm,
        x: &Self::T,
        w: &Self::T,
        b: Option<&Self::T>,
        eps: f64,
    ) -> OpResult<Self::T>;
    /// Elementwise activation.
    fn activation(&self, x: &Self::T, act: Activation) -> OpResult<Self::T>;
    /// Elementwise `a + b`, broadcasting `b` from the left.
    fn add(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T>;
    /// Elementwise `a * b`, broadcasting `b` from the left.
    fn mul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T>;
    /// `x * s`.
    fn scale(&self, x: &Self::T, s: f64) -> OpResult<Self::T>;
    /// Batched matmul of the last two dimensions.
    fn matmul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T>;
    /// Softmax over the last dimension.
    fn softmax_last(&self, x: &Self::T) -> OpResult<Self::T>;
    /// Reshape (copying to contiguous memory if the library needs it).
    fn reshape(&self, x: &Self::T, shape: &[usize]) -> OpResult<Self::T>;
    /// Swap two dimensions.
    fn transpose(&self, x: &Self::T, a: usize, b: usize) -> OpResult<Self::T>;
    /// `len` entries of dimension `dim` from `start`.
    fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize) -> OpResult<Self::T>;
    /// Concatenation along `dim`.
    fn cat(&self, xs: &[Self::T], dim: usize) -> OpResult<Self::T>;
    /// `x` copied into a new, contiguous allocation of its own: what a
    /// freshly computed tensor of its shape would be. Fixed-shape execution
    /// hands every kernel such a tile, so no kernel sees a view (another
    /// stride, another offset into a larger buffer) in one schedule and a
    /// fresh tensor in another.
    fn fresh(&self, x: &Self::T) -> OpResult<Self::T>;
    /// Shape of `x`.
    fn shape(&self, x: &Self::T) -> Vec<usize>;
    /// Copies a (small) tensor to the host, synchronising the device first.
    fn download(&self, x: &Self::T) -> OpResult<Vec<f64>>;

    /// The library's fused attention over `[batch, heads, len, head_dim]`
    /// tensors, with an additive mask `[q_len, k_len]` (0 or -inf) when some
    /// keys must be hidden. `None`: the library has none.
    fn fused_attention(
        &self,
        _q: &Self::T,
        _k: &Self::T,
        _v: &Self::T,
        _mask: Option<&Self::T>,
        _scale: f64,
    ) -> Option<OpResult<Self::T>> {
        None
    }
}
