//! One backend run: what goes in, and the checkpoints that come out.

use crate::dtype::DType;
use crate::host::HostTensor;
use crate::model::ModelSpec;
use crate::weights::Weights;

/// One observed row: batch element `batch`, sequence position `pos`
/// (non-negative, already resolved against the input's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row {
    /// Batch index.
    pub batch: usize,
    /// Sequence position.
    pub pos: usize,
}

/// How the input flows through the model: the order of forward passes whose
/// union computes the observed rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The whole `[batch, seq, dim]` input in one pass, then slice the
    /// observed rows (the seed's first strategy).
    Full,
    /// Only the observed rows as input, `[rows, 1, dim]` (the seed's second
    /// strategy). Only for models whose rows are independent.
    Rows,
    /// Decoder only: the sequence in consecutive segments through a per-layer
    /// K/V cache. Each `(start, end)` is one forward pass over positions
    /// `start..end`; they tile `0..seq` in order. `kv_cache` is
    /// `[(0, prefill), (prefill, prefill+1), …]`; `chunked` is
    /// `[(0, c), (c, 2c), …]`.
    Segments(Vec<(usize, usize)>),
    /// Encoder only: the whole batch in one pass, padded to `to` positions
    /// (at least the input's length; the backend appends zero rows), the
    /// keys past sequence `b`'s `lengths[b]` real tokens masked out. `full`
    /// on an encoder is this with `to` the input's length (its longest
    /// sequence); `padded: { to: N }` pads further.
    Padded {
        /// Real tokens per sequence (the rest of the input is padding).
        lengths: Vec<usize>,
        /// Positions each sequence is padded to.
        to: usize,
    },
    /// Encoder only: each sequence by itself (batch 1) at its own length —
    /// no padding, no mask.
    Alone {
        /// Real tokens per sequence.
        lengths: Vec<usize>,
    },
}

impl Schedule {
    /// Prefill the first `prefill` positions, then decode one at a time.
    pub fn kv_cache(prefill: usize, seq: usize) -> Schedule {
        let mut s = vec![(0, prefill)];
        s.extend((prefill..seq).map(|t| (t, t + 1)));
        Schedule::Segments(s)
    }

    /// Whether this schedule means something for `model`: the one rule that
    /// scenario validation and every backend apply. `rows` feeds rows alone,
    /// so it needs row-independent layers; segments go through a KV cache,
    /// so they need attention.
    ///
    /// ```
    /// use layerdrift_backends::{ModelSpec, ResidualMlpSpec, Activation, Norm, Schedule};
    /// let mlp = ModelSpec::ResidualMlp(ResidualMlpSpec {
    ///     layers: 1, dim: 4, hidden: 4, activation: Activation::GeluErf,
    ///     norm: Norm::LayerNorm, eps: 1e-5, residual: true });
    /// assert!(Schedule::Rows.fits(&mlp).is_ok());
    /// assert!(Schedule::kv_cache(2, 4).fits(&mlp).unwrap_err().contains("attention"));
    /// ```
    pub fn fits(&self, model: &ModelSpec) -> Result<(), String> {
        match self {
            Schedule::Full => Ok(()),
            Schedule::Rows if model.rows_independent() => Ok(()),
            Schedule::Rows if model.encoder() => Err(format!(
                "`rows` needs row-independent layers; a {}'s rows attend to each other — use `alone` (each sequence by itself)",
                model.kind()
            )),
            Schedule::Rows => Err(format!(
                "`rows` needs row-independent layers; a {}'s rows attend to earlier positions — use `kv_cache` or `chunked`",
                model.kind()
            )),
            Schedule::Segments(_) if model.kv_cache() => Ok(()),
            Schedule::Segments(_) if model.encoder() => Err(format!(
                "`kv_cache` and `chunked` need a KV cache; a {} encoder has none — use `full`, `alone` or `padded`",
                model.kind()
            )),
            Schedule::Segments(_) => Err(format!(
                "`kv_cache` and `chunked` need attention with a KV cache; a {} has none — use `full` or `rows`",
                model.kind()
            )),
            Schedule::Padded { .. } | Schedule::Alone { .. } if model.encoder() => Ok(()),
            Schedule::Padded { .. } | Schedule::Alone { .. } => Err(format!(
                "`alone` and `padded` need an encoder (sequences of their own lengths, padded and masked); a {} reads one input of one length — use `full`{}",
                model.kind(),
                if model.kv_cache() {
                    ", `kv_cache` or `chunked`"
                } else {
                    " or `rows`"
                }
            )),
        }
    }

