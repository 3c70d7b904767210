//! The engine: from a validated scenario to outcomes. Both front ends — the
//! CLI (`layerdrift run`) and the test binary — call these functions; sinks
//! (snapshots, tables, plots, JSON) take what they return and never drive
//! evaluation themselves.
//!
//! - [`comparisons`]: what one backend is compared with, per check;
//! - [`evaluate`]: both sides of one comparison on every variant, judged;
//! - [`run_scenario`]: every comparison of a scenario, with every run's time
//!   and every failure (the CLI's whole job);
//! - [`oracle_runs`]: the oracle's own runs (for its snapshot).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use layerdrift_backends::{BackendId, BackendInfo, Checkpoints, DType};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::baseline::{Entry, EntryInfo, VariantKey};
use crate::bounds::Bounds;
use crate::metrics::DriftProfile;
use crate::origin::{LocalProfile, OpProfile};
use crate::scenario::{Check, Pairing, Scenario};
use crate::session::{ORACLE, Run, RunError, Session};

fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A backend id as [`display`] wrote it (`candle-cpu`), among the backends
/// this build knows (compiled in or not).
fn backend_id<'de, D: Deserializer<'de>>(d: D) -> Result<BackendId, D::Error> {
    let s = String::deserialize(d)?;
    layerdrift_backends::registry()
        .iter()
        .map(|b| b.id())
        .find(|id| id.to_string() == s)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown backend `{s}`")))
}

/// A dtype as [`display`] wrote it (`f32`).
fn dtype<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
    let s = String::deserialize(d)?;
    DType::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown dtype `{s}`")))
}

/// One side of a comparison: a backend and a strategy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The backend, e.g. `candle-cpu`.
    #[serde(serialize_with = "display", deserialize_with = "backend_id")]
    pub backend: BackendId,
    /// Strategy name, e.g. `full`.
    pub strategy: String,
    /// A baseline file: this side is the run recorded there
    /// (`layerdrift run --save-baseline`), not a live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<PathBuf>,
}

impl Side {
    /// A live run of `backend` with `strategy`.
    pub fn live(backend: BackendId, strategy: &str) -> Side {
        Side {
            backend,
            strategy: strategy.to_string(),
            baseline: None,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.backend, self.strategy)?;
        if self.baseline.is_some() {
            f.write_str("@baseline")?;
        }
        Ok(())
    }
}

/// One comparison of one check on one backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// The name in the trial name: `full-vs-rows`, `full-vs-oracle`,
    /// `full-vs-burn-flex-cpu`.
    pub name: String,
    /// The side the trial belongs to.
    pub a: Side,
    /// What it is compared with.
    pub b: Side,
    /// The bounds that apply.
    pub bounds: Bounds,
}

impl Comparison {
    /// Whether this compares two different backends (not the oracle).
    pub fn is_cross(&self) -> bool {
        self.a.backend != self.b.backend && !self.b.backend.is_oracle()
    }

    /// Whether side `b` is a baseline file's run rather than a live one.
    pub fn is_baseline(&self) -> bool {
        self.b.baseline.is_some()
    }
}

/// The outcome of a comparison on one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantOutcome {
    /// Variant label.
    pub variant: String,
    /// The dtype of the comparison.
    #[serde(serialize_with = "display", deserialize_with = "dtype")]
    pub dtype: DType,
    /// The drift profile, when both runs happened.
    pub profile: Option<DriftProfile>,
    /// Bound violations (empty = pass).
    pub violations: Vec<String>,
    /// Why the variant was not compared, if it was not.
    pub skipped: Option<String>,
    /// The drift of every op (`diagnose: { ops }`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<OpProfile>,
    /// Local vs inherited error per layer (`diagnose: { local: true }`):
    /// side B's layers run on side A's inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalProfile>,
    /// Why there is no local error although it was asked for (side B is a
    /// baseline, a value is not finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_unavailable: Option<String>,
    /// Wall time of the teacher-forced run of side B, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_wall_ms: Option<f64>,
}

/// The outcome of a comparison over all variants.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
                let needed = match (&v.profile, v.violations.is_empty()) {
                    (Some(p), false) => c.bounds.smallest_passing(p),
                    _ => None,
                };
                v.violations
                    .iter()
                    .cloned()
                    .chain(needed)
                    .map(move |msg| format!("{scenario} [{}] {} vs {}: {msg}", v.variant, c.a, c.b))
            })
            .collect()
    }

    /// How many variants were compared (not skipped).
    pub fn compared(&self) -> usize {
        self.variants.iter().filter(|v| v.profile.is_some()).count()
    }
}

