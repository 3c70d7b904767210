//! The snapshot sink: asserts a document against its `.snap` file under
//! `snapshots/<class>/`, with insta. It never runs or evaluates anything.
//!
//! Snapshots live in one folder per machine class (see [`crate::class`]).

use std::panic::AssertUnwindSafe;

use std::path::Path;

use serde::Serialize;

use crate::workspace::root;

use super::doc::Meta;

/// Asserts `doc` against `{dir}/{name}.snap` with `meta` as its info.
pub fn assert_snapshot<T: Serialize>(
    dir: &Path,
    name: &str,
    meta: &Meta,
    description: &str,
    doc: &T,
) -> Result<(), String> {
    let input = root()
        .join("scenarios")
        .join(format!("{}.yaml", meta.scenario.trim_end_matches(".yaml")));
    assert_doc_snapshot(dir, name, meta, description, &input, doc)
}

/// Asserts `doc` against `{dir}/{name}.snap`, with `info` shown by review
/// (not compared) and `input` as the file it came from.
pub fn assert_doc_snapshot<T: Serialize, I: Serialize>(
    dir: &Path,
    name: &str,
    info: &I,
    description: &str,
    input: &Path,
    doc: &T,
) -> Result<(), String> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(input);
    settings.set_info(info);
    settings.set_description(description);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name.to_string(), doc));
    }));
    let shown = dir.strip_prefix(root()).unwrap_or(dir);
    result.map_err(|_| {
        format!(
            "snapshot `{name}` does not match {}/{name}.snap (diff above). If the change is expected \
             (a backend upgrade, a new scenario), run `cargo insta review` to accept it; on CI nothing is written.",
            shown.display()
        )
    })
}
