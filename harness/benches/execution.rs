//! The price of batch invariance, per CPU backend and execution mode: the
//! seed's full pass at batch 1 and 16 (`seed-residual-mlp`, residual on),
//! the 768/12-layer decoder's full pass and its 8-token KV-cache decode
//! (`decoder-kv-cache`, batch 1), each in `standard`, `batch_invariant`,
//! `fixed_shape` and `pinned`, interleaved (every case, backend and mode once per
//! repetition), several repetitions. Prints the median wall time of each,
//! its ratio to `standard`, and beside it the distance of the last layer's
//! observed rows to the f64 oracle — invariance is not accuracy.
//!
//! ```sh
//! cargo bench -p layerdrift --bench execution --features tch -- \
//!     [--reps N] [--backends a,b] [--tile N] [--cases seed-b1,seed-b16,decoder-full,decoder-decode] \
//!     [--skip-slow] [--invariant-reps N]
//! ```
//!
//! The decode is timed as the KV-cache run (prefill 248, then 8 one-token
//! passes) minus a prefill-only run of the same 248 positions (the same
//! first segment, observed at its last position), per repetition.
//! `--skip-slow` leaves out `batch_invariant` at batch 16 (16,384 rows one at
//! a time through 20 layers: minutes per run on the slower backends) and
//! for the decode (its prefill-only run alone is a batch-invariant prefill
//! of 248 positions, ~1.5 min on burn-ndarray);
//! `--invariant-reps N` runs `batch_invariant` in the first N repetitions
//! only (its factor is 6–23×: the noise of one run does not matter there;
//! 0 leaves it out).
//! Built in release (`cargo bench`'s profile), as a deployment would be.

use std::time::Instant;

mod common;
use common::median;

use layerdrift::scenario::Scenario;
use layerdrift::session::Session;
use layerdrift_backends::{
    Backend, BackendId, Checkpoints, DeviceKind, Execution, ModelSpec, Row, RunRequest, Schedule,
};

/// One measured case: a scenario's variant and how it is scheduled.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    SeedB1,
    SeedB16,
    DecoderFull,
    DecoderDecode,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::SeedB1,
        Case::SeedB16,
        Case::DecoderFull,
        Case::DecoderDecode,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::SeedB1 => "seed-b1",
            Case::SeedB16 => "seed-b16",
            Case::DecoderFull => "decoder-full",
            Case::DecoderDecode => "decoder-decode",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Case::SeedB1 => "seed MLP, full pass, batch 1 (1,024 rows)",
            Case::SeedB16 => "seed MLP, full pass, batch 16 (16,384 rows)",
            Case::DecoderFull => "decoder 768/12, full pass, 256 positions",
            Case::DecoderDecode => "decoder 768/12, 8-token decode after a 248 prefill",
        }
    }

    fn scenario(self) -> &'static str {
        match self {
            Case::SeedB1 | Case::SeedB16 => "scenarios/seed-residual-mlp.yaml",
            Case::DecoderFull | Case::DecoderDecode => "scenarios/decoder-kv-cache.yaml",
        }
    }

    fn batch(self) -> usize {
        match self {
            Case::SeedB16 => 16,
            _ => 1,
        }
    }
}

struct Args {
    reps: usize,
    backends: Vec<String>,
    tile: usize,
    cases: Vec<Case>,
    skip_slow: bool,
    invariant_reps: Option<usize>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        reps: 3,
        backends: Vec::new(),
        tile: layerdrift::scenario::FIXED_SHAPE_TILE,
        cases: Case::ALL.to_vec(),
        skip_slow: false,
        invariant_reps: None,
    };
    let mut it = std::env::args().skip(1);
    let count = common::count;
    while let Some(x) = it.next() {
        match x.as_str() {
            "--bench" => {}
            "--reps" => a.reps = count(it.next(), "--reps")?,
            "--tile" => a.tile = count(it.next(), "--tile")?,
            "--skip-slow" => a.skip_slow = true,
            "--invariant-reps" => {
                a.invariant_reps = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .ok_or("--invariant-reps: a count ≥ 0")?,
                )
            }
            "--backends" => a.backends = common::backends(it.next())?,
            "--cases" => {
                let list = it.next().ok_or("--cases: case names, comma-separated")?;
                a.cases = list
                    .split(',')
                    .map(|n| {
                        Case::ALL.into_iter().find(|c| c.name() == n).ok_or(format!(
                            "--cases: no case `{n}`; pick from {}",
                            Case::ALL.map(Case::name).join(", ")
                        ))
                    })
                    .collect::<Result<_, _>>()?;
            }
            s => return Err(format!("unknown argument {s}")),
        }
    }
    Ok(a)
}

