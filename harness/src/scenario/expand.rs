//! The variant grid: every list-valued axis multiplied out, in a fixed axis
//! order, each variant labelled by the axes that have several values.

use std::collections::HashMap;

use layerdrift_backends::{DType, Execution, ModelSpec, Row};

use super::Variant;
use super::kind::ModelFields;

/// Every axis, validated, and the model fields they vary.
#[derive(Clone, Debug)]
pub(super) struct Grid {
    /// The model section: its kind, its fields and its axes.
    pub(super) m: ModelFields,
    pub(super) dtypes: Vec<DType>,
    pub(super) batches: Vec<usize>,
    pub(super) seqs: Vec<usize>,
    /// A token file's real tokens per sequence (an encoder's sequences may
    /// be shorter than `seqs`); `None`: every sequence fills `seq`.
    pub(super) lengths: Option<Vec<usize>>,
    /// The executions (`execution:`).
    pub(super) executions: Vec<Execution>,
}

/// `batch=8,residual=true`, or `base` when no axis has several values.
fn label(axes: &[(String, String)]) -> String {
    if axes.is_empty() {
        return "base".to_string();
    }
    axes.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Grid {
    /// How many variants the grid holds (saturating: a huge grid is refused
    /// before it is expanded).
    pub(super) fn count(&self) -> usize {
        [
            self.dtypes.len(),
            self.m.activations.len(),
            self.m.norms.len(),
            self.m.residuals.len(),
            self.m.ropes.len(),
            self.m.attentions.len(),
            self.batches.len(),
            self.seqs.len(),
            self.executions.len(),
        ]
        .into_iter()
        .fold(1usize, usize::saturating_mul)
    }

    /// Every distinct model of the grid (the axes the model depends on).
    pub(super) fn models(&self) -> Vec<ModelSpec> {
        let mut out = Vec::new();
        for &a in &self.m.activations {
            for &n in &self.m.norms {
                for &r in &self.m.residuals {
                    for &p in &self.m.ropes {
                        for &t in &self.m.attentions {
                            out.push(self.m.model(a, n, r, p, t));
                        }
                    }
                }
            }
        }
        out
    }

    /// Every variant, given the observed rows per `(batch, seq)`.
    pub(super) fn expand(&self, observed: &HashMap<(usize, usize), Vec<Row>>) -> Vec<Variant> {
        let multi = |n: usize| n > 1;
        let mut out = Vec::with_capacity(self.count());
        for &dtype in &self.dtypes {
            for &act in &self.m.activations {
                for &norm in &self.m.norms {
                    for &residual in &self.m.residuals {
                        for &rope in &self.m.ropes {
                            for &att in &self.m.attentions {
                                for &batch in &self.batches {
                                    for &seq in &self.seqs {
                                        for &execution in &self.executions {
                                            let mut axes = Vec::new();
                                            let mut ax = |k: &str, n: usize, v: String| {
                                                if multi(n) {
                                                    axes.push((k.to_string(), v));
                                                }
                                            };
                                            ax("dtype", self.dtypes.len(), dtype.to_string());
                                            ax(
                                                "activation",
                                                self.m.activations.len(),
                                                act.name().into(),
                                            );
                                            ax("norm", self.m.norms.len(), norm.name().into());
                                            ax(
                                                "residual",
                                                self.m.residuals.len(),
                                                residual.to_string(),
                                            );
                                            ax("rope", self.m.ropes.len(), rope.to_string());
                                            ax(
                                                "attention",
                                                self.m.attentions.len(),
                                                att.name().into(),
                                            );
                                            ax("batch", self.batches.len(), batch.to_string());
                                            ax("seq", self.seqs.len(), seq.to_string());
                                            ax(
                                                "execution",
                                                self.executions.len(),
                                                execution.name(),
                                            );
                                            out.push(Variant {
                                                label: label(&axes),
                                                axes,
                                                model: self.m.model(act, norm, residual, rope, att),
                                                batch,
                                                seq,
                                                lengths: self
                                                    .lengths
                                                    .clone()
                                                    .unwrap_or_else(|| vec![seq; batch]),
                                                dtype,
                                                observed: observed
                                                    .get(&(batch, seq))
                                                    .cloned()
                                                    .unwrap_or_default(),
                                                execution,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}
