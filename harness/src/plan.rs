//! Which trials a scenario has, and why some of them cannot run here.
//!
//! Trial names are `{scenario}/{backend}-{device}/{check}`; every backend also
//! has a `{scenario}/{backend}-{device}/snapshot` trial holding its per-layer
//! profiles. A trial that cannot run here is *ignored* with its reason —
//! never silently absent, never a pass.

use layerdrift_backends::BackendId;

use crate::class::{Mode, class_of, mode, own_name};
use crate::engine::{Comparison, comparisons};
use crate::env::env;
use crate::scenario::{Cost, Scenario};
use crate::session::Session;

/// What a trial does.
#[derive(Clone, Debug)]
pub enum TrialKind {
    /// Evaluate one comparison's bounds (and, for a cross pair whose class
    /// has snapshots, its snapshot).
    Check(Box<Comparison>),
    /// Assert the backend's snapshot (all its own comparisons, or for the
    /// oracle its activation profile).
    Snapshot,
}

/// One planned trial.
#[derive(Clone, Debug)]
pub struct TrialPlan {
    /// `{scenario}/{backend}/{check}`.
    pub name: String,
    /// The backend.
    pub backend: BackendId,
    /// What it does.
    pub kind: TrialKind,
    /// `Some(reason)` when it cannot run here (an ignored trial).
    pub ignored: Option<String>,
}

/// Why no variant of a comparison can run here, if none can.
fn ignore_reason(s: &Scenario, session: &Session, c: &Comparison) -> Option<String> {
    let mut reasons = Vec::new();
    for v in 0..s.variants.len() {
        let ra = session.skip_reason(s, v, c.a.backend, &c.a.strategy);
        let rb = match &c.b.baseline {
            Some(f) => session.baseline_skip(s, v, f, c.b.backend, &c.b.strategy),
            None => session.skip_reason(s, v, c.b.backend, &c.b.strategy),
        };
        match ra.or(rb) {
            None => return None,
            Some(r) => reasons.push(r),
        }
    }
    reasons.dedup();
    Some(reasons.join("; "))
}

/// Why a slow scenario does not run in this build, if it does not.
pub fn slow_reason(s: &Scenario) -> Option<String> {
    match s.slow {
        Cost::Everyday => None,
        Cost::Slow => (cfg!(debug_assertions) && !env().slow).then(|| {
            "slow scenario (`slow: true`): runs in release builds (`cargo test --release`) or with LAYERDRIFT_SLOW=1".to_string()
        }),
        Cost::Manual => (!env().manual).then(|| {
            format!(
                "full-size scenario (`slow: manual`): run it with `layerdrift run scenarios/{}.yaml`, or in the suite with LAYERDRIFT_SLOW=manual",
                s.name
            )
        }),
    }
}

/// Every trial of a scenario, sorted by name.
pub fn plan(s: &Scenario, session: &Session) -> Vec<TrialPlan> {
    let mut out = Vec::new();
    let backends = std::iter::once(session.oracle().clone()).chain(session.scenario_backends(s));
    for b in backends {
        let id = b.id();
        let unavailable = b.available().err();
        let mut all_ignored = true;
        for c in comparisons(s, session, id) {
            let ignored = slow_reason(s)
                .or_else(|| unavailable.clone())
                .or_else(|| ignore_reason(s, session, &c));
            all_ignored &= ignored.is_some();
            out.push(TrialPlan {
                name: format!("{}/{id}/{}", s.name, c.name),
                backend: id,
                kind: TrialKind::Check(Box::new(c)),
                ignored,
            });
        }
        let snapshot_ignored = slow_reason(s)
            .or_else(|| unavailable.clone())
            .or_else(|| {
                (!id.is_oracle() && all_ignored)
                    .then(|| "no comparison of this backend can run here".to_string())
            })
            .or_else(|| {
                let file = format!("{}.snap", own_name(&s.name));
                match mode(
                    id,
                    &class_of(b.as_ref()),
                    &s.name,
                    &file,
                    &|f| f == file,
                    None,
                ) {
                    Mode::Ignore(why) => Some(why),
                    _ => None,
                }
            });
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
