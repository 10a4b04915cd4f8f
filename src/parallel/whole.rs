//! The whole model on one rank (tp = pp = 1): the training model ([`StageModel`]) with every
//! layer, one activation slot and its scratch. The parity tests against Hugging Face, the
//! finite-difference check of the whole model and the tensor-parallel checks use it as the
//! 1-rank reference; it is the same code every grid runs.

use super::shard::StageLayout;
use super::stage::{StageActs, StageModel, StageScratch};
use super::Tp;
use crate::backend::prelude::*;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::{ensure, Result};

/// A GPT-2 on one rank.
pub struct Whole<B: Backend> {
    pub model: StageModel<B>,
}

/// One micro-batch `[B, T]`'s activations and scratch for [`Whole`].
pub struct Slot<B: Backend> {
    acts: StageActs<B>,
    scratch: StageScratch<B>,
}

impl<B: Backend> Whole<B> {
    /// `cfg` as read (its vocabulary padded to a multiple of 64); `head_chunk_rows` as
    /// `train.head_chunk_rows` (0 = automatic).
    pub fn new(cfg: Gpt2Config, be: B, head_chunk_rows: usize) -> Result<Self> {
        let cfg = cfg.with_tp_padding(1);
        let global = ParamLayout::new(&cfg);
        let layout = StageLayout::new(&cfg, &global, 1, 0, 1, 0)?;
        Ok(Self {
            model: StageModel::new(cfg, layout, be).with_head_chunk_rows(head_chunk_rows),
        })
    }

    pub fn be(&self) -> &B {
        &self.model.be
    }

    /// The flat parameter layout (on one rank, the global one's order).
    pub fn layout(&self) -> &StageLayout {
        &self.model.layout
    }

    /// Parameters initialised as every grid initialises them (`seed`).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut p = vec![0.0f32; self.layout().total];
        self.layout().init(&self.model.cfg, seed, &mut p);
        p
    }

    /// A slot for micro-batches `[b, t]`.
    pub fn slot(&self, b: usize, t: usize) -> Result<Slot<B>> {
        Ok(Slot {
            acts: self.model.acts(b, t)?,
            scratch: self.model.scratch(b, t)?,
        })
    }

    /// Mean loss per token of `tokens → targets` (`[B, T]` each). With `train = (grads,
    /// scale)`, also accumulates `scale · ∂(Σ loss)/∂params` into `grads` (forward and
    /// backward).
    pub fn loss(
        &self,
        slot: &mut Slot<B>,
        params: &B::Buf,
        tokens: &[u32],
        targets: &[u32],
        train: Option<(&mut B::Buf, f32)>,
    ) -> Result<f64> {
        let Slot { acts, scratch } = slot;
        let n = acts.b * acts.t;
        ensure!(
            tokens.len() == n && targets.len() == n,
            "{} tokens and {} targets for a [{}, {}] batch",
            tokens.len(),
            targets.len(),
            acts.b,
            acts.t
        );
        acts.tokens.copy_from_slice(tokens);
        acts.targets.copy_from_slice(targets);
        let tp = Tp::single();
        let Some((grads, scale)) = train else {
            return self.model.forward(params, acts, scratch, None, &tp);
        };
        let loss = self
            .model
            .forward(params, acts, scratch, Some((&mut *grads, scale)), &tp)?;
        self.model
            .backward(params, grads, acts, scratch, &tp, None)?;
        Ok(loss)
    }

    /// The logits `[B·T, Vp]` of `tokens` (host).
    pub fn logits(&self, slot: &mut Slot<B>, params: &B::Buf, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = slot.acts.b * slot.acts.t;
        self.loss(slot, params, tokens, &vec![0u32; n], None)?;
        let rows: Vec<usize> = (0..n).collect();
        let out = self.model.output(&slot.acts);
        self.model.logits(params, out, &rows, &Tp::single())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// The whole model's gradient against a central finite difference of its loss along a
    /// random direction.
    #[test]
    fn whole_model_backward_matches_finite_differences() {
        use rand_chacha::rand_core::{Rng, SeedableRng};
        let cfg = Gpt2Config::new(100, 16, 16, 2, 2);
        let w = Whole::new(cfg, Cpu::new(1), 0).unwrap();
        let params = w.init(3);
        let (b, t) = (2, 8);
        let tok: Vec<u32> = (0..b * t).map(|i| (i * 37 % 100) as u32).collect();
        let tgt: Vec<u32> = (0..b * t).map(|i| (i * 53 % 100) as u32).collect();
        let mut slot = w.slot(b, t).unwrap();
        let n = (b * t) as f64;
        let mut grads = w.be().zeros(params.len()).unwrap();
        let pb = w.be().upload(&params).unwrap();
        w.loss(&mut slot, &pb, &tok, &tgt, Some((&mut grads, 1.0)))
            .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        let dir: Vec<f32> = (0..params.len())
            .map(|_| (rng.next_u32() as f64 / 4294967296.0 - 0.5) as f32)
            .collect();
        // Σ loss at params + h·dir. Weights are ~0.02: a small step (truncation error is 0.2%
        // at 1e-4).
        let mut f = |h: f32| {
            let p: Vec<f32> = params.iter().zip(&dir).map(|(p, d)| p + h * d).collect();
            let pb = w.be().upload(&p).unwrap();
            w.loss(&mut slot, &pb, &tok, &tgt, None).unwrap() * n
        };
        let h = 1e-4f32;
        let fd = (f(h) - f(-h)) / (2.0 * h as f64);
        let an = dot(&grads, &dir);
        assert!(
            (fd - an).abs() <= 2e-2 * an.abs().max(1e-3),
            "finite difference {fd} vs backward {an}"
        );
    }
}
