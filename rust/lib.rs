//! zipfnce: candidate samplers and sampled losses for training over huge output vocabularies.
//!
//! The core works on plain slices and shapes and knows nothing of Python; `rust/py/` (feature `python`) is the
//! only place that does. Modules:
//! - [`sampler`]: log-uniform, uniform, unigram (alias) and exact Zipf distributions; shared and per-row
//!   candidate draws with or without replacement; expected counts.
//! - [`hits`]: accidental hits between true classes and candidates.
//! - [`rng`]: counter-based random streams (results never depend on the thread count).
//! - [`threads`]: the library's own thread pool.
//! - [`float`]: the trait that makes float kernels generic over f32 and f64.
//! - [`simd`]: the one choice of SIMD level, and the one way to compile a kernel for every level.
//! - [`loss`]: fused losses and their dense building blocks.
//! - [`freq`]: streaming estimates of how often ids appear in a batch (logQ for in-batch negatives).

#![warn(missing_docs)]

pub mod buf;
pub mod error;
pub mod float;
pub mod freq;
pub mod hits;
pub mod loss;
pub mod rng;
pub mod sampler;
pub mod simd;
pub mod threads;
pub(crate) mod vmath;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
