//! The variant grid: every list-valued axis multiplied out, in a fixed axis
//! order, each variant labelled by the axes that have several values.

use std::collections::HashMap;

use layerdrift_backends::{
    Activation, AttentionForm, DType, DecoderSpec, Execution, ModelSpec, Norm, ResidualMlpSpec, Row,
};

use super::Variant;

/// Every axis, validated, and the model fields they vary.
#[derive(Clone, Debug)]
pub(super) struct Grid {
    pub(super) decoder: bool,
    pub(super) layers: usize,
    pub(super) dim: usize,
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) eps: f64,
    pub(super) rope_theta: f64,
    pub(super) dtypes: Vec<DType>,
    pub(super) activations: Vec<Activation>,
    pub(super) norms: Vec<Norm>,
    pub(super) residuals: Vec<bool>,
    pub(super) ropes: Vec<bool>,
    pub(super) attentions: Vec<AttentionForm>,
    pub(super) batches: Vec<usize>,
    pub(super) seqs: Vec<usize>,
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
            self.activations.len(),
            self.norms.len(),
            self.residuals.len(),
            self.ropes.len(),
            self.attentions.len(),
            self.batches.len(),
            self.seqs.len(),
            self.executions.len(),
        ]
        .into_iter()
        .fold(1usize, usize::saturating_mul)
    }

    /// The model of one point of the grid.
    pub(super) fn model(
        &self,
        activation: Activation,
        norm: Norm,
        residual: bool,
        rope: bool,
        attention: AttentionForm,
    ) -> ModelSpec {
        if self.decoder {
            ModelSpec::Decoder(DecoderSpec {
                layers: self.layers,
                dim: self.dim,
                heads: self.heads,
                hidden: self.hidden,
                activation,
                norm,
                eps: self.eps,
                rope_theta: rope.then_some(self.rope_theta),
                attention,
            })
        } else {
            ModelSpec::ResidualMlp(ResidualMlpSpec {
                layers: self.layers,
                dim: self.dim,
                hidden: self.hidden,
                activation,
                norm,
                eps: self.eps,
                residual,
            })
        }
    }

    /// Every distinct model of the grid (the axes the model depends on).
    pub(super) fn models(&self) -> Vec<ModelSpec> {
        let mut out = Vec::new();
        for &a in &self.activations {
            for &n in &self.norms {
                for &r in &self.residuals {
                    for &p in &self.ropes {
                        for &t in &self.attentions {
                            out.push(self.model(a, n, r, p, t));
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
            for &act in &self.activations {
                for &norm in &self.norms {
                    for &residual in &self.residuals {
                        for &rope in &self.ropes {
                            for &att in &self.attentions {
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
                                                self.activations.len(),
                                                act.name().into(),
                                            );
                                            ax("norm", self.norms.len(), norm.name().into());
                                            ax(
                                                "residual",
                                                self.residuals.len(),
                                                residual.to_string(),
                                            );
                                            ax("rope", self.ropes.len(), rope.to_string());
                                            ax(
                                                "attention",
                                                self.attentions.len(),
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
                                                model: self.model(act, norm, residual, rope, att),
                                                batch,
                                                seq,
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
