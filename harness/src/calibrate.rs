//! `layerdrift calibrate`: bounds from measurement.
//!
//! A scenario's checks run over `seeds` independent weight and input seeds
//! (seed 0 is the scenario's own) on every backend available here; the
//! profiles committed under `snapshots/` for other machine classes add one
//! sample per class and backend. For each check (and each `backend_bounds`
//! entry) the proposal is
//!
//! - per bounded metric: **the maximum** over samples, variants and layers
//!   (at the last layer for a `last_layer` bound), **times the margin**
//!   (default 3), rounded up to two significant digits. The maximum rather
//!   than a quantile: with 8–30 samples an upper quantile is the maximum
//!   anyway, and the margin covers what the samples did not see (the
//!   banded snapshot check measured ≤ 2.5× between CPU classes);
//! - `growth_exponent`: the largest fitted exponent **plus** half a power
//!   ([`EXPONENT_SLACK`]; an exponent is a rate, not a magnitude: 1.0
//!   measured and 3× would accept cubic growth);
//! - `bitwise: true` kept where every sample was bitwise equal, reported
//!   as broken where one was not; a drift bound whose samples were all
//!   bitwise equal is left as it is (nothing to scale from, and bitwise on
//!   the classes at hand need not hold on the next).
//!
//! **What a bound means.** Per backend (one trial each), the per-sample
//! maxima of a metric are fitted with a log-normal (drift magnitudes are
//! products of many small factors; their logs spread symmetrically in the
//! measurements here); the false-alarm rate of a bound `b` is
//! `P(X > b) = ½·erfc((ln b − μ) / (σ√2))`, combined over the metrics of
//! the bound and reported for the worst backend. It is stored with the
//! bound (`calibrated:`), with the seeds, classes, statistic and margin.
//!
//! **Checked power.** Each proposal is then run against negative controls —
//! the same computation with one real bug on side B: the other GELU
//! (exact ↔ tanh), the norm epsilon ×10, the residual dropped, one weight
//! read transposed — and calibrate reports whether the bound catches each,
//! and by how much. A bound that cannot tell a control from the drift is
//! reported as such, never hidden.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use layerdrift_backends::{Activation, BackendId, HostTensor, ModelSpec};

use crate::bounds::{Bounds, Calibration, MetricBounds};
use crate::class::recorded_elsewhere;
use crate::engine::{self, Comparison};
use crate::metric::{Metric, sig3};
use crate::metrics::DriftProfile;
use crate::scenario::{Check, InputSource, Pairing, Scenario, WeightSource};
use crate::session::{RunError, Session};
use crate::snapshot::band;

/// Seeds run by default.
pub const DEFAULT_SEEDS: usize = 8;
/// The default factor on the measured maximum.
pub const DEFAULT_MARGIN: f64 = 3.0;
/// What a proposed `growth_exponent` adds to the largest one measured:
/// half a power, so linear growth measured still fails quadratic growth.
pub const EXPONENT_SLACK: f64 = 0.5;

/// The metrics a ceiling bound can hold.
const CEILINGS: [Metric; 5] = [
    Metric::MeanAbs,
    Metric::MaxAbs,
    Metric::Rms,
    Metric::MaxRel,
    Metric::MaxUlps,
];

/// What calibrate is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Weight/input seeds (the scenario's own is the first).
    pub seeds: usize,
    /// Factor on the measured maximum.
    pub margin: f64,
    /// Also read the profiles committed for other machine classes.
    pub recorded: bool,
    /// Run the negative controls.
    pub controls: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seeds: DEFAULT_SEEDS,
            margin: DEFAULT_MARGIN,
            recorded: true,
            controls: true,
        }
    }
}

/// One measured profile, reduced to what bounds read.
#[derive(Clone, Debug)]
pub struct Sample {
    /// `seed N` (this machine) or `class C` (a committed snapshot).
    pub source: String,
    /// Side A's backend (the trial's).
    pub backend: String,
    /// Variant label.
    pub variant: String,
    /// Per layer, the values of [`CEILINGS`].
    pub layers: Vec<[f64; 5]>,
    /// The growth exponent, if fitted.
    pub exponent: Option<f64>,
    /// Whether the two sides were bitwise equal.
    pub bitwise: bool,
}

impl Sample {
    fn from_profile(source: &str, backend: &str, variant: &str, p: &DriftProfile) -> Sample {
        Sample {
            source: source.into(),
            backend: backend.into(),
            variant: variant.into(),
            layers: p
                .layers
                .iter()
                .map(|d| CEILINGS.map(|m| m.value(d)))
                .collect(),
            exponent: p.growth.exponent,
            bitwise: p.first_divergence.is_none(),
        }
    }

    fn worst(&self, m: usize, last_only: bool) -> f64 {
        if last_only {
            self.layers.last().map_or(0.0, |l| l[m])
        } else {
            self.layers.iter().map(|l| l[m]).fold(0.0, f64::max)
        }
    }
}

/// One bound of the file: a check's own (`owner: None`) or a
/// `backend_bounds` entry's.
#[derive(Clone, Debug)]
pub struct Group {
    /// Index of the check in the scenario.
    pub check: usize,
    /// The check's name.
    pub name: String,
    /// The `backend_bounds` key, or `None` for the check's own bounds.
    pub owner: Option<String>,
    /// The bounds in the file.
    pub current: Bounds,
    /// Every sample it applies to.
    pub samples: Vec<Sample>,
    /// The proposal, once made.
    pub proposed: Option<Bounds>,
    /// Notes on the proposal (bitwise broken, nothing measured, …).
    pub notes: Vec<String>,
    /// The negative controls' verdicts.
    pub controls: Vec<ControlResult>,
}

/// A negative control: one real bug, on side B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// The other GELU: exact (erf) ↔ tanh approximation.
    OtherGelu,
    /// Every norm's epsilon ×10.
    Epsilon,
    /// The residual connection dropped (residual_mlp).
    NoResidual,
    /// The first block's first weight matrix read in the transposed layout.
    Transposed,
}

