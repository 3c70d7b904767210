//! The scenario suite: every `scenarios/*.yaml` × backend × device × check is
//! one libtest-mimic trial, `{scenario}/{backend}-{device}/{check}`.
//!
//! `cargo test -- seed-residual-mlp/candle` filters as usual, `--list` lists,
//! and cargo-nextest runs each trial in its own process. Trials that cannot
//! run here (backend not built, no device, unsupported dtype, slow scenario in
//! a debug build) are ignored, and the reasons are printed once at the start.
//! A `selftest/` group runs the harness on deliberately broken cases and
//! checks that they fail (negative controls).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use layerdrift::class::{Mode, class_of, is_pair_file, mode, own_name, pair_name};
use layerdrift::engine::{Comparison, Outcome, comparisons, evaluate, oracle_runs};
use layerdrift::env::env;
use layerdrift::plan::{TrialKind, plan};
use layerdrift::scenario::Scenario;
use layerdrift::session::Session;
use layerdrift::snapshot::band::{self, Recorded};
use layerdrift::snapshot::doc::SnapComparison;
use layerdrift::snapshot::doc::{DriftSnapshot, Meta, OracleDoc};
use layerdrift::snapshot::store::{assert_doc_snapshot, assert_snapshot};
use layerdrift::workspace::{scenario_dir, scenario_files};
use layerdrift_backends::{Backend, BackendId, DType};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::Serialize;

static SESSION: OnceLock<Session> = OnceLock::new();

fn session() -> &'static Session {
    SESSION.get_or_init(Session::new)
}

fn backend(id: BackendId) -> Result<&'static Arc<dyn Backend>, String> {
    session()
        .backend(id)
        .ok_or_else(|| format!("no backend `{id}` in this build"))
}

/// Checks one snapshot document the way this machine's class allows:
/// exactly (insta), or through the band against other classes.
fn check_snapshot<T: Serialize>(
    mode: Mode,
    name: &str,
    meta: &Meta,
    s: &Scenario,
    doc: &T,
    comparisons: &[SnapComparison],
) -> Result<(), Failed> {
    match mode {
        Mode::Exact(dir) => Ok(assert_snapshot(&dir, name, meta, &s.description, doc)?),
        Mode::Banded(against) => {
            let mut recorded = Vec::new();
            for (class, path) in &against {
                recorded.push(Recorded::read(class, path)?);
            }
            let classes: Vec<&str> = recorded.iter().map(|r| r.class.as_str()).collect();
            band::check(comparisons, &recorded).map_err(|e| {
                format!(
                    "`{name}` on class `{}` is outside the band of classes {}:\n{e}",
                    meta.class,
                    classes.join(", ")
                )
            })?;
            println!(
                "`{name}` on class `{}`: within the band of classes {}",
                meta.class,
                classes.join(", ")
            );
            Ok(())
        }
        Mode::Ignore(why) => Err(format!("not checked here: {why}").into()),
        Mode::Broken(why) => Err(why.into()),
    }
}

/// The documents of a backend's snapshot trial: its own comparisons (and,
/// for the oracle, its activations), built by the engine.
fn own_doc(s: &Scenario, id: BackendId) -> Result<(serde_yaml::Value, DriftSnapshot), Failed> {
    let session = session();
    let own: Vec<Comparison> = comparisons(s, session, id)
        .into_iter()
        .filter(|c| !c.is_cross() && !c.is_baseline())
        .collect();
    let outcomes: Vec<Outcome> = own
        .iter()
        .map(|c| evaluate(s, session, c))
        .collect::<Result<_, _>>()?;
    let drift = DriftSnapshot::new(&s.name, &id.to_string(), &outcomes);
    let doc = if id.is_oracle() {
        serde_yaml::to_value(OracleDoc::new(
            &s.name,
            &oracle_runs(s, session)?,
            &outcomes,
        ))
    } else {
        serde_yaml::to_value(&drift)
    }
    .map_err(|e| e.to_string())?;
    Ok((doc, drift))
}

