//! Parallel layout: `topology` is pure rank arithmetic; communicators per group are built from
//! it in `comm`.

pub mod topology;

pub use topology::{Coords, Grid};