impl Control {
    /// Every control, in report order.
    pub const ALL: [Control; 4] = [
        Control::OtherGelu,
        Control::Epsilon,
        Control::NoResidual,
        Control::Transposed,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Control::OtherGelu => "other GELU (erf <-> tanh)",
            Control::Epsilon => "norm eps x10",
            Control::NoResidual => "residual dropped",
            Control::Transposed => "one weight transposed",
        }
    }
}

/// A control against one proposed bound.
#[derive(Clone, Debug)]
pub struct ControlResult {
    /// Which control.
    pub control: Control,
    /// Comparisons × variants the control changed.
    pub runs: usize,
    /// How many of those the bound failed (caught).
    pub caught: usize,
    /// The smallest ratio of the control's worst `mean_abs` to the drift's
    /// worst, over those runs (how far the bug stands above the drift).
    pub separation: f64,
    /// Why it does not apply (`None` when it ran).
    pub not_applicable: Option<String>,
}

/// What calibrate found for a scenario.
#[derive(Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Seeds run here.
    pub seeds: usize,
    /// This machine's classes, then the recorded ones read.
    pub classes: Vec<String>,
    /// Every bound of the file, with its samples and proposal.
    pub groups: Vec<Group>,
    /// The margin used.
    pub margin: f64,
    /// Things the user should know (a baseline check skipped, …).
    pub notes: Vec<String>,
    /// Each backend's class on this machine, by id.
    pub here: BTreeMap<String, String>,
}

/// `s` with its seeds moved by `k` (0 = `s` itself); `None` when nothing
/// of it is seeded (fixed weights and input).
fn reseed(s: &Scenario, k: u64) -> Option<Scenario> {
    if k == 0 {
        return Some(s.clone());
    }
    let mut t = s.clone();
    let mut any = false;
    if let WeightSource::Init { seed, .. } = &mut t.weights {
        *seed += k;
        any = true;
    }
    match &mut t.input {
        InputSource::Seed(seed) | InputSource::Tokens(seed) => {
            *seed += k;
            any = true;
        }
        InputSource::File { .. } | InputSource::TokenFile(_) => {}
    }
    any.then_some(t)
}

/// The check a comparison belongs to (a cross comparison's name is the
/// check's plus the other backend).
fn check_of<'a>(s: &'a Scenario, name: &str) -> Option<(usize, &'a Check)> {
    s.checks
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == name)
        .or_else(|| {
            s.checks.iter().enumerate().find(|(_, c)| {
                matches!(c.pairing, Pairing::Cross(_)) && name.starts_with(&format!("{}-", c.name))
            })
        })
}

/// The `backend_bounds` key that applies to `id`: the one
/// [`Check::bounds_for`] reads (its id, else its library name).
fn owner_of(c: &Check, id: BackendId) -> Option<String> {
    [id.to_string(), id.name.to_string()]
        .into_iter()
        .find(|k| c.backend_bounds.contains_key(k))
}

/// The backends that take part here: the oracle, then the scenario's
/// available ones.
fn active(s: &Scenario, session: &Session) -> Vec<BackendId> {
    std::iter::once(session.oracle().clone())
        .chain(session.scenario_backends(s))
        .filter(|b| b.available().is_ok())
        .map(|b| b.id())
        .collect()
}

/// The live comparisons of `s` here (baseline checks left out).
fn live_comparisons(s: &Scenario, session: &Session) -> Vec<Comparison> {
    let ids = active(s, session);
    ids.iter()
        .flat_map(|id| engine::comparisons(s, session, *id))
        .filter(|c| !c.is_baseline() && ids.contains(&c.b.backend))
        .collect()
}

/// Runs calibrate on `s` (already filtered to the backends wanted).
/// `progress` hears each step.
pub fn calibrate(
    s: &Scenario,
    o: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    if !(o.margin.is_finite() && o.margin >= 1.0) {
        return Err(format!("--margin must be a number ≥ 1, got {}", o.margin));
    }
    if o.seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    let mut notes = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let group = |groups: &mut Vec<Group>, ci: usize, c: &Check, owner: Option<String>| {
        if let Some(i) = groups
            .iter()
            .position(|g| g.check == ci && g.owner == owner)
        {
            return i;
        }
        let current = match &owner {
            Some(k) => c.backend_bounds[k].clone(),
            None => c.bounds.clone(),
        };
        groups.push(Group {
            check: ci,
            name: c.name.clone(),
            owner,
            current,
            samples: Vec::new(),
            proposed: None,
            notes: Vec::new(),
            controls: Vec::new(),
        });
        groups.len() - 1
    };
    for c in &s.checks {
        if matches!(c.pairing, Pairing::Baseline(_)) {
            notes.push(format!(
                "check `{}` compares with a recorded baseline: not calibrated (its bounds gate an upgrade, and a baseline holds one seed)",
                c.name
            ));
        }
    }

    let mut seeds_run = 0;
    let mut classes: Vec<String> = Vec::new();
    let mut here: BTreeMap<String, String> = BTreeMap::new();
    let mut seed0: Option<(Session, Vec<Comparison>)> = None;
    for k in 0..o.seeds as u64 {
        let Some(sk) = reseed(s, k) else {
            notes.push(
                "the weights and the input are fixed (a checkpoint, a file): one sample per backend here"
                    .into(),
            );
            break;
        };
        progress(&format!("seed {k}: running {}", sk.name));
        // One session per seed: its weights and inputs are freed with it.
        let session = Session::new();
        let comps = live_comparisons(&sk, &session);
        if comps.is_empty() {
            return Err("nothing to compare here: no check has two sides that can run".into());
        }
        if k == 0 {
            for id in active(&sk, &session) {
                if let Some(b) = session.backend(id) {
                    let c = b.class();
                    here.insert(id.to_string(), c.clone());
                    if !classes.contains(&c) {
                        classes.push(c);
                    }
                }
            }
        }
        for c in &comps {
            let out = engine::evaluate(&sk, &session, c)?;
            let Some((ci, check)) = check_of(s, &c.name) else {
                continue;
            };
            let gi = group(&mut groups, ci, check, owner_of(check, c.a.backend));
            for v in &out.variants {
                if let Some(p) = &v.profile {
                    groups[gi].samples.push(Sample::from_profile(
                        &format!("seed {k}"),
                        &c.a.backend.to_string(),
                        &v.variant,
                        p,
                    ));
                }
            }
        }
        seeds_run += 1;
        if k == 0 {
            seed0 = Some((session, comps));
        }
    }

    if o.recorded {
        let ids: Vec<BackendId> = seed0
            .as_ref()
            .map(|(session, _)| active(s, session))
            .unwrap_or_default();
        for id in ids {
            let own = here.get(&id.to_string()).cloned().unwrap_or_default();
            for (class, sample_group) in recorded(s, id, &own)? {
                if !classes.contains(&class) {
                    classes.push(class.clone());
                }
                for (check_name, smp) in sample_group {
                    let Some((ci, check)) = check_of(s, &check_name) else {
                        continue;
                    };
                    let gi = group(&mut groups, ci, check, owner_of(check, id));
                    groups[gi].samples.push(smp);
                }
            }
        }
    }

    for g in &mut groups {
        propose(g, o.margin);
    }

    if o.controls
        && let Some((session, comps)) = &seed0
    {
        let tmp = std::env::temp_dir().join(format!("layerdrift-calibrate-{}", std::process::id()));
        for control in Control::ALL {
            progress(&format!("control: {}", control.name()));
            let mutated = mutate(s, session, control, &tmp)?;
            for g in &mut groups {
                g.controls
                    .push(run_control(s, session, comps, g, control, &mutated)?);
            }
        }
        std::fs::remove_dir_all(&tmp).ok();
    }

    Ok(Report {
        scenario: s.name.clone(),
        seeds: seeds_run,
        classes,
        groups,
        margin: o.margin,
        notes,
        here,
    })
}

