//! ferrotron: 3D-parallel GPT training as one SPMD binary.
//!
//! See `README.md` for usage and `ARCHITECTURE.md` for the map of the code.

// Layer kernels take their buffers and dimensions explicitly (llm.c style); bundling them into
// structs would hide the shapes that the doc comments state.
#![allow(clippy::too_many_arguments)]

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod comm;
pub mod config;
pub mod data;
pub mod diagnose;
pub mod eval;
pub mod generate;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod placement;
pub mod plan;
pub mod plot;
pub mod runtime;
pub mod schedule;
pub mod study;
pub mod train;
