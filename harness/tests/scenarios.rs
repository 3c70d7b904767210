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

use layerdrift::discover::{scenario_dir, scenario_files};
use layerdrift::plan::{TrialKind, evaluate, plan};
use layerdrift::scenario::Scenario;
use layerdrift::session::{ORACLE, Session};
use layerdrift::snapshot::{backend_snapshot, cross_class, cross_snapshot, unrecorded};
use libtest_mimic::{Arguments, Failed, Trial};

static SESSION: OnceLock<Session> = OnceLock::new();

fn session() -> &'static Session {
    SESSION.get_or_init(Session::new)
}

fn check_trial(s: Arc<Scenario>, kind: TrialKind, backend: String) -> Result<(), Failed> {
    let session = session();
    match kind {
        TrialKind::Snapshot => backend_snapshot(&s, session, &backend).map_err(Failed::from),
        TrialKind::Check(c) => {
            let outcome = evaluate(&s, session, &c).map_err(Failed::from)?;
            let compared = outcome
                .variants
                .iter()
                .filter(|v| v.profile.is_some())
                .count();
            if compared == 0 {
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
            // A cross pair's snapshot, where its machine class has snapshots;
            // the bounds above are checked on every machine.
            let cross = c.b.backend != c.a.backend && c.b.backend != ORACLE;
            if cross && unrecorded(&cross_class(session, &c)).is_none() {
                cross_snapshot(&s, session, &outcome).map_err(Failed::from)?;
            }
            Ok(())
        }
    }
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
        match Scenario::load(&file, &session().known_names()) {
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
                    let (s, kind, backend) = (s.clone(), p.kind.clone(), p.backend.clone());
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

// ------------------------------------------------------------ negative controls

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("layerdrift-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("temp file");
    p
}

/// The first backend besides the oracle that can run here, for the controls.
fn subject() -> Option<String> {
    session()
        .backends()
        .iter()
        .map(|b| b.info().id())
        .find(|id| id != ORACLE && session().backend(id).is_some_and(|b| b.available().is_ok()))
}

const TINY: &str = "model: { kind: residual_mlp, layers: 3, dim: 16, hidden: 24 }\ninput: { batch: 2, seq: 4, seed: 1 }\nstrategies: [full, rows]\n";

fn selftest_bound_violation() -> Result<(), Failed> {
    let Some(b) = subject() else {
        return Err("no backend besides the oracle is built".into());
    };
    let name = b.rsplit_once('-').map_or(b.as_str(), |(n, _)| n);
    let yaml = format!(
        "{TINY}backends: [{name}]\ndevices: [cpu]\nchecks:\n  - oracle: full\n    bounds: {{ every_layer: {{ max_abs: 0.0 }} }}\n"
    );
    let s = Scenario::load(&write_temp("bound.yaml", &yaml), &session().known_names())
        .map_err(|e| e.to_string())?;
    let c = layerdrift::plan::comparisons(
        &s,
        session(),
        session().backend(&b).expect("subject").as_ref(),
    );
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
    let Some(b) = subject() else {
        return Err("no backend besides the oracle is built".into());
    };
    let name = b.rsplit_once('-').map_or(b.as_str(), |(n, _)| n);
    let yaml = format!(
        "{TINY}weights: {{ file: nan.safetensors }}\nbackends: [{name}]\ndevices: [cpu]\nchecks:\n  - strategies: [full, rows]\n"
    );
    // Weights with one NaN in layer 2: every later layer is NaN.
    let model_yaml = write_temp("probe.yaml", &format!("{TINY}checks:\n  - oracle: full\n"));
    let probe = Scenario::load(&model_yaml, &session().known_names()).map_err(|e| e.to_string())?;
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
    let s = Scenario::load(&path, &session().known_names()).map_err(|e| e.to_string())?;
    let c = layerdrift::plan::comparisons(
        &s,
        session(),
        session().backend(&b).expect("subject").as_ref(),
    );
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

/// Every `harness/tests/bad/*.yaml` must fail validation with
/// `file:line:column:` and the text of its `# expect:` line.
fn selftest_bad_scenarios() -> Result<(), Failed> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let files = scenario_files(&dir)?;
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| e.to_string())?;
        let expect: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        let at: Option<&str> = text.lines().find_map(|l| l.strip_prefix("# at: "));
        match Scenario::load(f, &session().known_names()) {
            Ok(_) => problems.push(format!("{}: validated, but must fail", f.display())),
            Err(e) => {
                let msg = e.to_string();
                for x in &expect {
                    if !msg.contains(x) {
                        problems.push(format!("{}: message lacks `{x}`:\n    {msg}", f.display()));
                    }
                }
                let prefix = format!("{}:", f.display());
                if !msg.starts_with(&prefix) {
                    problems.push(format!(
                        "{}: message does not start with the file: {msg}",
                        f.display()
                    ));
                }
                if let Some(at) = at
                    && !msg.starts_with(&format!("{}:{at}:", f.display()))
                {
                    problems.push(format!("{}: expected position {at}: {msg}", f.display()));
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

fn main() -> ExitCode {
    let args = Arguments::from_args();
    match layerdrift::session::device_filter() {
        Ok(Some(only)) if !args.list => {
            eprintln!("layerdrift: LAYERDRIFT_DEVICES: only {}", only.join(", "))
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let dir = scenario_dir();
    let (mut trials, ignored) = match scenario_trials(&dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
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