/// The samples committed for backend `id` under classes other than its
/// own here (`own`): `(class, [(comparison name, sample)])`, by class.
type Recorded = Vec<(String, Vec<(String, Sample)>)>;

fn recorded(s: &Scenario, id: BackendId, own: &str) -> Result<Recorded, String> {
    let own_file = format!("{}.snap", s.name);
    let pair_prefix = format!("{}__vs__", s.name);
    let files = recorded_elsewhere(id, own, &|n| n == own_file || n.starts_with(&pair_prefix));
    let mut out: Recorded = Vec::new();
    for (class, f) in files {
        let (columns, comps) = band::read(&f)?;
        let mut samples = Vec::new();
        for c in comps {
            for v in c.variants.iter().filter(|v| v.skipped.is_none()) {
                let layers: Vec<[f64; 5]> = v
                    .layers
                    .iter()
                    .filter_map(|l| band::parse_line(l, &columns))
                    .map(|line| CEILINGS.map(|m| line.get(m).unwrap_or(0.0)))
                    .collect();
                if layers.is_empty() {
                    continue;
                }
                samples.push((
                    c.check.clone(),
                    Sample {
                        source: format!("class {class}"),
                        backend: id.to_string(),
                        variant: v.variant.clone(),
                        layers,
                        exponent: v
                            .growth_exponent
                            .as_deref()
                            .and_then(|e| e.trim().parse().ok()),
                        bitwise: v.first_divergence.as_deref() == Some("none"),
                    },
                ));
            }
        }
        if samples.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((c, v)) if *c == class => v.extend(samples),
            _ => out.push((class, samples)),
        }
    }
    Ok(out)
}

/// `x` rounded up to two significant digits.
fn ceil2(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x;
    }
    let e = 10f64.powi(x.log10().floor() as i32 - 1);
    let r = (x / e).ceil() * e;
    // Through text, so the YAML says `1.4e-5`, not `1.4000000000000001e-5`.
    format!("{r:.1e}").parse().unwrap_or(r)
}

/// Which metrics of `b` are set (ceilings only).
fn set_metrics(b: &Option<MetricBounds>) -> Vec<usize> {
    CEILINGS
        .iter()
        .enumerate()
        .filter(|(_, m)| b.as_ref().is_some_and(|b| b.limit(**m).is_some()))
        .map(|(i, _)| i)
        .collect()
}

fn set_limit(b: &mut MetricBounds, m: usize, v: f64) {
    match CEILINGS[m] {
        Metric::MeanAbs => b.mean_abs = Some(v),
        Metric::MaxAbs => b.max_abs = Some(v),
        Metric::Rms => b.rms = Some(v),
        Metric::MaxRel => b.max_rel = Some(v),
        Metric::MaxUlps => b.max_ulps = Some(v.ceil() as u64),
        Metric::Equal => b.min_equal_share = Some(v),
    }
}

fn propose(g: &mut Group, margin: f64) {
    if g.samples.is_empty() {
        g.notes
            .push("no sample: nothing ran for this bound here".into());
        return;
    }
    let n = g.samples.len();
    let bitwise = g.samples.iter().filter(|s| s.bitwise).count();
    if g.current.bitwise && bitwise == n {
        g.proposed = Some(Bounds {
            bitwise: true,
            ..Default::default()
        });
        g.notes
            .push(format!("bitwise equal in all {n} samples: kept"));
        return;
    }
    if g.current.bitwise {
        g.notes.push(format!(
            "`bitwise: true` broke in {} of {n} samples: proposing drift bounds instead",
            n - bitwise
        ));
    }
    if bitwise == n {
        // No drift to scale from; and `bitwise: true` measured on the
        // classes at hand may not hold on the next one: the file decides.
        let sources: std::collections::BTreeSet<&str> =
            g.samples.iter().map(|s| s.source.as_str()).collect();
        g.notes.push(format!(
            "bitwise equal in all {n} samples ({} seeds/classes): no drift to calibrate from, so the bound in the file is kept; `bitwise: true` would hold here",
            sources.len()
        ));
        return;
    }
    let mut every = set_metrics(&g.current.every_layer);
    let last = set_metrics(&g.current.last_layer);
    if every.is_empty() && last.is_empty() {
        every = vec![0, 1];
    }
    let mut p = Bounds::default();
    let limit = |m: usize, last_only: bool| {
        let worst = g
            .samples
            .iter()
            .map(|s| s.worst(m, last_only))
            .fold(0.0, f64::max);
        ceil2(worst * margin)
    };
    if !every.is_empty() {
        let mut b = MetricBounds::default();
        for &m in &every {
            set_limit(&mut b, m, limit(m, false));
        }
        p.every_layer = Some(b);
    }
    if !last.is_empty() {
        let mut b = MetricBounds::default();
        for &m in &last {
            set_limit(&mut b, m, limit(m, true));
        }
        p.last_layer = Some(b);
    }
    if g.current.growth_exponent.is_some() {
        let worst = g
            .samples
            .iter()
            .filter_map(|s| s.exponent)
            .fold(f64::NEG_INFINITY, f64::max);
        if worst.is_finite() {
            p.growth_exponent = Some(((worst + EXPONENT_SLACK) * 10.0).ceil() / 10.0);
        }
    }
    g.proposed = Some(p);
}

