//! What every model's forward pass shares, over [`Ops`]: the observed rows
//! (picks), op-level taps, teacher forcing, the execution modes (one row at
//! a time, fixed tiles) and parameter upload. The forward passes themselves
//! live with their model kinds ([`crate::model`]).
//!
//! Only observed rows leave: after each layer the observed rows are sliced
//! out, downloaded, and the activation is dropped when the next layer
//! replaces it.

use std::cell::{Cell, RefCell};

use crate::backend::BackendError;
use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{ModelSpec, mlp, transformer};
use crate::ops::{Layout, OpResult, Ops};
use crate::probe::{self, ProbeRequest};
use crate::request::{Checkpoints, Execution, OpCheckpoint, RunRequest};
use crate::weights::Weights;

/// Runs `req` with `ops`; `backend` names the backend in errors.
pub(crate) fn run<O: Ops>(
    ops: &O,
    backend: &str,
    req: &RunRequest<'_>,
) -> Result<Checkpoints, BackendError> {
    let lib = |message: String| BackendError::Library {
        backend: backend.to_string(),
        message,
    };
    req.schedule.fits(req.model).map_err(lib)?;
    match (req.model, req.model.plan()) {
        (ModelSpec::ResidualMlp(m), _) => mlp::run(ops, m, req).map_err(lib),
        (_, Some(plan)) => transformer::run(ops, &plan, req).map_err(lib),
        (m, None) => Err(lib(format!(
            "internal: the {} model has neither a forward pass nor a transformer plan",
            m.kind()
        ))),
    }
}

/// One observed row inside the tensor an op is called on: checkpoint slot
/// `slot`, at `[b, s, …]` of that tensor (`[b, heads, s, …]` once split into
/// heads), absolute sequence position `pos`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pick {
    pub(crate) slot: usize,
    pub(crate) b: usize,
    pub(crate) s: usize,
    pub(crate) pos: usize,
}

/// The picks of `at` that fall in row `(b, s)` of a tensor, re-addressed to
/// row `(0, 0)` of that row alone.
pub(crate) fn picks_at(at: &[Pick], b: usize, s: usize) -> Vec<Pick> {
    at.iter()
        .filter(|p| p.b == b && p.s == s)
        .map(|p| Pick { b: 0, s: 0, ..*p })
        .collect()
}

/// Op-level checkpoints being recorded ([`crate::Diagnose::ops`]):
/// `rec[layer][op][slot]`, filled as the ops run. Off, every call is a
/// no-op, so an unobserved run computes exactly what it always did; on, it
/// only narrows and downloads the observed rows (no op's result changes).
pub(crate) struct Taps {
    names: Vec<&'static str>,
    pub(crate) layer: Cell<usize>,
    rec: RefCell<Vec<Vec<OpRows>>>,
}

/// One op's rows as they are recorded: a slot per observed row.
pub(crate) type OpRows = Vec<Option<Vec<f64>>>;

impl Taps {
    pub(crate) fn new(model: &ModelSpec, on: bool, rows: usize) -> Taps {
        let names = if on { model.op_names() } else { Vec::new() };
        let layers = if on { model.layers() } else { 0 };
        Taps {
            rec: RefCell::new(vec![vec![vec![None; rows]; names.len()]; layers]),
            names,
            layer: Cell::new(0),
        }
    }

    pub(crate) fn put(&self, op: &'static str, slot: usize, values: Vec<f64>) -> OpResult<()> {
        let i = self
            .names
            .iter()
            .position(|n| *n == op)
            .ok_or_else(|| format!("internal: op `{op}` is not in the model's op list"))?;
        self.rec.borrow_mut()[self.layer.get()][i][slot]
            .get_or_insert_with(Vec::new)
            .extend(values);
        Ok(())
    }

