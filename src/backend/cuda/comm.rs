//! The CUDA backend's communication of device buffers, by the run's transport
//! (`comm::link`): NCCL on the compute stream, CUDA-aware MPI on device pointers, or through
//! host copies (`backend::staged`).
//!
//! - NCCL calls of the tp and embedding groups are enqueued on the compute stream (ordered
//!   with the kernels around them). The dp group's run on the communication stream: a bucket
//!   waits (by event) for the kernels enqueued before it became final, so it overlaps the rest
//!   of the backward, and finishing makes the compute stream wait for the communication
//!   stream. The host never waits (the counters see the enqueue time only).
//! - CUDA-aware MPI reads device memory directly, so the stream is synchronised first; sums go
//!   from a device copy of the region into the region (MPI's in-place marker differs between
//!   MPI libraries), and sends go from a device copy the pending send owns. Data-parallel
//!   buckets, started non-blocking, go through host copies instead: CUDA-aware Open MPI
//!   handles device memory in point-to-point calls and blocking collectives only.

use super::CudaBackend;
use crate::backend::{staged, Lane, Region, Started};
use crate::comm::link::{Plan, Transport};
use crate::comm::mpi::MpiComm;
use crate::comm::{AsyncComm, Communicator, Pending};
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use cudarc::nccl::safe::ReduceOp;
use std::time::Instant;

fn nccl_err(e: cudarc::nccl::result::NcclError) -> anyhow::Error {
    anyhow::anyhow!("NCCL call failed: {e:?}")
}

/// The concrete MPI communicator behind a group, which the device transports call directly.
fn mpi_of(comm: &dyn Communicator) -> Result<&MpiComm> {
    comm.as_any()
        .downcast_ref::<MpiComm>()
        .context("the CUDA backend's device transports need an MPI communicator")
}

/// The group's NCCL communicator (transport NCCL).
fn nccl_of(comm: &dyn Communicator) -> Result<&cudarc::nccl::safe::Comm> {
    mpi_of(comm)?
        .nccl()
        .context("transport NCCL without an NCCL communicator")
}

impl CudaBackend {
    /// Sets `comm`'s transport; with NCCL collectives, creates its NCCL communicator on the
    /// stream of `lane` (see [`crate::backend::Device::connect`]).
    pub(super) fn comm_connect(
        &self,
        comm: &mut dyn Communicator,
        plan: Plan,
        lane: Lane,
    ) -> Result<()> {
        comm.set_plan(plan)?;
        if plan.coll != Transport::Nccl {
            return Ok(());
        }
        let stream = match lane {
            Lane::Compute => self.stream.clone(),
            Lane::Comm => self.comm_stream.clone(),
        };
        comm.as_any_mut()
            .downcast_mut::<MpiComm>()
            .context("NCCL needs an MPI communicator to agree on its id")?
            .attach_nccl(stream)
    }

    /// `buf[r] ← Σ_group buf[r]` (see [`crate::backend::BufComm::all_reduce_region`]).
    pub(super) fn comm_all_reduce(
        &self,
        comm: &dyn Communicator,
        buf: &mut CudaSlice<f32>,
        r: Region,
    ) -> Result<()> {
        match comm.plan().coll {
            Transport::Nccl => {
                let nccl = nccl_of(comm)?;
                let t0 = Instant::now();
                // The tp and embedding communicators run on the compute stream; any other
                // (the dp one) is ordered after the kernels so far and before the ones to come.
                let cs = nccl.stream();
                let other = cs.cu_stream() != self.stream.cu_stream();
                if other {
                    cs.join(&self.stream)?;
                }
                let mut v = buf.slice_mut(r.range());
                nccl.all_reduce_in_place(&mut v, &ReduceOp::Sum)
                    .map_err(nccl_err)?;
                if other {
                    self.stream.join(&cs)?;
                }
                comm.stats().add(4 * r.len, t0.elapsed().as_secs_f64());
                Ok(())
            }
            Transport::CudaAwareMpi => {
                let copy = self.stream.clone_dtod(&buf.slice(r.range()))?;
                self.stream.synchronize()?;
                let (src, _s) = copy.device_ptr(&self.stream);
                let mut v = buf.slice_mut(r.range());
                let (dst, _d) = v.device_ptr_mut(&self.stream);
                // SAFETY: `copy` and the region are distinct device buffers of r.len floats,
                // the stream is idle, and both stay borrowed for the blocking call.
                unsafe { mpi_of(comm)?.all_reduce_device(src, dst, r.len) }
            }
            Transport::Host | Transport::Staged => staged::all_reduce_region(self, comm, buf, r),
        }
    }