/// The scenario behind `case` and the index of its variant.
fn variant_of(session: &Session, case: Case) -> Result<(Scenario, usize), String> {
    let path = layerdrift::workspace::root().join(case.scenario());
    let s = session.load(&path).map_err(|e| e.to_string())?;
    let v = s
        .variants
        .iter()
        .position(|v| {
            v.batch == case.batch()
                && match &v.model {
                    ModelSpec::ResidualMlp(m) => m.residual,
                    ModelSpec::Decoder(_)
                    | ModelSpec::Llama(_)
                    | ModelSpec::Gpt2(_)
                    | ModelSpec::Bert(_) => true,
                }
        })
        .ok_or(format!(
            "{}: no variant at batch {}",
            case.scenario(),
            case.batch()
        ))?;
    Ok((s, v))
}

/// One run of `case` on `b` in `execution`: its wall time in seconds (for a
/// decode, KV-cache run minus prefill-only run) and its checkpoints.
fn measure(
    session: &Session,
    s: &Scenario,
    v: usize,
    case: Case,
    b: &dyn Backend,
    execution: Execution,
) -> Result<(f64, Checkpoints), String> {
    let strategy = match case {
        Case::DecoderDecode => "kv_cache",
        _ => "full",
    };
    let timed = |req: &RunRequest<'_>| {
        let t = Instant::now();
        b.run(req)
            .map(|out| (t.elapsed().as_secs_f64(), out))
            .map_err(|e| e.to_string())
    };
    let (wall, out) = session
        .with_request(s, v, strategy, |req| {
            timed(&RunRequest { execution, ..*req })
        })
        .map_err(|e| e.to_string())??;
    if case != Case::DecoderDecode {
        return Ok((wall, out));
    }
    let prefill = s
        .strategy("kv_cache")
        .and_then(|st| st.prefill())
        .ok_or("decoder-kv-cache has no kv_cache strategy")?;
    let (prefill_wall, _) = session
        .with_request(s, v, strategy, |req| {
            let only = Schedule::Segments(vec![(0, prefill)]);
            let last = [Row {
                batch: req.observed[0].batch,
                pos: prefill - 1,
            }];
            timed(&RunRequest {
                execution,
                schedule: &only,
                observed: &last,
                ..*req
            })
        })
        .map_err(|e| e.to_string())??;
    Ok((wall - prefill_wall, out))
}