    /// Records op `op`'s output `y` (`[b, s, width]`) at the picks.
    pub(crate) fn rows<O: Ops>(
        &self,
        ops: &O,
        op: &'static str,
        y: &O::T,
        at: &[Pick],
    ) -> OpResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        for p in at {
            let r = ops.narrow(&ops.narrow(y, 0, p.b, 1)?, 1, p.s, 1)?;
            self.put(op, p.slot, ops.download(&r)?)?;
        }
        Ok(())
    }

    /// Records `y` (`[b, heads, s, width]`) at the picks; with `keys`, only
    /// the keys `0..=pos` a query at `pos` may see.
    pub(crate) fn heads<O: Ops>(
        &self,
        ops: &O,
        op: &'static str,
        y: &O::T,
        at: &[Pick],
        keys: bool,
    ) -> OpResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        for p in at {
            let mut r = ops.narrow(&ops.narrow(y, 0, p.b, 1)?, 2, p.s, 1)?;
            if keys {
                r = ops.narrow(&r, 3, 0, p.pos + 1)?;
            }
            self.put(op, p.slot, ops.download(&r)?)?;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> OpResult<Vec<OpCheckpoint>> {
        let mut out = Vec::new();
        for (l, per_op) in self.rec.into_inner().into_iter().enumerate() {
            for (&op, rows) in self.names.iter().zip(per_op) {
                let rows = rows
                    .into_iter()
                    .map(|r| {
                        r.ok_or_else(|| {
                            format!(
                                "internal: op `{op}` of layer {} was not recorded for every observed row",
                                l + 1
                            )
                        })
                    })
                    .collect::<OpResult<_>>()?;
                out.push(OpCheckpoint { layer: l, op, rows });
            }
        }
        Ok(out)
    }
}

/// `x` (`[batch, len, dim]`) with the rows at `at` replaced by `rows`
/// (row-major by slot, `dim` wide): teacher forcing
/// ([`crate::Diagnose::forced`]). The other rows keep their values and the
/// tensor its shape, so every kernel of the layer sees what it would have.
pub(crate) fn replace_rows<O: Ops>(
    ops: &O,
    x: &O::T,
    at: &[Pick],
    rows: &[f64],
    dtype: DType,
) -> OpResult<O::T> {
    let s = ops.shape(x);
    let (n, dim) = (s[0] * s[1], s[2]);
    let flat = ops.reshape(x, &[1, n, dim])?;
    let mut flat_at: Vec<(usize, usize)> = at.iter().map(|p| (p.b * s[1] + p.s, p.slot)).collect();
    flat_at.sort_unstable();
    flat_at.dedup_by_key(|(f, _)| *f);
    let mut parts = Vec::with_capacity(2 * flat_at.len() + 1);
    let mut next = 0;
    for (f, slot) in flat_at {
        if f > next {
            parts.push(ops.narrow(&flat, 1, next, f - next)?);
        }
        let row = rows
            .get(slot * dim..(slot + 1) * dim)
            .ok_or("teacher forcing: the forced rows are fewer than the observed rows")?;
        parts.push(ops.upload_f64(&[1, 1, dim], row, dtype)?);
        next = f + 1;
    }
    if next < n {
        parts.push(ops.narrow(&flat, 1, next, n - next)?);
    }
    let y = match parts.len() {
        1 => ops.fresh(&parts[0])?,
        _ => ops.cat(&parts, 1)?,
    };
    ops.reshape(&y, &s)
}

/// Gathers `rows` of a `[batch, len, dim]` tensor whose position 0 is
/// absolute position `offset`, in the order given, onto the host.
pub(crate) fn take_rows<O: Ops>(
    ops: &O,
    x: &O::T,
    rows: impl Iterator<Item = (usize, usize)>,
) -> OpResult<Vec<f64>> {
    let mut out = Vec::new();
    for (b, s) in rows {
        let r = ops.narrow(&ops.narrow(x, 0, b, 1)?, 1, s, 1)?;
        out.extend(ops.download(&r)?);
    }
    Ok(out)
}

/// A row-wise function: the op(s) on a `[b, len, width]` tensor, told where
/// the observed rows sit in it (for op-level checkpoints).
pub(crate) type RowFn<'a, O> = dyn Fn(&<O as Ops>::T, &[Pick]) -> OpResult<<O as Ops>::T> + 'a;

