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

/// A started non-blocking operation on host buffers, which it owns until it completes.
pub trait Request {
    /// Drives progress once; true when the operation has completed.
    fn test(&mut self) -> Result<bool>;
    /// Blocks until the operation completes; returns its result (a collective's output, or a
    /// send's buffer for reuse).
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

/// A started operation ([`AsyncComm`]); complete it with `wait`, or `test` until true.
pub type Pending = Box<dyn Request>;

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
    /// Sets how this group moves backend buffers (`link::resolve` chose it; a device transport
    /// such as NCCL is attached by the backend that owns the device, see
    /// `backend::Device::connect`).
    fn set_plan(&mut self, plan: link::Plan) -> Result<()>;
    /// The concrete communicator, for a backend whose device transport needs it (the CUDA
    /// backend's NCCL and CUDA-aware MPI calls).
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Non-blocking collectives and point-to-point messages on one group (host buffers): the
/// data-parallel buckets that overlap the backward, and the pipeline's messages.
pub trait AsyncComm: Communicator {
    /// Starts sending `buf` to group rank `dest` with `tag`; counts its bytes.
    fn isend_f32(&self, dest: usize, tag: i32, buf: Vec<f32>) -> Result<Pending>;
    /// Receives exactly `buf.len()` floats from group rank `src` with `tag`; returns the
    /// seconds spent waiting for the message to arrive (a message of another length is an
    /// error naming both lengths).
    fn recv_f32(&self, src: usize, tag: i32, buf: &mut [f32]) -> Result<f64>;
    /// Starts `Σ_group buf`; `wait` returns the sum.
    fn iall_reduce_f32(&self, buf: Vec<f32>) -> Result<Pending>;
    /// Starts a reduce-scatter: `buf` is the concatenation of blocks of `counts[r]` floats, and
    /// rank r receives the group sum of block r (`wait` returns it).
    fn ireduce_scatter_f32(&self, buf: Vec<f32>, counts: &[usize]) -> Result<Pending>;
}
