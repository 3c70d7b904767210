//! `scenarios/scenario.schema.json` against the parser it is generated from:
//! the committed file is the generated one, every shipped scenario points
//! editors at it, and every shipped scenario and catalogue case
//! (`harness/tests/bad/`) is judged alike by both — as far as a schema can
//! say: the schema refuses everything the parser's syntax layer refuses
//! (unknown keys, wrong types, malformed strategies) and never refuses a
//! file the parser accepts. What only validation can see (a bound out of
//! range, a padded length shorter than the input) the schema leaves to it.

use std::path::{Path, PathBuf};

use layerdrift::scenario::{Scenario, schema, syntax_check};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

const MODELINE: &str = "# yaml-language-server: $schema=scenario.schema.json";

#[test]
fn the_committed_schema_is_the_generated_one() {
    let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    let file = root().join("scenarios/scenario.schema.json");
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the parser's types: regenerate it with `cargo run -p layerdrift -- schema > scenarios/scenario.schema.json`",
        file.display()
    );
}

#[test]
fn every_shipped_scenario_names_the_schema_for_editors() {
    for f in yaml_files(&root().join("scenarios")) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text.lines().next(),
            Some(MODELINE),
            "{}: the first line should be `{MODELINE}` (yaml-language-server reads it)",
            f.display()
        );
    }
}

#[test]
fn schema_and_parser_judge_every_file_alike() {
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V7);
    let url = "file:///scenario.schema.json";
    compiler
        .add_resource(url, schema())
        .expect("the schema loads");
    let mut schemas = boon::Schemas::new();
    let index = compiler
        .compile(url, &mut schemas)
        .unwrap_or_else(|e| panic!("the generated schema does not compile: {e:#}"));
    let known: Vec<_> = layerdrift_backends::registry()
        .iter()
        .map(|b| b.id())
        .collect();
    let mut files = yaml_files(&root().join("scenarios"));
    files.extend(yaml_files(&root().join("harness/tests/bad")));
    let (mut refused_by_both, mut left_to_validation, mut not_json) = (0, 0, 0);
    let mut problems = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            not_json += 1; // not UTF-8: the parser refuses before any schema could look
            continue;
        };
        let full = Scenario::parse(f, &text, &known, u64::MAX).is_ok();
        let syntax = syntax_check(&text);
        // What an editor's schema check sees: the YAML as JSON. A file that
        // is not one document of JSON-able YAML (duplicate keys, a second
        // document, a non-string key, an alias bomb) is the YAML layer's to
        // refuse (`syntax::scan`), before any schema.
        let json = match layerdrift::scenario::syntax::scan(&text) {
            Ok(_) => serde_yaml::from_str::<serde_json::Value>(&text).ok(),
            Err(_) => None,
        };
        let Some(json) = json else {
            not_json += 1;
            assert!(
                !full,
                "{}: the parser accepts a file that is not JSON-able YAML",
                f.display()
            );
            continue;
        };
        let verdict = schemas.validate(&json, index);
        let valid = verdict.is_ok();
        let errors: Vec<String> = verdict
            .err()
            .map(|e| format!("{e:#}"))
            .into_iter()
            .collect();
        if full && !valid {
            problems.push(format!(
                "{}: the parser accepts it, the schema refuses it: {}",
                f.display(),
                errors.join("; ")
            ));
        }
        if let Err(e) = &syntax
            && valid
        {
            problems.push(format!(
                "{}: the parser refuses its shape ({e}), the schema accepts it",
                f.display()
            ));
        }
        match (valid, full) {
            (false, false) => refused_by_both += 1,
            (true, false) => left_to_validation += 1,
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Not vacuous: the catalogue has shape errors the schema must catch,
    // and value errors only validation can.
    assert!(
        refused_by_both >= 10,
        "the schema refused only {refused_by_both} bad files"
    );
    assert!(
        left_to_validation >= 10,
        "only {left_to_validation} bad files reach validation"
    );
    eprintln!(
        "{} files: {refused_by_both} refused by schema and parser, {left_to_validation} left to validation, {not_json} not JSON-able YAML",
        files.len()
    );
}
