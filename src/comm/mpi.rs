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