/// Every comparison backend `id` takes part in as side `a`, in check order.
/// The oracle compares strategies only where it computes each for real
/// (a decoder's KV cache), and is never compared with itself.
pub fn comparisons(s: &Scenario, session: &Session, id: BackendId) -> Vec<Comparison> {
    let is_oracle = id.is_oracle();
    let others = session.scenario_backends(s);
    let side = Side::live;
    let mut out = Vec::new();
    for check in &s.checks {
        let bounds = check.bounds_for(id).clone();
        match &check.pairing {
            // The oracle's strategies differ only where it computes each
            // for real (a KV cache); on row-independent models they are
            // the same rows.
            Pairing::Strategies(_, _) if is_oracle && !s.is_decoder() => {}
            Pairing::Strategies(a, b) => out.push(Comparison {
                name: check.name.clone(),
                a: side(id, a),
                b: side(id, b),
                bounds,
            }),
            // Never the oracle against itself.
            Pairing::Oracle(_) | Pairing::Cross(_) if is_oracle => {}
            Pairing::Oracle(st) => out.push(Comparison {
                name: check.name.clone(),
                a: side(id, st),
                b: side(ORACLE, st),
                bounds,
            }),
            Pairing::Cross(st) => {
                // Each pair once: this backend against every later one.
                let pos = others.iter().position(|o| o.id() == id);
                for o in others.iter().skip(pos.map_or(others.len(), |p| p + 1)) {
                    let oid = o.id();
                    out.push(Comparison {
                        name: format!("{}-{oid}", check.name),
                        a: side(id, st),
                        b: side(oid, st),
                        bounds: bounds.clone(),
                    });
                }
            }
            Pairing::Baseline(st) => {
                let Some(file) = &check.baseline_file else {
                    continue;
                };
                out.push(Comparison {
                    name: check.name.clone(),
                    a: side(id, st),
                    b: Side {
                        baseline: Some(file.clone()),
                        ..side(id, st)
                    },
                    bounds,
                });
            }
        }
    }
    out
}

/// Points every baseline check of `s` at `file` (`layerdrift run --baseline
/// FILE`); a scenario without one gets a `{strategy}-vs-baseline` check per
/// strategy, with no bounds beyond "finite" (the CLI reports the drift).
pub fn use_baseline(s: &mut Scenario, file: &Path) {
    let mut any = false;
    for c in &mut s.checks {
        if matches!(c.pairing, Pairing::Baseline(_)) {
            c.baseline_file = Some(file.to_path_buf());
            any = true;
        }
    }
    if any {
        return;
    }
    for st in s.strategies.clone() {
        let name = format!("{}-vs-baseline", st.name);
        if s.checks.iter().any(|c| c.name == name) {
            continue;
        }
        s.checks.push(Check {
            name,
            pairing: Pairing::Baseline(st.name.to_string()),
            bounds: Bounds::default(),
            backend_bounds: Default::default(),
            baseline_file: Some(file.to_path_buf()),
            file_at: None,
        });
    }
}

/// A side's checkpoints: a live run's, or a baseline's.
enum Got {
    Run(Arc<Run>),
    Recorded(Arc<Entry>),
}

impl Got {
    fn checkpoints(&self) -> &Checkpoints {
        match self {
            Got::Run(r) => &r.checkpoints,
            Got::Recorded(e) => &e.checkpoints,
        }
    }
}

fn fetch(s: &Scenario, session: &Session, v: usize, side: &Side) -> Result<Got, RunError> {
    match &side.baseline {
        Some(f) => session
            .baseline_entry(s, v, f, side.backend, &side.strategy)
            .map(Got::Recorded),
        None => session
            .run(s, v, side.backend, &side.strategy)
            .map(Got::Run),
    }
}