/// `f` applied to every `[1, 1, width]` row of `x` (`[batch, len, width]`)
/// alone, the results put back in place. No op inside `f` sees more than one
/// row, so no row's result can depend on how many rows were computed with it:
/// [`Execution::BatchInvariant`].
pub(crate) fn each_row<O: Ops>(ops: &O, x: &O::T, at: &[Pick], f: &RowFn<'_, O>) -> OpResult<O::T> {
    let s = ops.shape(x);
    let mut batch = Vec::with_capacity(s[0]);
    for b in 0..s[0] {
        let xb = ops.narrow(x, 0, b, 1)?;
        let mut rows = Vec::with_capacity(s[1]);
        for p in 0..s[1] {
            rows.push(f(&ops.narrow(&xb, 1, p, 1)?, &picks_at(at, b, p))?);
        }
        batch.push(ops.cat(&rows, 1)?);
    }
    ops.cat(&batch, 0)
}

/// `[1, rows, width]` zeros in `dtype`.
pub(crate) fn zeros<O: Ops>(ops: &O, shape: &[usize], dtype: DType) -> OpResult<O::T> {
    let n = shape.iter().product();
    ops.upload(&HostTensor::new(shape.to_vec(), vec![0.0; n]), dtype)
}

/// `x` (`[1, rows, …]`, `rows <= tile`) padded along dim `dim` to `tile`
/// with the leading entries of `pad`, which holds at least `tile` zeros
/// along `dim` — always a fresh contiguous tensor ([`Ops::fresh`]).
pub(crate) fn pad_to<O: Ops>(
    ops: &O,
    x: O::T,
    dim: usize,
    tile: usize,
    pad: &O::T,
) -> OpResult<O::T> {
    let len = ops.shape(&x)[dim];
    if len == tile {
        return ops.fresh(&x);
    }
    ops.fresh(&ops.cat(&[x, ops.narrow(pad, dim, 0, tile - len)?], dim)?)
}

/// How the row-mixing ops of one run are called ([`Execution`]), and the
/// zeros fixed-shape execution pads its tiles with.
pub(crate) struct Mode<O: Ops> {
    execution: Execution,
    /// Fixed shape: `[1, tile, dim]` zeros.
    pad: Option<O::T>,
}

/// The row-mixing ops `model` calls, as probes `(op, width, out, heads)`;
/// attention over `capacity` keys.
/// never a run that silently drifts.
pub(crate) fn check_tile<O: Ops>(
    ops: &O,
    req: &RunRequest<'_>,
    tile: usize,
    capacity: usize,
) -> OpResult<()> {
    for (op, width, out, heads) in req.model.probes(capacity) {
        let p = probe::run(
            ops,
            &ProbeRequest {
                op,
                width,
                out,
                heads,
                rows: vec![tile],
                dtype: req.dtype,
                threads: req.threads,
            },
        )?[0];
        let shape = if out > 0 {
            format!("{op} {width}→{out}")
        } else {
            format!("{op} over {width}")
        };
        if p.position_dependent() {
            return Err(format!(
                "fixed-shape execution cannot be batch-invariant with a tile of {tile} rows here: the library's {shape} gives one row {} different results at the {tile} positions of a tile (the kernel-dispatch probe); choose a tile whose row count the library computes position-independently",
                p.positions
            ));
        }
        if p.values_dependent() {
            return Err(format!(
                "fixed-shape execution cannot be batch-invariant with a tile of {tile} rows here: the library's {shape} gives a row other results when the other rows of its tile hold other values (the kernel-dispatch probe); choose another tile"
            ));
        }
    }
    Ok(())
}

