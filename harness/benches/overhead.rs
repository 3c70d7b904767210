//! layerdrift's own cost, per backend: the scenario's backend runs called
//! directly through the adapter (`Backend::run` on weights and inputs made
//! beforehand — the library's work and nothing else) against a whole
//! `layerdrift run` of the same scenario restricted to that backend (weights
//! and inputs generated, the f64 oracle, comparisons, metrics, bounds),
//! interleaved, several repetitions. Prints the medians and their ratio.
//!
//! ```sh
//! cargo bench -p layerdrift --bench overhead --features tch --profile dev -- \
//!     [SCENARIO] [--reps N] [--backends a,b] [--variant LABEL]
//! ```
//!
//! `--profile dev` measures the build users run (`cargo layerdrift run`:
//! dependencies optimised, our crates not); without it `cargo bench`
//! compiles everything in release first. Relative scenario paths are taken
//! from the workspace root.

use std::time::Instant;

mod common;
use common::median;

use layerdrift::engine::{self, comparisons};
use layerdrift::scenario::Scenario;
use layerdrift::session::Session;
use layerdrift_backends::BackendId;

struct Args {
    scenario: String,
    reps: usize,
    backends: Vec<String>,
    variant: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        scenario: "scenarios/seed-residual-mlp.yaml".into(),
        reps: 3,
        backends: Vec::new(),
        variant: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--bench" => {}
            "--reps" => a.reps = common::count(it.next(), "--reps")?,
            "--backends" => a.backends = common::backends(it.next())?,
            "--variant" => a.variant = Some(it.next().ok_or("--variant: a variant label")?),
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            s => a.scenario = s.to_string(),
        }
    }
    Ok(a)
}

/// The live runs a whole `layerdrift run` of `s` makes on `id`.
fn runs_of(s: &Scenario, session: &Session, id: BackendId) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for c in comparisons(s, session, id) {
        for side in [&c.a, &c.b] {
            if side.backend != id || side.baseline.is_some() {
                continue;
            }
            for v in 0..s.variants.len() {
                if !out.contains(&(side.strategy.clone(), v)) {
                    out.push((side.strategy.clone(), v));
                }
            }
        }
    }
    out
}

/// The backend alone: every run of `id`, weights and inputs made first.
fn direct(s: &Scenario, id: BackendId) -> Result<f64, String> {
    let session = Session::new();
    let b = session.backend(id).ok_or("no such backend")?.clone();
    let mut total = 0.0;
    for (strategy, v) in runs_of(s, &session, id) {
        let wall = session
            .with_request(s, v, &strategy, |req| {
                let t = Instant::now();
                b.run(req).map(|_| t.elapsed().as_secs_f64())
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        total += wall;
        session.release_input(s, v);
    }
    Ok(total)
}

/// A whole `layerdrift run` of `s` on `id` (and the oracle), from a fresh
/// session: what the CLI does, without printing.
fn whole(s: &Scenario, id: BackendId) -> Result<Whole, String> {
    let session = Session::new();
    let mut s = s.clone();
    engine::filter_backends(&mut s, &session, &[id.to_string()])?;
    let t = Instant::now();
    let report = engine::run_scenario(&s, &session, &mut |_, _, _, _| {});
    let wall = t.elapsed().as_secs_f64();
    if report.has_failures() {
        return Err(format!("{id}: the run failed: {:?}", report.errors));
    }
    // The backend's own runs inside the whole run, and the oracle's.
    let sum = |who: BackendId| {
        // A memoised run (the oracle's one run for every strategy of a
        // row-independent model) reports the same wall time again: once.
        let mut seen = Vec::new();
        report
            .runs
            .iter()
            .filter(|r| r.side.backend == who)
            .filter_map(|r| r.wall_ms.map(|ms| (r.variant.clone(), ms.to_bits())))
            .filter(|k| {
                let new = !seen.contains(k);
                seen.push(k.clone());
                new
            })
            .map(|(_, ms)| f64::from_bits(ms))
            .sum::<f64>()
            / 1e3
    };
    Ok(Whole {
        wall,
        backend: sum(id),
        oracle: sum(BackendId::ORACLE),
    })
}

/// A whole run's wall time, and the parts its backend's and the oracle's
/// runs took.
struct Whole {
    wall: f64,
    backend: f64,
    oracle: f64,
}

fn main() -> std::process::ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let session = Session::new();
    // `cargo bench` runs in the package's folder: a relative path is taken
    // from the workspace root, as the README writes it.
    let path = std::path::Path::new(&a.scenario);
    let path = if path.is_relative() && !path.exists() {
        layerdrift::workspace::root().join(path)
    } else {
        path.to_path_buf()
    };
    let mut s = match session.load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(label) = &a.variant {
        s.variants.retain(|v| &v.label == label);
        if s.variants.is_empty() {
            eprintln!("error: --variant: no variant `{label}` in {}", a.scenario);
            return std::process::ExitCode::from(2);
        }
    }
    let ids: Vec<BackendId> = session
        .scenario_backends(&s)
        .iter()
        .filter(|b| b.available().is_ok())
        .map(|b| b.id())
        .filter(|id| a.backends.is_empty() || a.backends.iter().any(|o| id.matches(o)))
        .collect();
    println!(
        "overhead: {} ({} variant(s)), {} repetition(s), backends {}",
        s.name,
        s.variants.len(),
        a.reps,
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // What generating the scenario's data costs (layerdrift's work, inside
    // every whole run; the direct runs get it for free).
    {
        let fresh = Session::new();
        let t = Instant::now();
        let _ = fresh.weights(&s, 0);
        let w = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut seen = Vec::new();
        for v in 0..s.variants.len() {
            let key = Session::input_key(&s, v);
            if !seen.contains(&key) {
                let _ = fresh.input(&s, v);
                fresh.release_input(&s, v);
                seen.push(key);
            }
        }
        println!(
            "  data: weights {w:.3} s, {} input(s) {:.3} s",
            seen.len(),
            t.elapsed().as_secs_f64()
        );
    }
    // Per backend: direct walls, whole walls, whole wall / the backend's own
    // runs inside it (layerdrift's share, free of the machine's drift
    // between the two measurements).
    let mut times: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        vec![(Vec::new(), Vec::new(), Vec::new()); ids.len()];
    for rep in 0..a.reps {
        // Interleaved: every backend, both ways, each repetition.
        for (i, id) in ids.iter().enumerate() {
            let d = direct(&s, *id);
            let w = whole(&s, *id);
            match (d, w) {
                (Ok(d), Ok(w)) => {
                    println!(
                        "  rep {rep} {id:<18} direct {d:>8.3} s   layerdrift run {:>8.3} s   ×{:.3}   (inside it: {id} {:.3} s, oracle {:.3} s, the rest {:.3} s)",
                        w.wall,
                        w.wall / d,
                        w.backend,
                        w.oracle,
                        w.wall - w.backend - w.oracle
                    );
                    times[i].0.push(d);
                    times[i].1.push(w.wall);
                    times[i].2.push(w.wall / w.backend);
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {id}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    println!("\nmedians ({} repetitions):", a.reps);
    println!(
        "  {:<18} {:>10} {:>16} {:>8} {:>22}",
        "backend", "direct", "layerdrift run", "ratio", "run / its backend part"
    );
    for (id, (d, w, own)) in ids.iter().zip(times) {
        let (d, w, own) = (median(d), median(w), median(own));
        println!(
            "  {:<18} {d:>9.3}s {w:>15.3}s {:>8.3} {own:>22.3}",
            id.to_string(),
            w / d
        );
    }
    std::process::ExitCode::SUCCESS
}
