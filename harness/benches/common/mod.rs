//! What the benches share: argument values and the median.

/// A count ≥ 1 from the argument after `flag`.
pub fn count(x: Option<String>, flag: &str) -> Result<usize, String> {
    x.and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .ok_or(format!("{flag}: a count ≥ 1"))
}

/// Backend names or ids from the comma-separated argument after `--backends`.
pub fn backends(x: Option<String>) -> Result<Vec<String>, String> {
    Ok(x.ok_or("--backends: names or ids, comma-separated")?
        .split(',')
        .map(str::to_string)
        .collect())
}

/// The median of `xs` (the upper one of an even count); `xs` is not empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
