//! # layerdrift — differential testing of tensor backends
//!
//! Mathematically identical computations give slightly different floats when
//! the input's shape changes: a matmul over a whole batch picks another kernel
//! and reduction order than a matmul over one row, and through many residual
//! layers the gap grows. layerdrift measures that drift per layer, for real
//! models on real backends (candle, burn, libtorch), against an f64 oracle,
//! and gates it in CI with bounds and insta snapshots.
//!
//! The flow: a YAML [`scenario`] expands into variants; [`plan`] turns it into
//! trials (`{scenario}/{backend}-{device}/{check}`); a [`session::Session`]
//! runs each backend run once; [`metrics`] compares checkpoints layer by layer;
//! [`bounds`] judges them; [`snapshot`] records them; [`report`] and [`plot`]
//! show them.
//!
//! ## Environment variables
//! | variable | effect |
//! |---|---|
//! | `LAYERDRIFT_SCENARIOS` | directory of scenario files (default `<root>/scenarios`) |
//! | `LAYERDRIFT_ROOT` | workspace root holding `scenarios/` and `snapshots/` (default: where the crate was built) |
//! | `LAYERDRIFT_SLOW=1` | run `slow: true` scenarios in debug builds too |
//! | `INSTA_UPDATE`, `CI` | insta's: `CI=true` writes nothing and fails on a change; `INSTA_UPDATE=always` accepts |
//! | `RAYON_NUM_THREADS` | threads of candle and burn-flex on CPU |
//! | `LAYERDRIFT_LIBTORCH_LIB` | libtorch's `lib` folder for the `tch` build (written by `scripts/setup-libtorch`) |

pub mod bounds;
pub mod discover;
pub mod locate;
pub mod metrics;
pub mod plan;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod session;
pub mod snapshot;
