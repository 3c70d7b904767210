//! Snapshots of per-layer profiles: [`doc`] builds the documents from the
//! engine's outcomes, [`store`] asserts them against `snapshots/<class>/`.
//!
//! One snapshot per scenario × backend × device holds that backend's own
//! comparisons (strategy vs strategy, vs the oracle); a cross-backend
//! comparison depends on two backends being built, so each pair has its own
//! snapshot (`{scenario}__{a}__vs__{b}__{strategy}`) — a build without tch
//! then leaves candle's snapshot untouched. Metadata (versions, device,
//! dtype, threads, SIMD level) goes into insta's `info`, shown by
//! `cargo insta review` but not compared: only the numbers fail a test.

pub mod band;
pub mod doc;
pub mod store;
