//! Parallel layout: `topology` is pure rank arithmetic; communicators per group are built from
//! it in `comm`.

pub mod dp;
pub mod grid_check;
pub mod groups;
pub mod pipeline;
pub mod plan;
pub mod shard;
pub mod stage;
pub mod topology;
#[cfg(test)]
mod tp_gradcheck;
pub mod whole;
pub mod zero;

pub use crate::layers::Tp;
pub use grid_check::{check_grid, schedule_for};
pub use topology::{Coords, Grid};
