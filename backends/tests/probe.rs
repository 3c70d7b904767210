//! The kernel-dispatch probe on every backend of this build: it answers for
//! every row count asked, the same way every time (so its map can be
//! pinned by snapshots), and refuses a nonsensical request with the reason.
//! That it *detects* a kernel change is tested in `probe.rs`'s unit tests,
//! on ops with a deliberately different kernel at one row count.

mod common;

use common::available;
use layerdrift_backends::probe::classes;
use layerdrift_backends::{BackendError, DType, ProbeOp, ProbeRequest, registry};

fn req(op: ProbeOp, width: usize, out: usize, rows: Vec<usize>) -> ProbeRequest {
    ProbeRequest {
        op,
        width,
        out,
        heads: 4,
        rows,
        dtype: DType::F32,
        threads: Some(2),
    }
}

/// Every op the backend has, at small widths and M = 1…20: one point per
/// row count, in order; the classes cover every row count once; twice the
/// same request gives bitwise the same answer.
#[test]
fn the_probe_answers_every_row_count_deterministically() {
    let rows: Vec<usize> = (1..=20).collect();
    for b in available() {
        for (op, w, out) in [
            (ProbeOp::Linear, 64, 96),
            (ProbeOp::Linear, 96, 64),
            (ProbeOp::LayerNorm, 64, 0),
            (ProbeOp::RmsNorm, 64, 0),
            (ProbeOp::Softmax, 12, 0),
            (ProbeOp::Gelu, 5, 0),
            (ProbeOp::Attention, 8, 12),
            (ProbeOp::FusedAttention, 8, 12),
        ] {
            let r = req(op, w, out, rows.clone());
            let first = match b.probe(&r) {
                Ok(p) => p,
                // An op the library lacks (candle's fused attention on CPU).
                Err(BackendError::Library { message, .. }) if op == ProbeOp::FusedAttention => {
                    assert!(message.contains("fused attention"), "{}: {message}", b.id());
                    continue;
                }
                Err(e) => panic!("{} {op} {w}→{out}: {e}", b.id()),
            };
            let ms: Vec<usize> = first.iter().map(|p| p.m).collect();
            assert_eq!(ms, rows, "{} {op}: one point per row count", b.id());
            let covered: usize = classes(&first)
                .iter()
                .flatten()
                .map(|(lo, hi)| rows.iter().filter(|m| (*lo..=*hi).contains(m)).count())
                .sum();
            assert_eq!(
                covered,
                rows.len(),
                "{} {op}: classes cover each M once",
                b.id()
            );
            assert!(first.iter().all(|p| p.positions >= 1 && p.positions <= p.m));
            assert_eq!(
                b.probe(&r).expect("again"),
                first,
                "{} {op}: not deterministic",
                b.id()
            );
        }
    }
}

#[test]
fn a_zero_width_or_zero_row_probe_is_refused() {
    for b in registry().into_iter().filter(|b| b.available().is_ok()) {
        for (r, what) in [
            (req(ProbeOp::Linear, 0, 4, vec![1]), "a width of 0"),
            (
                req(ProbeOp::LayerNorm, 8, 0, vec![2, 0]),
                "a row count of 0",
            ),
        ] {
            let e = b.probe(&r).expect_err("must be refused").to_string();
            assert!(e.contains(what), "{}: {e}", b.id());
        }
    }
}
