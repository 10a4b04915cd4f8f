//! Parallel layout: `topology` is pure rank arithmetic; communicators per group are built from
//! it in `comm`.

pub mod shard;
pub mod topology;
pub mod tp;

pub use topology::{Coords, Grid};
pub use tp::Tp;
