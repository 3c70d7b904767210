//! What a scenario may ask of this machine, checked before anything is
//! allocated: how many variants, how many observed rows, and an estimate of
//! the peak memory of its largest run.
//!
//! The estimate, in bytes, for one variant (all arithmetic in f64, so no
//! value in a file can overflow it):
//!
//! ```text
//! P       = parameters of the model, L = its layers
//! weights = P × 4 (the host's f32 copy, shared by every run)
//!         + P / L × (8 + dtype size)   (one layer at a time on a backend,
//!                                       or in the oracle's f64)
//! input   = batch × seq × dim × (4 host + dtype size on the backend)
//! acts    = 4 live tensors of batch × seq × max(dim, hidden, 3·dim) × dtype size
//! kv      = decoder only: one layer's K and V, 2 × batch × seq × dim × dtype size
//! scores  = decoder only: 2 × batch × heads × seq² × dtype size
//! ckpts   = observed rows × dim × layers × 8 × (strategies + 1)
//! ```
//!
//! Under `execution: fixed_shape` with a tile of T rows, every row-wise op
//! runs on whole tiles, so `acts` count the tokens rounded up to a multiple
//! of T (plus one tile of zero padding), attention runs one tile of queries
//! at a time against the whole sequence (`scores` = 2 × heads × T × seq ×
//! dtype size), and each segment's masks stay uploaded (tiles × T × seq ×
//! dtype size). A tile far larger than the input is refused here, at the
//! tile's position, before anything is allocated.
//!
//! Backends get a layer's weights just before the layer and drop them after
//! it (a decoder runs layer by layer over every segment), so a model's
//! weights are on the host once and never in full on a backend.
//!
//! A scenario whose largest variant exceeds the limit (the machine's
//! available memory, or `LAYERDRIFT_MEMORY_LIMIT`) is refused at
//! `validate` time with the estimate and the limit.

use layerdrift_backends::{DType, Execution, ModelSpec};

/// Most variants a scenario may expand to (the product of its list axes).
pub const MAX_VARIANTS: usize = 1024;

/// Most observed rows per variant.
pub const MAX_OBSERVED_ROWS: usize = 65_536;

/// Parameters of `model`, as f64 (never overflows).
/// Counted from a one- and a two-block model (never listing the parameters
/// of a huge one): what is outside the blocks, plus `layers` blocks.
fn parameters(model: &ModelSpec) -> f64 {
    let count = |m: ModelSpec| -> f64 {
        m.parameters()
            .iter()
            .map(|p| p.shape.iter().map(|&d| d as f64).product::<f64>())
            .sum()
    };
    let (one, two) = (count(model.with_layers(1)), count(model.with_layers(2)));
    let block = two - one;
    (one - block) + block * model.layers() as f64
}

/// The estimated peak bytes of one run of `model` (see the module docs).
///
/// ```
/// use layerdrift::scenario::estimate_bytes;
/// use layerdrift_backends::{Activation, DType, Execution, ModelSpec, Norm, ResidualMlpSpec};
/// let seed = ModelSpec::ResidualMlp(ResidualMlpSpec {
///     layers: 20, dim: 768, hidden: 768, activation: Activation::GeluErf,
///     norm: Norm::LayerNorm, eps: 1e-5, residual: true });
/// let gb = estimate_bytes(&seed, 16, 1024, DType::F32, 1, 2, Execution::Standard) / 1e9;
/// assert!(gb > 0.5 && gb < 1.5, "{gb}");
/// // One row in tiles of a million rows: the padding is what costs.
/// let huge = Execution::FixedShape { tile: 1_000_000 };
/// assert!(estimate_bytes(&seed, 1, 1, DType::F32, 1, 2, huge) > 1e10);
/// ```
pub fn estimate_bytes(
    model: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: DType,
    observed: usize,
    strategies: usize,
    execution: Execution,
) -> f64 {
    let f = |x: usize| x as f64;
    let size = f(dtype.size());
    let (dim, layers) = (f(model.dim()), f(model.layers()));
    let hidden = f(model.hidden());
    let heads = model.heads().map_or(0.0, |(h, _)| f(h));
    // A language model's logits: every position of a pass, `vocab` wide.
    let logits = model
        .vocab()
        .map_or(0.0, |v| f(batch) * f(seq) * f(v) * size * 2.0);
    let p = parameters(model);
    let tokens = f(batch) * f(seq);
    let weights = p * 4.0 + p / layers.max(1.0) * (8.0 + size);
    let input = tokens * dim * (4.0 + size);
    let width = dim.max(hidden).max(3.0 * dim);
    let kv = if heads > 0.0 {
        2.0 * tokens * dim * size
    } else {
        0.0
    };
    let (acts, scores) = match execution {
        Execution::FixedShape { tile } => {
            let t = f(tile.max(1));
            let padded = (tokens / t).ceil() * t + t;
            let masks = (f(seq) / t).ceil() * t * f(seq) * size;
            let scores = if heads > 0.0 {
                2.0 * heads * t * f(seq) * size + masks
            } else {
                0.0
            };
            (4.0 * padded * width * size, scores)
        }
        _ => (
            4.0 * tokens * width * size,
            2.0 * f(batch) * heads * f(seq) * f(seq) * size,
        ),
    };
    let ckpts = f(observed) * dim * layers * 8.0 * (f(strategies) + 1.0);
    weights + input + acts + kv + scores + ckpts + logits
}

/// `1.23 GB`.
pub(super) fn human(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", bytes / 1e6)
    }
}
