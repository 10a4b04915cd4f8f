//! Tensor-parallel layers in Megatron's vocabulary, each owning its communication region and
//! its backward dual, with the TP group passed explicitly ([`Tp`]); with a group of size 1 they
//! are the plain layers:
//!
//! | layer | splits | forward region | backward dual |
//! |---|---|---|---|
//! | [`ColumnParallelLinear`] | output columns | copy to TP (identity) | ∂X summed over TP |
//! | [`RowParallelLinear`] | input rows | Y summed over TP (bias on rank 0) | identity |
//! | [`VocabParallelEmbedding`] | `wte` rows | Σ over TP (`wpe` on rank 0) | identity |
//! | [`VocabParallelCrossEntropy`] | logit columns | all-gather of 3 floats per row | — (local gradient) |
//!
//! Dependencies: layers → backend, comm.

pub mod linear;
pub mod tp;
pub mod vocab;

pub use linear::{ColumnParallelLinear, RowParallelLinear};
pub use tp::Tp;
pub use vocab::{VocabParallelCrossEntropy, VocabParallelEmbedding};
