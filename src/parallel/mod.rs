//! Parallel layout: `topology` is pure rank arithmetic; communicators per group are built from
//! it in `comm`.

pub mod dp;
pub mod groups;
pub mod pipeline;
pub mod plan;
pub mod shard;
pub mod stage;
pub mod topology;
pub mod tp;
#[cfg(test)]
mod tp_gradcheck;
pub mod zero;

pub use topology::{Coords, Grid};
pub use tp::Tp;
