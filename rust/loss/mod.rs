//! Fused losses. `tile.rs` holds the dense building blocks (matrix products over row-major blocks).

pub mod tile;