/// The false-alarm rate of `b` on one backend's samples: log-normal fit of
/// each metric's per-sample maxima, `1 − Π(1 − P_m)`.
fn false_alarm_of(samples: &[&Sample], b: &Bounds) -> f64 {
    // log P(every metric passes), so a rate far below f64's epsilon
    // survives: 1 − (1 − 1e-28) is 0 in f64.
    let mut log_pass = 0.0;
    for (bounds, last_only) in [(&b.every_layer, false), (&b.last_layer, true)] {
        for m in set_metrics(bounds) {
            let Some(limit) = bounds.as_ref().and_then(|x| x.limit(CEILINGS[m])) else {
                continue;
            };
            // Per sample (a trial judges every variant): the worst variant.
            let mut per: BTreeMap<&str, f64> = BTreeMap::new();
            for s in samples {
                let w = per.entry(s.source.as_str()).or_insert(0.0);
                *w = w.max(s.worst(m, last_only));
            }
            let logs: Vec<f64> = per.values().filter(|x| **x > 0.0).map(|x| x.ln()).collect();
            let p = if logs.is_empty() {
                0.0
            } else if logs.len() < 2 {
                f64::from(u8::from(logs[0] >= limit.ln()))
            } else {
                let mu = logs.iter().sum::<f64>() / logs.len() as f64;
                let var =
                    logs.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / (logs.len() - 1) as f64;
                let sd = var.sqrt();
                if sd == 0.0 {
                    f64::from(u8::from(mu >= limit.ln()))
                } else {
                    0.5 * libm::erfc((limit.ln() - mu) / (sd * std::f64::consts::SQRT_2))
                }
            };
            log_pass += (-p).ln_1p();
        }
    }
    -f64::exp_m1(log_pass)
}

impl Group {
    /// The proposal's false-alarm rate: the worst backend's.
    pub fn false_alarm(&self) -> Option<f64> {
        let b = self.proposed.as_ref()?;
        if b.bitwise {
            return Some(0.0);
        }
        let mut by: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            by.entry(s.backend.as_str()).or_default().push(s);
        }
        Some(
            by.values()
                .map(|v| false_alarm_of(v, b))
                .fold(0.0, f64::max),
        )
    }

    /// The worst `mean_abs` over the samples.
    fn worst_mean(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.worst(0, false))
            .fold(0.0, f64::max)
    }
}

/// `s` with `control` applied to every variant, or why it does not apply.
fn mutate(
    s: &Scenario,
    session: &Session,
    control: Control,
    tmp: &Path,
) -> Result<Result<(Scenario, Vec<bool>), String>, String> {
    let mut t = s.clone();
    let mut changed = Vec::new();
    if control == Control::Transposed {
        let shapes = |v: &crate::scenario::Variant| {
            v.model
                .parameters()
                .into_iter()
                .map(|p| (p.name, p.shape))
                .collect::<Vec<_>>()
        };
        if s.variants
            .iter()
            .any(|v| shapes(v) != shapes(&s.variants[0]))
        {
            return Ok(Err("the variants' weights differ in shape".into()));
        }
        let weights = session.weights(s, 0)?;
        let params = s.variants[0].model.parameters();
        let Some(target) = params.iter().find(|p| {
            p.shape.len() == 2
                && p.shape[0] > 1
                && p.shape[1] > 1
                && !["embed", "wte", "wpe", "lm_head"]
                    .iter()
                    .any(|e| p.name.contains(e))
        }) else {
            return Ok(Err("no weight matrix to transpose".into()));
        };
        let mut tensors = BTreeMap::new();
        for (name, t) in weights.iter() {
            let mut t = t.clone();
            if *name == target.name {
                // The buffer of W[out, in] read as if it held Wᵀ: the
                // classic layout bug, at any shape.
                let (r, c) = (t.shape[0], t.shape[1]);
                let data = (0..r * c).map(|i| t.data[(i % c) * r + i / c]).collect();
                t = HostTensor::new(t.shape.clone(), data);
            }
            tensors.insert(name.clone(), t);
        }
        std::fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let file = tmp.join("transposed.safetensors");
        layerdrift_backends::weights::write_safetensors(&file, &tensors)
            .map_err(|e| e.to_string())?;
        t.weights = WeightSource::File(file);
        return Ok(Ok((t, vec![true; s.variants.len()])));
    }
    for v in &mut t.variants {
        let before = v.model.clone();
        let gelu = |a: &mut Activation| {
            *a = match *a {
                Activation::GeluErf => Activation::GeluTanh,
                Activation::GeluTanh | Activation::GeluNew => Activation::GeluErf,
                Activation::Silu => Activation::Silu,
            }
        };
        match (&mut v.model, control) {
            (ModelSpec::ResidualMlp(m), Control::OtherGelu) => gelu(&mut m.activation),
            (ModelSpec::Decoder(m), Control::OtherGelu) => gelu(&mut m.activation),
            (ModelSpec::Gpt2(m), Control::OtherGelu) => gelu(&mut m.activation),
            (ModelSpec::Bert(m), Control::OtherGelu) => gelu(&mut m.activation),
            (ModelSpec::ResidualMlp(m), Control::Epsilon) => m.eps *= 10.0,
            (ModelSpec::Decoder(m), Control::Epsilon) => m.eps *= 10.0,
            (ModelSpec::Gpt2(m), Control::Epsilon) => m.eps *= 10.0,
            (ModelSpec::Bert(m), Control::Epsilon) => m.eps *= 10.0,
            (ModelSpec::Llama(m), Control::Epsilon) => m.eps *= 10.0,
            (ModelSpec::ResidualMlp(m), Control::NoResidual) => m.residual = false,
            _ => {}
        }
        changed.push(v.model != before);
    }
    if !changed.iter().any(|c| *c) {
        let why = match control {
            Control::OtherGelu => "the model has no GELU",
            Control::NoResidual => "only a residual_mlp's residual can be dropped",
            Control::Epsilon | Control::Transposed => "nothing to change",
        };
        return Ok(Err(why.into()));
    }
    Ok(Ok((t, changed)))
}

