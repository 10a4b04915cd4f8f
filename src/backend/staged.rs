//! The default communication of backend buffers: in place where the backend keeps host memory,
//! otherwise through host copies around each MPI call (`comm.backend = "mpi-staged"`, and the
//! reference the device transports are tested against).

use super::{Region, Started};
use crate::backend::prelude::*;
use crate::comm::link::Transport;
use crate::comm::{AsyncComm, Communicator, Pending};
use anyhow::Result;

/// `buf[r] ← Σ_group buf[r]`: in place on host buffers (unless the run asked for staging),
/// else through a host copy of the region.
pub fn all_reduce_region<B: Memory + ?Sized>(
    be: &B,
    comm: &dyn Communicator,
    buf: &mut B::Buf,
    r: Region,
) -> Result<()> {
    if comm.plan().coll == Transport::Host {
        if let Some(h) = be.host_mut(buf) {
            return comm.all_reduce_sum_f32(&mut h[r.range()]);
        }
    }
    let mut h = be.download_region(buf, r)?;
    comm.all_reduce_sum_f32(&mut h)?;
    be.upload_region(buf, r.off, &h)
}

/// Starts `Σ_group grads[r]` on a host copy of the region (`MPI_Iallreduce`).
pub fn start_all_reduce<B: Memory + ?Sized>(
    be: &B,
    comm: &dyn AsyncComm,
    grads: &B::Buf,
    r: Region,
) -> Result<Started> {
    let host = be.download_region(grads, r)?;
    Ok(Started::Host(comm.iall_reduce_f32(host)?))
}

/// Waits for a started reduction; a host one writes its sum back into `grads[r]`.
pub fn finish_all_reduce<B: Memory + ?Sized>(
    be: &B,
    grads: &mut B::Buf,
    r: Region,
    s: Started,
) -> Result<()> {
    match s {
        Started::Host(p) => be.upload_region(grads, r.off, &p.wait()?),
        Started::Enqueued => Ok(()),
    }
}

/// Starts sending a host copy of `buf` to rank `dest` (`MPI_Isend`).
pub fn send_buf<B: Memory + ?Sized>(
    be: &B,
    comm: &dyn AsyncComm,
    buf: &B::Buf,
    dest: usize,
    tag: i32,
) -> Result<Pending> {
    comm.isend_f32(dest, tag, be.download(buf)?)
}

/// Receives `len` floats from rank `src` into host memory and uploads them into `buf`; returns
/// the seconds spent waiting.
pub fn recv_buf<B: Memory + ?Sized>(
    be: &B,
    comm: &dyn AsyncComm,
    buf: &mut B::Buf,
    len: usize,
    src: usize,
    tag: i32,
) -> Result<f64> {
    let mut host = vec![0.0f32; len];
    let idle = comm.recv_f32(src, tag, &mut host)?;
    *buf = be.upload_vec(host)?;
    Ok(idle)
}
