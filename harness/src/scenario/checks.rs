//! Phase one of validation, for `checks:`: pairings, names, bounds and
//! per-backend bounds, each on its own.

use std::collections::HashMap;

use layerdrift_backends::BackendId;

use super::error::hint;
use super::raw::RawCheck;
use super::validate::Validator;
use super::{Check, Pairing};

/// Check names that would collide with the harness's own trials.
const RESERVED_CHECK_NAMES: [&str; 2] = ["snapshot", "scenario"];

/// Every check, validated; problems go to `v`.
pub(super) fn checks(
    v: &mut Validator<'_>,
    raw: Vec<RawCheck>,
    strategy_names: &[&str],
    known: &[BackendId],
) -> Vec<Check> {
    let mut checks = Vec::new();
    if raw.is_empty() {
        v.err(
            "checks",
            "no checks: add at least one, e.g. `- strategies: [full, rows]` or `- oracle: full`",
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, c) in raw.into_iter().enumerate() {
        let at = format!("checks[{i}]");
        let known_strategy = |v: &mut Validator<'_>, key: &str, s: &str| {
            if !strategy_names.contains(&s) {
                v.err(
                    &format!("{at}.{key}"),
                    format!(
                        "no strategy `{s}` in this scenario (it has: {}){}",
                        strategy_names.join(", "),
                        hint(s, strategy_names)
                    ),
                );
            }
        };
        let pairing = match (c.strategies, c.oracle, c.cross, c.baseline) {
            (Some(pair), None, None, None) => {
                if pair.len() != 2 {
                    v.err(
                        &format!("{at}.strategies"),
                        format!("name exactly two strategies to compare, got {}", pair.len()),
                    );
                    continue;
                }
                known_strategy(v, "strategies[0]", &pair[0]);
                known_strategy(v, "strategies[1]", &pair[1]);
                if pair[0] == pair[1] {
                    v.err(
                        &format!("{at}.strategies[1]"),
                        format!(
                            "`{}` against itself always agrees: compare two different strategies",
                            pair[1]
                        ),
                    );
                }
                Pairing::Strategies(pair[0].clone(), pair[1].clone())
            }
            (None, Some(s), None, None) => {
                known_strategy(v, "oracle", &s);
                Pairing::Oracle(s)
            }
            (None, None, Some(s), None) => {
                known_strategy(v, "cross", &s);
                Pairing::Cross(s)
            }
            (None, None, None, Some(s)) => {
                known_strategy(v, "baseline", &s);
                if c.file.is_none() {
                    v.err(
                        &at,
                        "a baseline check needs `file:`, the baseline written by `layerdrift run --save-baseline FILE` (relative to this scenario)",
                    );
                }
                Pairing::Baseline(s)
            }
            _ => {
                v.err(
                    &at,
                    "give exactly one of `strategies: [a, b]`, `oracle: <strategy>`, `cross: <strategy>`, `baseline: <strategy>`",
                );
                continue;
            }
        };
        if c.file.is_some() && !matches!(pairing, Pairing::Baseline(_)) {
            v.err(
                &format!("{at}.file"),
                "`file:` belongs to a baseline check (`baseline: <strategy>`); remove it here",
            );
        }
        let baseline_file = c.file.as_deref().map(|f| v.relative(f));
        let file_at = v.index.find(&format!("{at}.file"));
        for (key, problem) in c.bounds.problems() {
            v.err(&format!("{at}.bounds.{key}"), problem);
        }
        for (k, b) in &c.backend_bounds {
            for (key, problem) in b.problems() {
                v.err(&format!("{at}.backend_bounds.{k}.{key}"), problem);
            }
            let (base, device) = BackendId::split_key(k);
            let ok = known
                .iter()
                .any(|id| id.name == base && device.is_none_or(|d| d == id.device));
            if !ok {
                let ids: Vec<String> = known.iter().map(|id| id.to_string()).collect();
                let mut cands: Vec<&str> = ids.iter().map(String::as_str).collect();
                cands.extend(known.iter().map(|id| id.name));
                v.err(
                    &format!("{at}.backend_bounds.{k}"),
                    format!(
                        "unknown backend `{k}` (a backend name such as `candle`, or an id such as `candle-cpu`){}",
                        hint(k, &cands)
                    ),
                );
            }
        }
        let name = match (&c.name, &pairing) {
            (Some(n), _) => {
                let bad = n.is_empty()
                    || !n
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
                if bad {
                    v.err(
                        &format!("{at}.name"),
                        format!("`{n}`: a check name is letters, digits, `-`, `_` and `.` (it becomes part of trial names)"),
                    );
                } else if RESERVED_CHECK_NAMES.contains(&n.as_str()) {
                    v.err(
                        &format!("{at}.name"),
                        format!("`{n}` is the name of the harness's own trial; pick another"),
                    );
                }
                n.clone()
            }
            (None, Pairing::Strategies(a, b)) => format!("{a}-vs-{b}"),
            (None, Pairing::Oracle(s)) => format!("{s}-vs-oracle"),
            (None, Pairing::Cross(s)) => format!("{s}-vs"),
            (None, Pairing::Baseline(s)) => format!("{s}-vs-baseline"),
        };
        let name_at = if c.name.is_some() {
            format!("{at}.name")
        } else {
            at.clone()
        };
        if let Some(first) = names.insert(name.clone(), i) {
            v.err(
                &name_at,
                format!("two checks are named `{name}` (checks[{first}] and this one): trial names must be unique — give one a `name:`"),
            );
        }
        checks.push(Check {
            name,
            pairing,
            bounds: c.bounds,
            backend_bounds: c.backend_bounds,
            baseline_file,
            file_at,
        });
    }

    checks
}
