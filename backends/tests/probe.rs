//! The kernel-dispatch probe on every backend of this build.

mod common;

use common::available;
use layerdrift_backends::probe::classes;
use layerdrift_backends::{DType, ProbeOp, ProbeRequest};

fn req(op: ProbeOp, width: usize, out: usize, rows: Vec<usize>) -> ProbeRequest {
    ProbeRequest {
        op,
        width,
        out,
        heads: 4,
        rows,
        dtype: DType::F32,
        threads: None,
    }
}

#[test]
#[ignore = "prints the dispatch map at the shipped scenarios' widths"]
fn probe_dump_scenario_widths() {
    let rows: Vec<usize> = vec![1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256];
    for b in available() {
        for (op, w, out) in [
            (ProbeOp::Linear, 768, 768),
            (ProbeOp::Linear, 768, 3072),
            (ProbeOp::Linear, 3072, 768),
            (ProbeOp::LayerNorm, 768, 0),
            (ProbeOp::Attention, 64, 256),
            (ProbeOp::FusedAttention, 64, 256),
        ] {
            let mut r = req(op, w, out, rows.clone());
            r.heads = 12;
            r.threads = Some(2);
            let t = std::time::Instant::now();
            match b.probe(&r) {
                Ok(p) => {
                    let pos: Vec<usize> = p.iter().filter(|x| x.position_dependent()).map(|x| x.m).collect();
                    let val: Vec<usize> = p.iter().filter(|x| x.values_dependent()).map(|x| x.m).collect();
                    eprintln!("{} {op} {w}x{out}: classes {:?} pos-dep {:?} val-dep {:?} ({:.1}s)", b.id(), classes(&p), pos, val, t.elapsed().as_secs_f64());
                }
                Err(e) => eprintln!("{} {op}: {e}", b.id()),
            }
        }
    }
}

#[test]
fn probe_dump_small_shapes() {
    for b in available() {
        for (op, w, out) in [
            (ProbeOp::Linear, 64, 96),
            (ProbeOp::Linear, 96, 64),
            (ProbeOp::LayerNorm, 64, 0),
            (ProbeOp::Gelu, 64, 96),
            (ProbeOp::Gelu, 5, 0),
            (ProbeOp::Softmax, 12, 0),
            (ProbeOp::Attention, 8, 12),
            (ProbeOp::FusedAttention, 8, 12),
        ] {
            let rows: Vec<usize> = (1..=20).collect();
            match b.probe(&req(op, w, out, rows)) {
                Ok(p) => {
                    let pos: Vec<usize> = p.iter().filter(|x| x.position_dependent()).map(|x| x.m).collect();
                    let val: Vec<usize> = p.iter().filter(|x| x.values_dependent()).map(|x| x.m).collect();
                    eprintln!("{} {op} {w}x{out}: classes {:?} pos-dep {:?} val-dep {:?}", b.id(), classes(&p), pos, val);
                }
                Err(e) => eprintln!("{} {op}: {e}", b.id()),
            }
        }
    }
}