    /// The sequence in chunks of `chunk` positions (the last may be shorter).
    pub fn chunked(chunk: usize, seq: usize) -> Schedule {
        Schedule::Segments(
            (0..seq)
                .step_by(chunk.max(1))
                .map(|s| (s, (s + chunk).min(seq)))
                .collect(),
        )
    }
}

/// Everything one run needs.
#[derive(Clone, Copy, Debug)]
pub struct RunRequest<'a> {
    /// The model.
    pub model: &'a ModelSpec,
    /// Its parameters.
    pub weights: &'a Weights,
    /// The full `[batch, seq, dim]` input (a schedule may use part of it).
    pub input: &'a HostTensor,
    /// The element type to compute in.
    pub dtype: DType,
    /// How to compute.
    pub schedule: &'a Schedule,
    /// The rows to return after every layer.
    pub observed: &'a [Row],
    /// Intra-op threads, where the library lets a caller fix them (libtorch);
    /// `None` = the library's own choice. Reported in [`BackendInfo::threads`].
    ///
    /// [`BackendInfo::threads`]: crate::BackendInfo::threads
    pub threads: Option<usize>,
    /// How the ops that mix values within a row are called. The oracle
    /// ignores it (the f64 truth does not depend on the schedule).
    pub execution: Execution,
    /// What to record beyond the layer checkpoints: every op's output, and
    /// teacher forcing.
    pub diagnose: Diagnose<'a>,
}

/// Diagnostics a run may be asked for ([`RunRequest::diagnose`]); the
/// default asks for none, and neither changes a single bit of the layer
/// checkpoints of an unforced run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Diagnose<'a> {
    /// Record every op's output for the observed rows
    /// ([`Checkpoints::ops`], in [`ModelSpec::op_names`] order).
    ///
    /// [`ModelSpec::op_names`]: crate::ModelSpec::op_names
    pub ops: bool,
    /// Teacher forcing: the observed rows of layer `l`'s input (`l ≥ 2`,
    /// 1-based) are replaced by `forced.layers[l - 2]` — another run's rows
    /// after layer `l - 1` — before the layer runs, so each checkpoint is
    /// this backend's layer applied to the other run's input: the error the
    /// layer adds by itself. Every other row, and the shapes every kernel
    /// sees, stay this run's own. Only for row-independent models
    /// ([`ModelSpec::rows_independent`]): a decoder row's layer input
    /// includes every earlier position's, which never leaves a backend.
    ///
    /// [`ModelSpec::rows_independent`]: crate::ModelSpec::rows_independent
    pub forced: Option<&'a Checkpoints>,
}

/// One op's output at one layer for every observed row — an op-level
/// checkpoint ([`Diagnose::ops`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpCheckpoint {
    /// Layer index, 0-based (as in [`Checkpoints::layers`]).
    pub layer: usize,
    /// The op's name, one of [`ModelSpec::op_names`].
    ///
    /// [`ModelSpec::op_names`]: crate::ModelSpec::op_names
    pub op: &'static str,
    /// `rows[r]`: observed row `r`'s values — the op's output row; for
    /// `scores` and `softmax` every head's row over the keys the position
    /// may see (head-major); for `rope` the rotated query row, then the
    /// rotated key row (head-major).
    pub rows: Vec<Vec<f64>>,
}