/// Mean and max |Δ| of the last layer's observed rows against `truth`.
fn distance(out: &Checkpoints, truth: &Checkpoints) -> (f64, f64) {
    let (a, t) = (
        out.layers.last().map(Vec::as_slice).unwrap_or(&[]),
        truth.layers.last().map(Vec::as_slice).unwrap_or(&[]),
    );
    let d: Vec<f64> = a.iter().zip(t).map(|(x, y)| (x - y).abs()).collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    // NaN must show, not vanish in a max.
    let max = d
        .iter()
        .copied()
        .fold(0.0, |m: f64, x| if x.is_nan() { x } else { m.max(x) });
    (mean, max)
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
    let modes = [
        Execution::Standard,
        Execution::BatchInvariant,
        Execution::FixedShape { tile: a.tile },
        Execution::Pinned {
            anchor: layerdrift::scenario::PINNED_ANCHOR,
        },
    ];
    let pinned = |m: Execution| matches!(m, Execution::Pinned { .. });
    let ids: Vec<BackendId> = session
        .backends()
        .iter()
        .filter(|b| b.id() != BackendId::ORACLE && b.id().device == DeviceKind::Cpu)
        .filter(|b| b.available().is_ok())
        .map(|b| b.id())
        .filter(|id| a.backends.is_empty() || a.backends.iter().any(|o| id.matches(o)))
        .collect();
    let mut cases = Vec::new();
    for &case in &a.cases {
        match variant_of(&session, case) {
            Ok((s, v)) => cases.push((case, s, v)),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let class = ids
        .iter()
        .filter_map(|id| session.backend(*id))
        .map(|b| format!("{} {}", b.id(), b.class()))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "execution: {} repetition(s), tile {}, threads as each scenario pins them; classes: {class}",
        a.reps, a.tile
    );

    // The truth per case, once.
    let mut truths = Vec::new();
    for (case, s, v) in &cases {
        let oracle = session.oracle().clone();
        match measure(&session, s, *v, *case, oracle.as_ref(), Execution::Standard) {
            Ok((_, out)) => truths.push(out),
            Err(e) => {
                eprintln!("error: the oracle on {}: {e}", case.name());
                return std::process::ExitCode::from(2);
            }
        }
    }

    // walls[case][backend][mode], last outputs beside them.
    let n = (cases.len(), ids.len(), modes.len());
    let mut walls = vec![vec![vec![Vec::<f64>::new(); n.2]; n.1]; n.0];
    let mut outs: Vec<Vec<Vec<Option<Checkpoints>>>> = vec![vec![vec![None; n.2]; n.1]; n.0];
    let mut first_pinned = vec![vec![None::<f64>; n.1]; n.0];
    let mut refused: Vec<String> = Vec::new();
    let mut failed = false;
    for rep in 0..a.reps {
        for (c, (case, s, v)) in cases.iter().enumerate() {
            for (i, id) in ids.iter().enumerate() {
                let Some(b) = session.backend(*id).cloned() else {
                    continue;
                };
                for (m, &mode) in modes.iter().enumerate() {
                    if mode == Execution::BatchInvariant
                        && ((a.skip_slow && matches!(case, Case::SeedB16 | Case::DecoderDecode))
                            || rep >= a.invariant_reps.unwrap_or(a.reps))
                    {
                        continue;
                    }
                    match measure(&session, s, *v, *case, b.as_ref(), mode) {
                        // A pinned run certifies its row counts with the
                        // probe the first time a process meets them (then
                        // memoised): that first run is timed apart.
                        Ok((wall, out)) if pinned(mode) && rep == 0 => {
                            println!(
                                "  rep {rep} {:<15} {id:<18} {:<22} {wall:>9.3} s (certifies; not in the median)",
                                case.name(),
                                mode.name()
                            );
                            first_pinned[c][i] = Some(wall);
                            outs[c][i][m] = Some(out);
                        }
                        Ok((wall, out)) => {
                            println!(
                                "  rep {rep} {:<15} {id:<18} {:<22} {wall:>9.3} s",
                                case.name(),
                                mode.name()
                            );
                            walls[c][i][m].push(wall);
                            outs[c][i][m] = Some(out);
                        }
                        Err(e) => {
                            let line = format!("{} {id} {}: {e}", case.name(), mode.name());
                            if rep == 0 {
                                eprintln!("  refused: {line}");
                                refused.push(line);
                            }
                            // fixed_shape and pinned refuse where the probe
                            // finds they cannot hold; the others never may.
                            failed |=
                                matches!(mode, Execution::Standard | Execution::BatchInvariant);
                        }
                    }
                }
            }
            session.release_input(s, *v);
        }
    }

    println!();
    println!(
        "medians over {} repetition(s) ({} for batch_invariant); ×: the median of the mode over the median of standard",
        a.reps,
        a.invariant_reps.unwrap_or(a.reps).min(a.reps)
    );
    println!(
        "{:<15} {:<18} {:<22} {:>10} {:>8} {:>12} {:>12}",
        "case", "backend", "execution", "median s", "×", "mean|Δ| f64", "max|Δ| f64"
    );
    for (c, (case, _, _)) in cases.iter().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let standard = (!walls[c][i][0].is_empty()).then(|| median(walls[c][i][0].clone()));
            for (m, mode) in modes.iter().enumerate() {
                let (wall, factor) = match (&walls[c][i][m], standard) {
                    (w, _) if w.is_empty() => {
                        println!("{:<15} {id:<18} {:<22} (not run)", case.name(), mode.name());
                        continue;
                    }
                    (w, Some(st)) => {
                        let med = median(w.clone());
                        (med, format!("{:.2}", med / st))
                    }
                    (w, None) => (median(w.clone()), "—".into()),
                };
                let (mean, max) = outs[c][i][m]
                    .as_ref()
                    .map(|o| distance(o, &truths[c]))
                    .unwrap_or((f64::NAN, f64::NAN));
                println!(
                    "{:<15} {id:<18} {:<22} {wall:>10.3} {factor:>8} {mean:>12.3e} {max:>12.3e}",
                    case.name(),
                    mode.name(),
                );
            }
        }
    }
    for (case, _, _) in &cases {
        println!("  {}: {}", case.name(), case.what());
    }
    // Invariance, where both decoder cases ran: the decoded rows of the
    // KV-cache run against the same rows of the full pass.
    let full = cases.iter().position(|(c, _, _)| *c == Case::DecoderFull);
    let decode = cases.iter().position(|(c, _, _)| *c == Case::DecoderDecode);
    if let (Some(f), Some(d)) = (full, decode) {
        println!("full pass vs KV-cache decode, decoded rows of every layer (bitwise?):");
        for (i, id) in ids.iter().enumerate() {
            let line: Vec<String> = modes
                .iter()
                .enumerate()
                .map(|(m, mode)| {
                    let same = match (&outs[f][i][m], &outs[d][i][m]) {
                        (Some(a), Some(b)) => {
                            if a.layers == b.layers {
                                "bitwise".to_string()
                            } else {
                                format!("max |Δ| {:.2e}", distance(a, b).1)
                            }
                        }
                        _ => "not run".to_string(),
                    };
                    format!("{} {same}", mode.name())
                })
                .collect();
            println!("  {id:<18} {}", line.join("; "));
        }
    }
    println!("pinned: the first run of each case, which certifies (probes) its row counts:");
    for (c, (case, _, _)) in cases.iter().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            if let Some(w) = first_pinned[c][i] {
                println!("  {:<15} {id:<18} {w:>9.3} s", case.name());
            }
        }
    }
    if !refused.is_empty() {
        println!("refused (the mode cannot be honoured there; never a silent standard run):");
        for r in &refused {
            println!("  {r}");
        }
    }
    if failed {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
