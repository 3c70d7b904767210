//! The narrow [`Backend`] trait and the registry of backends this build knows.
//!
//! A backend is *one library on one device* (`candle` on `cpu`, `burn-flex`
//! on `cpu`, `tch` on `cuda`, …). The trait asks three things of it: who it
//! is ([`BackendInfo`]), whether it can do something ([`Backend::supports`],
//! with a reason when not), and to run a [`RunRequest`], returning only the
//! observed rows ([`Checkpoints`]).
//!
//! Backends that are not compiled in, or whose device is absent, still appear
//! in the [`registry`] — as entries that answer every question with the
//! reason (after candle's compiled-out `Device`s), so the harness can show an
//! ignored trial that says what to enable instead of silently skipping.

use crate::device::{BackendId, DeviceKind};
use crate::dtype::DType;
use crate::model::{AttentionForm, ModelSpec};
use crate::probe::{ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, RunRequest, Schedule};

/// Who a backend is: recorded in every snapshot's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Library name as in trial names: `candle`, `burn-flex`, `burn-ndarray`,
    /// `burn-cubecl` (burn's GPU backend), `tch`, `reference`.
    pub name: &'static str,
    /// The device kind.
    pub device: DeviceKind,
    /// Exact library version, e.g. `candle-core 0.11.1`.
    pub version: String,
    /// The device in words (GPU name, or CPU with its SIMD level).
    pub device_name: String,
    /// Threads the library computes with on this device.
    pub threads: usize,
}

impl BackendInfo {
    /// `{name}-{device}`, as in trial and snapshot names.
    pub fn id(&self) -> BackendId {
        BackendId {
            name: self.name,
            device: self.device,
        }
    }
}

/// Something a run may need that a backend may lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Computing in this dtype.
    DType(DType),
    /// Fused attention (`AttentionForm::Fused`).
    FusedAttention,
}

/// Errors a backend run reports.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot do what was asked; the harness shows an ignored
    /// trial with this reason.
    #[error("{0}")]
    Unsupported(String),
    /// The backend is not usable in this build or on this machine (not
    /// compiled in, library or device missing); also an ignored trial.
    #[error("{0}")]
    Unavailable(String),
    /// The library failed while running.
    #[error("{backend}: {message}")]
    Library {
        /// Backend id.
        backend: String,
        /// The library's message.
        message: String,
    },
}

impl BackendError {
    /// Whether this means "cannot run here" (an ignored trial) rather than a failure.
    pub fn is_skip(&self) -> bool {
        matches!(
            self,
            BackendError::Unsupported(_) | BackendError::Unavailable(_)
        )
    }
}

/// A tensor library on one device.
///
/// Implementations build the model from [`RunRequest::model`] with their own
/// ops, from the host weights, and return the observed rows after each layer.
/// They must synchronise the device before reading results, and must be
/// deterministic for a given machine, thread count and request.
pub trait Backend: Send + Sync {
    /// Name and device only: never opens a device or asks a driver, so it is
    /// free to call for every trial listing.
    fn id(&self) -> BackendId;

    /// Identity and versions, with the device's name (may open the device
    /// once: a GPU runtime is initialised on the first call).
    fn info(&self) -> BackendInfo;

    /// `Err(reason)` when the backend cannot be used at all here (feature not
    /// compiled in, library missing, no device). Defaults to available.
    fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether the backend can do `what`; `Err(reason)` when not. Defaults:
    /// f32 only, no fused attention.
    fn supports(&self, what: Capability) -> Result<(), String> {
        match what {
            Capability::DType(DType::F32) => Ok(()),
            Capability::DType(d) => Err(format!("{} does not compute in {d}", self.id())),
            Capability::FusedAttention => Err(format!(
                "{} has no fused attention kernel on {}",
                self.id().name,
                self.id().device
            )),
        }
    }

    /// The machine class of this backend's numbers: a name built from the
    /// facts its kernels dispatch on, so that two machines whose results may
    /// differ never share a class. Default: the CPU's architecture and SIMD
    /// level for a CPU backend (what `gemm`, `matrixmultiply` and candle's
    /// kernels select on), the device kind and GPU name for a GPU backend.
    /// Libraries that also dispatch on the CPU's vendor and model (libtorch:
    /// MKL, oneDNN) override it.
    fn class(&self) -> String {
        default_class(self)
    }

    /// Runs one request.
    fn run(&self, req: &RunRequest<'_>) -> Result<Checkpoints, BackendError>;

    /// Runs the kernel-dispatch probe ([`crate::probe`]) with this backend's
    /// ops: one [`ProbePoint`] per row count asked for.
    fn probe(&self, req: &ProbeRequest) -> Result<Vec<ProbePoint>, BackendError> {
        self.available().map_err(BackendError::Unavailable)?;
        let _ = req;
        Err(BackendError::Unsupported(format!(
            "{} has no kernel-dispatch probe",
            self.id()
        )))
    }

    /// Checks availability and every capability a run of `model` in `dtype`
    /// with `schedule` needs; the error says why it cannot happen here.
    fn can_run(
        &self,
        model: &ModelSpec,
        dtype: DType,
        schedule: &Schedule,
    ) -> Result<(), BackendError> {
        self.available().map_err(BackendError::Unavailable)?;
        self.supports(Capability::DType(dtype))
            .map_err(BackendError::Unsupported)?;
        if model.attention() == Some(AttentionForm::Fused) {
            self.supports(Capability::FusedAttention)
                .map_err(BackendError::Unsupported)?;
        }
        schedule.fits(model).map_err(BackendError::Unsupported)
    }

    /// [`Backend::can_run`] for a whole request.
    fn check(&self, req: &RunRequest<'_>) -> Result<(), BackendError> {
        self.can_run(req.model, req.dtype, req.schedule)
    }
}

/// The default [`Backend::class`]: the CPU's architecture and SIMD level for a
/// CPU backend, the device kind and GPU name for a GPU backend.
pub fn default_class<B: Backend + ?Sized>(b: &B) -> String {
    if b.id().device == DeviceKind::Cpu {
        crate::cpu::class()
    } else {
        let name = b.info().device_name.to_lowercase();
        let parts: Vec<&str> = name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|p| !p.is_empty())
            .collect();
        format!("{}-{}", b.id().device.name(), parts.join("-"))
    }
}

/// A backend entry that is not usable in this build or on this machine.
pub(crate) struct Absent {
    pub(crate) name: &'static str,
    pub(crate) device: DeviceKind,
    pub(crate) reason: String,
}

impl Backend for Absent {
    fn id(&self) -> BackendId {
        BackendId {
            name: self.name,
            device: self.device,
        }
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name,
            device: self.device,
            version: "not available".into(),
            device_name: "none".into(),
            threads: 0,
        }
    }
    fn available(&self) -> Result<(), String> {
        Err(self.reason.clone())
    }
    fn run(&self, _: &RunRequest<'_>) -> Result<Checkpoints, BackendError> {
        Err(BackendError::Unavailable(self.reason.clone()))
    }
}
