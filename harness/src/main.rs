//! The `layerdrift` command line: a thin front end over the engine.
//!
//! Exit codes: 0 all good; 1 a comparison out of bounds, or a backend run
//! that failed; 2 bad input (a scenario, a flag, an environment variable).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use layerdrift::engine::{self, ScenarioReport};
use layerdrift::env::{self, VARS, env};
use layerdrift::metric::{Metric, sig3};
use layerdrift::scenario::Scenario;
use layerdrift::session::Session;
use layerdrift::table::table;
use layerdrift::workspace::{root, scenario_dir, scenario_files};

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
    #[command(after_help = "Examples:
  layerdrift run scenarios/seed-residual-mlp.yaml
  layerdrift run scenarios/small-llama.yaml --backends candle,tch --summary
  layerdrift run scenarios/small-decoder.yaml --ops all --json out.json
  layerdrift run scenarios/seed-residual-mlp.yaml --save-baseline before.safetensors

Exit codes: 0 every comparison within its bounds; 1 a comparison out of
bounds or a backend run failed; 2 bad input (scenario, flag, environment
variable), or nothing was compared (every backend asked for is missing).")]
    Run {
        /// The scenario file (YAML).
        file: PathBuf,
        /// Only these backends (names or ids, comma-separated), e.g. `candle,burn-flex`.
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        /// Metric for the tables and plots: mean_abs, max_abs, rms, max_rel, max_ulps, equal.
        #[arg(long, default_value = "mean_abs", value_parser = |s: &str| s.parse::<Metric>())]
        metric: Metric,
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
        /// Write every backend run's checkpoints (the observed rows after
        /// every layer) to this safetensors file, to compare later runs with.
        #[arg(long, value_name = "FILE")]
        save_baseline: Option<PathBuf>,
        /// Compare every backend run with the same backend and strategy in
        /// this baseline (from `--save-baseline`), e.g. after an upgrade.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
        /// Op-level profiles: `all`, or the ops to show (comma-separated,
        /// e.g. `linear1,norm2`); names the first divergent op.
        #[arg(long, value_delimiter = ',', value_name = "OPS")]
        ops: Option<Vec<String>>,
        /// Local vs inherited error per layer: side B's layers run again on
        /// side A's inputs (teacher forcing; residual_mlp only).
        #[arg(long)]
        local: bool,
    },
    /// What moved: pending `.snap.new` files against their `.snap` (no
    /// arguments), or OLD against NEW (two snapshots, two `--json` results,
    /// or two `--save-baseline` files). Writes an overlay SVG per comparison.
    /// Only reads: accept or reject with `cargo insta review`.
    #[command(after_help = "Examples:
  layerdrift review
  layerdrift review before.json after.json --tolerance 1
  layerdrift review before.safetensors after.safetensors

