//! # layerdrift-backends — the execution layer of layerdrift
//!
//! This crate knows how to run a *model description* ([`ModelSpec`]) on a
//! tensor library and hand back [`Checkpoints`]: the observed rows after every
//! layer, and nothing more. It knows nothing of YAML, bounds or snapshots;
//! that is the `layerdrift` harness's job.
//!
//! The pieces:
//! - [`model`]: what to compute — one module per model kind
//!   (`residual_mlp`, `decoder`, `llama`, `gpt2`) with its parameters
//!   (PyTorch / Hugging Face `state_dict` names), ops and forward pass.
//! - [`hf`]: Hugging Face checkpoint folders (`config.json` and
//!   safetensors, sharded or not) read into a model and its weights.
//! - [`host`] and [`weights`]: host-side f32 arrays, generated once from a
//!   seed or read from a safetensors file, handed identically to every backend.
//! - [`request`]: one run — model, weights, input, dtype, strategy
//!   ([`Schedule`]) and the observed rows.
//! - [`backend`]: the narrow [`Backend`] trait and the [`registry`] of every
//!   backend this build knows, compiled in or not.
//! - the adapters, one module per library, each behind a cargo feature:
//!   `candle` (default), `burn` (default: burn's `flex` and `ndarray` CPU
//!   backends), `tch` (libtorch 2.13.0), plus the always-present f64
//!   [`reference`] oracle.
//!
//! Every adapter implements the same small set of tensor operations (the
//! crate-private `ops::Ops` trait) with its library's own kernels; the model
//! and the KV-cache schedule are written once, in `exec`, over that trait. So
//! the backends differ only where the libraries differ — which is what we
//! measure.

pub mod adapters;
pub mod backend;
pub mod cpu;
pub mod device;
pub mod dtype;
mod exec;
pub mod gguf;
pub mod hf;
pub mod host;
pub mod model;
mod ops;
pub mod probe;
pub mod registry;
pub mod request;
mod rng;
pub mod weights;

pub use adapters::reference;
pub use backend::{Backend, BackendError, BackendInfo, Capability};
pub use device::{BackendId, DeviceKind};
pub use dtype::DType;
pub use host::{HostTensor, Tokens};
pub use model::{
    Activation, AttentionForm, BertSpec, DecoderSpec, Gpt2Spec, LlamaSpec, ModelSpec, Norm,
    ResidualMlpSpec,
};
pub use probe::fingerprint::fingerprint;
pub use probe::{ProbeOp, ProbePoint, ProbeRequest};
pub use registry::registry;
pub use request::{
    Checkpoints, Diagnose, Execution, HeadCheckpoints, OpCheckpoint, Row, RunRequest, Schedule,
};
pub use weights::{Weights, WeightsError, generate_input};