fn run_control(
    s: &Scenario,
    session: &Session,
    comps: &[Comparison],
    g: &Group,
    control: Control,
    mutated: &Result<(Scenario, Vec<bool>), String>,
) -> Result<ControlResult, String> {
    let mut r = ControlResult {
        control,
        runs: 0,
        caught: 0,
        separation: f64::INFINITY,
        not_applicable: None,
    };
    let (t, changed) = match mutated {
        Err(why) => {
            r.not_applicable = Some(why.clone());
            return Ok(r);
        }
        Ok(x) => x,
    };
    let Some(bounds) = &g.proposed else {
        r.not_applicable = Some("no proposal".into());
        return Ok(r);
    };
    let drift = g.worst_mean();
    for c in comps {
        let Some((ci, check)) = check_of(s, &c.name) else {
            continue;
        };
        if ci != g.check || owner_of(check, c.a.backend) != g.owner {
            continue;
        }
        for (v, var) in s.variants.iter().enumerate() {
            if !changed[v] {
                continue;
            }
            let a = session.run(s, v, c.a.backend, &c.a.strategy);
            let b = session.run(t, v, c.b.backend, &c.b.strategy);
            let (a, b) = match (a, b) {
                (Err(RunError::Fail(m)), _) | (_, Err(RunError::Fail(m))) => {
                    return Err(format!(
                        "{} [{}] control {}: {m}",
                        s.name,
                        var.label,
                        control.name()
                    ));
                }
                (Err(RunError::Skip(_)), _) | (_, Err(RunError::Skip(_))) => continue,
                (Ok(a), Ok(b)) => (a, b),
            };
            let p = DriftProfile::compare(&a.checkpoints, &b.checkpoints, var.dtype)
                .map_err(|e| format!("{} [{}] control: {e}", s.name, var.label))?;
            r.runs += 1;
            if !bounds.violations(&p).is_empty() {
                r.caught += 1;
            }
            let worst = p.layers.iter().map(|d| d.mean_abs).fold(0.0, f64::max);
            let ratio = if drift > 0.0 {
                worst / drift
            } else {
                f64::INFINITY
            };
            r.separation = r.separation.min(ratio);
        }
    }
    if r.runs == 0 {
        r.not_applicable = Some("no comparison of this bound could run it here".into());
    }
    Ok(r)
}

