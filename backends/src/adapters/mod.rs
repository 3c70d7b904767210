//! The adapters, one module per library, each behind a cargo feature, and
//! the always-present f64 oracle. Each implements the crate-private
//! `ops::Ops` with its library's kernels and the [`crate::Backend`] trait;
//! [`crate::registry`] lists them.

#[cfg(feature = "burn")]
pub(crate) mod burn;
#[cfg(feature = "candle")]
pub(crate) mod candle;
pub mod reference;
#[cfg(feature = "tch")]
pub(crate) mod tch;
