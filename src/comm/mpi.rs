//! [`Communicator`] over MPI (rsmpi) on host memory.

use super::{CommStats, Communicator};
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Color, Communicator as _, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use std::time::Instant;

/// One MPI sub-communicator and its counters.
pub struct MpiComm {
    comm: SimpleCommunicator,
    stats: CommStats,
}

impl MpiComm {
    /// Split `world` into groups: ranks passing the same `color` form one communicator, ordered
    /// by world rank. Collective over `world`.
    pub fn split(world: &SimpleCommunicator, color: usize) -> Result<Self> {
        let comm = world
            .split_by_color(Color::with_value(color as i32))
            .ok_or_else(|| anyhow::anyhow!("MPI_Comm_split returned no communicator"))?;
        Ok(Self {
            comm,
            stats: CommStats::default(),
        })
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let t0 = Instant::now();
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(buf), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let t0 = Instant::now();
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(buf), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn reduce_scatter_sum_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            input.len() == out.len() * self.size(),
            "reduce_scatter: input must be size × output"
        );
        let t0 = Instant::now();
        self.comm
            .reduce_scatter_block_into(input, out, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(input), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn all_gather_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            out.len() == input.len() * self.size(),
            "all_gather: output must be size × input"
        );
        let t0 = Instant::now();
        self.comm.all_gather_into(input, out);
        self.stats
            .add(std::mem::size_of_val(out), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn stats(&self) -> &CommStats {
        &self.stats
    }
}

/// A non-blocking send (`MPI_Isend`) that owns its buffer until MPI has finished with it.
/// Dropping it waits for completion, so the buffer can never be freed under MPI.
pub struct PendingSend {
    buf: Vec<f32>,
    req: mpi::ffi::MPI_Request,
    done: bool,
}

impl PendingSend {
    /// Blocks until the send completes; returns the buffer for reuse.
    pub fn wait(mut self) -> Result<Vec<f32>> {
        self.complete()?;
        Ok(std::mem::take(&mut self.buf))
    }

    fn complete(&mut self) -> Result<()> {
        if !self.done {
            // SAFETY: `req` came from MPI_Isend on `buf`, which is still alive and unmoved on
            // the heap; MPI_Wait completes and frees the request.
            let rc = unsafe { mpi::ffi::MPI_Wait(&mut self.req, mpi::ffi::RSMPI_STATUS_IGNORE) };
            self.done = true;
            anyhow::ensure!(rc == 0, "MPI_Wait failed with error code {rc}");
        }
        Ok(())
    }
}

impl Drop for PendingSend {
    fn drop(&mut self) {
        let _ = self.complete();
    }
}

impl MpiComm {
    /// Starts sending `buf` to group rank `dest` with `tag`; counts its bytes.
    pub fn isend_f32(&self, dest: usize, tag: i32, buf: Vec<f32>) -> Result<PendingSend> {
        use mpi::raw::AsRaw;
        let t0 = Instant::now();
        let count = i32::try_from(buf.len())?;
        let dest = i32::try_from(dest)?;
        // SAFETY: RSMPI_REQUEST_NULL is an initialised constant of the MPI library.
        let mut req = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
        // SAFETY: the buffer is valid for `count` floats and is moved into the returned
        // PendingSend, which keeps it alive (its heap storage does not move) and untouched until
        // MPI_Wait has completed the request.
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                buf.as_ptr() as *const std::ffi::c_void,
                count,
                mpi::ffi::RSMPI_FLOAT,
                dest,
                tag,
                self.comm.as_raw(),
                &mut req,
            )
        };
        anyhow::ensure!(rc == 0, "MPI_Isend failed with error code {rc}");
        self.stats
            .add(std::mem::size_of_val(&buf[..]), t0.elapsed().as_secs_f64());
        Ok(PendingSend {
            buf,
            req,
            done: false,
        })
    }

    /// Receives exactly `buf.len()` floats from group rank `src` with `tag`. Returns the seconds
    /// spent waiting for the message to arrive (idle time: `MPI_Probe`); the transfer itself is
    /// counted in the stats.
    pub fn recv_f32(&self, src: usize, tag: i32, buf: &mut [f32]) -> Result<f64> {
        use mpi::datatype::Equivalence;
        use mpi::point_to_point::Source as _;
        let t0 = Instant::now();
        let p = self.comm.process_at_rank(i32::try_from(src)?);
        let (msg, status) = p.matched_probe_with_tag(tag);
        let idle = t0.elapsed().as_secs_f64();
        let n = status.count(f32::equivalent_datatype()) as usize;
        anyhow::ensure!(
            n == buf.len(),
            "pipeline message from rank {src} has {n} floats, expected {}",
            buf.len()
        );
        let t1 = Instant::now();
        msg.matched_receive_into(buf);
        self.stats
            .add(std::mem::size_of_val(buf), t1.elapsed().as_secs_f64());
        Ok(idle)
    }

    /// `buf ← Σ over the group` (f64), not counted in the stats (used for metrics only).
    pub fn all_reduce_sum_f64_uncounted(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }
}