Exit codes: 0 reviewed (whatever moved); 2 a file that cannot be read.")]
    Review {
        /// Nothing (every pending snapshot under snapshots/), or OLD NEW.
        files: Vec<PathBuf>,
        /// A move of at most this many percent at every layer is "moved ≤ x%".
        #[arg(long, default_value_t = 5.0)]
        tolerance: f64,
        /// Where to write the overlays (default: target/layerdrift/review/).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The kernel-dispatch map: per backend and row-mixing op, at the shipped
    /// scenarios' widths, which row counts M give a row the same bits, and
    /// where a row's result depends on its position or its neighbours.
    /// Prints a table; writes an SVG (and JSON with `--json`).
    Probe(ProbeArgs),
    /// Check scenario files without running them (every problem, with its
    /// position), including the headers of the weights, checkpoints, inputs
    /// and baselines they name.
    #[command(after_help = "Examples:
  layerdrift validate
  layerdrift validate my-model.yaml

Exit codes: 0 every file valid; 2 a problem (each printed as file:line:column: message).")]
    Validate {
        /// Scenario files (default: every file in the scenario directory).
        files: Vec<PathBuf>,
    },
    /// Propose a scenario's bounds from measurement: its checks over N
    /// weight/input seeds on every backend here, plus the profiles other
    /// machine classes committed; per bound the measured spread, a proposal
    /// (max × margin), its false-alarm rate, and whether it catches the
    /// negative controls (other GELU, eps ×10, no residual, a transposed
    /// weight). `--write` puts the proposals into the file.
    #[command(after_help = "Examples:
  layerdrift calibrate scenarios/small-decoder.yaml
  layerdrift calibrate scenarios/seed-residual-mlp.yaml --seeds 4 --write

Exit codes: 0 proposals made; 1 a proposal misses the other-GELU control (a
bound that cannot see a wrong activation gates nothing) or a run failed;
2 bad input.")]
    Calibrate {
        /// The scenario file (YAML).
        file: PathBuf,
        /// Weight/input seeds to run (the scenario's own is the first).
        #[arg(long, default_value_t = layerdrift::calibrate::DEFAULT_SEEDS)]
        seeds: usize,
        /// Factor on the measured maximum (a growth exponent gets +0.5 instead).
        #[arg(long, default_value_t = layerdrift::calibrate::DEFAULT_MARGIN)]
        margin: f64,
        /// Only these backends (names or ids, comma-separated).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        /// Rewrite the file's `bounds:` with the proposals (other lines kept).
        #[arg(long)]
        write: bool,
        /// Skip the negative controls.
        #[arg(long)]
        no_controls: bool,
        /// Do not read other classes' committed snapshots.
        #[arg(long)]
        no_recorded: bool,
    },
    /// Print the JSON Schema of scenario files (what
    /// scenarios/scenario.schema.json holds), generated from the parser's types.
    Schema,
    /// List the backends of this build and the shipped scenarios.
    List,
    /// The environment variables layerdrift reads, and their values here.
    Env,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = env::check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Run {
            file,
            backends,
            metric,
            out,
            json,
            log_y,
            summary,
            save_baseline,
            baseline,
            ops,
            local,
        } => run(
            &file,
            &backends,
            metric,
            Outputs {
                out,
                json,
                log_y,
                summary_only: summary,
                save_baseline,
                baseline,
                ops,
                local,
            },
        ),
        Command::Review {
            files,
            tolerance,
            out,
        } => review(&files, tolerance, out),
        Command::Probe(args) => probe(args),
        Command::Validate { files } => validate(files),
        Command::Calibrate {
            file,
            seeds,
            margin,
            backends,
            write,
            no_controls,
            no_recorded,
        } => calibrate(
            &file,
            &backends,
            &layerdrift::calibrate::Options {
                seeds,
                margin,
                recorded: !no_recorded,
                controls: !no_controls,
            },
            write,
        ),
        Command::Schema => {
            let schema = layerdrift::scenario::schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::List => list(),
        Command::Env => show_env(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:?}");
            ExitCode::from(2)
        }
    }
}

