//! Fused losses. `tile.rs` holds the dense building blocks (matrix products over row-major blocks);
//! `infonce.rs` the in-batch contrastive loss.

pub mod infonce;
pub mod tile;
