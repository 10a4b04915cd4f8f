//! ferrotron: 3D-parallel GPT training as one SPMD binary.
//!
//! See `README.md` for usage and `DESIGN.md` (shared) for the architecture map.

pub mod plot;
