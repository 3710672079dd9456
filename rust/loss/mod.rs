//! Fused losses. `tile.rs` holds the dense building blocks (matrix products over row-major blocks, online
//! log-sum-exp, vectorised element-wise math); `sampled.rs` the sampled softmax and NCE; `infonce.rs` the
//! in-batch contrastive loss.

pub mod infonce;
pub mod sampled;
pub mod tile;
