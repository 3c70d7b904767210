//! The kernel-dispatch probe: which row counts make a library call another
//! kernel, and whether a row's result depends on where it sits in the batch
//! or on the rows beside it.
//!
//! For one op that mixes values within a row ([`ProbeOp`]) at one width, and
//! each row count `M` asked for, the probe builds `M` rows of seeded filler,
//! puts one fixed probe row among them and hashes the probe row's result
//! bitwise, first among one filler and first among another; then it fills
//! all `M` rows with the probe row and counts the distinct results
//! ([`ProbePoint`]). Row counts whose
//! `first` hashes are equal ran kernels that give that row the same bits —
//! one *kernel-equivalence class*. The op is called through the same
//! adapter code ([`Ops`]) the models use, so what the probe sees is what a
//! model's layer sees.

pub mod fingerprint;

use std::fmt;

use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{Activation, Norm};
use crate::ops::{OpResult, Ops};
use crate::weights::generate_input;

/// An op the probe calls: each mixes values within a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeOp {
    /// `x @ Wᵀ + b`, `[1, M, width]` → `[1, M, out]`.
    Linear,
    /// LayerNorm over `[1, M, width]`.
    LayerNorm,
    /// RMSNorm over `[1, M, width]`.
    RmsNorm,
    /// Softmax over the last dim of `[1, M, width]`.
    Softmax,
    /// Attention written out (matmul, softmax, matmul): `M` queries
    /// `[1, heads, M, width]` over `out` keys.
    Attention,
    /// The library's fused attention kernel, same shapes.
    FusedAttention,
    /// Exact GELU over `[1, M, width]`: elementwise, but a vectorised
    /// transcendental may round a lane differently from its scalar tail.
    Gelu,
}

impl ProbeOp {
    /// Every op, in display order.
    pub const ALL: [ProbeOp; 7] = [
        ProbeOp::Linear,
        ProbeOp::LayerNorm,
        ProbeOp::RmsNorm,
        ProbeOp::Softmax,
        ProbeOp::Attention,
        ProbeOp::FusedAttention,
        ProbeOp::Gelu,
    ];

    /// The spelling in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ProbeOp::Linear => "linear",
            ProbeOp::LayerNorm => "layer_norm",
            ProbeOp::RmsNorm => "rms_norm",
            ProbeOp::Softmax => "softmax",
            ProbeOp::Attention => "attention",
            ProbeOp::FusedAttention => "fused_attention",
            ProbeOp::Gelu => "gelu",
        }
    }

    /// The op named `s`.
    pub fn parse(s: &str) -> Option<ProbeOp> {
        ProbeOp::ALL.into_iter().find(|o| o.name() == s)
    }
}

impl fmt::Display for ProbeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One probe: an op at one shape, over several row counts.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeRequest {
    /// The op.
    pub op: ProbeOp,
    /// Row width (`in` for a linear, the head dim for attention).
    pub width: usize,
    /// A linear's `out`; attention's number of keys; unused otherwise.
    pub out: usize,
    /// Attention heads; unused otherwise.
    pub heads: usize,
    /// The row counts `M` to try, each ≥ 1.
    pub rows: Vec<usize>,
    /// The dtype to compute in.
    pub dtype: DType,
    /// Intra-op threads, as in a run.
    pub threads: Option<usize>,
}

/// What the probe row got at one row count `M`: FNV-1a hashes of its
/// result's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// The row count.
    pub m: usize,
    /// The probe row first (row 0) among `M − 1` filler rows.
    pub first: u64,
    /// The probe row first among other filler.
    pub other: u64,
    /// With the probe row in all `M` rows: how many distinct results the
    /// positions got (1 = the result does not depend on the position).
    pub positions: usize,
}

impl ProbePoint {
    /// Whether the row's result depended on its position.
    pub fn position_dependent(&self) -> bool {
        self.positions > 1
    }

    /// Whether the row's result depended on the other rows' values.
    pub fn values_dependent(&self) -> bool {
        self.first != self.other
    }
}

fn fnv(xs: &[f64]) -> u64 {
    xs.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        x.to_bits()
            .to_le_bytes()
            .iter()
            .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3))
    })
}

