//! AdamW with decoupled weight decay, exactly as `torch.optim.AdamW` (single-tensor path):
//!   p ← p·(1 − lr·wd)                      (wd only for 2-D weights)
//!   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
//!   p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
//! on fp32 master weights and fp32 state, over the flat parameter buffer, per parameter tensor.

use crate::backend::prelude::*;
use crate::backend::{AdamStep, Region};
use crate::model::gpt2::params::ParamEntry;
use crate::model::gpt2::ParamLayout;

/// The parameter tensors among `entries` that intersect `[lo, hi)`, clipped and shifted to
/// start at `lo` (the decay flag of each kept).
pub fn shard_ranges(entries: &[ParamEntry], lo: usize, hi: usize) -> Vec<(Region, bool)> {
    entries
        .iter()
        .filter_map(|e| {
            let (a, b) = (e.offset.max(lo), (e.offset + e.len).min(hi));
            (a < b).then_some((
                Region {
                    off: a - lo,
                    len: b - a,
                },
                e.decay,
            ))
        })
        .collect()
}
use anyhow::Result;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Optimizer state for one flat parameter buffer, on backend `B`.
pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    pub m: B::Buf,
    pub v: B::Buf,
    /// Steps taken so far (t in the bias corrections).
    pub t: u64,
    /// Parameter tensors and whether weight decay applies to them.
    ranges: Vec<(Region, bool)>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, cfg: AdamWConfig, layout: &ParamLayout) -> Result<Self> {
        Self::for_entries(be, cfg, &layout.entries, layout.total)
    }

    /// State for a flat buffer of `total` values holding the tensors `entries`.
    pub fn for_entries(
        be: &B,
        cfg: AdamWConfig,
        entries: &[ParamEntry],
        total: usize,
    ) -> Result<Self> {
        Self::with_ranges(be, cfg, total, shard_ranges(entries, 0, total))
    }

    /// State for a buffer of `len` values whose updated parts are `ranges` (with their decay
    /// flags) — e.g. one ZeRO-1 shard of the flat parameters, in shard coordinates.
    pub fn with_ranges(
        be: &B,
        cfg: AdamWConfig,
        len: usize,
        ranges: Vec<(Region, bool)>,
    ) -> Result<Self> {
        Ok(Self {
            cfg,
            m: be.zeros(len)?,
            v: be.zeros(len)?,
            t: 0,
            ranges,
        })
    }

    /// One update of `params` with gradients `grads` at learning rate `lr`.
    pub fn step(&mut self, be: &B, params: &mut B::Buf, grads: &B::Buf, lr: f32) -> Result<()> {
        self.t += 1;
        let c = self.cfg;
        let s = AdamStep::new(&c, lr, self.t, true);
        let (m, v) = (&mut self.m, &mut self.v);
        be.adamw_multi(params, grads, m, v, &self.ranges, s)
    }
}

impl AdamStep {
    /// The scalars of update number `t` (1-based) at learning rate `lr`, as torch computes them.
    pub fn new(cfg: &AdamWConfig, lr: f32, t: u64, decay: bool) -> Self {
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
        Self {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            decay_factor: if decay {
                1.0 - lr * cfg.weight_decay
            } else {
                1.0
            },
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

pub use crate::backend::cpu::kernels::optim::update;
