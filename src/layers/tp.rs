//! Tensor-parallel communication regions (Megatron `mappings.py`), each paired with its
//! backward dual, on backend buffers:
//!
//! | region                | forward            | backward           |
//! |-----------------------|--------------------|--------------------|
//! | copy to TP            | identity           | all-reduce (sum)   |
//! | reduce from TP        | all-reduce (sum)   | identity           |
//! | gather from TP (CE)   | all-gather         | — (local gradient) |
//!
//! The model calls [`Tp::all_reduce`] at the forward all-reduce of a reduce region and at the
//! backward all-reduce of a copy region; the identities cost nothing and are only named in
//! comments at the call sites. Buffers move by the run's transport (`comm.backend`): in place
//! on host memory, through host copies, by CUDA-aware MPI or by NCCL.

use crate::backend::prelude::*;
use crate::comm::Communicator;
use anyhow::Result;

/// The TP group as a model layer sees it. `comm` is None for tp = 1 (no communication).
#[derive(Clone, Copy)]
pub struct Tp<'a> {
    pub size: usize,
    pub rank: usize,
    pub comm: Option<&'a dyn Communicator>,
}

impl<'a> Tp<'a> {
    /// No tensor parallelism.
    pub fn single() -> Self {
        Self {
            size: 1,
            rank: 0,
            comm: None,
        }
    }

    /// The TP group of communicator `comm` (its size and this rank's index).
    pub fn of(comm: &'a dyn Communicator) -> Self {
        Self {
            size: comm.size(),
            rank: comm.rank(),
            comm: (comm.size() > 1).then_some(comm),
        }
    }

    /// `buf ← Σ_TP buf` (nothing for tp = 1).
    pub fn all_reduce<B: Backend>(&self, be: &B, buf: &mut B::Buf) -> Result<()> {
        match self.comm {
            Some(c) => all_reduce_buf(be, c, buf),
            None => Ok(()),
        }
    }

    /// Concatenation over TP ranks of the host slice `x` (x itself for tp = 1).
    pub fn all_gather(&self, x: &[f32]) -> Result<Vec<f32>> {
        match self.comm {
            Some(c) => {
                let mut out = vec![0.0f32; x.len() * c.size()];
                c.all_gather_f32(x, &mut out)?;
                Ok(out)
            }
            None => Ok(x.to_vec()),
        }
    }
}

/// `buf ← Σ_group buf` on a backend buffer, by the group's transport
/// ([`BufComm::all_reduce_region`]).
pub fn all_reduce_buf<B: Backend>(be: &B, comm: &dyn Communicator, buf: &mut B::Buf) -> Result<()> {
    let r = crate::backend::Region {
        off: 0,
        len: be.buf_len(buf),
    };
    be.all_reduce_region(comm, buf, r)
}
