//! Fused losses. `tile` holds the dense building blocks (the one matrix view `Mat`, matrix products over it,
//! online log-sum-exp, element-wise kernels compiled for every SIMD level); `sampled` the sampled softmax and
//! NCE (shared or per-row candidates); `infonce` the in-batch contrastive loss; `full` the exact
//! softmax cross-entropy over all classes, fused with the output layer.

pub mod full;
pub mod infonce;
pub mod sampled;
pub mod tile;