/// Runs both sides of `c` on every variant and judges the bounds. `Err` when
/// a run failed (not when it cannot run here: that variant is skipped).
pub fn evaluate(s: &Scenario, session: &Session, c: &Comparison) -> Result<Outcome, String> {
    let mut variants = Vec::new();
    for (i, var) in s.variants.iter().enumerate() {
        let a = fetch(s, session, i, &c.a);
        let b = fetch(s, session, i, &c.b);
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
                    ops: None,
                    local: None,
                    local_unavailable: None,
                    forced_wall_ms: None,
                });
                continue;
            }
            (Ok(a), Ok(b)) => (a, b),
        };
        // The oracle computes in f64; ULPs are counted in the run's dtype.
        let profile = DriftProfile::compare(a.checkpoints(), b.checkpoints(), var.dtype)
            .map_err(|e| format!("{} [{}] {} vs {}: {e}", s.name, var.label, c.a, c.b))?;
        let violations = c.bounds.violations(&profile);
        let ops = s
            .diagnose
            .ops
            .as_ref()
            .and_then(|_| OpProfile::compare(a.checkpoints(), b.checkpoints(), var.dtype));
        let (local, local_unavailable, forced_wall_ms) = if s.diagnose.local {
            match local(s, session, i, c, a.checkpoints(), b.checkpoints()) {
                Ok((p, ms)) => (Some(p), None, Some(ms)),
                Err(RunError::Fail(m)) => {
                    return Err(format!(
                        "{} [{}] {} vs {}: teacher-forced run failed: {m}",
                        s.name, var.label, c.a, c.b
                    ));
                }
                Err(RunError::Skip(why)) => (None, Some(why), None),
            }
        } else {
            (None, None, None)
        };
        variants.push(VariantOutcome {
            variant: var.label.clone(),
            dtype: var.dtype,
            profile: Some(profile),
            violations,
            skipped: None,
            ops,
            local,
            local_unavailable,
            forced_wall_ms,
        });
    }
    Ok(Outcome {
        comparison: c.clone(),
        variants,
    })
}

/// Side B of `c` run again on side A's checkpoints `a` (variant `v`),
/// memoised by the session: the one place a comparison's forced run is
/// asked for, by [`run_scenario`] (with progress) and by [`evaluate`].
fn forced_b(
    s: &Scenario,
    session: &Session,
    v: usize,
    c: &Comparison,
    a: &Checkpoints,
) -> Result<Arc<Run>, RunError> {
    if c.b.baseline.is_some() {
        return Err(RunError::Skip(
            "side B is a recorded baseline: teacher forcing needs a live run of it".into(),
        ));
    }
    session.forced_run(s, v, (c.b.backend, &c.b.strategy), (&c.a.to_string(), a))
}

/// Side B of `c` run again on side A's inputs, and the split of the error
/// it gives (see [`crate::origin`]), with the forced run's wall time in ms.
fn local(
    s: &Scenario,
    session: &Session,
    v: usize,
    c: &Comparison,
    a: &Checkpoints,
    b: &Checkpoints,
) -> Result<(LocalProfile, f64), RunError> {
    let forced = forced_b(s, session, v, c, a)?;
    let p = LocalProfile::compare(a, b, &forced.checkpoints).map_err(RunError::Skip)?;
    Ok((p, forced.wall.as_secs_f64() * 1e3))
}

/// The oracle's runs of every strategy and variant (for a row-independent
/// model only the first strategy: the oracle computes them all alike).
pub fn oracle_runs(
    s: &Scenario,
    session: &Session,
) -> Result<Vec<(String, String, Arc<Run>)>, String> {
    let strategies = if s.is_decoder() {
        &s.strategies[..]
    } else {
        &s.strategies[..1]
    };
    let mut out = Vec::new();
    for st in strategies {
        for (i, v) in s.variants.iter().enumerate() {
            match session.run(s, i, ORACLE, st.name) {
                Ok(run) => out.push((st.name.to_string(), v.label.clone(), run)),
                Err(RunError::Skip(_)) => {}
                Err(RunError::Fail(m)) => return Err(m),
            }
        }
    }
    Ok(out)
}

/// One backend of a scenario run, as the CLI reports it.
#[derive(Clone, Debug)]
pub struct Participant {
    /// Its id.
    pub id: BackendId,
    /// Identity and versions, when it can run here.
    pub info: Option<BackendInfo>,
    /// Why it cannot, when it cannot.
    pub unavailable: Option<String>,
}

/// One backend run, done, skipped or failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The backend and strategy.
    pub side: Side,
    /// Variant label.
    pub variant: String,
    /// Wall time in ms, when it ran.
    pub wall_ms: Option<f64>,
    /// Why it did not run here, if it did not.
    pub skipped: Option<String>,
    /// Why it failed, if it failed.
    pub failed: Option<String>,
}

/// The version of [`JsonReport`]'s layout: readers refuse another.
pub const JSON_FORMAT: u32 = 1;

/// `layerdrift run --json`'s document, written and read (`layerdrift
/// review`) through these same types.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonReport {
    /// [`JSON_FORMAT`] when written.
    pub format: u32,
    /// Scenario name.
    pub scenario: String,
    /// The scenario file.
    pub file: String,
    /// The backends that ran.
    pub backends: Vec<JsonBackend>,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// Every comparison.
    pub outcomes: Vec<Outcome>,
    /// Comparisons that could not be made.
    pub errors: Vec<String>,
}

