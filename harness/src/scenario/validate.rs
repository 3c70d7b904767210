//! From raw serde shapes to a [`Scenario`], in phases: every field is checked
//! on its own first (`fields.rs`, `checks.rs`), and the checks that combine
//! fields (`derived.rs`: heads divide dim, strategies fit the model, input
//! files fit the axes, the memory estimate) run only when every field passed
//! — never on a value whose own check failed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use layerdrift_backends::{Activation, AttentionForm, BackendId, DType, DeviceKind, Norm};

use super::error::{ScenarioError, ScenarioErrors};
use super::expand::Grid;
use super::raw::{Axis, RawActivation, RawAttention, RawDType, RawNorm, RawObserve, RawScenario};
use super::syntax::PathIndex;
use super::{Check, InputSource, Scenario, Strategy, WeightSource};

pub(super) struct Validator<'a> {
    pub(super) file: PathBuf,
    pub(super) index: &'a PathIndex,
    pub(super) errors: Vec<ScenarioError>,
}

impl Validator<'_> {
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ScenarioError {
            file: self.file.clone(),
            // Every value of a parsed file has a position; the file's start
            // is the fallback for a key the file left out.
            pos: self
                .index
                .find(path)
                .or(Some(super::Pos { line: 1, col: 1 })),
            message: format!("{path}: {}", message.into()),
        });
    }

    pub(super) fn axis<T: Clone>(&mut self, path: &str, a: Axis<T>) -> Vec<T> {
        if a.0.is_empty() {
            self.err(
                path,
                "empty list: give at least one value (or a single value instead of a list)",
            );
        }
        a.0
    }

    /// Each value of a list axis must be at least 1.
    pub(super) fn positive_axis(&mut self, path: &str, a: Option<Axis<usize>>) -> Vec<usize> {
        let list = self.axis(path, a.unwrap_or(Axis(vec![1])));
        for (i, v) in list.iter().enumerate() {
            if *v == 0 {
                let at = if self.index.has(&format!("{path}[{i}]")) {
                    format!("{path}[{i}]")
                } else {
                    path.to_string()
                };
                self.err(&at, "must be at least 1");
            }
        }
        let mut seen = BTreeSet::new();
        for (i, v) in list.iter().enumerate() {
            if !seen.insert(*v) {
                self.err(&format!("{path}[{i}]"), format!("{v} is listed twice"));
            }
        }
        list
    }

    pub(super) fn positive(&mut self, path: &str, v: usize) {
        if v == 0 {
            self.err(path, "must be at least 1");
        }
    }

    pub(super) fn finite_positive(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.err(path, format!("must be a finite number > 0, got {v}"));
        }
    }

    pub(super) fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub(super) fn unique<T: Ord + Clone + std::fmt::Display>(&mut self, path: &str, items: &[T]) {
        let mut seen = BTreeSet::new();
        for (i, x) in items.iter().enumerate() {
            if !seen.insert(x.clone()) {
                self.err(&format!("{path}[{i}]"), format!("`{x}` is listed twice"));
            }
        }
    }
}

pub(super) fn dtype_of(d: RawDType) -> DType {
    match d {
        RawDType::F32 => DType::F32,
        RawDType::F64 => DType::F64,
        RawDType::F16 => DType::F16,
        RawDType::Bf16 => DType::BF16,
    }
}
pub(super) fn act_of(a: RawActivation) -> Activation {
    match a {
        RawActivation::Gelu => Activation::GeluErf,
        RawActivation::GeluTanh => Activation::GeluTanh,
        RawActivation::Silu => Activation::Silu,
        RawActivation::GeluNew => Activation::GeluNew,
    }
}
pub(super) fn norm_of(n: RawNorm) -> Norm {
    match n {
        RawNorm::LayerNorm => Norm::LayerNorm,
        RawNorm::RmsNorm => Norm::RmsNorm,
    }
}
pub(super) fn att_of(a: RawAttention) -> AttentionForm {
    match a {
        RawAttention::Manual => AttentionForm::Manual,
        RawAttention::Fused => AttentionForm::Fused,
    }
}

/// Validates `raw` in phases and builds the scenario.
pub(super) fn resolve(
    file: &Path,
    index: &PathIndex,
    raw: RawScenario,
    known: &[BackendId],
    memory_limit: u64,
) -> Result<Scenario, ScenarioErrors> {
    let mut v = Validator {
        file: file.to_path_buf(),
        index,
        errors: Vec::new(),
    };
    let fields = super::fields::fields(&mut v, raw, known);
    let scenario = match fields {
        Some(f) if v.errors.is_empty() => super::derived::derived(&mut v, f, memory_limit),
        _ => None,
    };
    match scenario {
        Some(s) if v.errors.is_empty() => Ok(s),
        _ => {
            let mut errors = v.errors;
            errors.sort_by_key(|e| e.pos);
            errors.dedup();
            Err(ScenarioErrors(errors))
        }
    }
}

/// Everything phase one checked, for phase two.
pub(super) struct Fields {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) grid: Grid,
    pub(super) input: InputSource,
    pub(super) batch_given: bool,
    pub(super) seq_given: bool,
    pub(super) weights: WeightSource,
    pub(super) strategies: Vec<Strategy>,
    pub(super) observe: RawObserve,
    pub(super) checks: Vec<Check>,
    pub(super) backends: Vec<String>,
    pub(super) devices: Vec<DeviceKind>,
    pub(super) threads: Option<usize>,
    pub(super) slow: super::Cost,
    pub(super) diagnose: super::Diagnosis,
}