/// The snapshot trial of `id`.
fn snapshot_trial(s: &Scenario, id: BackendId) -> Result<(), Failed> {
    let b = backend(id)?;
    let class = class_of(b.as_ref());
    let file = format!("{}.snap", own_name(&s.name));
    let probe = session().probe(id);
    let mode = mode(id, &class, &s.name, &file, &|f| f == file, probe.as_ref());
    let (doc, drift) = own_doc(s, id)?;
    let mut infos = vec![b.info()];
    if !id.is_oracle() {
        infos.push(session().oracle().info());
    }
    let meta = Meta::new(s, &infos, &class);
    check_snapshot(mode, &own_name(&s.name), &meta, s, &doc, &drift.comparisons)
}

fn check_trial(s: Arc<Scenario>, kind: TrialKind, backend_id: BackendId) -> Result<(), Failed> {
    let session = session();
    let c = match kind {
        TrialKind::Snapshot => return snapshot_trial(&s, backend_id),
        TrialKind::Check(c) => c,
    };
    let outcome = evaluate(&s, session, &c)?;
    if outcome.compared() == 0 {
        // Never a pass without a comparison.
        let why: Vec<_> = outcome
            .variants
            .iter()
            .filter_map(|v| v.skipped.clone())
            .collect();
        return Err(format!("nothing could be compared here: {}", why.join("; ")).into());
    }
    let failures = outcome.failures(&s.name);
    if !failures.is_empty() {
        return Err(failures.join("\n").into());
    }
    // A cross pair's snapshot, where it can be checked here; the bounds
    // above are checked on every machine.
    if c.is_cross() {
        let (a, b) = (backend(c.a.backend)?, backend(c.b.backend)?);
        let (a_class, b_class) = (class_of(a.as_ref()), class_of(b.as_ref()));
        let name = pair_name(&s.name, c.b.backend, &b_class, &c.a.strategy);
        let file = format!("{name}.snap");
        let (bid, strategy) = (c.b.backend, c.a.strategy.clone());
        let matches =
            |f: &str| f == file || (!env().record && is_pair_file(f, &s.name, bid, &strategy));
        let probe = session.probe(c.a.backend);
        let mode = match mode(
            c.a.backend,
            &a_class,
            &s.name,
            &file,
            &matches,
            probe.as_ref(),
        ) {
            Mode::Ignore(_) => return Ok(()),
            m => m,
        };
        let doc = DriftSnapshot::new(
            &s.name,
            &c.a.backend.to_string(),
            std::slice::from_ref(&outcome),
        );
        let meta = Meta::new(&s, &[a.info(), b.info()], &format!("{a_class} + {b_class}"));
        check_snapshot(mode, &name, &meta, &s, &doc, &doc.comparisons)?;
    }
    Ok(())
}

/// Ignore reason → the names of the trials it ignores.
type IgnoredTrials = BTreeMap<String, Vec<String>>;

fn scenario_trials(dir: &Path) -> Result<(Vec<Trial>, IgnoredTrials), String> {
    let mut trials = Vec::new();
    let mut ignored = IgnoredTrials::new();
    for file in scenario_files(dir)? {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(why) = Scenario::unfetched(&file) {
            // A trained network not downloaded here: ignored, naming the
            // script that fetches it (scripts/test runs it first).
            let name = format!("{stem}/scenario");
            ignored.entry(why).or_default().push(name.clone());
            trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
            continue;
        }
        match session().load(&file) {
            Err(e) => {
                // A broken scenario fails its own trial; the others still run.
                let msg = e.to_string();
                trials.push(Trial::test(format!("{stem}/scenario"), move || {
                    Err(msg.into())
                }));
            }
            Ok(s) => {
                let s = Arc::new(s);
                for p in plan(&s, session()) {
                    let (s, kind, backend) = (s.clone(), p.kind.clone(), p.backend);
                    let trial = Trial::test(p.name.clone(), move || check_trial(s, kind, backend));
                    if let Some(why) = &p.ignored {
                        ignored.entry(why.clone()).or_default().push(p.name.clone());
                    }
                    trials.push(trial.with_ignored_flag(p.ignored.is_some()));
                }
            }
        }
    }
    Ok((trials, ignored))
}

// ------------------------------------------------------------ dispatch maps

/// The dispatch map's snapshot name and the "scenario" name its class
/// coverage (`class.yaml` excludes) uses.
const DISPATCH_MAP: &str = "dispatch-map";

/// What a dispatch-map snapshot's info shows (not compared).
#[derive(Serialize)]
struct DispatchInfo {
    backend: String,
    version: String,
    class: String,
}

