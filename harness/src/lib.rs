//! # layerdrift — differential testing of tensor backends
//!
//! Mathematically identical computations give slightly different floats when
//! the input's shape changes: a matmul over a whole batch picks another kernel
//! and reduction order than a matmul over one row, and through many residual
//! layers the gap grows. layerdrift measures that drift per layer, for real
//! models on real backends (candle, burn, libtorch), against an f64 oracle,
//! and gates it in CI with bounds and insta snapshots.
//!
//! From scenario file to verdict, one module per step, data flowing one way:
//!
//! ```text
//! env, workspace ─► scenario (syntax → raw → validate → observe/expand)
//!                     │
//!                     ▼
//!   session (runs each (variant, backend, strategy) once, memoised)
//!                     │
//!                     ▼
//!   engine (comparisons → evaluate: metrics + bounds → Outcome)
//!          │                         │
//!          ▼                         ▼
//!   plan (trials, ignore reasons)   sinks: snapshot (doc, store), table, plot
//!          │                         │
//!          └──► front ends: tests/scenarios.rs (libtest-mimic), main.rs (CLI)
//! ```
//!
//! [`calibrate`] sits beside the sinks: it drives the engine over reseeded
//! copies of a scenario and reads committed snapshots, to propose bounds.
//!
//! Vocabularies live in one place each: metrics in [`metric`], devices and
//! backend ids in `layerdrift_backends::device`, strategies and the rule of
//! which fits which model in `layerdrift_backends::Schedule::fits`,
//! environment variables in [`env`].

pub mod baseline;
pub mod bounds;
pub mod calibrate;
pub mod class;
pub mod dispatch;
pub mod engine;
pub mod env;
pub mod metric;
pub mod metrics;
pub mod origin;
pub mod plan;
pub mod plot;
pub mod review;
pub mod scenario;
pub mod session;
pub mod snapshot;
pub mod table;
pub mod workspace;

/// The layering, checked: each module may use only modules listed before it
/// (docs/architecture.md, "harness/: from a scenario file to a verdict"), so data flows one way
/// and there is no import cycle.
#[cfg(test)]
mod layering {
    /// Modules in dependency order.
    const ORDER: &[&str] = &[
        "env",
        "workspace",
        "metrics",
        "metric",
        "origin",
        "bounds",
        "scenario",
        "baseline",
        "session",
        "dispatch",
        "engine",
        "class",
        "plan",
        "snapshot",
        "calibrate",
        "table",
        "plot",
        "review",
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn modules_use_only_earlier_modules() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut problems = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let Some(rank) = ORDER.iter().position(|m| *m == module) else {
                assert!(
                    ["lib", "main"].contains(&module.as_str()),
                    "{module} is missing from ORDER (and from docs/architecture.md's layout)"
                );
                continue;
            };
            let text = std::fs::read_to_string(&f).expect("source");
            for (i, used) in ORDER.iter().enumerate() {
                let refers = text.contains(&format!("crate::{used}::"))
                    || text.contains(&format!("crate::{used};"))
                    || text.contains(&format!("crate::{used}}}"));
                if refers && i > rank {
                    problems.push(format!(
                        "{} uses `{used}`, which comes after it",
                        rel.display()
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
