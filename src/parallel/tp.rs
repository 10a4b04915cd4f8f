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
//! comments at the call sites. Buffers are reduced in place when the backend keeps them in host
//! memory, otherwise staged through the host.

use crate::backend::Backend;
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

/// `buf ← Σ_group buf` on a backend buffer: in place on host buffers, else staged.
pub fn all_reduce_buf<B: Backend>(be: &B, comm: &dyn Communicator, buf: &mut B::Buf) -> Result<()> {
    if let Some(h) = be.host_mut(buf) {
        return comm.all_reduce_sum_f32(h);
    }
    let mut h = be.download(buf)?;
    comm.all_reduce_sum_f32(&mut h)?;
    *buf = be.upload(&h)?;
    Ok(())
}

/// `buf[r] ← Σ_group buf[r]` for one region of a backend buffer.
pub fn all_reduce_region<B: Backend>(
    be: &B,
    comm: &dyn Communicator,
    buf: &mut B::Buf,
    r: crate::backend::Region,
) -> Result<()> {
    if let Some(h) = be.host_mut(buf) {
        return comm.all_reduce_sum_f32(&mut h[r.range()]);
    }
    let mut h = be.download(buf)?;
    comm.all_reduce_sum_f32(&mut h[r.range()])?;
    *buf = be.upload(&h)?;
    Ok(())
}
