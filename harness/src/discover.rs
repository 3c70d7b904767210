//! Finding scenario files.

use std::path::{Path, PathBuf};

/// The `*.yaml` files of `dir`, sorted; an error that says what was scanned
/// when there are none.
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

/// The scenario directory: `LAYERDRIFT_SCENARIOS`, else `<root>/scenarios`.
pub fn scenario_dir() -> PathBuf {
    std::env::var_os("LAYERDRIFT_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::snapshot::root().join("scenarios"))
}