/// One `dispatch-map/{backend}` trial per backend of this build: the map at
/// the shipped scenarios' widths (≤ 3072), M = 1…64 and the powers of two to
/// 4096, 2 threads, against `snapshots/{backend}/{class}/dispatch-map.snap`.
/// Compared exactly or not at all: a class that has not recorded it
/// ignores the trial with the reason.
fn dispatch_trials(ignored: &mut IgnoredTrials) -> Vec<Trial> {
    let mut out = Vec::new();
    for b in session().backends() {
        let id = b.id();
        let name = format!("{DISPATCH_MAP}/{id}");
        let why = match b.available() {
            Err(why) => Some(why),
            Ok(()) => {
                let class = class_of(b.as_ref());
                let file = format!("{DISPATCH_MAP}.snap");
                match mode(id, &class, DISPATCH_MAP, &file, &|f| f == file, None) {
                    Mode::Exact(_) | Mode::Broken(_) => None,
                    Mode::Ignore(why) => Some(why),
                    Mode::Banded(_) => Some(format!(
                        "no dispatch map recorded for {id} on class `{class}` (a map is compared exactly, never banded): record it with `LAYERDRIFT_RECORD=1 INSTA_UPDATE=always cargo test -- {DISPATCH_MAP}`"
                    )),
                }
            }
        };
        if let Some(why) = &why {
            ignored.entry(why.clone()).or_default().push(name.clone());
        }
        out.push(Trial::test(name, move || dispatch_trial(id)).with_ignored_flag(why.is_some()));
    }
    out
}

fn dispatch_trial(id: BackendId) -> Result<(), Failed> {
    use layerdrift::dispatch;
    let b = backend(id)?;
    let class = class_of(b.as_ref());
    let file = format!("{DISPATCH_MAP}.snap");
    let probe = session().probe(id);
    let dir = match mode(
        id,
        &class,
        DISPATCH_MAP,
        &file,
        &|f| f == file,
        probe.as_ref(),
    ) {
        Mode::Exact(dir) => dir,
        Mode::Broken(why) => return Err(why.into()),
        Mode::Ignore(why) => return Err(format!("not checked here: {why}").into()),
        Mode::Banded(_) => {
            return Err(format!(
                "{id} on class `{class}`: this machine's probe hash differs from the class's recording, so its kernels are not the recorded ones and its dispatch map cannot be compared; record a class for this machine"
            )
            .into());
        }
    };
    // The scenarios `cargo test` runs: a full-size (`slow: manual`) one's
    // widths are probed by `layerdrift probe FILE` when asked, not here.
    let shapes =
        dispatch::scenario_shapes(session(), &scenario_files(&scenario_dir())?, 3072, true)
            .map_err(|e| e.to_string())?;
    let rows = dispatch::default_rows();
    let t = std::time::Instant::now();
    let map = dispatch::probe_backend(b.as_ref(), &class, &shapes, &rows, DType::F32, Some(2));
    print!("{}", map.table());
    println!("  ({:.1} s)", t.elapsed().as_secs_f64());
    let info = DispatchInfo {
        backend: id.to_string(),
        version: b.info().version,
        class: class.clone(),
    };
    Ok(assert_doc_snapshot(
        &dir,
        DISPATCH_MAP,
        &info,
        "The kernel-dispatch map (`layerdrift probe`): per row-mixing op at the shipped scenarios' widths, the row counts M that give a row the same bits, and where a row's result depends on its position or on the other rows.",
        &scenario_dir(),
        &map.snapshot_doc(),
    )?)
}

// ------------------------------------------------------------ negative controls

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("layerdrift-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("temp file");
    p
}

/// The first backend besides the oracle that can run here, for the controls.
fn subject() -> Result<BackendId, Failed> {
    session()
        .backends()
        .iter()
        .find(|b| !b.id().is_oracle() && b.available().is_ok())
        .map(|b| b.id())
        .ok_or_else(|| {
            "no backend besides the oracle can run in this build: the controls need one".into()
        })
}

const TINY: &str = "model: { kind: residual_mlp, layers: 3, dim: 16, hidden: 24 }\ninput: { batch: 2, seq: 4, seed: 1 }\nstrategies: [full, rows]\n";

