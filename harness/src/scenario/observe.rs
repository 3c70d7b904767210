//! `observe:` resolved against one input shape: which rows leave the backend.

use layerdrift_backends::Row;

use super::budget::MAX_OBSERVED_ROWS;
use super::raw::{BatchSel, RawObserve};

/// A problem with `observe:`: the key path of the offending value, and what
/// is wrong.
pub(super) type ObserveError = (String, String);

/// An index that may count from the end (`-1` = last) against a size.
fn index(path: &str, i: i64, n: usize, what: &str) -> Result<usize, ObserveError> {
    let n64 = i64::try_from(n).unwrap_or(i64::MAX);
    let r = if i < 0 { n64.saturating_add(i) } else { i };
    if r < 0 || r >= n64 {
        Err((
            path.to_string(),
            format!(
                "{what} index {i} is out of range for {what} size {n} (use 0..{} or -{n}..-1)",
                n - 1
            ),
        ))
    } else {
        // 0 ≤ r < n, so it fits.
        Ok(usize::try_from(r).unwrap_or(0))
    }
}

/// The rows `observe` means for an input of `batch × seq` (both ≥ 1);
/// `decoded_from` is the first position a `kv_cache` strategy decodes.
/// With `lengths` (an encoder's sequences of their own lengths), positions
/// count within each sequence's real tokens: `-1` and `last` mean its own
/// last token, never padding.
pub(super) fn resolve(
    observe: &RawObserve,
    batch: usize,
    seq: usize,
    decoded_from: Option<usize>,
    lengths: Option<&[usize]>,
) -> Result<Vec<Row>, ObserveError> {
    let last_batch = batch - 1;
    // The real length of sequence `b`.
    let len = |b: usize| lengths.and_then(|l| l.get(b).copied()).unwrap_or(seq);
    let too_many = |n: usize| {
        (
            "observe".to_string(),
            format!(
                "{n} observed rows; at most {MAX_OBSERVED_ROWS} may leave a backend per run — observe fewer"
            ),
        )
    };
    match observe {
        RawObserve::Last => Ok(vec![Row {
            batch: last_batch,
            pos: len(last_batch) - 1,
        }]),
        RawObserve::Decoded => {
            let Some(p) = decoded_from else {
                return Err((
                    "observe".into(),
                    "`decoded` means the positions a `kv_cache` strategy decodes; this scenario has none — use `last` or add `kv_cache`".into(),
                ));
            };
            let n = seq.saturating_sub(p);
            if n > MAX_OBSERVED_ROWS {
                return Err(too_many(n));
            }
            Ok((p..seq)
                .map(|pos| Row {
                    batch: last_batch,
                    pos,
                })
                .collect())
        }
        RawObserve::Window(w) => {
            let batches: Vec<usize> = match w.batch {
                None => vec![last_batch],
                Some(BatchSel::Index(i)) => vec![index("observe.batch", i, batch, "batch")?],
                Some(BatchSel::All) => {
                    if batch > MAX_OBSERVED_ROWS {
                        return Err(too_many(batch));
                    }
                    (0..batch).collect()
                }
            };
            let last = w.last.unwrap_or(1);
            if last == 0 {
                return Err(("observe.last".into(), "must be at least 1".into()));
            }
            if let Some(&b) = batches.iter().find(|&&b| last > len(b)) {
                return Err((
                    "observe.last".into(),
                    if len(b) == seq {
                        format!("{last} positions asked but seq is {seq}")
                    } else {
                        format!(
                            "{last} positions asked but sequence {b} has {} tokens",
                            len(b)
                        )
                    },
                ));
            }
            let n = batches.len().saturating_mul(last);
            if n > MAX_OBSERVED_ROWS {
                return Err(too_many(n));
            }
            Ok(batches
                .into_iter()
                .flat_map(|b| (len(b) - last..len(b)).map(move |pos| Row { batch: b, pos }))
                .collect())
        }
        RawObserve::Rows(pairs) => {
            if pairs.is_empty() {
                return Err((
                    "observe".into(),
                    "empty list: give at least one `[batch, position]` pair".into(),
                ));
            }
            if pairs.len() > MAX_OBSERVED_ROWS {
                return Err(too_many(pairs.len()));
            }
            let mut rows = Vec::with_capacity(pairs.len());
            let mut seen = std::collections::HashSet::new();
            for (i, [b, p]) in pairs.iter().enumerate() {
                let batch = index(&format!("observe[{i}][0]"), *b, batch, "batch")?;
                let row = Row {
                    batch,
                    pos: index(&format!("observe[{i}][1]"), *p, len(batch), "position")?,
                };
                if !seen.insert(row) {
                    return Err((
                        format!("observe[{i}]"),
                        format!(
                            "row [{}, {}] is observed twice; list each row once",
                            row.batch, row.pos
                        ),
                    ));
                }
                rows.push(row);
            }
            Ok(rows)
        }
    }
}
