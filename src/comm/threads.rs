//! An in-process [`Communicator`] over threads (one per rank), for unit tests of parallel
//! layers without MPI. Each collective deposits this rank's data, waits for every rank, then
//! combines the deposits in rank order (so all ranks get bitwise the same result).

use super::link::{Plan, Transport};
use super::{CommStats, Communicator};
use anyhow::Result;
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank's end of a thread group.
pub struct ThreadComm {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
    stats: CommStats,
}

impl ThreadComm {
    /// The `n` ends of a new group; hand one to each thread.
    pub fn group(n: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(n),
            slots: Mutex::new(vec![Vec::new(); n]),
        });
        (0..n)
            .map(|rank| ThreadComm {
                rank,
                size: n,
                shared: shared.clone(),
                stats: CommStats::default(),
            })
            .collect()
    }

    /// Deposits `x`, waits for all, returns every rank's deposit (rank order).
    fn exchange(&self, x: Vec<f64>) -> Result<Vec<Vec<f64>>> {
        self.slots()?[self.rank] = x;
        self.shared.barrier.wait();
        let all = self.slots()?.clone();
        self.shared.barrier.wait();
        Ok(all)
    }

    fn slots(&self) -> Result<std::sync::MutexGuard<'_, Vec<Vec<f64>>>> {
        self.shared
            .slots
            .lock()
            .map_err(|_| anyhow::anyhow!("a thread of the group panicked"))
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(buf.iter().map(|&x| x as f64).collect())?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = all.iter().map(|v| v[i] as f32).fold(0.0, |a, x| a + x);
        }
        self.stats.add(std::mem::size_of_val(buf), 0.0);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let all = self.exchange(buf.to_vec())?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = all.iter().map(|v| v[i]).sum();
        }
        self.stats.add(std::mem::size_of_val(buf), 0.0);
        Ok(())
    }
    fn reduce_scatter_sum_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        let all = self.exchange(input.iter().map(|&x| x as f64).collect())?;
        let off = self.rank * out.len();
        for (i, o) in out.iter_mut().enumerate() {
            *o = all
                .iter()
                .map(|v| v[off + i] as f32)
                .fold(0.0, |a, x| a + x);
        }
        self.stats.add(std::mem::size_of_val(input), 0.0);
        Ok(())
    }
    fn all_gather_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        let all = self.exchange(input.iter().map(|&x| x as f64).collect())?;
        for (r, v) in all.iter().enumerate() {
            for (o, &x) in out[r * input.len()..(r + 1) * input.len()]
                .iter_mut()
                .zip(v)
            {
                *o = x as f32;
            }
        }
        self.stats.add(std::mem::size_of_val(out), 0.0);
        Ok(())
    }
    fn stats(&self) -> &CommStats {
        &self.stats
    }
    /// Host memory only: a thread group has no device transport.
    fn set_plan(&mut self, plan: Plan) -> Result<()> {
        anyhow::ensure!(
            plan.coll == Transport::Host && plan.p2p == Transport::Host,
            "a thread group moves host memory only (asked for {plan:?})"
        );
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