fn selftest_bound_violation() -> Result<(), Failed> {
    let b = subject()?;
    let yaml = format!(
        "{TINY}backends: [{}]\ndevices: [{}]\nchecks:\n  - oracle: full\n    bounds: {{ every_layer: {{ max_abs: 0.0 }} }}\n",
        b.name, b.device
    );
    let s = session().load(&write_temp("bound.yaml", &yaml))?;
    let c = comparisons(&s, session(), b);
    let outcome = evaluate(&s, session(), &c[0])?;
    let failures = outcome.failures(&s.name);
    // f32 against f64 always differs, so a zero bound must be violated, and
    // the message must name the layer, the value and the bound.
    if failures.is_empty()
        || !failures[0].contains("layer 1: max_abs")
        || !failures[0].contains("> 0.000e0")
    {
        return Err(
            format!("a zero bound on f32-vs-f64 passed or said too little: {failures:?}").into(),
        );
    }
    Ok(())
}

fn selftest_nan_fails() -> Result<(), Failed> {
    use layerdrift_backends::weights::write_safetensors;
    use layerdrift_backends::{ModelSpec, Weights};
    let b = subject()?;
    let yaml = format!(
        "{TINY}weights: {{ file: nan.safetensors }}\nbackends: [{}]\ndevices: [{}]\nchecks:\n  - strategies: [full, rows]\n",
        b.name, b.device
    );
    // Weights with one NaN in layer 2: every later layer is NaN.
    let model_yaml = write_temp("probe.yaml", &format!("{TINY}checks:\n  - oracle: full\n"));
    let probe = session().load(&model_yaml)?;
    let model: &ModelSpec = &probe.variants[0].model;
    let w = Weights::init(model, 0, 0.2);
    let mut tensors: BTreeMap<_, _> = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tensors
        .get_mut("layers.1.linear1.weight")
        .expect("param")
        .data[0] = f32::NAN;
    let path = write_temp("scenario.yaml", &yaml);
    write_safetensors(&path.with_file_name("nan.safetensors"), &tensors)
        .map_err(|e| e.to_string())?;
    let s = session().load(&path)?;
    let c = comparisons(&s, session(), b);
    let failures = evaluate(&s, session(), &c[0])?.failures(&s.name);
    // No bounds at all, and the NaN must still fail, at layer 2.
    if !failures
        .iter()
        .any(|f| f.contains("layer 2") && f.contains("NaN or Inf"))
    {
        return Err(format!("NaN weights passed a check without bounds: {failures:?}").into());
    }
    Ok(())
}

/// The band must catch a wrong model: on the first available backend,
/// `small-residual-mlp` computed with tanh GELU where the oracle (the truth)
/// uses exact GELU — a backend that implements the wrong activation —
/// against every class recorded for that backend (this machine's included).
/// The right model must pass the same band, so the control does not fail
/// for another reason.
fn selftest_band_catches_a_wrong_model() -> Result<(), Failed> {
    use layerdrift::engine::VariantOutcome;
    use layerdrift::metrics::DriftProfile;
    use layerdrift_backends::{Activation, ModelSpec};
    let id = subject()?;
    let path = scenario_dir().join("small-residual-mlp.yaml");
    let right = session().load(&path)?;
    let mut wrong = right.clone();
    for v in &mut wrong.variants {
        if let ModelSpec::ResidualMlp(m) = &mut v.model {
            m.activation = Activation::GeluTanh;
        }
    }
    // Another path, so the session's memo keeps the two models apart.
    wrong.path = path.with_file_name("small-residual-mlp-with-tanh-gelu.yaml");
    let file = format!("{}.snap", own_name(&right.name));
    let against = layerdrift::class::recorded_elsewhere(id, "", &|f| f == file);
    if against.is_empty() {
        return Err(
            format!("no recorded class of {id} has {file}: nothing to band against").into(),
        );
    }
    let mut recorded = Vec::new();
    for (class, p) in &against {
        recorded.push(Recorded::read(class, p)?);
    }
    let (_, ok) = own_doc(&right, id)?;
    band::check(&ok.comparisons, &recorded)
        .map_err(|e| format!("the shipped model is outside its own band: {e}"))?;
    // The backend side runs the wrong model; the oracle stays the truth.
    let mut outcomes = Vec::new();
    for c in comparisons(&right, session(), id)
        .into_iter()
        .filter(|c| !c.is_cross())
    {
        let mut variants = Vec::new();
        for (i, v) in right.variants.iter().enumerate() {
            let a = session()
                .run(&wrong, i, c.a.backend, &c.a.strategy)
                .map_err(|e| e.to_string())?;
            let truth = if c.b.backend.is_oracle() {
                &right
            } else {
                &wrong
            };
            let b = session()
                .run(truth, i, c.b.backend, &c.b.strategy)
                .map_err(|e| e.to_string())?;
            variants.push(VariantOutcome {
                variant: v.label.clone(),
                dtype: v.dtype,
                profile: Some(DriftProfile::compare(
                    &a.checkpoints,
                    &b.checkpoints,
                    v.dtype,
                )?),
                violations: Vec::new(),
                skipped: None,
                ops: None,
                local: None,
                local_unavailable: None,
                forced_wall_ms: None,
            });
        }
        outcomes.push(Outcome {
            comparison: c,
            variants,
        });
    }
    let bad = DriftSnapshot::new(&right.name, &id.to_string(), &outcomes);
    match band::check(&bad.comparisons, &recorded) {
        Ok(()) => Err(format!("{id}: tanh GELU for exact GELU passed the band").into()),
        Err(e) if e.contains("full-vs-oracle") && e.contains("outside the band") => {
            println!("{id}: the wrong model fails the band:\n{e}");
            Ok(())
        }
        Err(e) => Err(format!(
            "{id}: the wrong model failed, but not on the oracle comparison: {e}"
        )
        .into()),
    }
}

