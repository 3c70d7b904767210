//! What every model's forward pass shares, over [`Ops`]: the observed rows
//! (picks), op-level taps, teacher forcing, the execution modes (one row at
//! a time, fixed tiles) and parameter upload. The forward passes themselves
//! live with their model kinds ([`crate::model`]).
//!
//! Only observed rows leave: after each layer the observed rows are sliced
//! out, downloaded, and the activation is dropped when the next layer
//! replaces it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use crate::backend::BackendError;
use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::{ModelSpec, bert, mlp, transformer};
use crate::ops::{Layout, OpResult, Ops};
use crate::probe::{self, ProbeOp, ProbePoint, ProbeRequest};
use crate::request::{Checkpoints, Execution, OpCheckpoint, RunRequest, Schedule};
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
    if req.model.encoder() && req.execution != Execution::Standard {
        return Err(lib(format!(
            "a {} encoder runs in standard execution only",
            req.model.kind()
        )));
    }
    let pins = match req.execution {
        Execution::Pinned { anchor } => Some(pin(ops, backend, req, anchor).map_err(lib)?),
        Execution::Standard | Execution::BatchInvariant | Execution::FixedShape { .. } => None,
    };
    let pins = pins.as_ref();
    match (req.model, req.model.plan()) {
        (ModelSpec::ResidualMlp(m), _) => mlp::run(ops, m, req, pins).map_err(lib),
        (ModelSpec::Bert(m), _) => bert::run(ops, m, req).map_err(lib),
        (_, Some(plan)) => transformer::run(ops, &plan, req, pins).map_err(lib),
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

/// The op recorded in layer 1 only: an encoder's embedding LayerNorm
/// ([`crate::model::bert`]), which runs once before the first block.
pub(crate) const FIRST_LAYER_ONLY: &str = "embed_norm";

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
        let causal = |p: &Pick| Some(p.pos + 1);
        let all = |_: &Pick| None;
        self.heads_upto(ops, op, y, at, if keys { &causal } else { &all })
    }

    /// Records `y` (`[b, heads, s, width]`) at the picks, each pick's row cut
    /// to its first `seen(pick)` keys (all where `None`): an encoder's
    /// scores over a sequence's real tokens, whatever it was padded to.
    pub(crate) fn heads_upto<O: Ops>(
        &self,
        ops: &O,
        op: &'static str,
        y: &O::T,
        at: &[Pick],
        seen: &dyn Fn(&Pick) -> Option<usize>,
    ) -> OpResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        for p in at {
            let mut r = ops.narrow(&ops.narrow(y, 0, p.b, 1)?, 2, p.s, 1)?;
            if let Some(n) = seen(p) {
                r = ops.narrow(&r, 3, 0, n)?;
            }
            self.put(op, p.slot, ops.download(&r)?)?;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> OpResult<Vec<OpCheckpoint>> {
        let mut out = Vec::new();
        for (l, per_op) in self.rec.into_inner().into_iter().enumerate() {
            for (&op, rows) in self.names.iter().zip(per_op) {
                // An encoder's embedding norm runs once, before block 1.
                if l > 0 && op == FIRST_LAYER_ONLY && rows.iter().all(Option::is_none) {
                    continue;
                }
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
/// zeros fixed-shape and pinned execution pad with.
pub(crate) struct Mode<'p, O: Ops> {
    execution: Execution,
    /// Fixed shape: `[1, tile, dim]` zeros; pinned: `[1, most padded rows,
    /// dim]`.
    pad: Option<O::T>,
    /// Pinned: the certified row counts.
    pins: Option<&'p Pins>,
}

/// What a pinned run pads its calls to ([`Execution::Pinned`]): each row
/// count it calls the row-wise ops with (norms, linears, the feed-forward:
/// `batch × positions` of a segment) mapped to the certified count it is
/// padded to, and the same for attention's queries (a segment's positions,
/// per batch element). Made by [`certify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pins {
    pub(crate) rows: BTreeMap<usize, usize>,
    pub(crate) queries: BTreeMap<usize, usize>,
}

impl Pins {
    /// The certified count `n` rows are padded to (`rows` or `queries`).
    pub(crate) fn padded(map: &BTreeMap<usize, usize>, n: usize) -> OpResult<usize> {
        map.get(&n).copied().ok_or_else(|| {
            format!("internal: pinned execution met {n} rows, a count it did not certify")
        })
    }
}

/// The row counts `req` calls its row-wise ops with and its attention's
/// queries, and the key capacity (the input's sequence length; 0 without
/// attention).
fn natural_counts(req: &RunRequest<'_>) -> (Vec<usize>, Vec<usize>, usize) {
    let (batch, seq) = (req.input.shape[0], req.input.shape[1]);
    let mut rows = Vec::new();
    let mut queries = Vec::new();
    let segments: Vec<(usize, usize)> = match req.schedule {
        Schedule::Full => vec![(0, seq)],
        Schedule::Segments(s) => s.clone(),
        Schedule::Rows | Schedule::Padded { .. } | Schedule::Alone { .. } => Vec::new(),
    };
    match (req.model.plan(), req.schedule) {
        (None, Schedule::Rows) => rows.push(req.observed.len()),
        (None, _) => rows.push(batch * seq),
        (Some(_), _) => {
            for (start, end) in segments {
                rows.push(batch * (end - start));
                queries.push(end - start);
            }
        }
    }
    for v in [&mut rows, &mut queries] {
        v.sort_unstable();
        v.dedup();
    }
    let capacity = if req.model.plan().is_some() { seq } else { 0 };
    (rows, queries, capacity)
}

/// Probe points already measured in this process, by backend, op, shape,
/// row count, dtype and threads: certification probes each once.
fn probe_memo() -> &'static Mutex<HashMap<String, ProbePoint>> {
    static MEMO: OnceLock<Mutex<HashMap<String, ProbePoint>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// Certifies `req`'s row counts for pinned execution on `backend` with the
/// kernel-dispatch probe at its model's ops ([`certify`]).
fn pin<O: Ops>(ops: &O, backend: &str, req: &RunRequest<'_>, anchor: usize) -> OpResult<Pins> {
    let (rows, queries, capacity) = natural_counts(req);
    let probes = req.model.probes(capacity);
    let mut point = |i: usize, m: usize| -> OpResult<ProbePoint> {
        let (op, width, out, heads) = probes[i];
        let key = format!(
            "{backend}|{op}|{width}|{out}|{heads}|{m}|{}|{:?}",
            req.dtype.name(),
            req.threads
        );
        if let Some(p) = probe_memo().lock().map_err(|e| e.to_string())?.get(&key) {
            return Ok(*p);
        }
        let p = probe::run(
            ops,
            &ProbeRequest {
                op,
                width,
                out,
                heads,
                rows: vec![m],
                dtype: req.dtype,
                threads: req.threads,
            },
        )?[0];
        probe_memo()
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key, p);
        Ok(p)
    };
    certify(&probes, &rows, &queries, anchor, &mut point)
}

/// `op width→out` / `op over width` / `attention, H heads × width over K
/// keys`: a probed op's shape, for messages.
fn shape_of((op, width, out, heads): (ProbeOp, usize, usize, usize)) -> String {
    match op {
        ProbeOp::Linear => format!("{op} {width}→{out}"),
        ProbeOp::Attention | ProbeOp::FusedAttention => {
            format!("{op} ({heads} heads × {width} over {out} keys)")
        }
        ProbeOp::LayerNorm | ProbeOp::RmsNorm | ProbeOp::Softmax | ProbeOp::Gelu => {
            format!("{op} over {width}")
        }
    }
}

/// Pinned execution's certification, from probe points alone (`point(i, m)`:
/// probe `probes[i]` at `m` rows). For the row-wise ops and `rows`, and for
/// attention and `queries`: every probed op must give a row at `anchor` rows
/// a result independent of its position and its neighbours; then each count
/// `n` is padded to the smallest `m ≥ n` at which every op of its group is
/// in the anchor's kernel class (equal probe hash) and again position- and
/// neighbour-independent. A count up to `anchor` always finds one (the
/// anchor itself); a larger one is searched up to `n + min(n, anchor)` rows,
/// and refused past that with the probe's evidence: the op, the row counts
/// and their classes.
pub(crate) fn certify(
    probes: &[(ProbeOp, usize, usize, usize)],
    rows: &[usize],
    queries: &[usize],
    anchor: usize,
    point: &mut dyn FnMut(usize, usize) -> OpResult<ProbePoint>,
) -> OpResult<Pins> {
    if anchor == 0 {
        return Err("pinned execution needs an anchor of at least one row".into());
    }
    let attention = |op: ProbeOp| matches!(op, ProbeOp::Attention | ProbeOp::FusedAttention);
    let mut pins = Pins::default();
    for (is_attention, counts) in [(false, rows), (true, queries)] {
        let group: Vec<usize> = (0..probes.len())
            .filter(|&i| attention(probes[i].0) == is_attention)
            .collect();
        let what = if is_attention { "queries" } else { "rows" };
        let mut anchors = Vec::with_capacity(group.len());
        for &i in &group {
            let a = point(i, anchor)?;
            if a.position_dependent() || a.values_dependent() {
                let how = if a.position_dependent() {
                    format!(
                        "{} different results at the {anchor} positions",
                        a.positions
                    )
                } else {
                    "other results when the other rows hold other values".to_string()
                };
                return Err(format!(
                    "pinned execution refused: at the anchor of {anchor} {what} the library's {} gives one row {how} (the kernel-dispatch probe); choose another anchor (`pinned: {{ anchor: N }}`)",
                    shape_of(probes[i])
                ));
            }
            anchors.push(a);
        }
        let map = if is_attention {
            &mut pins.queries
        } else {
            &mut pins.rows
        };
        for &n in counts {
            let hi = if n <= anchor {
                anchor
            } else {
                n + n.min(anchor)
            };
            // The op that ruled out the most counts, with its points.
            let mut blame: Option<(usize, Vec<ProbePoint>)> = None;
            let mut found = None;
            'm: for m in n..=hi {
                for (&i, a) in group.iter().zip(&anchors) {
                    let p = point(i, m)?;
                    if p.first != a.first || p.position_dependent() || p.values_dependent() {
                        match &mut blame {
                            Some((j, pts)) if *j == i => pts.push(p),
                            Some(_) => {}
                            None => blame = Some((i, vec![p])),
                        }
                        continue 'm;
                    }
                }
                found = Some(m);
                break;
            }
            match (found, blame) {
                (Some(m), _) => {
                    map.insert(n, m);
                }
                (None, Some((i, mut pts))) => {
                    let positional: Vec<String> = pts
                        .iter()
                        .filter(|p| p.position_dependent())
                        .map(|p| p.m.to_string())
                        .collect();
                    pts.insert(0, anchors[group.iter().position(|&j| j == i).unwrap_or(0)]);
                    pts.sort_by_key(|p| p.m);
                    let positional = if positional.is_empty() {
                        String::new()
                    } else {
                        format!("; position-dependent at M = {}", positional.join(", "))
                    };
                    return Err(format!(
                        "pinned execution refused: no padding certifies {n} {what} here — the library's {} puts M = {n}–{hi} in other kernel classes than the anchor's M = {anchor} (probed classes: {}{positional}), so a class boundary lies between {} and {} rows: call fewer {what} at once, or move the anchor into their class (`pinned: {{ anchor: N }}`)",
                        shape_of(probes[i]),
                        probe::classes_text(&probe::classes(&pts)),
                        anchor.min(n),
                        anchor.max(n),
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "internal: pinned execution found no probe for the {what} of {n}"
                    ));
                }
            }
        }
    }
    Ok(pins)
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

impl<'p, O: Ops> Mode<'p, O> {
    pub(crate) fn new(
        ops: &O,
        req: &RunRequest<'_>,
        dim: usize,
        capacity: usize,
        pins: Option<&'p Pins>,
    ) -> OpResult<Mode<'p, O>> {
        let pad = match req.execution {
            Execution::Pinned { .. } => {
                let pins = pins.ok_or("internal: pinned execution without its certification")?;
                let most = pins.rows.values().copied().max().unwrap_or(1);
                Some(zeros(ops, &[1, most, dim], req.dtype)?)
            }
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
            pins,
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
        match (self.execution, &self.pad, self.pins) {
            (Execution::BatchInvariant, _, _) => each_row(ops, x, at, f),
            (Execution::FixedShape { tile }, Some(pad), _) => each_tile(ops, x, at, tile, pad, f),
            (Execution::Pinned { .. }, Some(pad), Some(pins)) => {
                // One call on every row, padded to its certified count.
                let s = ops.shape(x);
                let m = Pins::padded(&pins.rows, s[0] * s[1])?;
                each_tile(ops, x, at, m, pad, f)
            }
            (Execution::Pinned { .. }, _, _) => {
                Err("internal: pinned execution without its certification".into())
            }
            // `new` gives a fixed shape its pad; without one (never), and in
            // the standard mode, the op runs on the whole input.
            (Execution::FixedShape { .. }, None, _) | (Execution::Standard, _, _) => f(x, at),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic dispatch map like libtorch's linear on this kind of
    /// machine: classes {1} {2–3} {4–…}, position-dependent at 5–7 and 9–11.
    fn libtorch_like(_: usize, m: usize) -> OpResult<ProbePoint> {
        let first = match m {
            1 => 1,
            2..=3 => 2,
            _ => 4,
        };
        Ok(ProbePoint {
            m,
            first,
            other: first,
            positions: if matches!(m, 5..=7 | 9..=11) { 2 } else { 1 },
        })
    }

    const LINEAR: [(ProbeOp, usize, usize, usize); 1] = [(ProbeOp::Linear, 768, 3072, 1)];

    #[test]
    fn certification_pads_to_the_anchors_class_and_past_position_dependence() {
        let pins = certify(&LINEAR, &[1, 6, 12, 256], &[], 64, &mut libtorch_like).unwrap();
        assert_eq!(
            pins.rows.into_iter().collect::<Vec<_>>(),
            vec![(1, 4), (6, 8), (12, 12), (256, 256)]
        );
        assert!(pins.queries.is_empty());
    }

    #[test]
    fn certification_refuses_an_anchor_the_library_computes_position_dependently() {
        let e = certify(&LINEAR, &[1], &[], 6, &mut libtorch_like).unwrap_err();
        assert!(e.contains("at the anchor of 6 rows"), "{e}");
        assert!(e.contains("linear 768→3072"), "{e}");
        assert!(e.contains("2 different results at the 6 positions"), "{e}");
    }

    #[test]
    fn certification_refuses_a_count_in_another_class_than_the_anchor() {
        // An anchor of 2 is in class {2–3}: 12 rows are not, nor any count
        // up to 14.
        let e = certify(&LINEAR, &[1, 12], &[], 2, &mut libtorch_like).unwrap_err();
        assert!(e.contains("no padding certifies 12 rows"), "{e}");
        assert!(e.contains("M = 12–14"), "{e}");
        assert!(e.contains("probed classes: {2} {12–14}"), "{e}");
    }

    #[test]
    fn attention_is_certified_over_its_queries_apart_from_the_rows() {
        let probes = [
            (ProbeOp::LayerNorm, 64, 0, 1),
            (ProbeOp::Attention, 16, 256, 4),
        ];
        let pins = certify(&probes, &[256], &[1, 248], 64, &mut libtorch_like).unwrap();
        assert_eq!(pins.rows.into_iter().collect::<Vec<_>>(), vec![(256, 256)]);
        assert_eq!(
            pins.queries.into_iter().collect::<Vec<_>>(),
            vec![(1, 4), (248, 248)]
        );
    }
}
