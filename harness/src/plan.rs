//! From scenarios to trials: which checks run on which backend, what each
//! compares, and the verdicts.
//!
//! Trial names are `{scenario}/{backend}-{device}/{check}`; every backend also
//! has a `{scenario}/{backend}-{device}/snapshot` trial holding its per-layer
//! profiles.

use std::sync::Arc;

use layerdrift_backends::{Backend, DType, ModelSpec};
use serde::Serialize;

use crate::bounds::Bounds;
use crate::metrics::DriftProfile;
use crate::scenario::{Check, Pairing, Scenario};
use crate::session::{ORACLE, RunError, Session};

/// One side of a comparison: a backend id and a strategy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    /// Backend id, e.g. `candle-cpu`.
    pub backend: String,
    /// Strategy name, e.g. `full`.
    pub strategy: String,
}

/// One comparison of one check on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Check name as in the trial name: `full-vs-rows`, `full-vs-oracle`,
    /// `full-vs-burn-flex-cpu`.
    pub name: String,
    /// The side the trial belongs to.
    pub a: Side,
    /// What it is compared with.
    pub b: Side,
    /// The bounds that apply.
    pub bounds: Bounds,
}

/// The outcome of a comparison on one variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantOutcome {
    /// Variant label.
    pub variant: String,
    /// The dtype of the comparison.
    #[serde(serialize_with = "dtype_name")]
    pub dtype: DType,
    /// The drift profile, when both runs happened.
    pub profile: Option<DriftProfile>,
    /// Bound violations (empty = pass).
    pub violations: Vec<String>,
    /// Why the variant was not compared, if it was not.
    pub skipped: Option<String>,
}

/// The outcome of a comparison over all variants.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// What was compared.
    pub comparison: Comparison,
    /// Per variant.
    pub variants: Vec<VariantOutcome>,
}

impl Outcome {
    /// Failure messages, each naming scenario variant, pair, layer, value and bound.
    pub fn failures(&self, scenario: &str) -> Vec<String> {
        let c = &self.comparison;
        self.variants
            .iter()
            .flat_map(|v| {
                v.violations.iter().map(move |msg| {
                    format!(
                        "{scenario} [{}] {}/{} vs {}/{}: {msg}",
                        v.variant, c.a.backend, c.a.strategy, c.b.backend, c.b.strategy
                    )
                })
            })
            .collect()
    }
}

/// What a trial does.
#[derive(Clone, Debug)]
pub enum TrialKind {
    /// Evaluate one comparison's bounds.
    Check(Box<Comparison>),
    /// Assert the backend's snapshot (all its comparisons, or for the oracle
    /// its activation profile).
    Snapshot,
}

/// One planned trial.
#[derive(Clone, Debug)]
pub struct TrialPlan {
    /// `{scenario}/{backend}/{check}`.
    pub name: String,
    /// Backend id.
    pub backend: String,
    /// What it does.
    pub kind: TrialKind,
    /// `Some(reason)` when it cannot run here (an ignored trial).
    pub ignored: Option<String>,
}

/// Whether the oracle takes part in strategy checks: only where it really
/// computes each strategy (a decoder's KV cache), not for row-independent
/// models where it always computes just the observed rows.
fn oracle_runs_strategies(s: &Scenario) -> bool {
    matches!(
        s.variants.first().map(|v| &v.model),
        Some(ModelSpec::Decoder(_))
    )
}

