//! Scenario errors: `path:line:column: key: message`, and "did you mean".

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column in a scenario file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Pos {
    /// The line and column of byte `offset` in `text`.
    ///
    /// ```
    /// use layerdrift::scenario::Pos;
    /// assert_eq!(Pos::of_offset("ab\ncd", 4), Pos { line: 2, col: 2 });
    /// ```
    pub fn of_offset(text: &str, offset: usize) -> Pos {
        let before = &text.as_bytes()[..offset.min(text.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        // Columns count characters, as YAML parsers do.
        let col = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
        Pos { line, col }
    }
}

/// A problem in a scenario file, with where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioError {
    /// The scenario file.
    pub file: PathBuf,
    /// Where in it, when known (always, for a file that could be read).
    pub pos: Option<Pos>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All the problems found in one scenario file, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl ScenarioErrors {
    /// One error.
    pub fn one(file: impl Into<PathBuf>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        ScenarioErrors(vec![ScenarioError {
            file: file.into(),
            pos,
            message: message.into(),
        }])
    }
}

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

/// Adds "did you mean `x`?" to serde's unknown-field/variant messages.
pub(crate) fn with_suggestion(message: &str) -> String {
    let Some(start) = message.find("unknown ") else {
        return message.to_string();
    };
    let rest = &message[start..];
    let Some(got) = rest.split('`').nth(1) else {
        return message.to_string();
    };
    let expected: Vec<&str> = rest.split('`').skip(3).step_by(2).collect();
    match closest(got, &expected) {
        Some(c) => format!("{message} — did you mean `{c}`?"),
        None => message.to_string(),
    }
}

/// The candidate nearest to `got` by edit distance, if near enough to be a typo.
pub(crate) fn closest<'a>(got: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let near = candidates
        .iter()
        .map(|c| (edit_distance(got, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .map(|(_, c)| c);
    // `mean` for `mean_abs`, `invariant` for `batch_invariant`: a part of
    // the name is a typo too.
    near.or_else(|| {
        (got.len() >= 3)
            .then(|| candidates.iter().find(|c| c.contains(got)).copied())
            .flatten()
    })
}

/// ` — did you mean `x`?` or nothing.
pub(crate) fn hint(got: &str, candidates: &[&str]) -> String {
    closest(got, candidates)
        .map(|c| format!(" — did you mean `{c}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    // Typos are short; long inputs are never "near" anything.
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX / 2;
    }
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("dimm", &["dim", "layers"]), Some("dim"));
        assert_eq!(closest("zzzzzz", &["dim", "layers"]), None);
        assert!(
            with_suggestion("unknown field `dimm`, expected `dim` or `kind`")
                .ends_with("did you mean `dim`?")
        );
    }

    #[test]
    fn offsets_to_positions() {
        assert_eq!(Pos::of_offset("a: 1\nbé: 2", 9), Pos { line: 2, col: 4 });
        assert_eq!(Pos::of_offset("", 0), Pos { line: 1, col: 1 });
    }
}
