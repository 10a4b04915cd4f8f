//! Communicators: collective operations on one group of ranks, with byte and time counters.
//!
//! [`Communicator`] is what the training code sees; `mpi.rs` implements it with MPI on host
//! memory. Every call counts its payload (bytes of the buffer it was given, once per call) and
//! the seconds it took, so per-step metrics can report communication per group and compare the
//! bytes with the analytical volumes.

pub mod mpi;

use anyhow::Result;
use std::cell::Cell;

/// Payload bytes the data-parallel group moves per optimizer step (what [`CommStats`] counts):
/// without ZeRO one all-reduce of the f32 gradients (4·N) plus the f64 loss sum (8); with ZeRO-1
/// a reduce-scatter of the gradients padded to dp·⌈N/dp⌉ (4·P), an all-gather of the updated
/// parameters (4·P), the loss (8) and the squared-norm partial (8). 0 when dp = 1.
pub fn dp_bytes_per_step(n_params: usize, dp: usize, zero: bool) -> u64 {
    if dp <= 1 {
        return 0;
    }
    let padded = n_params.div_ceil(dp) * dp;
    if zero {
        (4 * padded * 2 + 16) as u64
    } else {
        (4 * n_params + 8) as u64
    }
}

/// Counters of one communicator (payload bytes and seconds spent in calls).
#[derive(Debug, Default)]
pub struct CommStats {
    bytes: Cell<u64>,
    seconds: Cell<f64>,
}

impl CommStats {
    pub fn add(&self, bytes: usize, seconds: f64) {
        self.bytes.set(self.bytes.get() + bytes as u64);
        self.seconds.set(self.seconds.get() + seconds);
    }
    /// (bytes, seconds) since the last call, then reset.
    pub fn take(&self) -> (u64, f64) {
        (self.bytes.replace(0), self.seconds.replace(0.0))
    }
}

/// Collectives on one group of ranks (host buffers).
pub trait Communicator {
    /// This rank's index in the group.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `buf ← Σ_group buf`, elementwise.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// `buf ← Σ_group buf`, elementwise (f64).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `out ← block r of Σ_group input`: `input` is `size` equal blocks of `out.len()`; rank r
    /// receives the sum of block r.
    fn reduce_scatter_sum_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()>;
    /// `out ← concat over ranks of input` (`out.len() = size · input.len()`).
    fn all_gather_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()>;
    fn stats(&self) -> &CommStats;
}
