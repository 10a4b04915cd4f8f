//! Tensor-parallel layers in Megatron's vocabulary, each owning its communication region and
//! its backward dual, with the TP group passed explicitly ([`Tp`]); with a group of size 1 they
//! are the plain layers:
//!
//! | layer | splits | forward region | backward dual |
//! |---|---|---|---|
//! | [`ColumnParallelLinear`] | output columns | copy to TP (identity) | ∂X summed over TP |
//! | [`RowParallelLinear`] | input rows | Y summed over TP (bias on rank 0) | identity |
//!
//! The vocabulary-parallel embedding and cross-entropy are the stage's (`parallel::stage`),
//! through the backend's shard kernels. Dependencies: layers → backend, comm.

pub mod linear;
pub mod tp;

pub use linear::{ColumnParallelLinear, RowParallelLinear};
pub use tp::Tp;
