//! The `layerdrift` command line: run, validate and list scenarios.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use layerdrift::discover::{scenario_dir, scenario_files};
use layerdrift::plan::{Outcome, comparisons, evaluate};
use layerdrift::report::{METRICS, metric_value, sig3, table};
use layerdrift::scenario::Scenario;
use layerdrift::session::{ORACLE, RunError, Session};
use serde::Serialize;

/// Differential testing of tensor backends: how far do mathematically
/// identical computations drift apart, layer by layer?
#[derive(Parser)]
#[command(name = "layerdrift", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: per-layer tables, a summary, run times, and SVG plots.
    Run {
        /// The scenario file (YAML).
        file: PathBuf,
        /// Only these backends (names or ids, comma-separated), e.g. `candle,burn-flex`.
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        /// Metric for the tables and plots: mean_abs, max_abs, rms, max_rel, max_ulps, equal.
        #[arg(long, default_value = "mean_abs")]
        metric: String,
        /// Where to write the plots (default: target/layerdrift/<scenario>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write every result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Logarithmic y axis in the plots.
        #[arg(long)]
        log_y: bool,
        /// Print only the summary, not the per-layer tables.
        #[arg(long)]
        summary: bool,
    },
    /// Check scenario files without running them.
    Validate {
        /// Scenario files (default: every file in the scenario directory).
        files: Vec<PathBuf>,
    },
    /// List the shipped scenarios and the backends of this build.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            file,
            backends,
            metric,
            out,
            json,
            log_y,
            summary,
        } => run(&file, &backends, &metric, out, json, log_y, summary),
        Command::Validate { files } => validate(files),
        Command::List => list(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:?}");
            ExitCode::from(2)
        }
    }
}