/// Every comparison a backend takes part in as side `a`.
pub fn comparisons(s: &Scenario, session: &Session, backend: &dyn Backend) -> Vec<Comparison> {
    let info = backend.info();
    let id = info.id();
    let is_oracle = id == ORACLE;
    let others = session.scenario_backends(s);
    let mut out = Vec::new();
    for check in &s.checks {
        let bounds = check.bounds_for(&id, info.name).clone();
        let side = |b: &str, st: &str| Side {
            backend: b.to_string(),
            strategy: st.to_string(),
        };
        match &check.pairing {
            Pairing::Strategies(a, b) if (!is_oracle || oracle_runs_strategies(s)) => {
                out.push(Comparison {
                    name: check_name(check, format!("{a}-vs-{b}")),
                    a: side(&id, a),
                    b: side(&id, b),
                    bounds,
                });
            }
            Pairing::Oracle(st) if !is_oracle => out.push(Comparison {
                name: check_name(check, format!("{st}-vs-oracle")),
                a: side(&id, st),
                b: side(ORACLE, st),
                bounds,
            }),
            Pairing::Cross(st) if !is_oracle => {
                let pos = others.iter().position(|o| o.info().id() == id);
                for o in others.iter().skip(pos.map_or(others.len(), |p| p + 1)) {
                    let oid = o.info().id();
                    out.push(Comparison {
                        name: check_name(check, format!("{st}-vs-{oid}")),
                        a: side(&id, st),
                        b: side(&oid, st),
                        bounds: bounds.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn check_name(c: &Check, derived: String) -> String {
    match (&c.name, &c.pairing) {
        (Some(n), Pairing::Cross(_)) => {
            format!("{n}-{}", derived.rsplit("-vs-").next().unwrap_or(""))
        }
        (Some(n), _) => n.clone(),
        (None, _) => derived,
    }
}

/// Why no variant of a comparison can run here, if none can.
fn ignore_reason(s: &Scenario, session: &Session, c: &Comparison) -> Option<String> {
    let mut reasons = Vec::new();
    for v in 0..s.variants.len() {
        let ra = session.skip_reason(s, v, &c.a.backend, &c.a.strategy);
        let rb = session.skip_reason(s, v, &c.b.backend, &c.b.strategy);
        match ra.or(rb) {
            None => return None,
            Some(r) => reasons.push(r),
        }
    }
    reasons.dedup();
    Some(reasons.join("; "))
}

fn slow_reason(s: &Scenario) -> Option<String> {
    let slow_ok =
        !cfg!(debug_assertions) || std::env::var_os("LAYERDRIFT_SLOW").is_some_and(|v| v == "1");
    (s.slow && !slow_ok).then(|| {
        "slow scenario (`slow: true`): runs in release builds (`cargo test --release`) or with LAYERDRIFT_SLOW=1".to_string()
    })
}

/// Every trial of a scenario, sorted by name.
pub fn plan(s: &Scenario, session: &Session) -> Vec<TrialPlan> {
    let mut out = Vec::new();
    let mut backends: Vec<Arc<dyn Backend>> =
        session.backend(ORACLE).into_iter().cloned().collect();
    backends.extend(session.scenario_backends(s));
    for b in backends {
        let id = b.info().id();
        let unavailable = b.available().err();
        let comps = comparisons(s, session, b.as_ref());
        let mut all_ignored = true;
        for c in comps {
            let ignored = slow_reason(s)
                .or_else(|| unavailable.clone())
                .or_else(|| ignore_reason(s, session, &c));
            all_ignored &= ignored.is_some();
            out.push(TrialPlan {
                name: format!("{}/{id}/{}", s.name, c.name),
                backend: id.clone(),
                kind: TrialKind::Check(Box::new(c)),
                ignored,
            });
        }
        let snapshot_ignored = slow_reason(s)
            .or_else(|| unavailable.clone())
            .or_else(|| {
                (id != ORACLE && all_ignored)
                    .then(|| "no comparison of this backend can run here".to_string())
            })
            .or_else(|| crate::snapshot::unrecorded(&crate::snapshot::class_of(&b.info())));
        out.push(TrialPlan {
            name: format!("{}/{id}/snapshot", s.name),
            backend: id,
            kind: TrialKind::Snapshot,
            ignored: snapshot_ignored,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs both sides of `c` on every variant and judges the bounds.
pub fn evaluate(s: &Scenario, session: &Session, c: &Comparison) -> Result<Outcome, String> {
    let mut variants = Vec::new();
    for (i, var) in s.variants.iter().enumerate() {
        let a = session.run(s, i, &c.a.backend, &c.a.strategy);
        let b = session.run(s, i, &c.b.backend, &c.b.strategy);
        let (a, b) = match (a, b) {
            (Err(RunError::Fail(m)), _) | (_, Err(RunError::Fail(m))) => {
                return Err(format!("{} [{}]: run failed: {m}", s.name, var.label));
            }
            (Err(RunError::Skip(r)), _) | (_, Err(RunError::Skip(r))) => {
                variants.push(VariantOutcome {
                    variant: var.label.clone(),
                    dtype: var.dtype,
                    profile: None,
                    violations: Vec::new(),
                    skipped: Some(r),
                });
                continue;
            }
            (Ok(a), Ok(b)) => (a, b),
        };
        // The oracle computes in f64; ULPs are counted in the run's dtype.
        let profile = DriftProfile::compare(&a.checkpoints, &b.checkpoints, var.dtype);
        let violations = c.bounds.violations(&profile);
        variants.push(VariantOutcome {
            variant: var.label.clone(),
            dtype: var.dtype,
            profile: Some(profile),
            violations,
            skipped: None,
        });
    }
    Ok(Outcome {
        comparison: c.clone(),
        variants,
    })
}

fn dtype_name<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}