/// A snapshot that does not parse, or a malformed `class.yaml`, is an error
/// naming the file — never a pass.
fn selftest_broken_snapshots_fail() -> Result<(), Failed> {
    let snap = write_temp(
        "broken.snap",
        "---\nsource: x\n---\nnot: [a layerdrift snapshot\n",
    );
    match band::read(&snap) {
        Ok(_) => return Err("a broken snapshot parsed".into()),
        Err(e) if e.contains("broken.snap") => {}
        Err(e) => return Err(format!("the error does not name the file: {e}").into()),
    }
    let plain = write_temp("plain.snap", "scenario: x\n");
    if band::read(&plain).is_ok() {
        return Err("a file without insta's header parsed".into());
    }
    let bad: Result<layerdrift::class::Coverage, _> = serde_yaml::from_str("excludes: [a, b]\n");
    if bad.is_ok() {
        return Err("a malformed class.yaml parsed".into());
    }
    Ok(())
}

/// The catalogue of bad inputs: `harness/tests/bad/*.yaml`, each one kind of
/// mistake, each with `# expect: <text>` lines and its expected position
/// (`# at: LINE:COL` or `# line: LINE`).
fn catalogue() -> Result<Vec<(PathBuf, Vec<String>, String)>, Failed> {
    // This binary belongs to the root package (`layerdrift-suite`).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/tests/bad");
    let mut out = Vec::new();
    for f in scenario_files(&dir)? {
        // Some entries are deliberately not UTF-8: read the comments lossily.
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let expect: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim_start_matches('\u{feff}').strip_prefix("# expect: "))
            .map(str::to_string)
            .collect();
        let at = text.lines().find_map(|l| {
            l.strip_prefix("# at: ")
                .map(|a| format!("{a}:"))
                .or_else(|| l.strip_prefix("# line: ").map(|n| format!("{n}:")))
        });
        let Some(at) = at else {
            return Err(format!(
                "{}: every catalogue entry needs `# at: L:C` or `# line: L`",
                f.display()
            )
            .into());
        };
        if expect.is_empty() {
            return Err(format!(
                "{}: every catalogue entry needs an `# expect:` line",
                f.display()
            )
            .into());
        }
        out.push((f, expect, at));
    }
    if out.len() < 60 {
        return Err(format!("the catalogue has {} entries; keep at least 60", out.len()).into());
    }
    Ok(out)
}