/// `[1, lanes, m, width]` seeded rows (filler seed `seed`) with the probe row
/// (its own seed) at the rows `at` of every lane.
fn rows_with_probe(
    lanes: usize,
    m: usize,
    width: usize,
    seed: u64,
    at: impl Iterator<Item = usize> + Clone,
) -> HostTensor {
    let mut t = generate_input(lanes, m, width, seed);
    let probe = generate_input(lanes, 1, width, 0x9e37);
    for l in 0..lanes {
        for r in at.clone() {
            let dst = (l * m + r) * width;
            t.data[dst..dst + width].copy_from_slice(&probe.data[l * width..(l + 1) * width]);
        }
    }
    t.shape = vec![1, lanes, m, width];
    t
}

/// The probe, written once over [`Ops`] like the models.
pub(crate) fn run<O: Ops>(ops: &O, req: &ProbeRequest) -> OpResult<Vec<ProbePoint>> {
    if req.width == 0 {
        return Err("probe: a width of 0".into());
    }
    let (lanes, dtype) = match req.op {
        ProbeOp::Attention | ProbeOp::FusedAttention => (req.heads.max(1), req.dtype),
        ProbeOp::Linear
        | ProbeOp::LayerNorm
        | ProbeOp::RmsNorm
        | ProbeOp::Softmax
        | ProbeOp::Gelu => (1, req.dtype),
    };
    // The op's constants, uploaded once.
    let ones = ops.upload(&HostTensor::full(vec![req.width], 1.0), dtype)?;
    let zero = ops.upload(&HostTensor::full(vec![req.width], 0.0), dtype)?;
    let linear = match req.op {
        ProbeOp::Linear => {
            let mut w = generate_input(1, req.out, req.width, 0x11);
            let s = 1.0 / (req.width as f32).sqrt();
            w.data.iter_mut().for_each(|x| *x *= s);
            w.shape = vec![req.out, req.width];
            let b = HostTensor::full(vec![req.out], 0.0);
            Some(ops.prepare_linear(&w, Some(&b), dtype)?)
        }
        ProbeOp::LayerNorm
        | ProbeOp::RmsNorm
        | ProbeOp::Softmax
        | ProbeOp::Gelu
        | ProbeOp::Attention
        | ProbeOp::FusedAttention => None,
    };
    let kv = match req.op {
        ProbeOp::Attention | ProbeOp::FusedAttention => {
            let k = rows_with_probe(lanes, req.out.max(1), req.width, 0x22, 0..0);
            let v = rows_with_probe(lanes, req.out.max(1), req.width, 0x33, 0..0);
            Some((ops.upload(&k, dtype)?, ops.upload(&v, dtype)?))
        }
        ProbeOp::Linear
        | ProbeOp::LayerNorm
        | ProbeOp::RmsNorm
        | ProbeOp::Softmax
        | ProbeOp::Gelu => None,
    };
    let scale = 1.0 / (req.width as f64).sqrt();
    let apply = |x: &O::T| -> OpResult<O::T> {
        match req.op {
            ProbeOp::Linear => ops.linear(x, linear.as_ref().expect("linear")),
            ProbeOp::LayerNorm => ops.norm(Norm::LayerNorm, x, &ones, Some(&zero), 1e-5),
            ProbeOp::RmsNorm => ops.norm(Norm::RmsNorm, x, &ones, None, 1e-5),
            ProbeOp::Softmax => ops.softmax_last(x),
            ProbeOp::Gelu => ops.activation(x, Activation::GeluErf),
            ProbeOp::Attention | ProbeOp::FusedAttention => {
                let (k, v) = kv.as_ref().expect("keys");
                let kt = ops.transpose(k, 2, 3)?;
                if req.op == ProbeOp::FusedAttention {
                    return ops
                        .fused_attention(x, k, v, None, scale)
                        .unwrap_or_else(|| Err("this backend has no fused attention".into()));
                }
                let scores = ops.scale(&ops.matmul(x, &kt)?, scale)?;
                ops.matmul(&ops.softmax_last(&scores)?, v)
            }
        }
    };
    // The op on `[1, lanes, m, w]` with the probe row at rows `at`: the
    // result's rows, each a lane-major hash of that row in every lane.
    let result = |m: usize, seed: u64, at: std::ops::Range<usize>| -> OpResult<Vec<u64>> {
        let host = rows_with_probe(lanes, m, req.width, seed, at.clone());
        let x = ops.upload(&host, dtype)?;
        let x = if lanes == 1 {
            ops.reshape(&x, &[1, m, req.width])?
        } else {
            x
        };
        let y = apply(&x)?;
        // One download; row `r` of every lane is hashed lane after lane.
        let shape = ops.shape(&y);
        let w = shape[shape.len() - 1];
        let all = ops.download(&y)?;
        Ok(at
            .map(|r| {
                let row: Vec<f64> = (0..lanes)
                    .flat_map(|l| &all[(l * m + r) * w..(l * m + r + 1) * w])
                    .copied()
                    .collect();
                fnv(&row)
            })
            .collect())
    };
    let mut out = Vec::with_capacity(req.rows.len());
    for &m in &req.rows {
        if m == 0 {
            return Err("probe: a row count of 0".into());
        }
        let mut every = result(m, 1, 0..m)?;
        every.sort_unstable();
        every.dedup();
        out.push(ProbePoint {
            m,
            first: result(m, 1, 0..1)?[0],
            other: result(m, 2, 0..1)?[0],
            positions: every.len(),
        });
    }
    Ok(out)
}