fn load(file: &Path, session: &Session) -> Result<Scenario, ExitCode> {
    Scenario::load(file, &session.known_names()).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn validate(files: Vec<PathBuf>) -> Result<ExitCode> {
    let files = if files.is_empty() {
        scenario_files(&scenario_dir()).map_err(anyhow::Error::msg)?
    } else {
        files
    };
    let session = Session::new();
    let mut bad = 0;
    for f in &files {
        match Scenario::load(f, &session.known_names()) {
            Ok(s) => println!(
                "{}: ok — {} variant(s), {} strateg{}, {} check(s)",
                f.display(),
                s.variants.len(),
                s.strategies.len(),
                if s.strategies.len() == 1 { "y" } else { "ies" },
                s.checks.len()
            ),
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn list() -> Result<ExitCode> {
    let session = Session::new();
    println!("backends in this build:");
    for b in session.backends() {
        let i = b.info();
        match b.available() {
            Ok(()) => println!(
                "  {:<18} {} — {}, {} thread(s)",
                i.id(),
                i.version,
                i.device_name,
                i.threads
            ),
            Err(why) => println!("  {:<18} unavailable: {why}", i.id()),
        }
    }
    let dir = scenario_dir();
    println!("\nscenarios in {}:", dir.display());
    for f in scenario_files(&dir).map_err(anyhow::Error::msg)? {
        match Scenario::load(&f, &session.known_names()) {
            Ok(s) => println!(
                "  {:<28} {} variant(s){} — {}",
                s.name,
                s.variants.len(),
                if s.slow { ", slow" } else { "" },
                s.description.lines().next().unwrap_or("")
            ),
            Err(e) => println!("  {:<28} INVALID: {}", f.display(), e.0[0]),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct RunTiming {
    backend: String,
    strategy: String,
    variant: String,
    wall_ms: f64,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    scenario: &'a str,
    file: String,
    backends: Vec<serde_json::Value>,
    timings: Vec<RunTiming>,
    outcomes: &'a [Outcome],
}

#[allow(clippy::too_many_arguments)]
fn run(
    file: &Path,
    only: &[String],
    metric: &str,
    out: Option<PathBuf>,
    json: Option<PathBuf>,
    log_y: bool,
    summary_only: bool,
) -> Result<ExitCode> {
    if !METRICS.contains(&metric) {
        anyhow::bail!(
            "unknown metric `{metric}`; use one of {}",
            METRICS.join(", ")
        );
    }
    layerdrift::session::device_filter().map_err(anyhow::Error::msg)?;
    let session = Arc::new(Session::new());
    let mut s = match load(file, &session) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if !only.is_empty() {
        s.backends.retain(|b| {
            only.iter()
                .any(|o| o == b || o.starts_with(&format!("{b}-")))
        });
        if s.backends.is_empty() {
            anyhow::bail!(
                "--backends {} matches none of the scenario's backends",
                only.join(",")
            );
        }
    }
    println!("scenario {} ({})", s.name, file.display());
    if !s.description.is_empty() {
        println!("  {}", s.description.trim().replace('\n', "\n  "));
    }
    println!(
        "  {} variant(s): {}",
        s.variants.len(),
        s.variants
            .iter()
            .map(|v| v.label.as_str())
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "  strategies: {}",
        s.strategies
            .iter()
            .map(|x| x.describe())
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Which backends take part, and why the others do not.
    let mut backends = vec![
        session
            .backend(ORACLE)
            .expect("oracle is always built")
            .clone(),
    ];
    backends.extend(session.scenario_backends(&s));
    let mut active = Vec::new();
    println!("  backends:");
    for b in &backends {
        let i = b.info();
        match b.available() {
            Ok(()) => {
                println!(
                    "    {:<18} {} — {}, {} thread(s)",
                    i.id(),
                    i.version,
                    i.device_name,
                    i.threads
                );
                active.push(b.clone());
            }
            Err(why) => {
                let short = only.is_empty() || only.iter().any(|o| *o == i.id());
                if short {
                    println!("    {:<18} skipped: {why}", i.id());
                }
            }
        }
    }

    // Every comparison, and the runs they need.
    // (A comparison with a backend that cannot run here was reported above.)
    let comps: Vec<_> = active
        .iter()
        .flat_map(|b| comparisons(&s, &session, b.as_ref()))
        .filter(|c| {
            session
                .backend(&c.b.backend)
                .is_some_and(|b| b.available().is_ok())
        })
        .collect();
    let mut needed = Vec::new();
    for c in &comps {
        for side in [&c.a, &c.b] {
            for v in 0..s.variants.len() {
                let key = (side.backend.clone(), side.strategy.clone(), v);
                if !needed.contains(&key)
                    && session
                        .backend(&side.backend)
                        .is_some_and(|b| b.available().is_ok())
                {
                    needed.push(key);
                }
            }
        }
    }
    let bar = ProgressBar::new(needed.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}",
        )
        .expect("static template"),
    );
    let started = Instant::now();
    let mut timings = Vec::new();
    for (backend, strategy, v) in &needed {
        bar.set_message(format!("{backend} {strategy} [{}]", s.variants[*v].label));
        match session.run(&s, *v, backend, strategy) {
            Ok(r) => timings.push(RunTiming {
                backend: backend.clone(),
                strategy: strategy.clone(),
                variant: s.variants[*v].label.clone(),
                wall_ms: r.wall.as_secs_f64() * 1e3,
            }),
            Err(RunError::Skip(why)) => bar.println(format!(
                "  skip {backend}/{strategy} [{}]: {why}",
                s.variants[*v].label
            )),
            Err(RunError::Fail(why)) => bar.println(format!(
                "  FAIL {backend}/{strategy} [{}]: {why}",
                s.variants[*v].label
            )),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "  {} backend runs in {:.1} s",
        timings.len(),
        started.elapsed().as_secs_f64()
    );

    let outcomes: Vec<Outcome> = comps
        .iter()
        .filter_map(|c| match evaluate(&s, &session, c) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("  {}: {e}", c.name);
                None
            }
        })
        .collect();

    if !summary_only {
        for o in &outcomes {
            let c = &o.comparison;
            println!(
                "\n{}/{} — {metric} per layer ({}/{} vs {}/{})",
                c.a.backend, c.name, c.a.backend, c.a.strategy, c.b.backend, c.b.strategy
            );
            print!("{}", table(o, metric));
        }
    }

    println!(
        "\nsummary (at the last layer; first divergence = first observed row and layer not bitwise equal):"
    );
    let mut failed = 0;
    for o in &outcomes {
        let c = &o.comparison;
        for v in &o.variants {
            let name = format!("{}/{} [{}]", c.a.backend, c.name, v.variant);
            let Some(p) = &v.profile else {
                println!("  skip  {name}: {}", v.skipped.as_deref().unwrap_or(""));
                continue;
            };
            let last = p.layers.last().expect("at least one layer");
            let verdict = if v.violations.is_empty() {
                "ok  "
            } else {
                failed += 1;
                "FAIL"
            };
            println!(
                "  {verdict}  {name}: mean {} max {} ulps {} equal {:.1}% · first divergence {} · growth p={}",
                metric_value(last, "mean_abs"),
                metric_value(last, "max_abs"),
                last.max_ulps,
                100.0 * last.equal_share,
                p.first_divergence.map_or("none".into(), |d| format!(
                    "row {} layer {}",
                    d.row, d.layer
                )),
                p.growth.exponent.map_or("–".into(), |e| format!("{e:.2}"))
            );
            if let Some(last_row) = &p.last_row_mean_abs {
                println!(
                    "          last observed row, mean|Δ| per layer: {}",
                    last_row
                        .iter()
                        .map(|x| sig3(*x))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            for msg in &v.violations {
                println!("          {msg}");
            }
        }
    }

    println!("\nrun times:");
    for t in &timings {
        println!(
            "  {:<18} {:<9} [{}] {:>9.1} ms",
            t.backend, t.strategy, t.variant, t.wall_ms
        );
    }

    let dir = out.unwrap_or_else(|| {
        layerdrift::snapshot::root()
            .join("target/layerdrift")
            .join(&s.name)
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("\nplots:");
    for (stem, svg) in layerdrift::plot::figures(&s.name, &outcomes, metric, log_y) {
        let path = dir.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("  {}", path.display());
    }
    if let Some(j) = json {
        let report = JsonReport {
            scenario: &s.name,
            file: file.display().to_string(),
            backends: active
                .iter()
                .map(|b| {
                    let i = b.info();
                    serde_json::json!({"id": i.id(), "version": i.version, "device": i.device_name, "threads": i.threads})
                })
                .collect(),
            timings,
            outcomes: &outcomes,
        };
        std::fs::write(&j, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", j.display()))?;
        println!("  json: {}", j.display());
    }
    if failed > 0 {
        println!("\n{failed} comparison(s) out of bounds");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
