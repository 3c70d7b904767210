//! The seed's residual feed-forward stack (`kind: residual_mlp`).

use super::{Activation, Norm, ParamSpec, push_linear, push_norm};
use crate::exec::{Mode, Pick, Pins, Taps, replace_rows, take_rows, upload_linear, upload_norm};
use crate::host::HostTensor;
use crate::ops::{Layout, OpResult, Ops};

/// `nn.Linear` with a bias.
const LINEAR: (bool, Layout) = (true, Layout::OutIn);
use crate::request::{Checkpoints, RunRequest, Schedule};

/// The seed's `TestMod`: `layers` × (`x + LN2(Linear2(act(Linear1(LN1(x)))))`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualMlpSpec {
    /// Number of residual blocks.
    pub layers: usize,
    /// Model width (input and output features).
    pub dim: usize,
    /// Width between the two linear layers.
    pub hidden: usize,
    /// Activation between the linear layers.
    pub activation: Activation,
    /// Normalisation (LN1 and LN2).
    pub norm: Norm,
    /// Norm epsilon (PyTorch's default 1e-5).
    pub eps: f64,
    /// Whether each block adds its input back (`x + out`).
    pub residual: bool,
}

impl ResidualMlpSpec {
    pub(super) fn op_names(&self) -> Vec<&'static str> {
        let mut v = vec!["norm1", "linear1", "act", "linear2", "norm2"];
        if self.residual {
            v.push("residual");
        }
        v
    }

    pub(super) fn parameters(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for l in 0..self.layers {
            push_norm(&mut out, &format!("layers.{l}.norm1"), self.norm, self.dim);
            push_norm(&mut out, &format!("layers.{l}.norm2"), self.norm, self.dim);
            push_linear(
                &mut out,
                &format!("layers.{l}.linear1"),
                [self.hidden, self.dim],
                Some(self.hidden),
            );
            push_linear(
                &mut out,
                &format!("layers.{l}.linear2"),
                [self.dim, self.hidden],
                Some(self.dim),
            );
        }
        out
    }
}

struct MlpLayer<O: Ops> {
    n1: (O::T, Option<O::T>),
    n2: (O::T, Option<O::T>),
    l1: O::Linear,
    l2: O::Linear,
}

fn upload_layer<O: Ops>(
    ops: &O,
    m: &ResidualMlpSpec,
    l: usize,
    req: &RunRequest<'_>,
) -> OpResult<MlpLayer<O>> {
    let (w, bias) = (req.weights, m.norm.has_bias());
    Ok(MlpLayer::<O> {
        n1: upload_norm(ops, w, &format!("layers.{l}.norm1"), bias, req)?,
        n2: upload_norm(ops, w, &format!("layers.{l}.norm2"), bias, req)?,
        l1: upload_linear(ops, w, &format!("layers.{l}.linear1"), LINEAR, req)?,
        l2: upload_linear(ops, w, &format!("layers.{l}.linear2"), LINEAR, req)?,
    })
}

pub(crate) fn run<O: Ops>(
    ops: &O,
    m: &ResidualMlpSpec,
    req: &RunRequest<'_>,
    pins: Option<&Pins>,
) -> OpResult<Checkpoints> {
    // `full` keeps the input's layout and slices the observed rows;
    // `rows` feeds exactly the observed rows, as `[rows, 1, dim]`.
    let gathered;
    let (input, picks): (&HostTensor, Vec<(usize, usize)>) = match req.schedule {
        Schedule::Full => (
            req.input,
            req.observed.iter().map(|r| (r.batch, r.pos)).collect(),
        ),
        Schedule::Rows => {
            gathered = req.input.gather_rows(req.observed);
            (&gathered, (0..req.observed.len()).map(|i| (i, 0)).collect())
        }
        Schedule::Segments(_) => {
            return Err("a KV-cache schedule needs attention; a residual_mlp has none".into());
        }
        Schedule::Padded { .. } | Schedule::Alone { .. } => {
            return Err("`alone` and `padded` apply to an encoder, not a residual_mlp".into());
        }
    };
    let at: Vec<Pick> = picks
        .iter()
        .zip(req.observed)
        .enumerate()
        .map(|(slot, (&(b, s), r))| Pick {
            slot,
            b,
            s,
            pos: r.pos,
        })
        .collect();
    let forced = req.diagnose.forced;
    if let Some(f) = forced
        && (f.rows, f.dim, f.layers.len()) != (req.observed.len(), m.dim, m.layers)
    {
        return Err(format!(
            "teacher forcing: the forced run has {} rows × {} wide × {} layers, this one {} × {} × {}",
            f.rows,
            f.dim,
            f.layers.len(),
            req.observed.len(),
            m.dim,
            m.layers
        ));
    }
    let taps = Taps::new(req.model, req.diagnose.ops, req.observed.len());
    let mode = Mode::new(ops, req, m.dim, 0, pins)?;
    let mut x = ops.upload(input, req.dtype)?;
    let mut out = Vec::with_capacity(m.layers);
    for l in 0..m.layers {
        taps.layer.set(l);
        if let (Some(f), true) = (forced, l > 0) {
            x = replace_rows(ops, &x, &at, &f.layers[l - 1], req.dtype)?;
        }
        // One layer's weights on the device at a time: a pass uses each layer
        // once, so the model's weights never sit on the device in full.
        let layer = upload_layer(ops, m, l, req)?;
        let block = |x: &O::T, at: &[Pick]| -> OpResult<O::T> {
            // One binding, reassigned: each intermediate is dropped as soon
            // as the next exists (shadowing would keep all five alive).
            let mut h = ops.norm(m.norm, x, &layer.n1.0, layer.n1.1.as_ref(), m.eps)?;
            taps.rows(ops, "norm1", &h, at)?;
            h = ops.linear(&h, &layer.l1)?;
            taps.rows(ops, "linear1", &h, at)?;
            h = ops.activation(&h, m.activation)?;
            taps.rows(ops, "act", &h, at)?;
            h = ops.linear(&h, &layer.l2)?;
            taps.rows(ops, "linear2", &h, at)?;
            h = ops.norm(m.norm, &h, &layer.n2.0, layer.n2.1.as_ref(), m.eps)?;
            taps.rows(ops, "norm2", &h, at)?;
            Ok(h)
        };
        let h = mode.rowwise(ops, &x, &at, &block)?;
        x = if m.residual {
            let y = ops.add(&x, &h)?;
            taps.rows(ops, "residual", &y, &at)?;
            y
        } else {
            h
        };
        out.push(take_rows(ops, &x, picks.iter().copied())?);
    }
    Ok(Checkpoints {
        dim: m.dim,
        rows: req.observed.len(),
        layers: out,
        ops: taps.finish()?,
        head: None,
    })
}