/// One backend of a [`JsonReport`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonBackend {
    /// Its id (`candle-cpu`).
    pub id: String,
    /// Library version.
    pub version: String,
    /// Device description.
    pub device: String,
    /// Intra-op threads.
    pub threads: usize,
}

impl JsonReport {
    /// The report of `report`, a run of scenario `name` from `file`.
    pub fn new(name: &str, file: &std::path::Path, report: &ScenarioReport) -> JsonReport {
        JsonReport {
            format: JSON_FORMAT,
            scenario: name.into(),
            file: file.display().to_string(),
            backends: report
                .participants
                .iter()
                .filter_map(|p| p.info.as_ref())
                .map(|i| JsonBackend {
                    id: i.id().to_string(),
                    version: i.version.clone(),
                    device: i.device_name.clone(),
                    threads: i.threads,
                })
                .collect(),
            runs: report.runs.clone(),
            outcomes: report.outcomes.clone(),
            errors: report.errors.clone(),
        }
    }

    /// Reads a report, refusing another format version or a field this
    /// version does not know, naming the file.
    pub fn read(path: &std::path::Path) -> Result<JsonReport, String> {
        let bad = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        match v.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == u64::from(JSON_FORMAT) => {}
            Some(f) => {
                return Err(bad(format!(
                    "format {f}; this layerdrift reads format {JSON_FORMAT} (write it again with this version's `layerdrift run --json`)"
                )));
            }
            None => {
                return Err(bad(
                    "no `format`: not a `layerdrift run --json` result (or one from before format 1)"
                        .into(),
                ));
            }
        }
        serde_json::from_value(v).map_err(|e| bad(format!("not a layerdrift report: {e}")))
    }
}

/// Everything a scenario run produced.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    /// Every backend asked for, available or not (oracle first).
    pub participants: Vec<Participant>,
    /// Every run, in the order they ran.
    pub runs: Vec<RunRecord>,
    /// Every comparison whose runs did not fail.
    pub outcomes: Vec<Outcome>,
    /// Comparisons that could not be made (a failed run, checkpoints of
    /// different shapes), as messages.
    pub errors: Vec<String>,
}

impl ScenarioReport {
    /// Whether anything failed (a run, or a comparison): a front end must not
    /// exit 0 then.
    pub fn has_failures(&self) -> bool {
        self.failed_runs().next().is_some() || !self.errors.is_empty()
    }

    /// Runs that failed (not skipped).
    pub fn failed_runs(&self) -> impl Iterator<Item = &RunRecord> {
        self.runs.iter().filter(|r| r.failed.is_some())
    }

    /// Comparison variants out of bounds.
    pub fn violations(&self) -> usize {
        self.outcomes
            .iter()
            .flat_map(|o| &o.variants)
            .filter(|v| !v.violations.is_empty())
            .count()
    }
}

