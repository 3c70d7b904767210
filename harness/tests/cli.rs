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