/// How a backend calls the ops that mix values within a row (norms, linears,
/// softmax, attention): with the shapes the data has, one row at a time, or
/// with one fixed shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Execution {
    /// The library's kernels on whole tensors, as a user would call them: a
    /// row's result may depend on how many rows were computed with it.
    #[default]
    Standard,
    /// Every op that mixes values within a row runs on one row at a time, and
    /// attention on exactly the keys a query may see, so a row's result
    /// cannot depend on the batch or on how the sequence was scheduled.
    /// Slower: it gives up batching.
    BatchInvariant,
    /// Every op that mixes values within a row is called only on tiles of
    /// `tile` rows (`[1, tile, width]`; the last tile padded with zero rows,
    /// which are then dropped), and attention reduces over a fixed key
    /// capacity (the input's sequence length) with the keys a query may not
    /// see masked to `-inf` — so prefill, chunked prefill and one-token
    /// decode call the same kernels on the same shapes. Invariant as long as
    /// the library's kernels give a row the same result wherever it sits in
    /// a tile (measured per backend, not assumed: the shipped
    /// `fixed-shape-*` scenarios pin it bitwise). Keeps batching.
    FixedShape {
        /// Rows per tile (≥ 1).
        tile: usize,
    },
    /// Every op that mixes values within a row is called once on all the
    /// rows it has (`[1, n, width]`), padded with zero rows only up to the
    /// smallest row count the kernel-dispatch probe certifies: in the
    /// kernel class of `anchor` rows, and giving a row the same bits
    /// wherever it sits and whatever its neighbours hold. Attention reduces
    /// over a fixed key capacity (the input's sequence length, hidden keys
    /// masked), its queries padded the same way. Before the run the backend
    /// probes its own kernels at the row counts the run will use (the
    /// certification, memoised per process); where no padding can put a
    /// count in the anchor's class — a class boundary inside the batch's
    /// range, position dependence — the run is refused with the probe's
    /// evidence. Every certified run of a backend computes each row with the
    /// anchor's kernel, so they agree bitwise — at close to the standard
    /// execution's cost, since a batch is not split.
    Pinned {
        /// The row count whose kernel class every call must be in (≥ 1).
        anchor: usize,
    },
}

impl Execution {
    /// The scenario spelling: `standard`, `batch_invariant`,
    /// `fixed_shape(tile=64)`, `pinned(anchor=64)`.
    ///
    /// ```
    /// use layerdrift_backends::Execution;
    /// assert_eq!(Execution::FixedShape { tile: 64 }.name(), "fixed_shape(tile=64)");
    /// assert_eq!(Execution::default().name(), "standard");
    /// ```
    pub fn name(&self) -> String {
        match self {
            Execution::Standard => "standard".into(),
            Execution::BatchInvariant => "batch_invariant".into(),
            Execution::FixedShape { tile } => format!("fixed_shape(tile={tile})"),
            Execution::Pinned { anchor } => format!("pinned(anchor={anchor})"),
        }
    }
}

/// The observed rows after every layer — the only data that leaves a backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoints {
    /// Width of a row.
    pub dim: usize,
    /// Number of observed rows.
    pub rows: usize,
    /// `layers[l]` holds the rows after layer `l + 1`, row-major
    /// `[rows, dim]`, as f64 (which holds every narrower dtype exactly).
    pub layers: Vec<Vec<f64>>,
    /// Op-level checkpoints, layer by layer and op by op in execution order,
    /// when [`Diagnose::ops`] asked for them; empty otherwise. The last op
    /// of each layer is that layer's output (`layers`), bit for bit.
    pub ops: Vec<OpCheckpoint>,
    /// A language model's head: the final norm and the logits of the
    /// observed rows ([`ModelSpec::vocab`] is `Some`); `None` otherwise.
    pub head: Option<HeadCheckpoints>,
}

/// The observed rows after a language model's final norm, and their logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadCheckpoints {
    /// Vocabulary size: the width of a logits row.
    pub vocab: usize,
    /// `[rows, dim]`, row-major: the final norm's output.
    pub final_norm: Vec<f64>,
    /// `[rows, vocab]`, row-major: the logits.
    pub logits: Vec<f64>,
}

impl Checkpoints {
    /// The start state of [`Checkpoints::fnv1a`].
    pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

    /// FNV-1a over the bits of every value, continuing from `state` (start
    /// with [`Checkpoints::FNV_OFFSET`]; chain it to hash several runs).
    pub fn fnv1a(&self, state: u64) -> u64 {
        let head = self
            .head
            .iter()
            .flat_map(|h| h.final_norm.iter().chain(&h.logits));
        self.layers
            .iter()
            .flatten()
            .chain(head)
            .fold(state, |h, x| {
                x.to_bits()
                    .to_le_bytes()
                    .iter()
                    .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3))
            })
    }

    /// Row `r` after layer index `l` (0-based).
    pub fn row(&self, l: usize, r: usize) -> &[f64] {
        &self.layers[l][r * self.dim..(r + 1) * self.dim]
    }
}