/// Every catalogue entry must fail validation with `file:line:column:` on
/// the expected position, and the text of each `# expect:` line.
fn selftest_bad_scenarios() -> Result<(), Failed> {
    let mut problems = Vec::new();
    for (f, expect, at) in catalogue()? {
        match session().load(&f) {
            Ok(_) => problems.push(format!("{}: validated, but must fail", f.display())),
            Err(e) => {
                let msg = e.to_string();
                for x in &expect {
                    if !msg.contains(x.as_str()) {
                        problems.push(format!("{}: message lacks `{x}`:\n    {msg}", f.display()));
                    }
                }
                let first = e.0.first().map(|e| e.to_string()).unwrap_or_default();
                if !first.starts_with(&format!("{}:{at}", f.display())) {
                    problems.push(format!(
                        "{}: expected position {at} first: {msg}",
                        f.display()
                    ));
                }
                if e.0.iter().any(|e| e.pos.is_none()) {
                    problems.push(format!(
                        "{}: an error without a position: {msg}",
                        f.display()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

// ------------------------------------------------------- GGUF dequantisation

/// `gguf/smollm2-dequant`: layerdrift's GGUF reader against gguf-py
/// (llama.cpp's own Python reader): the sha256 of every tensor of the
/// SmolLM2 file, dequantised to f32 in GGUF's element order, equals the
/// digest `scripts/gguf_reference.py` recorded in
/// `scenarios/data/smollm2-dequant.json`. Ignored until the file is fetched.
fn gguf_reference_trial(ignored: &mut IgnoredTrials) -> Trial {
    const NAME: &str = "gguf/smollm2-dequant";
    let dir = scenario_dir();
    let reference = dir.join("data/smollm2-dequant.json");
    let model = dir.join("../models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        let why = format!(
            "{} is not fetched yet: run `scripts/fetch-models`",
            model.display()
        );
        ignored.entry(why).or_default().push(NAME.into());
        return Trial::test(NAME, || Ok(())).with_ignored_flag(true);
    }
    Trial::test(NAME, move || {
        use sha2::{Digest, Sha256};
        let text = std::fs::read_to_string(&reference)
            .map_err(|e| format!("{}: {e}", reference.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", reference.display()))?;
        let want = doc["tensors"]
            .as_object()
            .ok_or_else(|| format!("{}: no `tensors`", reference.display()))?;
        let g = layerdrift_backends::gguf::Gguf::open(&model).map_err(|e| e.to_string())?;
        if g.tensors.len() != want.len() {
            return Err(format!(
                "{} tensors in the file, {} in the reference",
                g.tensors.len(),
                want.len()
            )
            .into());
        }
        let mut wrong = Vec::new();
        for t in &g.tensors {
            let x = g.read(t).map_err(|e| e.to_string())?;
            let mut h = Sha256::new();
            for v in &x.data {
                h.update(v.to_le_bytes());
            }
            let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if want[&t.name]["sha256"].as_str() != Some(got.as_str()) {
                wrong.push(format!("{} ({})", t.name, t.ty.name()));
            }
        }
        match wrong.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} of {} tensors dequantise to other bits than gguf-py's, e.g. {first}",
                wrong.len(),
                g.tensors.len()
            )
            .into()),
        }
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    if let Err(e) = layerdrift::env::check() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(only) = &layerdrift::env::env().devices
        && !args.list
    {
        let names: Vec<&str> = only.iter().map(|d| d.name()).collect();
        eprintln!("layerdrift: LAYERDRIFT_DEVICES: only {}", names.join(", "));
    }
    let dir = scenario_dir();
    let (mut trials, ignored) = match scenario_trials(&dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ignored = ignored;
    trials.extend(dispatch_trials(&mut ignored));
    trials.push(gguf_reference_trial(&mut ignored));
    trials.push(Trial::test(
        "selftest/bound-violation-fails",
        selftest_bound_violation,
    ));
    trials.push(Trial::test(
        "selftest/nan-fails-without-bounds",
        selftest_nan_fails,
    ));
    trials.push(Trial::test(
        "selftest/bad-scenarios-are-rejected",
        selftest_bad_scenarios,
    ));
    trials.push(Trial::test(
        "selftest/band-catches-a-wrong-model",
        selftest_band_catches_a_wrong_model,
    ));
    trials.push(Trial::test(
        "selftest/broken-snapshots-fail",
        selftest_broken_snapshots_fail,
    ));
    trials.sort_by(|a, b| a.name().cmp(b.name()));
    if !args.list && !ignored.is_empty() {
        eprintln!("layerdrift: ignored trials, and why:");
        for (why, names) in &ignored {
            let prefixes: std::collections::BTreeSet<_> = names
                .iter()
                .map(|n| n.rsplit_once('/').map_or(n.as_str(), |(p, _)| p))
                .collect();
            eprintln!(
                "  {} trial(s) of {}: {why}",
                names.len(),
                prefixes.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}
