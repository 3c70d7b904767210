//! The closed vocabulary of devices and backend ids.
//!
//! A backend is one library on one [`DeviceKind`]; its [`BackendId`]
//! (`candle-cpu`, `tch-cuda`) names it in trials, snapshots and scenario
//! files. Everything that parses or prints a device or a backend id goes
//! through this module, so a new device is one new variant here.

use std::fmt;
use std::str::FromStr;

/// The kinds of device a backend computes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// A GPU (or a software rasterizer) through wgpu: Vulkan, Metal, DX12.
    Wgpu,
}

impl DeviceKind {
    /// Every device kind, in registry order.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Wgpu];

    /// The name used in scenario files, ids and `LAYERDRIFT_DEVICES`.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        }
    }

    /// `cpu, cuda, wgpu`, for messages.
    pub fn known() -> String {
        DeviceKind::ALL.map(DeviceKind::name).join(", ")
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    /// ```
    /// use layerdrift_backends::DeviceKind;
    /// assert_eq!("cuda".parse::<DeviceKind>(), Ok(DeviceKind::Cuda));
    /// assert!("gpu".parse::<DeviceKind>().unwrap_err().contains("cpu, cuda, wgpu"));
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        DeviceKind::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown device `{s}` (known: {})", DeviceKind::known()))
    }
}

/// One backend: a library name and a device, printed `{name}-{device}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    /// Library name: `candle`, `burn-flex`, `burn-ndarray`, `burn-cubecl`,
    /// `tch`, `reference`.
    pub name: &'static str,
    /// The device.
    pub device: DeviceKind,
}

impl BackendId {
    /// The f64 oracle, `reference-cpu`.
    pub const ORACLE: BackendId = BackendId {
        name: "reference",
        device: DeviceKind::Cpu,
    };

    /// Whether this is the f64 oracle.
    pub fn is_oracle(self) -> bool {
        self == BackendId::ORACLE
    }

    /// Whether `key` names this backend: its id (`candle-cpu`) or its library
    /// name alone (`candle`, every device).
    ///
    /// ```
    /// use layerdrift_backends::{BackendId, DeviceKind};
    /// let id = BackendId { name: "burn-flex", device: DeviceKind::Cpu };
    /// assert!(id.matches("burn-flex") && id.matches("burn-flex-cpu"));
    /// assert!(!id.matches("burn") && !id.matches("burn-flex-cuda"));
    /// ```
    pub fn matches(self, key: &str) -> bool {
        key == self.name
            || key
                .strip_prefix(self.name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|d| d == self.device.name())
    }

    /// Splits `candle-cpu` into `("candle", Some(Cpu))`, and `candle` into
    /// `("candle", None)`: a key as scenario files write it.
    pub fn split_key(key: &str) -> (&str, Option<DeviceKind>) {
        match key.rsplit_once('-') {
            Some((name, d)) => match d.parse() {
                Ok(dev) => (name, Some(dev)),
                Err(_) => (key, None),
            },
            None => (key, None),
        }
    }
}

impl fmt::Display for BackendId {
    /// `candle-cpu`; honours width and alignment (`{:<18}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}-{}", self.name, self.device.name()))
    }
}
