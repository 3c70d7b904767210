//! The `layerdrift` binary as a user runs it: exit codes and messages.
//!
//! Exit 2 for bad input with the position on stderr — never a panic (101)
//! or an abort (134) — on every file of the bad-input catalogue; exit 0 for
//! `validate` on the shipped scenarios.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_layerdrift");

/// `(file, "line:" or "line:col:")` for every catalogue entry.
fn catalogue() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("harness/tests/bad")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text =
                String::from_utf8_lossy(&std::fs::read(&p).expect("catalogue entry")).into_owned();
            let at = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("# at: ")
                        .or_else(|| l.strip_prefix("# line: "))
                        .map(|a| format!("{a}:"))
                })
                .unwrap_or_else(|| panic!("{}: no `# at:` or `# line:`", p.display()));
            (p, at)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 60, "the catalogue has {} entries", out.len());
    out
}

#[test]
fn validate_exits_2_with_the_position_on_every_bad_scenario() {
    let mut problems = Vec::new();
    for (f, at) in catalogue() {
        let out = Command::new(EXE)
            .arg("validate")
            .arg(&f)
            .output()
            .expect("run layerdrift");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) {
            problems.push(format!(
                "{}: exit {:?}, want 2:\n{stderr}",
                f.display(),
                out.status.code()
            ));
        } else if !stderr.contains(&format!("{}:{at}", f.display())) {
            problems.push(format!("{}: stderr lacks {at}:\n{stderr}", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn run_exits_2_on_a_bad_scenario_and_names_it() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/batch-zero.yaml");
    let out = Command::new(EXE)
        .arg("run")
        .arg(&f)
        .output()
        .expect("run layerdrift");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("input.batch: must be at least 1"));
}

#[test]
fn validate_accepts_the_shipped_scenarios() {
    let out = Command::new(EXE)
        .arg("validate")
        .output()
        .expect("run layerdrift");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_environment_variable_stops_the_cli() {
    let out = Command::new(EXE)
        .arg("validate")
        .env("LAYERDRIFT_DEVICES", "tpu")
        .output()
        .expect("run layerdrift");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"));
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerdrift-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn layerdrift<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String, String) {
    let out = Command::new(EXE)
        .args(args)
        .output()
        .expect("run layerdrift");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Save a baseline, compare a second run with it (bitwise, the same machine),
/// review two baselines, and refuse a baseline of another scenario and a
/// truncated one — each naming the file.
#[test]
fn a_baseline_round_trips_and_a_foreign_one_is_refused() {
    let dir = tmp_dir("baseline");
    let base = dir.join("small.safetensors");
    let again = dir.join("again.safetensors");
    let small = scenario("small-residual-mlp.yaml");
    let args = |extra: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "run".into(),
            small.clone().into(),
            "--backends".into(),
            "candle".into(),
            "--summary".into(),
            "--out".into(),
            dir.clone().into(),
        ];
        v.extend(extra.iter().map(|x| x.to_os_string()));
        v
    };
    let (code, stdout, stderr) = layerdrift(&args(&["--save-baseline".as_ref(), base.as_os_str()]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("baseline:"), "{stdout}");

    let (code, stdout, stderr) = layerdrift(&args(&[
        "--baseline".as_ref(),
        base.as_os_str(),
        "--save-baseline".as_ref(),
        again.as_os_str(),
    ]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // Every variant of both strategies, on candle and the oracle, bitwise.
    let vs: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("-vs-baseline ["))
        .collect();
    assert_eq!(vs.len(), 2 * 2 * 4, "{stdout}");
    assert!(
        vs.iter().all(|l| l.contains("first divergence none")),
        "{stdout}"
    );

    let (code, stdout, _) = layerdrift(&[
        "review".as_ref(),
        base.as_os_str(),
        again.as_os_str(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(": unchanged"), "{stdout}");
    assert!(stdout.contains("bitwise equal at every layer"), "{stdout}");

    // Another scenario's baseline is refused before anything runs.
    let decoder = scenario("small-decoder.yaml");
    let (code, _, stderr) = layerdrift(&[
        "run".as_ref(),
        decoder.as_os_str(),
        "--baseline".as_ref(),
        base.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("small.safetensors")
            && stderr.contains("recorded from scenario `small-residual-mlp`"),
        "{stderr}"
    );

    // A truncated file.
    let bytes = std::fs::read(&base).expect("baseline");
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let (code, _, stderr) = layerdrift(&args(&["--baseline".as_ref(), cut.as_os_str()]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cut.safetensors") && stderr.contains("truncated"),
        "{stderr}"
    );
}

/// `layerdrift probe` on a small shape: a table, an SVG and JSON with one
/// entry per backend and shape; bad arguments exit 2 with the reason.
#[test]
fn probe_writes_the_dispatch_map_and_refuses_bad_arguments() {
    let dir = tmp_dir("probe");
    let json = dir.join("map.json");
    let small = scenario("small-residual-mlp.yaml");
    let (code, stdout, stderr) = layerdrift(&[
        "probe".as_ref(),
        "--backends".as_ref(),
        "reference,candle".as_ref(),
        "--ops".as_ref(),
        "layer_norm,linear".as_ref(),
        "--rows".as_ref(),
        "1-4,8".as_ref(),
        "--scenarios".as_ref(),
        small.as_os_str(),
        "--out".as_ref(),
        dir.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("layer_norm 128"), "{stdout}");
    assert!(stdout.contains("M = 1–4, 8"), "{stdout}");
    let svg = std::fs::read_to_string(dir.join("dispatch-map.svg")).expect("the SVG");
    assert!(
        svg.starts_with("<svg") && svg.contains("linear 128→256"),
        "{svg}"
    );
    let maps: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    let maps = maps.as_array().expect("one map per backend");
    assert_eq!(maps.len(), 2);
    for m in maps {
        let entries = m["entries"].as_array().expect("entries");
        // small-residual-mlp: layer_norm 128, linear 128→256 and 256→128.
        assert_eq!(entries.len(), 3, "{m}");
        for e in entries {
            let covered: u64 = e["classes"]
                .as_array()
                .expect("classes")
                .iter()
                .flat_map(|c| c.as_array().expect("runs").clone())
                .map(|r| {
                    let (lo, hi) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                    [1u64, 2, 3, 4, 8]
                        .iter()
                        .filter(|m| (lo..=hi).contains(m))
                        .count() as u64
                })
                .sum();
            assert_eq!(covered, 5, "every probed M is in exactly one class: {e}");
        }
    }
    for (args, want) in [
        (&["probe", "--rows", "0-3"][..], "`0` is not a row count"),
        (&["probe", "--rows", "9-2"][..], "an empty range"),
        (&["probe", "--backends", "nope"][..], "no backend `nope`"),
        (&["probe", "--max-width", "1"][..], "no shapes to probe"),
        (&["probe", "--rows", "1,100000000"][..], "more than the"),
    ] {
        let (code, _, stderr) = layerdrift(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// `--ops all --local` on the small seed-like stack: the first divergent op
/// is named, every comparison gets a local-vs-inherited table and verdict,
/// the per-op and local plots are written, the forced runs' cost is
/// reported — and bad flags exit 2 with the model's ops named.
#[test]
fn run_names_the_first_divergent_op_and_splits_local_from_inherited_error() {
    let dir = tmp_dir("diagnose");
    let small = scenario("small-residual-mlp.yaml");
    let json = dir.join("out.json");
    let (code, stdout, stderr) = layerdrift(&[
        "run".as_ref(),
        small.as_os_str(),
        "--ops".as_ref(),
        "all".as_ref(),
        "--local".as_ref(),
        "--backends".as_ref(),
        "candle".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // Against the f64 oracle, f32 differs from the first op on.
    assert!(
        stdout.contains("first divergent op: layer 1, norm1, row 0"),
        "{stdout}"
    );
    for want in [
        "local vs inherited error",
        "local/total",
        "fresh error at every layer",
        "teacher forcing: ",
        "every op bitwise equal",
    ] {
        assert!(stdout.contains(want), "no `{want}` in:\n{stdout}");
    }
    for stem in [
        "full-vs-oracle-ops",
        "full-vs-oracle-local",
        "full-vs-rows-ops",
    ] {
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg")))
            .unwrap_or_else(|e| panic!("{stem}.svg: {e}\n{stdout}"));
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{stem}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid json");
    let local = &doc["outcomes"][1]["variants"][0]["local"]["layers"];
    assert_eq!(local.as_array().map(Vec::len), Some(6), "{local}");
    assert_eq!(doc["format"], 1, "the JSON says its format version");

    // The report is read back through the types that wrote it (ops and
    // local profiles included): review finds it unchanged against itself…
    let (code, stdout, stderr) = layerdrift(&[
        "review".as_ref(),
        json.as_os_str(),
        json.as_os_str(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(": unchanged"), "{stdout}");
    // …and refuses a renamed field or another format, naming the file,
    // instead of reading NaN.
    let text = std::fs::read_to_string(&json).expect("json");
    for (name, edited, want) in [
        (
            "renamed.json",
            text.replacen("\"mean_abs\"", "\"mean\"", 1),
            "not a layerdrift report",
        ),
        (
            "future.json",
            text.replacen("\"format\": 1", "\"format\": 2", 1),
            "format 2; this layerdrift reads format 1",
        ),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, edited).expect("write");
        let (code, _, stderr) = layerdrift(&["review".as_ref(), f.as_os_str(), json.as_os_str()]);
        assert_ne!(code, Some(0), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(want),
            "{name}: {stderr}"
        );
    }

    for (args, want) in [
        (
            vec!["--ops", "linear3"],
            "has no op `linear3`; its ops are norm1, linear1, act",
        ),
        (vec!["--ops", "all,act"], "`all` stands alone"),
    ] {
        let mut full: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), small.as_os_str()];
        full.extend(args.iter().map(std::ffi::OsStr::new));
        let (code, _, stderr) = layerdrift(&full);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let decoder = scenario("small-decoder.yaml");
    let (code, _, stderr) = layerdrift(&["run".as_ref(), decoder.as_os_str(), "--local".as_ref()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--local: teacher forcing has no meaning"),
        "{stderr}"
    );
}

/// A drift outside its bounds: exit 1, naming the check, the layer and the
/// bound.
#[test]
fn run_exits_1_when_a_bound_is_broken() {
    let dir = tmp_dir("exit1");
    let f = dir.join("too-tight.yaml");
    std::fs::write(
        &f,
        "model: { kind: residual_mlp, layers: 2, dim: 16, hidden: 32 }\n\
         weights: { init: { seed: 0, std: 0.2 } }\n\
         input: { batch: 2, seq: 4, seed: 1 }\n\
         strategies: [full]\n\
         checks:\n  - oracle: full\n    bounds: { every_layer: { max_abs: 1.0e-30 } }\n\
         backends: [candle]\n",
    )
    .expect("write");
    let (code, stdout, stderr) = layerdrift(&[
        "run".as_ref(),
        f.as_os_str(),
        "--summary".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAIL  candle-cpu/full-vs-oracle")
            && stdout.contains("max_abs")
            && stdout.contains("> 1.000e-30")
            && stdout.contains("out of bounds"),
        "{stdout}"
    );
    // Polygraphy's "minimum required tolerance": the bound that would pass.
    assert!(
        stdout.contains("would pass with every_layer.max_abs ≥ "),
        "{stdout}"
    );
}

/// `calibrate` on a small scenario: a table with the measured spread and a
/// proposal per bound, every applicable negative control caught, and
/// `--write` leaving a file that parses, with the proposals and their
/// provenance in it and every comment kept.
#[test]
fn calibrate_proposes_bounds_that_catch_the_controls_and_writes_them() {
    let dir = tmp_dir("calibrate");
    let f = dir.join("calibrate-me.yaml");
    std::fs::write(
        &f,
        r#"# a comment that must survive
model: { kind: residual_mlp, layers: 3, dim: 32, hidden: 64, residual: [true, false] }
weights: { init: { seed: 0, std: 0.2 } }
input: { batch: 4, seq: 8, seed: 1 }
strategies: [full, rows]
checks:
  - strategies: [full, rows]
    bounds: &drift
      every_layer: { mean_abs: 1.0e-3 }   # hand-typed
    backend_bounds:
      burn-ndarray: { bitwise: true }
  - oracle: full
    bounds: *drift
backends: [candle, burn-ndarray]
"#,
    )
    .expect("write");
    let (code, stdout, stderr) = layerdrift(&[
        "calibrate".as_ref(),
        f.as_os_str(),
        "--seeds".as_ref(),
        "3".as_ref(),
        "--no-recorded".as_ref(),
        "--write".as_ref(),
    ]);
    assert_eq!(
        code,
        Some(0),
        "{stdout}
{stderr}"
    );
    for want in [
        "full-vs-rows:",
        "full-vs-oracle:",
        "proposed:    { every_layer: { mean_abs: ",
        "false alarm per trial",
        "control other GELU (erf <-> tanh)  caught",
        "control residual dropped",
        "control one weight transposed      caught",
    ] {
        assert!(
            stdout.contains(want),
            "no `{want}` in:
{stdout}"
        );
    }
    assert!(!stdout.contains("MISSED"), "{stdout}");
    let text = std::fs::read_to_string(&f).expect("read back");
    assert!(
        text.starts_with("# a comment that must survive\n"),
        "{text}"
    );
    assert!(
        text.contains("    bounds: &drift\n      every_layer: { mean_abs: "),
        "{text}"
    );
    assert!(text.contains("calibrated: { on: "), "{text}");
    assert!(text.contains("seeds: 3"), "{text}");
    assert!(text.contains("    bounds: *drift"), "{text}");
    let (code, _, stderr) = layerdrift(&["validate".as_ref(), f.as_os_str()]);
    assert_eq!(
        code,
        Some(0),
        "the written file does not validate: {stderr}
{text}"
    );
    // Bad input: a margin below 1 is refused by name.
    let (code, _, stderr) = layerdrift(&[
        "calibrate".as_ref(),
        f.as_os_str(),
        "--margin".as_ref(),
        "0.5".as_ref(),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--margin"), "{stderr}");
}

/// `--backends` naming only a backend this machine cannot run compares
/// nothing: exit 2 with the reason, never a pass.
#[test]
fn run_refuses_to_pass_when_nothing_was_compared() {
    let dir = tmp_dir("nothing");
    let (code, stdout, stderr) = layerdrift(&[
        "run".as_ref(),
        scenario("small-residual-mlp.yaml").as_os_str(),
        "--backends".as_ref(),
        "candle-cuda".as_ref(),
        "--summary".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    if stdout.contains("candle-cuda") && stdout.contains("— ") && code == Some(0) {
        return; // a CUDA build on a GPU machine: candle-cuda ran and compared
    }
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("nothing was compared") && stderr.contains("candle-cuda"),
        "{stderr}"
    );
}
