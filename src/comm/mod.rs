//! Communicators: collective operations on one group of ranks, with byte and time counters.
//!
//! [`Communicator`] is what the training code sees; `mpi.rs` implements it with MPI on host
//! memory. Every call counts its payload (bytes of the buffer it was given, once per call) and
//! the seconds it took, so per-step metrics can report communication per group and compare the
//! bytes with the analytical volumes.

pub mod flight;
pub mod link;
pub mod mpi;
pub mod threads;

use anyhow::Result;
use std::cell::Cell;

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
    /// How this group moves backend buffers ([`link::resolve`]); host memory unless the run
    /// chose otherwise.
    fn plan(&self) -> link::Plan {
        link::Plan {
            coll: link::Transport::Host,
            p2p: link::Transport::Host,
        }
    }
    /// The group's NCCL communicator (transport NCCL only).
    fn nccl(&self) -> Option<&cudarc::nccl::safe::Comm> {
        None
    }
    /// CUDA-aware MPI: `out ← Σ_group input`, `count` floats at device addresses `input` and
    /// `out` (distinct buffers).
    ///
    /// # Safety
    /// Both addresses must hold `count` floats of device memory whose pending writes have
    /// completed (the stream is synchronised) and which nothing else touches during the call.
    unsafe fn all_reduce_device(&self, input: u64, out: u64, count: usize) -> Result<()> {
        let _ = (input, out, count);
        anyhow::bail!("this communicator cannot reduce device memory")
    }
}