/// A false-alarm rate as text (`< 1e-12` below what a fit can say).
fn rate(f: f64) -> String {
    if f < 1e-12 {
        "< 1e-12".into()
    } else {
        format!("{f:.1e}")
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// A bound's top-level keys and their values, each in flow style.
fn parts(b: &Bounds) -> Vec<(&'static str, String)> {
    let mb = |b: &MetricBounds| {
        let mut parts = Vec::new();
        for m in CEILINGS {
            if let Some(v) = b.limit(m) {
                parts.push(match m {
                    Metric::MaxUlps => format!("{}: {v:.0}", m.bound_key()),
                    _ => format!("{}: {v:.1e}", m.bound_key()),
                });
            }
        }
        format!("{{ {} }}", parts.join(", "))
    };
    let mut parts = Vec::new();
    if b.bitwise {
        parts.push(("bitwise", "true".to_string()));
    }
    if let Some(e) = &b.every_layer {
        parts.push(("every_layer", mb(e)));
    }
    if let Some(l) = &b.last_layer {
        parts.push(("last_layer", mb(l)));
    }
    if let Some(g) = b.growth_exponent {
        parts.push(("growth_exponent", format!("{g:.1}")));
    }
    if let Some(c) = &b.calibrated {
        parts.push(("calibrated", calibration_flow(c)));
    }
    parts
}

/// A bound as one flow-style YAML mapping.
pub fn flow(b: &Bounds) -> String {
    let p: Vec<String> = parts(b)
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!("{{ {} }}", p.join(", "))
}

fn calibration_flow(c: &Calibration) -> String {
    format!(
        "{{ on: {}, seeds: {}, classes: [{}], samples: {}, statistic: {}, margin: {}, false_alarm: {} }}",
        c.on,
        c.seeds,
        c.classes.join(", "),
        c.samples,
        c.statistic,
        c.margin,
        if c.false_alarm == 0.0 {
            "0".to_string()
        } else {
            format!("{:.1e}", c.false_alarm)
        }
    )
}

impl Report {
    /// The proposal of group `g` with its provenance (`calibrated:`).
    pub fn stamped(&self, g: &Group, today: &str) -> Option<Bounds> {
        let mut b = g.proposed.clone()?;
        let mut classes: Vec<String> = Vec::new();
        for s in &g.samples {
            let c = match s.source.strip_prefix("class ") {
                Some(c) => c.to_string(),
                None => self.here.get(&s.backend).cloned().unwrap_or_default(),
            };
            if !classes.contains(&c) {
                classes.push(c);
            }
        }
        let mut per: Vec<(&str, &str)> = g
            .samples
            .iter()
            .map(|s| (s.source.as_str(), s.backend.as_str()))
            .collect();
        per.sort();
        per.dedup();
        b.calibrated = Some(Calibration {
            on: today.into(),
            seeds: self.seeds,
            classes,
            samples: per.len(),
            statistic: "max".into(),
            margin: self.margin,
            false_alarm: g.false_alarm().unwrap_or(f64::NAN),
        });
        Some(b)
    }

    /// The table: per bound, the measured min / median / max per layer of
    /// `mean_abs` and `max_abs`, the bound in the file and the proposal,
    /// the false-alarm rate, and the controls.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "calibrate {}: {} seed(s) here; classes {}; statistic max × {}",
            self.scenario,
            self.seeds,
            self.classes.join(", "),
            self.margin
        );
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for g in &self.groups {
            let who = g
                .owner
                .as_deref()
                .map_or(String::new(), |o| format!(" [backend_bounds.{o}]"));
            let mut backends: Vec<&str> = g.samples.iter().map(|s| s.backend.as_str()).collect();
            backends.sort();
            backends.dedup();
            let _ = writeln!(
                out,
                "\n{}{who}: {} profile(s) from {}",
                g.name,
                g.samples.len(),
                backends.join(", ")
            );
            let layers = g.samples.iter().map(|s| s.layers.len()).max().unwrap_or(0);
            if layers > 0 && !g.samples.iter().all(|s| s.bitwise) {
                let _ = writeln!(
                    out,
                    "  layer  mean|Δ| min      median   max       max|Δ| min       median   max"
                );
                for l in 0..layers {
                    let mut cells = String::new();
                    for m in [0, 1] {
                        let mut v: Vec<f64> = g
                            .samples
                            .iter()
                            .filter_map(|s| s.layers.get(l).map(|x| x[m]))
                            .collect();
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(0.0, f64::max);
                        let med = median(&mut v);
                        let _ =
                            write!(cells, "  {:>9} {:>9} {:>9} ", sig3(lo), sig3(med), sig3(hi));
                    }
                    let _ = writeln!(out, "  {:>5}{cells}", l + 1);
                }
            }
            let mut exps: Vec<f64> = g.samples.iter().filter_map(|s| s.exponent).collect();
            if !exps.is_empty() {
                let lo = exps.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = exps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let med = median(&mut exps);
                let _ = writeln!(
                    out,
                    "  growth exponent (mean|Δ| ≈ c·layer^p): min {lo:.2}, median {med:.2}, max {hi:.2}"
                );
            }
            let _ = writeln!(out, "  in the file: {}", flow(&g.current));
            match &g.proposed {
                Some(p) => {
                    let fa = g.false_alarm().map_or("?".into(), rate);
                    let _ = writeln!(
                        out,
                        "  proposed:    {}  (false alarm per trial ≈ {fa})",
                        flow(p)
                    );
                }
                None => {
                    let _ = writeln!(out, "  proposed:    none");
                }
            }
            for n in &g.notes {
                let _ = writeln!(out, "  note: {n}");
            }
            for c in &g.controls {
                let verdict = match &c.not_applicable {
                    Some(why) => format!("n/a ({why})"),
                    None if c.caught == c.runs && !c.separation.is_finite() => {
                        format!("caught {}/{} (the drift itself is 0)", c.caught, c.runs)
                    }
                    None if c.caught == c.runs => format!(
                        "caught {}/{} (mean|Δ| ≥ {:.0}x the drift)",
                        c.caught, c.runs, c.separation
                    ),
                    None => format!(
                        "MISSED {}/{}: this bound cannot tell it from the drift (mean|Δ| ≥ {:.1}x the drift)",
                        c.runs - c.caught,
                        c.runs,
                        c.separation
                    ),
                };
                let _ = writeln!(out, "  control {:<26} {verdict}", c.control.name());
            }
        }
        out
    }

    /// Whether a control that must be caught was missed: the other GELU, by
    /// any bound it applies to.
    pub fn missed_gelu(&self) -> Vec<String> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.controls
                    .iter()
                    .filter(|c| {
                        c.control == Control::OtherGelu
                            && c.not_applicable.is_none()
                            && c.caught < c.runs
                    })
                    .map(move |_| g.name.clone())
            })
            .collect()
    }
}