/// Row counts with equal [`ProbePoint::first`], as ranges `lo..=hi` of
/// consecutive probed counts, in order of first appearance: `[[1..=1],
/// [2..=15], [16..=4096]]`.
pub fn classes(points: &[ProbePoint]) -> Vec<Vec<(usize, usize)>> {
    let mut keys: Vec<u64> = Vec::new();
    let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut prev: Option<u64> = None;
    for p in points {
        let i = keys.iter().position(|k| *k == p.first).unwrap_or_else(|| {
            keys.push(p.first);
            out.push(Vec::new());
            keys.len() - 1
        });
        match out[i].last_mut() {
            Some(r) if prev == Some(p.first) => r.1 = p.m,
            _ => out[i].push((p.m, p.m)),
        }
        prev = Some(p.first);
    }
    out
}

/// `{1} {2–15} {16–4096}`: each class (from [`classes`]) as its runs of
/// probed row counts.
pub fn classes_text(classes: &[Vec<(usize, usize)>]) -> String {
    classes
        .iter()
        .map(|runs| {
            let inner: Vec<String> = runs
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}–{hi}")
                    }
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::F64;

    /// The oracle's f64 ops with one deliberately different "kernel": a
    /// linear over exactly `odd_m` rows (`[1, odd_m, w]`) rounds its result
    /// by one extra ulp-sized step, as a library switching kernels at one
    /// row count would. Everything else is the oracle's.
    struct Injected {
        odd_m: usize,
        /// Instead: at `odd_m` rows, the last row alone gets the extra
        /// step (a kernel whose tail rows take another code path).
        tail: bool,
        /// Instead: every row count from `odd_m` up gets the extra step (a
        /// class boundary at `odd_m`).
        from: bool,
    }

    const CLEAN: Injected = Injected {
        odd_m: 0,
        tail: false,
        from: false,
    };

    impl Ops for Injected {
        type T = <F64 as Ops>::T;
        type Linear = <F64 as Ops>::Linear;
        fn upload(&self, t: &HostTensor, d: DType) -> OpResult<Self::T> {
            F64.upload(t, d)
        }
        fn prepare_linear(
            &self,
            w: &HostTensor,
            b: Option<&HostTensor>,
            d: DType,
        ) -> OpResult<Self::Linear> {
            F64.prepare_linear(w, b, d)
        }
        fn linear(&self, x: &Self::T, l: &Self::Linear) -> OpResult<Self::T> {
            let y = F64.linear(x, l)?;
            match x.shape() {
                [1, m, _] if *m == self.odd_m && self.tail => {
                    let head = F64.narrow(&y, 1, 0, m - 1)?;
                    let last = F64.scale(&F64.narrow(&y, 1, m - 1, 1)?, 1.0 + f64::EPSILON)?;
                    F64.cat(&[head, last], 1)
                }
                [1, m, _] if *m == self.odd_m || (self.from && *m >= self.odd_m) => {
                    F64.scale(&y, 1.0 + f64::EPSILON)
                }
                _ => Ok(y),
            }
        }
        fn norm(
            &self,
            k: Norm,
            x: &Self::T,
            w: &Self::T,
            b: Option<&Self::T>,
            eps: f64,
        ) -> OpResult<Self::T> {
            F64.norm(k, x, w, b, eps)
        }
        fn activation(&self, x: &Self::T, a: Activation) -> OpResult<Self::T> {
            F64.activation(x, a)
        }
        fn add(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
            F64.add(a, b)
        }
        fn mul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
            F64.mul(a, b)
        }
        fn scale(&self, x: &Self::T, s: f64) -> OpResult<Self::T> {
            F64.scale(x, s)
        }
        fn matmul(&self, a: &Self::T, b: &Self::T) -> OpResult<Self::T> {
            F64.matmul(a, b)
        }
        fn softmax_last(&self, x: &Self::T) -> OpResult<Self::T> {
            F64.softmax_last(x)
        }
        fn reshape(&self, x: &Self::T, shape: &[usize]) -> OpResult<Self::T> {
            F64.reshape(x, shape)
        }
        fn transpose(&self, x: &Self::T, a: usize, b: usize) -> OpResult<Self::T> {
            F64.transpose(x, a, b)
        }
        fn narrow(&self, x: &Self::T, dim: usize, start: usize, len: usize) -> OpResult<Self::T> {
            F64.narrow(x, dim, start, len)
        }
        fn cat(&self, xs: &[Self::T], dim: usize) -> OpResult<Self::T> {
            F64.cat(xs, dim)
        }
        fn fresh(&self, x: &Self::T) -> OpResult<Self::T> {
            F64.fresh(x)
        }
        fn shape(&self, x: &Self::T) -> Vec<usize> {
            F64.shape(x)
        }
        fn download(&self, x: &Self::T) -> OpResult<Vec<f64>> {
            F64.download(x)
        }
    }

    fn linear_probe(rows: Vec<usize>) -> ProbeRequest {
        ProbeRequest {
            op: ProbeOp::Linear,
            width: 24,
            out: 16,
            heads: 1,
            rows,
            dtype: DType::F64,
            threads: None,
        }
    }

    #[test]
    fn the_probe_finds_an_injected_kernel_change_at_one_row_count() {
        let rows: Vec<usize> = (1..=12).collect();
        let clean = run(&CLEAN, &linear_probe(rows.clone())).expect("probe");
        assert_eq!(
            classes(&clean),
            vec![vec![(1, 12)]],
            "the oracle's linear is one class"
        );
        let odd = run(
            &Injected {
                odd_m: 7,
                tail: false,
                from: false,
            },
            &linear_probe(rows),
        )
        .expect("probe");
        assert_eq!(
            classes(&odd),
            vec![vec![(1, 6), (8, 12)], vec![(7, 7)]],
            "M = 7 ran another kernel"
        );
        // Another kernel for all M rows at once changes no row's dependence
        // on its neighbours.
        assert!(
            odd.iter()
                .all(|p| !p.position_dependent() && !p.values_dependent())
        );
    }

    #[test]
    fn the_probe_finds_a_row_whose_result_depends_on_its_position() {
        let p = run(
            &Injected {
                odd_m: 5,
                tail: true,
                from: false,
            },
            &linear_probe(vec![4, 5, 6]),
        )
        .expect("probe");
        let dependent: Vec<usize> = p
            .iter()
            .filter(|p| p.position_dependent())
            .map(|p| p.m)
            .collect();
        assert_eq!(dependent, vec![5]);
        assert_eq!(
            p[1].positions, 2,
            "the last row differs from the other four"
        );
    }

    /// Fixed-shape execution probes its tile first: a library whose linear
    /// is position-dependent at the tile's row count is refused with the
    /// reason, never run (and a clean one runs).
    #[test]
    fn fixed_shape_refuses_a_tile_the_library_cannot_honour() {
        use crate::model::{ModelSpec, ResidualMlpSpec};
        use crate::request::{Execution, Row, RunRequest, Schedule};
        use crate::weights::Weights;
        let model = ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers: 2,
            dim: 24,
            hidden: 24,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            residual: true,
        });
        let weights = Weights::init(&model, 0, 0.2);
        let input = generate_input(1, 9, 24, 1);
        let observed = [Row { batch: 0, pos: 8 }];
        let req = RunRequest {
            model: &model,
            weights: &weights,
            input: &input,
            dtype: DType::F64,
            schedule: &Schedule::Full,
            observed: &observed,
            threads: None,
            execution: Execution::FixedShape { tile: 5 },
            diagnose: Default::default(),
        };
        let bad = crate::exec::run(
            &Injected {
                odd_m: 5,
                tail: true,
                from: false,
            },
            "injected",
            &req,
        )
        .expect_err("a position-dependent tile must be refused");
        let msg = bad.to_string();
        assert!(
            msg.contains("cannot be batch-invariant with a tile of 5 rows"),
            "{msg}"
        );
        assert!(msg.contains("linear 24→24"), "{msg}");
        assert!(crate::exec::run(&CLEAN, "clean", &req).is_ok());
    }

    /// A residual MLP request over `rows` rows in `execution` (f64).
    fn mlp_request_parts(rows: usize) -> (crate::ModelSpec, crate::Weights, HostTensor) {
        use crate::model::{ModelSpec, ResidualMlpSpec};
        let model = ModelSpec::ResidualMlp(ResidualMlpSpec {
            layers: 2,
            dim: 24,
            hidden: 24,
            activation: Activation::GeluErf,
            norm: Norm::LayerNorm,
            eps: 1e-5,
            residual: true,
        });
        let weights = crate::Weights::init(&model, 0, 0.2);
        (model, weights, generate_input(1, rows, 24, 1))
    }

    /// Pinned execution's negative control: a library with a class boundary
    /// at 8 rows (every M ≥ 8 rounds its linear another way) cannot run 9
    /// rows in the class of a 4-row anchor, however it pads: refused, naming
    /// the op, the row counts probed and the classes; a library with only
    /// one odd row count (M = 9) is padded past it and computes exactly what
    /// the clean library computes.
    #[test]
    fn pinned_execution_refuses_a_class_boundary_and_pads_past_an_odd_count() {
        use crate::request::{Execution, Row, RunRequest, Schedule};
        let (model, weights, input) = mlp_request_parts(9);
        let observed = [Row { batch: 0, pos: 8 }];
        let req = RunRequest {
            model: &model,
            weights: &weights,
            input: &input,
            dtype: DType::F64,
            schedule: &Schedule::Full,
            observed: &observed,
            threads: None,
            execution: Execution::Pinned { anchor: 4 },
            diagnose: Default::default(),
        };
        let boundary = Injected {
            odd_m: 8,
            tail: false,
            from: true,
        };
        let msg = crate::exec::run(&boundary, "boundary", &req)
            .expect_err("a class boundary inside the batch's range must be refused")
            .to_string();
        for part in [
            "pinned execution refused",
            "9 rows",
            "linear 24→24",
            "M = 9–13",
            "anchor's M = 4",
            "{4} {9–13}",
            "between 4 and 9 rows",
        ] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
        let odd = Injected {
            odd_m: 9,
            tail: false,
            from: false,
        };
        let pinned = crate::exec::run(&odd, "odd-9", &req).expect("9 rows padded to 10");
        let standard = RunRequest {
            execution: Execution::Standard,
            ..req
        };
        let clean = crate::exec::run(&CLEAN, "clean", &standard).expect("clean");
        assert_eq!(pinned.layers, clean.layers);
        // The same library in the standard execution computes M = 9 with
        // its odd kernel: the padding is what avoided it.
        let unpinned = crate::exec::run(&odd, "odd-9", &standard).expect("standard");
        assert_ne!(unpinned.layers, clean.layers);
    }

    #[test]
    fn the_probe_is_deterministic() {
        let req = linear_probe(vec![1, 3, 64]);
        assert_eq!(run(&F64, &req), run(&F64, &req));
    }

    fn pt(m: usize, first: u64) -> ProbePoint {
        ProbePoint {
            m,
            first,
            other: first,
            positions: 1,
        }
    }

    #[test]
    fn classes_group_equal_hashes_into_runs() {
        let p = [pt(1, 7), pt(2, 8), pt(3, 8), pt(4, 9), pt(8, 9), pt(16, 8)];
        assert_eq!(
            classes(&p),
            vec![vec![(1, 1)], vec![(2, 3), (16, 16)], vec![(4, 8)]]
        );
    }
}
