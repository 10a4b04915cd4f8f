//! ZeRO-1: optimizer state (and the fp32 master copy it updates) sharded over the data-parallel
//! group. The rank's flat local parameters, padded to dp·⌈N/dp⌉, are cut into dp contiguous
//! shards; dp rank r keeps AdamW's m and v for shard r only. A step reduce-scatters the
//! gradients (rank r receives the dp-sum of shard r), the trainer forms the global norm from
//! the shards, then each rank clips and updates its shard and all-gathers the parameters.
//! Host-staged (the state lives in host memory, updated by the CPU AdamW).

use super::shard::StageLayout;
use crate::backend::cpu::Cpu;
use crate::backend::prelude::*;
use crate::backend::Region;
use crate::comm::Communicator;
use crate::optim::{clip, AdamW, AdamWConfig};
use anyhow::Result;

pub struct ZeroShard {
    opt: AdamW<Cpu>,
    cpu: Cpu,
    lo: usize,
    hi: usize,
    chunk: usize,
    /// Counted tensors (see `StageLayout::counted`) inside the shard, in shard coordinates.
    counted: Vec<Region>,
}

impl ZeroShard {
    /// The peak of the host buffers it owns (the AdamW state shards and each step's parameter
    /// and gradient shard), all charged to the optimizer.
    pub fn mem_peak(&self) -> crate::backend::ledger::MemBytes {
        self.cpu.ledger().peak()
    }

    pub fn new(cfg: AdamWConfig, layout: &StageLayout, dp: usize, r: usize) -> Result<Self> {
        let chunk = layout.total.div_ceil(dp);
        let (lo, hi) = (
            (r * chunk).min(layout.total),
            ((r + 1) * chunk).min(layout.total),
        );
        let cpu = Cpu::new(1);
        cpu.set_mem_category(crate::backend::ledger::MemCategory::Optimizer);
        let ranges = crate::optim::adamw::shard_ranges(&layout.entries, lo, hi);
        let opt = AdamW::with_ranges(&cpu, cfg, chunk, ranges)?;
        let counted = layout
            .counted_regions()
            .into_iter()
            .filter_map(|e| {
                let (a, b) = (e.off.max(lo), (e.off + e.len).min(hi));
                (a < b).then_some(Region {
                    off: a - lo,
                    len: b - a,
                })
            })
            .collect();
        Ok(Self {
            opt,
            cpu,
            lo,
            hi,
            chunk,
            counted,
        })
    }

    /// The local parameters `[lo, hi)` this shard owns.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.lo..self.hi
    }

    /// Floats per shard (`⌈P/dp⌉`; the last shard is zero-padded).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Σ g² over the counted tensors of the shard.
    pub fn sum_squares(&self, shard: &[f32]) -> f64 {
        self.counted
            .iter()
            .map(|r| clip::sum_squares(&shard[r.range()]))
            .sum()
    }

    /// This rank's optimizer state for checkpoints: (first element of the flat local buffer it
    /// covers, m, v, AdamW's step counter).
    pub fn state(&self) -> (usize, &[f32], &[f32], u64) {
        let n = self.hi - self.lo;
        (self.lo, &self.opt.m[..n], &self.opt.v[..n], self.opt.t)
    }

    /// Restores the shard's state from the whole local m and v (flat local buffers) and t.
    pub fn restore(&mut self, m: &[f32], v: &[f32], t: u64) {
        let n = self.hi - self.lo;
        self.opt.m[..n].copy_from_slice(&m[self.lo..self.hi]);
        self.opt.v[..n].copy_from_slice(&v[self.lo..self.hi]);
        self.opt.t = t;
    }

    /// Clips the shard's gradient by `coef`, updates the shard with AdamW and all-gathers the
    /// parameters.
    pub fn apply<B: Backend>(
        &mut self,
        be: &B,
        params: &mut B::Buf,
        mut shard_g: Vec<f32>,
        coef: f32,
        comm: &dyn Communicator,
        lr: f32,
    ) -> Result<()> {
        clip::scale(&mut shard_g, coef);
        let host = be.download(params)?;
        let mut shard_p = host[self.lo..self.hi].to_vec();
        shard_p.resize(self.chunk, 0.0);
        let mut shard_p = self.cpu.upload_vec(shard_p)?;
        let shard_g = self.cpu.upload_vec(shard_g)?;
        self.opt.step(&self.cpu, &mut shard_p, &shard_g, lr)?;
        let mut full = vec![0.0f32; self.chunk * comm.size()];
        comm.all_gather_f32(&shard_p, &mut full)?;
        full.truncate(host.len());
        be.upload_region(params, 0, &full)?;
        Ok(())
    }
}
