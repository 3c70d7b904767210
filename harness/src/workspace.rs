//! Where things are: the workspace root, its `scenarios/` and `snapshots/`.

use std::path::{Path, PathBuf};

use crate::env::env;

/// The workspace root (`LAYERDRIFT_ROOT`, else where this crate was built).
pub fn root() -> PathBuf {
    env().root.clone()
}

/// The scenario directory (`LAYERDRIFT_SCENARIOS`, else `<root>/scenarios`).
pub fn scenario_dir() -> PathBuf {
    env().scenarios.clone()
}

/// The `*.yaml` and `*.yml` files of `dir`, sorted; an error that says what
/// was scanned when there are none.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the scenario directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no scenarios found: scanned {} for *.yaml and *.yml (set LAYERDRIFT_SCENARIOS to another directory)",
            dir.display()
        ));
    }
    Ok(files)
}