/// Rewrites the `bounds:` of `file` with the report's proposals, keeping
/// every other line as it is. Bounds shared through a YAML anchor (`&drift`
/// … `*drift`, on a check's `bounds:` or a `backend_bounds` entry) share the
/// proposal: the most lenient of theirs, per key, written where the anchor
/// is. Returns the new text.
pub fn rewrite(text: &str, report: &Report, today: &str) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let items = check_items(&lines)?;
    // Every bound site: (check, owner) → its key line.
    let mut sites: Vec<(usize, Option<String>, usize)> = Vec::new();
    for (ci, (start, end)) in items.iter().enumerate() {
        if let Some(l) = (*start..*end).find(|l| key_of(&lines[*l]) == Some("bounds")) {
            sites.push((ci, None, l));
        }
        if let Some(bb) = (*start..*end).find(|l| key_of(&lines[*l]) == Some("backend_bounds")) {
            let col = indent_of(&lines[bb]);
            for l in bb + 1..*end {
                let t = lines[l].trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                if indent_of(&lines[l]) <= col {
                    break;
                }
                if let Some(k) = key_of(&lines[l])
                    && indent_of(&lines[l]) == indent_of(&lines[bb + 1])
                {
                    sites.push((ci, Some(k.to_string()), l));
                }
            }
        }
    }
    let anchor_of = |l: usize, sigil: char| {
        value_of(&lines[l])
            .strip_prefix(sigil)
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
    };
    let proposal = |ci: usize, owner: &Option<String>| {
        report
            .groups
            .iter()
            .find(|g| g.check == ci && g.owner == *owner)
            .and_then(|g| report.stamped(g, today))
    };
    let mut edits: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for (ci, owner, l) in &sites {
        if anchor_of(*l, '*').is_some() {
            continue; // the anchor's site writes the shared bound
        }
        let mut b = proposal(*ci, owner);
        if let Some(name) = anchor_of(*l, '&') {
            for (cj, oj, lj) in &sites {
                if lj != l
                    && anchor_of(*lj, '*').as_deref() == Some(name.as_str())
                    && let Some(o) = proposal(*cj, oj)
                {
                    b = Some(match b {
                        Some(b) => lenient(&b, &o),
                        None => o,
                    });
                }
            }
        }
        let Some(b) = b else { continue };
        let end = items[*ci].1;
        edits.push(write_site(&lines, *l, end, &b));
    }
    // A check with no `bounds:` at all gets one below its first line.
    for (ci, (start, _)) in items.iter().enumerate() {
        if sites.iter().any(|(c, o, _)| *c == ci && o.is_none()) {
            continue;
        }
        if let Some(b) = proposal(ci, &None) {
            let indent = indent_of(&lines[*start]) + 2;
            edits.push((
                start + 1,
                start + 1,
                vec![format!("{}bounds: {}", " ".repeat(indent), flow(&b))],
            ));
        }
    }
    // From the bottom up, so earlier line numbers stay valid.
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (from, to, new) in edits {
        lines.splice(from..to, new);
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// The edit that puts `b` at the site on line `l` (a `key: value` line;
/// the value a block below it, or a flow mapping on it), keeping its anchor.
fn write_site(lines: &[String], l: usize, end: usize, b: &Bounds) -> (usize, usize, Vec<String>) {
    let line = &lines[l];
    let key = key_of(line).unwrap_or("bounds");
    let col = line.find(&format!("{key}:")).unwrap_or(0);
    let head = &line[..col];
    let rest = value_of(line);
    let (anchor, after) = match rest.strip_prefix('&') {
        Some(r) => {
            let (name, after) = r.split_once(' ').unwrap_or((r, ""));
            (format!(" &{name}"), after.trim())
        }
        None => (String::new(), rest),
    };
    if !(after.is_empty() || after.starts_with('#')) {
        return (l, l + 1, vec![format!("{head}{key}:{anchor} {}", flow(b))]);
    }
    // A block below the key: its lines are those indented deeper.
    let mut stop = l + 1;
    while stop < end && (lines[stop].trim().is_empty() || indent_of(&lines[stop]) > col) {
        stop += 1;
    }
    while stop > l + 1 && lines[stop - 1].trim().is_empty() {
        stop -= 1;
    }
    let child = (l + 1..stop)
        .find(|k| !lines[*k].trim().is_empty())
        .map_or(col + 2, |k| indent_of(&lines[k]));
    let mut new = vec![format!("{head}{key}:{anchor}")];
    new.extend(
        parts(b)
            .into_iter()
            .map(|(k, v)| format!("{}{k}: {v}", " ".repeat(child))),
    );
    (l, stop, new)
}

/// Per key the larger limit (and the larger exponent) of `a` and `b`.
fn lenient(a: &Bounds, b: &Bounds) -> Bounds {
    let mb = |x: &Option<MetricBounds>, y: &Option<MetricBounds>| match (x, y) {
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => Some(v.clone()),
        (Some(x), Some(y)) => {
            let mut out = MetricBounds::default();
            for (i, m) in CEILINGS.iter().enumerate() {
                let v = match (x.limit(*m), y.limit(*m)) {
                    (Some(p), Some(q)) => Some(p.max(q)),
                    (p, q) => p.or(q),
                };
                if let Some(v) = v {
                    set_limit(&mut out, i, v);
                }
            }
            Some(out)
        }
    };
    let calibrated = match (&a.calibrated, &b.calibrated) {
        (Some(x), Some(y)) => Some(Calibration {
            samples: x.samples + y.samples,
            // Either alarms (x + y − xy: no 1 − (1 − x)(1 − y), which rounds a tiny rate to 0).
            false_alarm: x.false_alarm + y.false_alarm - x.false_alarm * y.false_alarm,
            classes: {
                let mut c = x.classes.clone();
                c.extend(y.classes.iter().filter(|k| !x.classes.contains(k)).cloned());
                c
            },
            ..x.clone()
        }),
        (x, y) => x.clone().or(y.clone()),
    };
    Bounds {
        bitwise: a.bitwise && b.bitwise,
        every_layer: mb(&a.every_layer, &b.every_layer),
        last_layer: mb(&a.last_layer, &b.last_layer),
        growth_exponent: match (a.growth_exponent, b.growth_exponent) {
            (Some(p), Some(q)) => Some(p.max(q)),
            (p, q) => p.or(q),
        },
        calibrated,
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The key of a `key: value` line (a list item's `- key:` too).
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").unwrap_or(t).trim_start();
    if t.starts_with('#') {
        return None;
    }
    let (k, _) = t.split_once(':')?;
    (!k.is_empty() && !k.contains(' ')).then_some(k)
}

fn value_of(line: &str) -> &str {
    line.split_once(':').map_or("", |(_, v)| v.trim())
}

/// `(first line, end)` of each item of the top-level `checks:` list.
fn check_items(lines: &[String]) -> Result<Vec<(usize, usize)>, String> {
    let start = lines.iter().position(|l| l.starts_with("checks:")).ok_or(
        "no top-level `checks:` block to rewrite (a flow-style `checks: [...]` is not rewritten)",
    )?;
    let mut items = Vec::new();
    let mut item_indent = None;
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = indent_of(l);
        if ind == 0 && !t.starts_with("- ") {
            end = i;
            break;
        }
        if t.starts_with("- ") && item_indent.is_none_or(|k| k == ind) {
            item_indent = Some(ind);
            items.push(i);
        }
    }
    // An item ends at the next item, or where the block ends (trailing
    // comments belong to what follows).
    let mut out = Vec::new();
    for (k, &s) in items.iter().enumerate() {
        let mut e = items.get(k + 1).copied().unwrap_or(end);
        while e > s + 1 && {
            let t = lines[e - 1].trim_start();
            t.is_empty() || t.starts_with('#')
        } {
            e -= 1;
        }
        out.push((s, e));
    }
    Ok(out)
}

/// Today, UTC, as `YYYY-MM-DD` (civil from days, no date crate).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(source: &str, backend: &str, means: &[f64]) -> Sample {
        Sample {
            source: source.into(),
            backend: backend.into(),
            variant: "base".into(),
            layers: means
                .iter()
                .map(|m| [*m, 4.0 * m, 1.2 * m, 0.0, 1.0])
                .collect(),
            exponent: Some(0.8),
            bitwise: false,
        }
    }

    #[test]
    fn two_significant_digits_rounded_up() {
        assert_eq!(ceil2(1.31e-5), 1.4e-5);
        assert_eq!(ceil2(1.4e-5), 1.4e-5);
        assert_eq!(ceil2(9.91e-7), 1.0e-6);
        assert_eq!(ceil2(0.0), 0.0);
    }

    #[test]
    fn the_proposal_is_the_max_times_the_margin_and_the_exponent_gets_half_a_power() {
        let mut g = Group {
            check: 0,
            name: "full-vs-rows".into(),
            owner: None,
            current: Bounds {
                every_layer: Some(MetricBounds {
                    mean_abs: Some(1.0),
                    ..Default::default()
                }),
                growth_exponent: Some(9.0),
                ..Default::default()
            },
            samples: vec![
                sample("seed 0", "candle-cpu", &[1e-7, 3e-7]),
                sample("seed 1", "candle-cpu", &[2e-7, 4e-7]),
            ],
            proposed: None,
            notes: Vec::new(),
            controls: Vec::new(),
        };
        propose(&mut g, 3.0);
        let p = g.proposed.clone().unwrap();
        assert_eq!(p.every_layer.unwrap().mean_abs, Some(1.2e-6));
        assert_eq!(p.growth_exponent, Some(1.3));
        // A bound at the samples' own maximum alarms often; 3x above, rarely.
        let fa = g.false_alarm().unwrap();
        assert!(fa < 1e-3, "{fa}");
        let at_max = Bounds {
            every_layer: Some(MetricBounds {
                mean_abs: Some(4e-7),
                ..Default::default()
            }),
            ..Default::default()
        };
        let refs: Vec<&Sample> = g.samples.iter().collect();
        assert!(false_alarm_of(&refs, &at_max) > 0.2);
    }

    #[test]
    fn bitwise_is_kept_only_where_every_sample_was_bitwise() {
        let mut s = sample("seed 0", "burn-ndarray-cpu", &[0.0]);
        s.bitwise = true;
        let mut g = Group {
            check: 0,
            name: "c".into(),
            owner: Some("burn-ndarray".into()),
            current: Bounds {
                bitwise: true,
                ..Default::default()
            },
            samples: vec![s.clone()],
            proposed: None,
            notes: Vec::new(),
            controls: Vec::new(),
        };
        propose(&mut g, 3.0);
        assert!(g.proposed.as_ref().unwrap().bitwise);
        g.samples
            .push(sample("seed 1", "burn-ndarray-cpu", &[1e-7]));
        propose(&mut g, 3.0);
        let p = g.proposed.unwrap();
        assert!(!p.bitwise && p.every_layer.is_some());
        assert!(g.notes.iter().any(|n| n.contains("broke in 1 of 2")));
    }

    fn group(check: usize, owner: Option<&str>, proposed: Bounds) -> Group {
        Group {
            check,
            name: format!("check{check}"),
            owner: owner.map(str::to_string),
            current: Bounds::default(),
            samples: vec![sample("seed 0", "candle-cpu", &[1e-7])],
            proposed: Some(proposed),
            notes: Vec::new(),
            controls: Vec::new(),
        }
    }

    fn mean(v: f64) -> Bounds {
        Bounds {
            every_layer: Some(MetricBounds {
                mean_abs: Some(v),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The anchor sits on a `backend_bounds` entry and a later check
    /// aliases it: the entry's block gets the more lenient proposal, the
    /// alias and every other line stay.
    #[test]
    fn rewrite_keeps_layout_and_merges_an_anchored_backend_bound() {
        let text = "# head\nchecks:\n  - strategies: [full, rows]\n    bounds: { bitwise: true }\n    backend_bounds:\n      tch: &drift\n        every_layer: { mean_abs: 1.0e-5 }\n        growth_exponent: 1.5\n  - oracle: full\n    bounds: *drift\n# tail\nthreads: 2\n";
        let report = Report {
            scenario: "t".into(),
            seeds: 1,
            classes: vec!["k".into()],
            groups: vec![
                group(
                    0,
                    None,
                    Bounds {
                        bitwise: true,
                        ..Default::default()
                    },
                ),
                group(0, Some("tch"), mean(3e-6)),
                group(1, None, mean(4e-6)),
            ],
            margin: 3.0,
            notes: Vec::new(),
            here: [("candle-cpu".to_string(), "k".to_string())].into(),
        };
        let out = rewrite(text, &report, "2026-12-04").unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# head");
        assert!(
            lines[3].starts_with("    bounds: { bitwise: true, calibrated: { on: 2026-12-04"),
            "{out}"
        );
        assert_eq!(lines[5], "      tch: &drift");
        assert_eq!(lines[6], "        every_layer: { mean_abs: 4.0e-6 }");
        assert!(
            lines[7].starts_with("        calibrated: { on: 2026-12-04, seeds: 1, classes: [k]"),
            "{out}"
        );
        assert_eq!(lines[9], "    bounds: *drift");
        assert_eq!(&lines[10..], &["# tail", "threads: 2"]);
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(
            v["checks"][1]["bounds"]["every_layer"]["mean_abs"].as_f64(),
            Some(4e-6)
        );
    }

    #[test]
    fn the_checks_items_are_found_with_their_extent() {
        let text = "model: {}\nchecks:\n  - oracle: full\n    bounds: &d\n      every_layer: {}\n\n  # between\n  - cross: full\n    bounds: *d\nslow: true\n";
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(check_items(&lines).unwrap(), vec![(2, 5), (7, 9)]);
    }
}