/// The scenario at `file`, or exit 2 with every problem printed.
fn load(session: &Session, file: &Path) -> Result<Scenario, ExitCode> {
    session.load(file).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn calibrate(
    file: &Path,
    only: &[String],
    o: &layerdrift::calibrate::Options,
    write: bool,
) -> Result<ExitCode> {
    let session = Session::new();
    let mut s = match load(&session, file) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    engine::filter_backends(&mut s, &session, only).map_err(anyhow::Error::msg)?;
    drop(session);
    let started = std::time::Instant::now();
    let report = match layerdrift::calibrate::calibrate(&s, o, &mut |msg| {
        eprintln!("[{:>6.1} s] {msg}", started.elapsed().as_secs_f64());
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    print!("{}", report.table());
    println!(
        "
({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    if write {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let today = layerdrift::calibrate::today();
        let new = layerdrift::calibrate::rewrite(&text, &report, &today)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        // Never write a file the parser would then refuse.
        if let Err(e) = Scenario::parse(file, &new, &Session::new().known_ids(), u64::MAX) {
            eprintln!(
                "error: the rewritten scenario does not parse, so {} is left as it was:\n{e}",
                file.display()
            );
            return Ok(ExitCode::from(1));
        }
        std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))?;
        println!("wrote the proposals into {}", file.display());
    }
    let missed = report.missed_gelu();
    if !missed.is_empty() {
        eprintln!(
            "error: the proposed bounds of {} do not catch the other-GELU control: they cannot see a wrong activation",
            missed.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(files: Vec<PathBuf>) -> Result<ExitCode> {
    let explicit = !files.is_empty();
    let files = if files.is_empty() {
        scenario_files(&scenario_dir()).map_err(anyhow::Error::msg)?
    } else {
        files
    };
    let session = Session::new();
    let mut bad = 0;
    for f in &files {
        // Shipped scenarios of downloaded models are skipped, saying so, until
        // fetched; a file named on the command line is checked (and fails).
        if let Some(why) = Scenario::unfetched(f).filter(|_| !explicit) {
            println!("{}: skipped — {why}", f.display());
            continue;
        }
        match session.load(f) {
            Ok(s) => println!(
                "{}: ok — {} variant(s), {} strateg{}, {} check(s), largest run ≈ {:.0} MB",
                f.display(),
                s.variants.len(),
                s.strategies.len(),
                if s.strategies.len() == 1 { "y" } else { "ies" },
                s.checks.len(),
                s.estimated_bytes / 1e6
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

/// `layerdrift probe`'s arguments.
#[derive(clap::Args)]
struct ProbeArgs {
    /// Only these backends (names or ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Only these ops: linear, layer_norm, rms_norm, softmax, attention, fused_attention, gelu.
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| layerdrift_backends::ProbeOp::parse(s).ok_or_else(|| format!("no op `{s}`: pick from linear, layer_norm, rms_norm, softmax, attention, fused_attention, gelu")))]
    ops: Vec<layerdrift_backends::ProbeOp>,
    /// Row counts, ranges and single counts, e.g. `1-64,128,256` (default: 1-64 and the powers of two to 4096).
    #[arg(long)]
    rows: Option<String>,
    /// Shapes of these scenario files (default: every shipped scenario).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<PathBuf>,
    /// Leave out shapes wider than this (a linear's in or out, a norm's width).
    #[arg(long, default_value_t = 3072)]
    max_width: usize,
    /// Intra-op threads (the shipped scenarios pin 2).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where to write the SVG (default: target/layerdrift/probe/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the map as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn probe(a: ProbeArgs) -> Result<ExitCode> {
    use layerdrift::dispatch;
    let rows = match &a.rows {
        Some(r) => dispatch::parse_rows(r).map_err(|e| anyhow::anyhow!("--rows {r}: {e}"))?,
        None => dispatch::default_rows(),
    };
    let session = Session::new();
    let files = if a.scenarios.is_empty() {
        scenario_files(&scenario_dir()).map_err(anyhow::Error::msg)?
    } else {
        a.scenarios.clone()
    };
    // With no files, the shapes the test suite's dispatch map probes.
    let mut shapes =
        match dispatch::scenario_shapes(&session, &files, a.max_width, a.scenarios.is_empty()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        };
    if !a.ops.is_empty() {
        shapes.retain(|s| a.ops.contains(&s.op));
    }
    if shapes.is_empty() {
        anyhow::bail!(
            "no shapes to probe: the scenarios ({} file(s)) call none of these ops at widths ≤ {} (--ops, --max-width)",
            files.len(),
            a.max_width
        );
    }
    if a.threads == 0 || a.threads > 1024 {
        anyhow::bail!("--threads: between 1 and 1024");
    }
    let dtype = layerdrift_backends::DType::F32;
    dispatch::check_memory(&shapes, &rows, dtype, env().memory_limit)
        .map_err(anyhow::Error::msg)?;
    let known = session.known_ids();
    for want in &a.backends {
        if !known.iter().any(|id| id.matches(want)) {
            anyhow::bail!(
                "--backends: no backend `{want}` in this build; known: {}",
                known
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut maps = Vec::new();
    for b in session.backends() {
        if !a.backends.is_empty() && !a.backends.iter().any(|w| b.id().matches(w)) {
            continue;
        }
        if let Err(why) = b.available() {
            if !a.backends.is_empty() {
                println!("{}: not probed: {why}\n", b.id());
            }
            continue;
        }
        let class = layerdrift::class::class_of(b.as_ref());
        let t = std::time::Instant::now();
        let map =
            dispatch::probe_backend(b.as_ref(), &class, &shapes, &rows, dtype, Some(a.threads));
        print!("{}", map.table());
        println!("  ({:.1} s)\n", t.elapsed().as_secs_f64());
        maps.push(map);
    }
    if maps.is_empty() {
        anyhow::bail!("no backend of this build can run here (see `layerdrift list`)");
    }
    let out = a
        .out
        .unwrap_or_else(|| root().join("target/layerdrift/probe"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let svg = out.join("dispatch-map.svg");
    std::fs::write(&svg, layerdrift::plot::dispatch_svg(&maps))
        .with_context(|| format!("writing {}", svg.display()))?;
    println!("plot: {}", svg.display());
    if let Some(json) = &a.json {
        let text = serde_json::to_string_pretty(&maps)?;
        std::fs::write(json, text).with_context(|| format!("writing {}", json.display()))?;
        println!("json: {}", json.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    let session = Session::new();
    println!("backends in this build, with their snapshot class and probe hash on this machine:");
    for b in session.backends() {
        match b.available() {
            Ok(()) => {
                let i = b.info();
                let class = layerdrift::class::class_of(b.as_ref());
                let recorded = if layerdrift::class::class_dir(b.id(), &class).is_dir() {
                    "recorded"
                } else {
                    "no snapshots: banded against other classes"
                };
                let probe = layerdrift_backends::fingerprint(b.as_ref())
                    .unwrap_or_else(|e| format!("probe failed: {e}"));
                println!(
                    "  {:<18} {} — {}, {} thread(s)\n  {:<18} class {class} ({recorded}), probe {probe}",
                    i.id(),
                    i.version,
                    i.device_name,
                    i.threads,
                    ""
                );
            }
            Err(why) => println!("  {:<18} unavailable: {why}", b.id()),
        }
    }
    let dir = scenario_dir();
    println!("\nscenarios in {}:", dir.display());
    for f in scenario_files(&dir).map_err(anyhow::Error::msg)? {
        if let Some(why) = Scenario::unfetched(&f) {
            let stem = f.file_stem().unwrap_or_default().to_string_lossy();
            println!("  {stem:<28} {why}");
            continue;
        }
        match session.load(&f) {
            Ok(s) => println!(
                "  {:<28} {} variant(s){} — {}",
                s.name,
                s.variants.len(),
                match s.slow {
                    layerdrift::scenario::Cost::Everyday => "",
                    layerdrift::scenario::Cost::Slow => ", slow",
                    layerdrift::scenario::Cost::Manual => ", manual (full-size)",
                },
                s.description.lines().next().unwrap_or("")
            ),
            Err(e) => println!("  {:<28} INVALID: {}", f.display(), e.0[0]),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_env() -> Result<ExitCode> {
    for v in VARS {
        let values: Vec<String> = v
            .name
            .split(", ")
            .map(|n| match std::env::var(n) {
                Ok(x) => format!("{n}={x}"),
                Err(_) => format!("{n} unset"),
            })
            .collect();
        println!(
            "{:<26} {}\n{:<26} {}",
            v.name,
            values.join(", "),
            "",
            v.effect
        );
    }
    let e = env();
    println!(
        "\nin effect: root {}, scenarios {}, memory limit {:.1} GB (from {})",
        e.root.display(),
        e.scenarios.display(),
        e.memory_limit as f64 / 1e9,
        e.memory_limit_from
    );
    Ok(ExitCode::SUCCESS)
}

fn header(s: &Scenario, file: &Path) {
    println!("scenario {} ({})", s.name, file.display());
    if !s.description.is_empty() {
        println!("  {}", s.description.trim().replace('\n', "\n  "));
    }
    let labels: Vec<&str> = s.variants.iter().map(|v| v.label.as_str()).collect();
    println!("  {} variant(s): {}", s.variants.len(), labels.join("  "));
    println!("  weights: {}", s.weights.describe());
    let strategies: Vec<String> = s.strategies.iter().map(|x| x.describe()).collect();
    println!("  strategies: {}", strategies.join("; "));
}

/// The op-level and local-vs-inherited views of one comparison, per variant.
fn diagnosis(s: &Scenario, o: &engine::Outcome) {
    let wants = |op: &str| s.diagnose.wants_op(op);
    for v in &o.variants {
        if let Some(p) = &v.ops {
            match &p.first_divergence {
                Some(d) => println!(
                    "  [{}] first divergent op: {d}; mean|Δ| per op at layer {}: {}",
                    v.variant,
                    d.layer,
                    layerdrift::table::op_line(p, d.layer, &wants)
                ),
                None => println!("  [{}] every op bitwise equal", v.variant),
            }
            if let Some(last) = p.ops.last().map(|d| d.layer)
                && p.first_divergence.as_ref().is_none_or(|d| d.layer != last)
            {
                println!(
                    "  [{}] mean|Δ| per op at layer {last}: {}",
                    v.variant,
                    layerdrift::table::op_line(p, last, &wants)
                );
            }
        }
        if let Some(why) = &v.local_unavailable {
            println!("  [{}] no local error: {why}", v.variant);
        }
        if let Some(p) = &v.local {
            println!(
                "  [{}] local vs inherited error (mean|Δ|; B's layers on A's inputs):",
                v.variant
            );
            print!("{}", layerdrift::table::local_table(p));
            println!("    → {}", p.verdict);
        }
    }
}

fn summary(report: &ScenarioReport) {
    println!(
        "\nsummary (at the last layer; first divergence = first observed row and layer not bitwise equal):"
    );
    for o in &report.outcomes {
        let c = &o.comparison;
        // A comparison skipped on every variant for one reason: one line.
        let reasons: Vec<Option<&str>> = o.variants.iter().map(|v| v.skipped.as_deref()).collect();
        if let Some(Some(why)) = reasons.first()
            && reasons.iter().all(|r| r == &Some(*why))
        {
            println!(
                "  skip  {}/{} [all {} variants]: {why}",
                c.a.backend,
                c.name,
                reasons.len()
            );
            continue;
        }
        for v in &o.variants {
            let name = format!("{}/{} [{}]", c.a.backend, c.name, v.variant);
            let Some(p) = &v.profile else {
                println!("  skip  {name}: {}", v.skipped.as_deref().unwrap_or(""));
                continue;
            };
            let Some(last) = p.layers.last() else {
                continue;
            };
            let verdict = if v.violations.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            println!(
                "  {verdict}  {name}: mean {} max {} ulps {} equal {} · first divergence {} · growth p={}",
                Metric::MeanAbs.format(last),
                Metric::MaxAbs.format(last),
                Metric::MaxUlps.format(last),
                Metric::Equal.format(last),
                p.first_divergence.map_or("none".into(), |d| format!(
                    "row {} layer {}",
                    d.row, d.layer
                )),
                p.growth.exponent.map_or("–".into(), |e| format!("{e:.2}"))
            );
            if let Some(h) = &p.head {
                println!(
                    "          head: final norm max {} · logits max {} · log-softmax max {} · top-1 agreement {:.1}%",
                    Metric::MaxAbs.format(&h.final_norm),
                    Metric::MaxAbs.format(&h.logits),
                    sig3(h.max_log_softmax),
                    100.0 * h.top1_agreement
                );
            }
            if let Some(d) = v.ops.as_ref().and_then(|o| o.first_divergence.as_ref()) {
                println!("          first divergent op: {d}");
            }
            if let Some(l) = &v.local {
                println!("          where it grows: {}", l.verdict);
            }
            if let Some(last_row) = &p.last_row_mean_abs {
                let cells: Vec<String> = last_row.iter().map(|x| sig3(*x)).collect();
                println!(
                    "          last observed row, mean|Δ| per layer: {}",
                    cells.join(" ")
                );
            }
            for msg in &v.violations {
                println!("          {msg}");
            }
            if !v.violations.is_empty()
                && let Some(needed) = o.comparison.bounds.smallest_passing(p)
            {
                println!("          {needed}");
            }
        }
    }
}

/// What `layerdrift run` writes, besides the tables.
struct Outputs {
    out: Option<PathBuf>,
    json: Option<PathBuf>,
    log_y: bool,
    summary_only: bool,
    save_baseline: Option<PathBuf>,
    baseline: Option<PathBuf>,
    ops: Option<Vec<String>>,
    local: bool,
}

fn review(files: &[PathBuf], tolerance: f64, out: Option<PathBuf>) -> Result<ExitCode> {
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        anyhow::bail!("--tolerance: a percentage ≥ 0, got {tolerance}");
    }
    let tol = tolerance / 100.0;
    let reviews = match files {
        [] => {
            let dir = root().join("snapshots");
            let pending = layerdrift::review::pending(&dir);
            if pending.is_empty() {
                println!("no pending snapshots (*.snap.new) under {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            pending
                .iter()
                .map(|p| layerdrift::review::review_pending(p, tol))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?
        }
        [old, new] => {
            vec![layerdrift::review::review_files(old, new, tol).map_err(anyhow::Error::msg)?]
        }
        _ => anyhow::bail!(
            "review takes no files (the pending snapshots) or two (OLD NEW), got {}",
            files.len()
        ),
    };
    let dir = out.unwrap_or_else(|| root().join("target/layerdrift/review"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for r in &reviews {
        let shown = Path::new(&r.title)
            .strip_prefix(root())
            .map_or(r.title.clone(), |p| p.display().to_string());
        println!("{shown}: {}", r.headline(tol));
        for d in &r.details {
            println!("  {d}");
        }
        for (stem, svg) in &r.overlays {
            let path = dir.join(format!("{stem}.svg"));
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            println!("  overlay: {}", path.display());
        }
    }
    let moved = reviews
        .iter()
        .filter(|r| r.verdict == layerdrift::review::Verdict::Moved)
        .count();
    println!(
        "
{} reviewed, {moved} moved by more than {tolerance}% somewhere (nothing accepted or rejected: use `cargo insta review`)",
        reviews.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks `--baseline FILE` before anything runs, and says what it holds.
fn announce_baseline(s: &Scenario, session: &Session, path: &Path) -> Result<(), ExitCode> {
    use layerdrift::session::RunError;
    match session.baseline(s, path) {
        Ok(b) => {
            let labels: Vec<&str> = s.variants.iter().map(|v| v.label.as_str()).collect();
            if let Err(e) = b.check_scenario(&s.name, &labels) {
                eprintln!("error: --baseline {e}");
                return Err(ExitCode::from(2));
            }
            let mut versions: Vec<String> = b
                .entries
                .iter()
                .map(|e| format!("{} {}", e.info.backend, e.info.version))
                .collect();
            versions.dedup();
            println!(
                "  baseline: {} — {} runs by layerdrift {} ({})",
                path.display(),
                b.entries.len(),
                b.layerdrift,
                versions.join("; ")
            );
            Ok(())
        }
        Err(RunError::Skip(why)) => {
            eprintln!("error: --baseline: {why}");
            Err(ExitCode::from(2))
        }
        Err(RunError::Fail(why)) => {
            eprintln!("error: --baseline {why}");
            Err(ExitCode::from(2))
        }
    }
}

fn run(file: &Path, only: &[String], metric: Metric, o: Outputs) -> Result<ExitCode> {
    let Outputs {
        out,
        json,
        log_y,
        summary_only,
        save_baseline,
        baseline,
        ops,
        local,
    } = o;
    let session = Session::new();
    let mut s = match load(&session, file) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Some(ops) = ops {
        if ops.iter().any(|o| o == "all") && ops.len() > 1 {
            eprintln!("error: --ops: `all` stands alone: `--ops all`, or list the ops you want");
            return Ok(ExitCode::from(2));
        }
        s.diagnose.ops = Some(if ops.iter().any(|o| o == "all") {
            Vec::new()
        } else {
            ops
        });
    }
    s.diagnose.local |= local;
    let problems = s.diagnose.problems(&s.variants);
    if !problems.is_empty() {
        for (path, message) in problems {
            let flag = if path.starts_with("diagnose.ops") {
                "--ops"
            } else {
                "--local"
            };
            eprintln!("error: {flag}: {message}");
        }
        return Ok(ExitCode::from(2));
    }
    engine::filter_backends(&mut s, &session, only).map_err(anyhow::Error::msg)?;
    header(&s, file);
    if let Some(b) = &baseline {
        if let Err(code) = announce_baseline(&s, &session, b) {
            return Ok(code);
        }
        engine::use_baseline(&mut s, b);
    }

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}",
        )
        .expect("static template"),
    );
    let started = std::time::Instant::now();
    let report = engine::run_scenario(&s, &session, &mut |k, n, side, variant| {
        bar.set_length(n as u64);
        bar.set_position(k as u64);
        bar.set_message(format!("{side} [{variant}]"));
    });
    bar.finish_and_clear();

    println!("  backends:");
    for p in &report.participants {
        match (&p.info, &p.unavailable) {
            (Some(i), _) => println!(
                "    {:<18} {} — {}, {} thread(s)",
                p.id, i.version, i.device_name, i.threads
            ),
            (None, Some(why)) => {
                if only.is_empty() || only.iter().any(|o| p.id.matches(o)) {
                    println!("    {:<18} skipped: {why}", p.id);
                }
            }
            (None, None) => {}
        }
    }
    let ran = report.runs.iter().filter(|r| r.wall_ms.is_some()).count();
    println!(
        "  {ran} backend runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for r in &report.runs {
        if let Some(why) = &r.skipped {
            println!("  skip {} [{}]: {why}", r.side, r.variant);
        }
    }

    if !summary_only {
        for o in &report.outcomes {
            let c = &o.comparison;
            println!(
                "\n{}/{} — {metric} per layer ({} vs {})",
                c.a.backend, c.name, c.a, c.b
            );
            print!("{}", table(o, metric));
            diagnosis(&s, o);
        }
    }
    summary(&report);
    if s.diagnose.local {
        let plain: f64 = report.runs.iter().filter_map(|r| r.wall_ms).sum();
        let forced: f64 = report
            .outcomes
            .iter()
            .flat_map(|o| &o.variants)
            .filter_map(|v| v.forced_wall_ms)
            .sum();
        println!(
            "
teacher forcing: {:.1} s of forced runs on top of {:.1} s of plain runs ({:.2}× the plain run time in all)",
            forced / 1e3,
            plain / 1e3,
            (plain + forced) / plain.max(f64::MIN_POSITIVE)
        );
    }

    println!("\nrun times:");
    for r in &report.runs {
        if let Some(ms) = r.wall_ms {
            println!(
                "  {:<18} {:<9} [{}] {:>9.1} ms",
                r.side.backend, r.side.strategy, r.variant, ms
            );
        }
    }

    let dir = out.unwrap_or_else(|| root().join("target/layerdrift").join(&s.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("\nplots:");
    let wants = |op: &str| s.diagnose.wants_op(op);
    let figures = layerdrift::plot::figures(&s.name, &report.outcomes, metric, log_y)
        .into_iter()
        .chain(layerdrift::plot::op_figures(
            &s.name,
            &report.outcomes,
            &wants,
        ))
        .chain(layerdrift::plot::local_figures(
            &s.name,
            &report.outcomes,
            log_y,
        ));
    for (stem, svg) in figures {
        let path = dir.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("  {}", path.display());
    }
    if let Some(path) = &save_baseline {
        let (keys, entries) =
            engine::baseline_entries(&s, &session, &report).map_err(anyhow::Error::msg)?;
        layerdrift::baseline::write(path, &s.name, &keys, &entries).map_err(anyhow::Error::msg)?;
        println!("  baseline: {} ({} runs)", path.display(), entries.len());
    }
    if let Some(j) = json {
        let doc = engine::JsonReport::new(&s.name, file, &report);
        std::fs::write(&j, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", j.display()))?;
        println!("  json: {}", j.display());
    }

    // A run that compared nothing (every backend asked for is missing here,
    // or every comparison was skipped) has checked nothing: it must not
    // pass as if it had.
    let compared = report.outcomes.iter().any(|o| o.compared() > 0);
    if !compared && !report.has_failures() {
        let mut why: Vec<String> = report
            .participants
            .iter()
            .filter(|p| only.is_empty() || only.iter().any(|o| p.id.matches(o)))
            .filter_map(|p| p.unavailable.as_ref().map(|u| format!("{}: {u}", p.id)))
            .chain(
                report
                    .outcomes
                    .iter()
                    .flat_map(|o| &o.variants)
                    .filter_map(|v| v.skipped.clone()),
            )
            .collect();
        why.sort();
        why.dedup();
        eprintln!(
            "error: nothing was compared, so nothing was checked{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(":\n  {}", why.join("\n  "))
            }
        );
        return Ok(ExitCode::from(2));
    }
    let mut code = ExitCode::SUCCESS;
    if report.has_failures() {
        println!();
        for r in report.failed_runs() {
            println!(
                "FAILED run {} [{}]: {}",
                r.side,
                r.variant,
                r.failed.as_deref().unwrap_or("")
            );
        }
        for e in &report.errors {
            println!("FAILED comparison {e}");
        }
        code = ExitCode::from(1);
    }
    let violations = report.violations();
    if violations > 0 {
        println!("\n{violations} comparison(s) out of bounds");
        code = ExitCode::from(1);
    }
    Ok(code)
}