    /// Starts `grads[r] ← Σ_group grads[r]` for a data-parallel bucket.
    pub(super) fn comm_start_all_reduce(
        &self,
        comm: &dyn AsyncComm,
        grads: &mut CudaSlice<f32>,
        r: Region,
    ) -> Result<Started> {
        match comm.plan().coll {
            Transport::Nccl => {
                let nccl = nccl_of(comm)?;
                let t0 = Instant::now();
                let cs = nccl.stream();
                if cs.cu_stream() != self.stream.cu_stream() {
                    // The bucket's gradients are written by kernels enqueued so far.
                    cs.join(&self.stream)?;
                }
                let mut v = grads.slice_mut(r.range());
                nccl.all_reduce_in_place(&mut v, &ReduceOp::Sum)
                    .map_err(nccl_err)?;
                comm.stats().add(4 * r.len, t0.elapsed().as_secs_f64());
                Ok(Started::Enqueued)
            }
            // Not on device pointers under CUDA-aware MPI: Open MPI's CUDA support covers
            // point-to-point and blocking collectives only; its non-blocking collectives
            // (libnbc) would sum on the CPU at a device address. A host copy keeps the overlap.
            Transport::CudaAwareMpi | Transport::Host | Transport::Staged => {
                staged::start_all_reduce(self, comm, grads, r)
            }
        }
    }

    /// Completes a started bucket: an enqueued NCCL reduction by making the compute stream wait
    /// for the communication stream, the others as the default does.
    pub(super) fn comm_finish_all_reduce(
        &self,
        grads: &mut CudaSlice<f32>,
        r: Region,
        s: Started,
    ) -> Result<()> {
        match s {
            Started::Enqueued => Ok(self.stream.join(&self.comm_stream)?),
            other => staged::finish_all_reduce(self, grads, r, other),
        }
    }

    /// Starts sending all of `buf` to rank `dest` of `comm`.
    pub(super) fn comm_send(
        &self,
        comm: &dyn AsyncComm,
        buf: &CudaSlice<f32>,
        dest: usize,
        tag: i32,
    ) -> Result<Pending> {
        if comm.plan().p2p != Transport::CudaAwareMpi {
            return staged::send_buf(self, comm, buf, dest, tag);
        }
        let copy = self.stream.clone_dtod(buf)?;
        self.stream.synchronize()?;
        let ptr = copy.device_ptr(&self.stream).0;
        let n = copy.len();
        // SAFETY: the pending send owns `copy`, whose writes have completed.
        unsafe { mpi_of(comm)?.isend_device(ptr, n, dest, tag, Box::new(copy)) }
    }

    /// `buf ← ` the `len` floats rank `src` sends with `tag`; returns the idle seconds.
    pub(super) fn comm_recv(
        &self,
        comm: &dyn AsyncComm,
        buf: &mut CudaSlice<f32>,
        len: usize,
        src: usize,
        tag: i32,
    ) -> Result<f64> {
        if comm.plan().p2p != Transport::CudaAwareMpi {
            return staged::recv_buf(self, comm, buf, len, src, tag);
        }
        if buf.len() != len {
            *buf = self.stream.alloc_zeros::<f32>(len)?;
        }
        // Kernels still reading the old contents must finish before MPI overwrites them.
        self.stream.synchronize()?;
        let (ptr, _g) = buf.device_ptr_mut(&self.stream);
        // SAFETY: `buf` holds `len` floats, the stream is idle and `buf` is borrowed mutably.
        unsafe { mpi_of(comm)?.recv_device(ptr, len, src, tag) }
    }

    /// The GPU's UUID (to find ranks sharing one GPU).
    pub(super) fn uuid(&self) -> Result<[u8; 16]> {
        let u = self.ctx.uuid().context("reading the GPU's UUID")?;
        Ok(u.bytes.map(|b| b as u8))
    }
}
