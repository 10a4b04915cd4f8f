//! AdamW with decoupled weight decay, exactly as `torch.optim.AdamW` (single-tensor path):
//!   p ← p·(1 − lr·wd)                      (wd only for 2-D weights)
//!   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
//!   p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
//! on fp32 master weights and fp32 state, over the flat parameter buffer.

use crate::model::gpt2::ParamLayout;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Optimizer state for one flat parameter buffer.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far (t in the bias corrections).
    pub t: u64,
    /// Weight decay per element range: (offset, len, decay?).
    ranges: Vec<(usize, usize, bool)>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, layout: &ParamLayout) -> Self {
        let ranges = layout
            .entries
            .iter()
            .map(|e| (e.offset, e.len, e.decay))
            .collect();
        Self {
            cfg,
            m: vec![0.0; layout.total],
            v: vec![0.0; layout.total],
            t: 0,
            ranges,
        }
    }

    /// One update of `params` with gradients `grads` at learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for &(off, len, decay) in &self.ranges {
            let wd = if decay {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let r = off..off + len;
            params[r.clone()]
                .par_chunks_mut(1 << 14)
                .zip(grads[r.clone()].par_chunks(1 << 14))
                .zip(
                    self.m[r.clone()]
                        .par_chunks_mut(1 << 14)
                        .zip(self.v[r].par_chunks_mut(1 << 14)),
                )
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        p[i] *= wd;
                        m[i] += (g[i] - m[i]) * (1.0 - c.beta1);
                        v[i] = v[i] * c.beta2 + (1.0 - c.beta2) * g[i] * g[i];
                        let denom = v[i].sqrt() / bc2_sqrt + c.eps;
                        p[i] -= step_size * m[i] / denom;
                    }
                });
        }
    }
}