impl<O: Ops> Mode<O> {
    pub(crate) fn new(
        ops: &O,
        req: &RunRequest<'_>,
        dim: usize,
        capacity: usize,
    ) -> OpResult<Mode<O>> {
        let pad = match req.execution {
            Execution::FixedShape { tile: 0 } => {
                return Err("fixed-shape execution needs a tile of at least one row".into());
            }
            Execution::FixedShape { tile } => {
                check_tile(ops, req, tile, capacity)?;
                Some(zeros(ops, &[1, tile, dim], req.dtype)?)
            }
            Execution::Standard | Execution::BatchInvariant => None,
        };
        Ok(Mode {
            execution: req.execution,
            pad,
        })
    }

    /// `f` on `x` (`[batch, len, dim]`, the observed rows at `at`) as the
    /// mode says: on the whole of `x`, on each row alone, or on fixed tiles
    /// of rows.
    pub(crate) fn rowwise(
        &self,
        ops: &O,
        x: &O::T,
        at: &[Pick],
        f: &RowFn<'_, O>,
    ) -> OpResult<O::T> {
        match (self.execution, &self.pad) {
            (Execution::BatchInvariant, _) => each_row(ops, x, at, f),
            (Execution::FixedShape { tile }, Some(pad)) => each_tile(ops, x, at, tile, pad, f),
            // `new` gives a fixed shape its pad; without one (never), and in
            // the standard mode, the op runs on the whole input.
            (Execution::FixedShape { .. }, None) | (Execution::Standard, _) => f(x, at),
        }
    }
}

/// `f` applied to `x` (`[batch, len, dim]`) as `[1, tile, dim]` tiles of its
/// rows in order, the last tile padded with zero rows from `pad` and the
/// padding dropped again: every call of `f` sees the same shape, however
/// many rows `x` has ([`Execution::FixedShape`]).
pub(crate) fn each_tile<O: Ops>(
    ops: &O,
    x: &O::T,
    at: &[Pick],
    tile: usize,
    pad: &O::T,
    f: &RowFn<'_, O>,
) -> OpResult<O::T> {
    let s = ops.shape(x);
    let n = s[0] * s[1];
    let flat = ops.reshape(x, &[1, n, s[2]])?;
    let mut outs = Vec::with_capacity(n.div_ceil(tile));
    for start in (0..n).step_by(tile) {
        let len = tile.min(n - start);
        let t = pad_to(ops, ops.narrow(&flat, 1, start, len)?, 1, tile, pad)?;
        let in_tile: Vec<Pick> = at
            .iter()
            .filter_map(|p| {
                let f = p.b * s[1] + p.s;
                (start..start + len).contains(&f).then(|| Pick {
                    b: 0,
                    s: f - start,
                    ..*p
                })
            })
            .collect();
        let y = f(&t, &in_tile)?;
        outs.push(if len < tile {
            ops.narrow(&y, 1, 0, len)?
        } else {
            y
        });
    }
    let y = match outs.len() {
        1 => outs.pop().expect("one tile"),
        _ => ops.cat(&outs, 1)?,
    };
    let width = *ops.shape(&y).last().expect("3-d tensor");
    ops.reshape(&y, &[s[0], s[1], width])
}

pub(crate) fn upload_norm<O: Ops>(
    ops: &O,
    w: &Weights,
    p: &str,
    has_bias: bool,
    req: &RunRequest<'_>,
) -> OpResult<(O::T, Option<O::T>)> {
    let weight = ops.upload(w.get(&format!("{p}.weight")), req.dtype)?;
    let bias = if has_bias {
        Some(ops.upload(w.get(&format!("{p}.bias")), req.dtype)?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// Prepares linear layer `{p}.weight` (and `{p}.bias` with `bias`), stored
/// as `layout` says.
pub(crate) fn upload_linear<O: Ops>(
    ops: &O,
    w: &Weights,
    p: &str,
    (bias, layout): (bool, Layout),
    req: &RunRequest<'_>,
) -> OpResult<O::Linear> {
    let weight = w.get(&format!("{p}.weight"));
    let b = bias.then(|| w.get(&format!("{p}.bias")));
    match layout {
        Layout::OutIn => ops.prepare_linear(weight, b, req.dtype),
        Layout::InOut => ops.prepare_linear_in_out(weight, b, req.dtype),
    }
}
