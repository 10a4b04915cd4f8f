//! Megatron's vocabulary-parallel layers over a TP group of size P, rank r holding vocabulary
//! rows `v0 .. v0 + Vl` of `wte` (the vocabulary padded so that every rank holds Vl rows).
//!
//! - [`VocabParallelEmbedding`]: `x = wte[token] + wpe[position]`. Rank r looks up only the
//!   tokens it holds (zero rows elsewhere), rank 0 adds `wpe`; forward region: reduce from TP
//!   (one all-reduce of `[N, C]`); backward dual: identity (each rank accumulates the rows it
//!   holds, rank 0 also `wpe`).
//! - [`VocabParallelCrossEntropy`]: the loss of logits `[N, Vl]` split by vocabulary without
//!   gathering them: per row the local max, Σ exp and target logit (3 floats) are all-gathered
//!   over TP and combined; the gradient `softmax − onehot` is then local. With P = 1 it is the
//!   fused softmax cross-entropy.

use super::Tp;
use crate::backend::cpu::kernels::vocab_parallel;
use crate::backend::ledger::MemCategory;
use crate::backend::prelude::*;
use crate::backend::Region;
use anyhow::Result;

/// See the module comment. `wpe` is the position table (used on TP rank 0).
#[derive(Clone, Copy, Debug)]
pub struct VocabParallelEmbedding {
    pub wte: Region,
    pub wpe: Region,
    /// First vocabulary row this rank holds.
    pub v0: usize,
    pub c: usize,
}

impl VocabParallelEmbedding {
    /// `out [B·T, C]` for `tokens [B·T]` at positions `i mod t`.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        tp: &Tp,
        out: &mut B::Buf,
        tokens: &[u32],
        params: &B::Buf,
        t: usize,
    ) -> Result<()> {
        if tp.size == 1 {
            let tok = be.tokens(tokens)?;
            return be.embedding_forward(out, &tok, params, self.wte, self.wpe, t, self.c);
        }
        let wpe = (tp.rank == 0).then_some(self.wpe);
        be.embedding_forward_shard(out, tokens, params, self.wte, wpe, t, self.c, self.v0)?;
        tp.all_reduce(be, out)
    }

    /// Accumulates `∂x` (`dout [B·T, C]`, replicated: the dual of reduce from TP is the
    /// identity) into the rows of `wte` this rank holds and, on rank 0, into `wpe`.
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        tp: &Tp,
        grads: &mut B::Buf,
        dout: &B::Buf,
        tokens: &[u32],
        t: usize,
    ) -> Result<()> {
        if tp.size == 1 {
            let tok = be.tokens(tokens)?;
            return be.embedding_backward(grads, self.wte, self.wpe, dout, &tok, t, self.c);
        }
        be.embedding_backward_shard(grads, self.wte, self.wpe, dout, tokens, t, self.c, self.v0)
    }
}

/// See the module comment: the real vocabulary is `v` (columns ≥ v are padding, masked).
#[derive(Clone, Copy, Debug)]
pub struct VocabParallelCrossEntropy {
    pub v0: usize,
    pub vl: usize,
    pub v: usize,
}

impl VocabParallelCrossEntropy {
    /// Σ loss of the first `k = y.len()` rows of `logits [R, Vl]`; with `scale`, those logits
    /// become `scale · ∂(Σ loss)/∂logits`. `losses [R]` and `stats [R, 3]` are scratch.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        tp: &Tp,
        logits: &mut B::Buf,
        losses: &mut B::Buf,
        stats: &mut B::Buf,
        y: &[u32],
        scale: Option<f32>,
    ) -> Result<f64> {
        let (k, vl, v) = (y.len(), self.vl, self.v);
        if tp.size == 1 {
            be.zero(losses)?; // a last, shorter chunk leaves the tail 0
            be.softmax_xent(logits, losses, &be.tokens(y)?, k, vl, v, scale)?;
            return be.sum(losses);
        }
        be.xent_partial(logits, stats, y, vl, self.v0, v)?;
        let mut partial = be.download(stats)?;
        partial.truncate(3 * k);
        let gathered = tp.all_gather(&partial)?;
        let (mut ms, mut row_losses) = (vec![0.0f32; 2 * k], vec![0.0f32; k]);
        vocab_parallel::xent_combine(&gathered, tp.size, &mut ms, &mut row_losses);
        if let Some(s) = scale {
            let was = be.set_mem_category(MemCategory::Logits);
            let ms = be.upload(&ms);
            be.set_mem_category(was);
            be.xent_grad(logits, &ms?, y, vl, self.v0, v, s)?;
        }
        Ok(row_losses.iter().map(|&l| l as f64).sum())
    }
}