/// Keeps only the scenario's backends that `only` names (names or ids);
/// an error when it names none of them.
pub fn filter_backends(s: &mut Scenario, session: &Session, only: &[String]) -> Result<(), String> {
    if only.is_empty() {
        return Ok(());
    }
    let ids: Vec<BackendId> = session
        .scenario_backends(s)
        .iter()
        .map(|b| b.id())
        .collect();
    for o in only {
        if !ids.iter().any(|id| id.matches(o)) {
            return Err(format!(
                "--backends: `{o}` is none of this scenario's backends here ({})",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    s.backends.retain(|name| {
        ids.iter()
            .any(|id| id.name == name && only.iter().any(|o| id.matches(o)))
    });
    let keep: Vec<BackendId> = ids
        .into_iter()
        .filter(|id| only.iter().any(|o| id.matches(o)))
        .collect();
    s.devices.retain(|d| keep.iter().any(|id| id.device == *d));
    Ok(())
}

/// Runs every comparison of `s` on every available backend. `progress` is
/// called before each run with its index, the total, and what it is.
pub fn run_scenario(
    s: &Scenario,
    session: &Session,
    progress: &mut dyn FnMut(usize, usize, &Side, &str),
) -> ScenarioReport {
    let mut participants = Vec::new();
    let mut active = Vec::new();
    let all = std::iter::once(session.oracle().clone()).chain(session.scenario_backends(s));
    for b in all {
        let id = b.id();
        match b.available() {
            Ok(()) => {
                participants.push(Participant {
                    id,
                    info: Some(b.info()),
                    unavailable: None,
                });
                active.push(id);
            }
            Err(why) => participants.push(Participant {
                id,
                info: None,
                unavailable: Some(why),
            }),
        }
    }
    let comps: Vec<Comparison> = active
        .iter()
        .flat_map(|id| comparisons(s, session, *id))
        .filter(|c| active.contains(&c.b.backend))
        .collect();
    let mut needed: Vec<(Side, usize)> = Vec::new();
    for c in &comps {
        for side in [&c.a, &c.b].into_iter().filter(|x| x.baseline.is_none()) {
            for v in 0..s.variants.len() {
                if !needed.iter().any(|(x, i)| x == side && *i == v) {
                    needed.push((side.clone(), v));
                }
            }
        }
    }
    // Runs grouped by input (stable: backends keep their order within a
    // group), and each input forgotten after its group's last run, so one
    // input at a time is in memory.
    needed.sort_by_key(|(_, v)| {
        let key = Session::input_key(s, *v);
        (0..s.variants.len())
            .position(|i| Session::input_key(s, i) == key)
            .unwrap_or(*v)
    });
    let mut runs = Vec::new();
    for (k, (side, v)) in needed.iter().enumerate() {
        let later = needed[k + 1..]
            .iter()
            .any(|(_, w)| Session::input_key(s, *w) == Session::input_key(s, *v));
        let label = &s.variants[*v].label;
        progress(k, needed.len(), side, label);
        let mut r = RunRecord {
            side: side.clone(),
            variant: label.clone(),
            wall_ms: None,
            skipped: None,
            failed: None,
        };
        match session.run(s, *v, side.backend, &side.strategy) {
            Ok(run) => r.wall_ms = Some(run.wall.as_secs_f64() * 1e3),
            Err(RunError::Skip(why)) => r.skipped = Some(why),
            Err(RunError::Fail(why)) => r.failed = Some(why),
        }
        runs.push(r);
        if !later {
            // A baseline comparison identifies the variant by a hash of its
            // input: take it while the input is here.
            if s.checks
                .iter()
                .any(|c| matches!(c.pairing, Pairing::Baseline(_)))
            {
                // Every variant of this input, not only this run's.
                let key = Session::input_key(s, *v);
                for w in (0..s.variants.len()).filter(|w| Session::input_key(s, *w) == key) {
                    let _ = session.variant_key(s, w);
                }
            }
            session.release_input(s, *v);
        }
    }
    // Teacher forcing: side B of every comparison once more on side A's
    // inputs, with progress (evaluation below finds them memoised).
    if s.diagnose.local {
        let forced: Vec<(&Comparison, usize)> = comps
            .iter()
            .filter(|c| c.b.baseline.is_none())
            .flat_map(|c| (0..s.variants.len()).map(move |v| (c, v)))
            .collect();
        let total = needed.len() + forced.len();
        for (k, (c, v)) in forced.iter().enumerate() {
            let label = format!("{}, forced by {}", s.variants[*v].label, c.a);
            progress(needed.len() + k, total, &c.b, &label);
            if let (Ok(a), Ok(_)) = (
                session.run(s, *v, c.a.backend, &c.a.strategy),
                session.run(s, *v, c.b.backend, &c.b.strategy),
            ) {
                // A failure is reported by the evaluation.
                let _ = forced_b(s, session, *v, c, &a.checkpoints);
            }
        }
    }
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for c in &comps {
        match evaluate(s, session, c) {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(format!("{}/{}: {e}", c.a.backend, c.name)),
        }
    }
    ScenarioReport {
        participants,
        runs,
        outcomes,
        errors,
    }
}

/// The baseline of a finished scenario run: every variant's key and every
/// live run that happened, with who computed it
/// (`layerdrift run --save-baseline`).
pub fn baseline_entries(
    s: &Scenario,
    session: &Session,
    report: &ScenarioReport,
) -> Result<(Vec<VariantKey>, Vec<Entry>), String> {
    let keys = (0..s.variants.len())
        .map(|v| session.variant_key(s, v))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries = Vec::new();
    for r in report.runs.iter().filter(|r| r.wall_ms.is_some()) {
        let Some(v) = s.variants.iter().position(|x| x.label == r.variant) else {
            continue;
        };
        let run = session
            .run(s, v, r.side.backend, &r.side.strategy)
            .map_err(|e| e.to_string())?;
        let class = session
            .backend(r.side.backend)
            .map(|b| b.class())
            .unwrap_or_default();
        entries.push(Entry {
            info: EntryInfo {
                backend: r.side.backend.to_string(),
                strategy: r.side.strategy.clone(),
                variant: r.variant.clone(),
                version: run.info.version.clone(),
                device: run.info.device_name.clone(),
                threads: run.info.threads,
                class,
                dtype: s.variants[v].dtype.to_string(),
            },
            checkpoints: run.checkpoints.clone(),
        });
    }
    Ok((keys, entries))
}
